"""The gs:// tests' server (devcluster.gcs) starts even when the port it was handed is taken:
free_port's port is free when found, but any process here can bind it before the server does."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import controlplane, gcs


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        # bound, not listening: the server cannot bind it, and a client is refused at once
        yield int(sock.getsockname()[1])


def test_a_server_whose_port_was_taken_starts_again_on_another(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([taken_port, controlplane.free_port()])
    monkeypatch.setattr(gcs, "free_port", lambda: next(ports))
    server = gcs.GcsServer(tmp_path)
    try:
        state = server.start(timeout=30)
        assert state.port != taken_port
        assert gcs.bucket_exists(state)
        assert "address already in use" in server.log.read_text()  # the first try's exit
    finally:
        server.stop()


def test_a_server_that_never_binds_says_so_and_names_its_log(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcs, "free_port", lambda: taken_port)
    cause = f"exited at each of 2 tries, the last on port {taken_port}"
    with pytest.raises(gcs.GcsError, match=cause) as raised:
        gcs.GcsServer(tmp_path).start(timeout=30, tries=2)
    assert "address already in use" in str(raised.value)
    assert str(tmp_path) in str(raised.value)
