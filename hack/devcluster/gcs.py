"""A real Google Cloud Storage API server for the gs:// tests: fake-gcs-server (the emulator gcsfs's
own test suite runs against), on an address of this machine, keeping its objects on disk, with one
bucket made at start. Clients find it through STORAGE_EMULATOR_HOST, which gcsfs and Google's
client libraries read.

It checks no credentials (every request is served as if authorized), so the refused-credentials
tests run against the S3 server (objectstore.py), which does.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devcluster import tools
from devcluster.controlplane import free_port, log_tail
from devcluster.realnode import processes

BUCKET = "pretrain-test"
PROJECT = "pretrain-dev"


class GcsError(RuntimeError):
    """The server did not start; the message carries its log's tail."""


@dataclass(frozen=True)
class GcsState:
    address: str
    port: int
    bucket: str
    pid: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


def server_command(binary: Path, address: str, port: int, root: Path) -> list[str]:
    return [
        str(binary), "-scheme", "http", "-host", address, "-port", str(port),
        "-public-host", f"{address}:{port}", "-external-url", f"http://{address}:{port}",
        "-backend", "filesystem", "-filesystem-root", str(root), "-log-level", "warn",
    ]  # fmt: skip


# gcsfs asks the gRPC storage-control API what layout a bucket has (zonal, hierarchical) unless
# this is off; the emulator serves only the JSON API, so every first call would wait out gRPC's
# retries. Read when gcsfs is imported: conftest.py sets it before any test imports it.
NO_GRPC = ("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def environment(state: GcsState) -> dict[str, str]:
    """What a gcsfs client needs to use the server: its endpoint, anonymous access (fsspec's
    FSSPEC_GCS_* defaults: no Google credential lookup, which would try the metadata server),
    the JSON API only, and the bucket."""
    return {
        "STORAGE_EMULATOR_HOST": state.url,
        NO_GRPC[0]: NO_GRPC[1],
        "FSSPEC_GCS_TOKEN": "anon",
        "FSSPEC_GCS_PROJECT": PROJECT,
        "PRETRAIN_TEST_GCS_BUCKET": state.bucket,
    }


def _request(url: str, method: str = "GET", body: dict[str, str] | None = None) -> tuple[int, str]:
    """The status and body of a request (an HTTP error's too)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")


def bucket_exists(state: GcsState) -> bool:
    try:
        return _request(f"{state.url}/storage/v1/b/{state.bucket}")[0] == 200
    except OSError:  # not listening yet
        return False


def make_bucket(state: GcsState) -> str:
    """Ask for the bucket; what the server answered, for an error that says why it never came."""
    try:
        status, body = _request(f"{state.url}/storage/v1/b?project={PROJECT}", "POST",
                                {"name": state.bucket})  # fmt: skip
    except OSError as error:  # refused until it listens
        return f"no answer ({error})"
    return f"HTTP {status} {body.strip()[:200]}"  # 409 once made


@dataclass
class GcsServer:
    """A server whose data, log and pid live in `directory`."""

    directory: Path
    state: GcsState | None = None

    @property
    def log(self) -> Path:
        return self.directory / "fake-gcs-server.log"

    def start(self, address: str = "127.0.0.1", timeout: float = 60, tries: int = 3) -> GcsState:
        """Start the server on a free port and make the bucket. A server that exits at once is
        started again on another port: the one free_port found can be taken (by any process on
        this machine) before the server binds it."""
        binary = tools.ensure(tools.FAKE_GCS) / "fake-gcs-server"
        root = self.directory / "data"
        root.mkdir(parents=True, exist_ok=True)
        answer: str | None = None
        port = 0
        for _ in range(tries):
            port = free_port()
            pid = processes.launch(server_command(binary, address, port, root), self.log,
                                   self.directory)  # fmt: skip
            state = self.state = GcsState(address, port, BUCKET, pid)
            answer = self._await_bucket(state, str(root), time.monotonic() + timeout)
            if answer is None:
                return state
            self.stop()
            if answer != "exited":
                break
        cause = (f"it exited at each of {tries} tries, the last on port {port}"
                 if answer == "exited" else f"the last create answered {answer}")  # fmt: skip
        raise GcsError(
            f"fake-gcs-server did not serve bucket {BUCKET} within {timeout:.0f} s: {cause}; "
            f"see {self.log}:\n{log_tail(self.log)}"
        )

    @staticmethod
    def _await_bucket(state: GcsState, marker: str, deadline: float) -> str | None:
        """None once the bucket is served; else "exited", or what the last create answered."""
        answer = "nothing yet"
        while not bucket_exists(state):
            if not processes.alive(state.pid, marker):
                return "exited"
            if time.monotonic() > deadline:
                return answer
            answer = make_bucket(state)
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        if self.state is not None:
            processes.stop(self.state.pid, str(self.directory / "data"), 10)
            self.state = None
