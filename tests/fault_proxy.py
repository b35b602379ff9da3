"""A TCP proxy in front of a real server that breaks connections on demand: how the tests give
a client the transient failures (reset connections) an object store shows under load."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target`; the next `reset(n)` connections are reset (RST)
    as soon as they arrive."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._to_reset = 0
        self.resets = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self, connections: int) -> None:
        with self._lock:
            self._to_reset = connections

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                breaking = self._to_reset > 0
                self._to_reset -= breaking
                self.resets += breaking
            if breaking:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            sink.sendall(chunk)
    for end in (source, sink):
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fault_proxy(host: str, port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy((host, port))
    try:
        yield proxy
    finally:
        proxy.close()
