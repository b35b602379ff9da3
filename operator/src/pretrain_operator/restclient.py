"""A small async client of the Kubernetes REST API over aiohttp, logged in as kopf logs in (the
pod's ServiceAccount, else the kubeconfig), on plain JSON dicts.

Why not kubernetes_asyncio: importing its client loads a class for every kind of the API (about
50 MiB of the operator's resident memory) and turns every reply into model objects, where the
operator makes a dozen kinds of call on manifests that are dicts already.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: server-side apply takes it
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


class ApiError(Exception):
    """A reply outside 2xx: its HTTP status and the API server's Status message."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        self.status, self.reason, self.body = status, reason, body
        try:
            message = str(json.loads(body).get("message", ""))
        except (ValueError, AttributeError):
            message = body[:200]
        super().__init__(f"({status}) {reason}: {message}")


def _login() -> kopf.ConnectionInfo:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no ServiceAccount token and no kubeconfig (KUBECONFIG)")
    return info


def _connection() -> tuple[str, aiohttp.ClientSession]:
    """The server's URL, and a session with the credentials of a fresh login."""
    info = _login()
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()),
        headers={**info.as_http_headers(), "User-Agent": "pretrain-operator"},
        timeout=REQUEST_TIMEOUT,
    )
    return info.server.rstrip("/"), session


@dataclass
class RestClient:
    server: str
    session: aiohttp.ClientSession

    @classmethod
    def connect(cls) -> RestClient:
        return cls(*_connection())

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = JSON
    ) -> dict[str, Any]:
        """The decoded reply; ApiError outside 2xx. A 401 logs in again once: a projected
        ServiceAccount token is rotated under a running pod."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        status, reason, text = await self._send(method, path, data, headers)
        if status == 401:
            await self._login_again()
            status, reason, text = await self._send(method, path, data, headers)
        if status >= 300:
            raise ApiError(status, reason, text)
        return dict(json.loads(text)) if text else {}

    async def _send(
        self, method: str, path: str, data: str | None, headers: dict[str, str]
    ) -> tuple[int, str, str]:
        url = self.server + path
        async with self.session.request(method, url, data=data, headers=headers) as reply:
            return reply.status, reply.reason or "", await reply.text()

    async def _login_again(self) -> None:
        await self.session.close()
        self.server, self.session = _connection()

    async def close(self) -> None:
        await self.session.close()


def collection(api_version: str, namespace: str, plural: str) -> str:
    """The path of a namespaced collection: /api/v1/... for the core group, /apis/... else."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}"
