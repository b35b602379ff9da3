"""The operator's REST client against a real HTTP server on loopback (aiohttp's): the login from
the kubeconfig, the API server's refusals as errors that keep its status and message, and a
rotated token picked up by logging in again on a 401."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from devcluster.controlplane import free_port
from pretrain_operator.restclient import MERGE_PATCH, ApiError, RestClient, collection


def kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "here",
        "clusters": [{"name": "here", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "here", "context": {"cluster": "here", "user": "me"}}],
    }))  # fmt: skip
    return path


def serve(
    handler: Callable[[web.Request], Awaitable[web.Response]],
    client: Callable[[RestClient], Awaitable[Any]],
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Run `client` against a server that answers every request with `handler`."""
    port = free_port()
    config = kubeconfig(config, f"http://127.0.0.1:{port}", "first-token")
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def scenario() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        rest = RestClient.connect()
        try:
            return await client(rest)
        finally:
            await rest.close()
            await runner.cleanup()

    return asyncio.run(scenario())


def test_a_request_carries_the_token_the_body_and_its_content_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str, str | None, str | None, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.path_qs, request.headers.get("Authorization"),
                     request.content_type if body is not None else None, body))  # fmt: skip
        return web.json_response({"metadata": {"uid": "u-1"}})

    async def client(rest: RestClient) -> Any:
        path = collection("v1", "team", "configmaps") + "/c"
        return await rest.request("PATCH", path, {"data": {"a": "1"}}, content_type=MERGE_PATCH)

    reply = serve(handler, client, tmp_path / "config", monkeypatch)
    assert reply == {"metadata": {"uid": "u-1"}}
    assert seen == [("PATCH", "/api/v1/namespaces/team/configmaps/c", "Bearer first-token",
                     MERGE_PATCH, {"data": {"a": "1"}})]  # fmt: skip


def test_a_refusal_is_an_error_with_the_status_and_the_servers_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = {"kind": "Status", "code": 403, "reason": "Forbidden",
              "message": 'pods "p" is forbidden: unable to create new content in namespace team '
                         "because it is being terminated"}  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(status, status=403)

    async def client(rest: RestClient) -> Any:
        with pytest.raises(ApiError) as refused:
            await rest.request("POST", collection("v1", "team", "pods"), {"kind": "Pod"})
        return refused.value

    error = serve(handler, client, tmp_path / "config", monkeypatch)
    assert error.status == 403
    assert json.loads(error.body) == status
    assert str(error) == f"(403) Forbidden: {status['message']}"


def test_a_rotated_token_is_read_again_after_a_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet rotates a projected ServiceAccount token under a running pod: the old one is
    refused, the client logs in again once and repeats the request with the new one."""
    config = tmp_path / "config"
    tokens: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        tokens.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer second-token":
            # What rotation does: the file holds a new token by the time the old is refused.
            server = yaml.safe_load(config.read_text())["clusters"][0]["cluster"]["server"]
            kubeconfig(config, server, "second-token")
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response({"items": []})

    async def client(rest: RestClient) -> Any:
        return await rest.request("GET", collection("v1", "team", "pods"))

    assert serve(handler, client, config, monkeypatch) == {"items": []}
    assert tokens == ["Bearer first-token", "Bearer second-token"]
