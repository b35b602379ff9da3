"""The part of the kubelet API that `kubectl logs` needs: the API server proxies
GET /containerLogs/{namespace}/{pod}/{container} to the node's daemon endpoint over TLS.
Query parameters: follow, previous, tailLines, limitBytes (timestamps are not recorded).

There is no authentication: the server listens on 127.0.0.1 only and serves logs, nothing else.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from devcluster import pki

# (namespace, pod, container, previous) -> (log file or None, whether the container still runs)
LogSource = Callable[[str, str, str, bool], tuple[Path | None, Callable[[], bool]]]


def tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data` (a final line without newline counts)."""
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def _handler(source: LogSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return  # the agent's log stays readable

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            parts = url.path.strip("/").split("/")
            if parts == ["healthz"]:
                self._reply(200, b"ok")
                return
            if len(parts) != 4 or parts[0] != "containerLogs":
                self._reply(404, b"not found")
                return
            previous = query.get("previous") == "true"
            path, running = source(parts[1], parts[2], parts[3], previous)
            if path is None or not path.exists():
                self._reply(404, f"no logs of {'/'.join(parts[1:])}".encode())
                return
            data = tail(path.read_bytes(), int(query.get("tailLines", "-1")))
            limit = int(query["limitBytes"]) if "limitBytes" in query else None
            follow = query.get("follow") == "true" and not previous
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if not follow:
                body = data[:limit] if limit is not None else data
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.end_headers()
            self._follow(path, data, running)

        def _follow(self, path: Path, first: bytes, running: Callable[[], bool]) -> None:
            """Stream what is appended until the container stops (or the client leaves)."""
            try:
                self.wfile.write(first)
                self.wfile.flush()
                offset = path.stat().st_size
                while True:
                    alive = running()
                    with path.open("rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read()
                    if chunk:
                        offset += len(chunk)
                        self.wfile.write(chunk)
                        self.wfile.flush()
                    elif not alive:
                        return
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                return

        def _reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class KubeletServer:
    """HTTPS on 127.0.0.1:port (0 picks a free port; `port` says which)."""

    def __init__(self, directory: Path, source: LogSource, port: int = 0) -> None:
        cert, key = directory / "kubelet.crt", directory / "kubelet.key"
        pki.self_signed(cert, key, "devcluster-local-node", "127.0.0.1")
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(source))
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
