"""A real S3-compatible server for development and tests: SeaweedFS's `weed mini` (a master, a
volume server, a filer and the S3 gateway in one process), on an address of this machine, with
credentials it enforces (a request signed with any other secret is refused) and one bucket made
at start. `make storage-up` runs it in the background and writes `.storage/env`; the tests start
one of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from devcluster import tools
from devcluster.controlplane import free_port, log_tail
from devcluster.realnode import processes

ACCESS_KEY = "pretrain-dev"
REGION = "us-east-1"  # what SeaweedFS answers to; any region name signs the same
BUCKET = "pretrain-test"


class ObjectStoreError(RuntimeError):
    """The server did not start; the message carries its log's tail."""


@dataclass
class Credentials:
    access_key: str
    secret_key: str


@dataclass
class ObjectStoreState:
    address: str
    port: int
    bucket: str
    access_key: str
    secret_key: str
    pid: int = 0


def s3_identities(credentials: Credentials) -> dict[str, object]:
    """SeaweedFS's S3 configuration: one identity allowed everything, none anonymous."""
    return {
        "identities": [
            {
                "name": "pretrain",
                "credentials": [
                    {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def mini_command(weed: Path, state: ObjectStoreState, data: Path, config: Path) -> list[str]:
    """Every port chosen here (none of SeaweedFS's fixed defaults, which another server could
    hold), and nothing started that the tests do not use (WebDAV, the admin UI, the Iceberg and
    Lance catalogs, telemetry)."""
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port.grpc",
    )}  # fmt: skip
    return [
        str(weed), "mini", f"-dir={data}", f"-ip={state.address}", f"-ip.bind={state.address}",
        f"-s3.port={state.port}", f"-s3.config={config}", f"-bucket={state.bucket}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip


def environment(state: ObjectStoreState) -> dict[str, str]:
    """The standard variables every S3 client reads (boto3, s3fs, the AWS CLI), plus the bucket."""
    return {
        "AWS_ENDPOINT_URL": f"http://{state.address}:{state.port}",
        "AWS_ACCESS_KEY_ID": state.access_key,
        "AWS_SECRET_ACCESS_KEY": state.secret_key,
        "AWS_REGION": REGION,
        "PRETRAIN_TEST_BUCKET": state.bucket,
    }


def env_file(state: ObjectStoreState) -> str:
    """Shell-sourceable lines (`set -a; . .storage/env; set +a`)."""
    return "".join(f"{name}={value}\n" for name, value in environment(state).items())


@dataclass
class ObjectStore:
    """A server kept in `directory` (its data, configuration, log and state.json, so `down` from
    another process finds it)."""

    directory: Path

    @property
    def _state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def _config(self) -> Path:
        return self.directory / "s3.json"

    @property
    def log(self) -> Path:
        return self.directory / "weed.log"

    def load(self) -> ObjectStoreState | None:
        try:
            return ObjectStoreState(**json.loads(self._state_file.read_text()))
        except FileNotFoundError:
            return None

    def running(self) -> bool:
        state = self.load()
        return state is not None and processes.alive(state.pid, str(self._config))

    def start(self, address: str = "127.0.0.1", timeout: float = 90) -> ObjectStoreState:
        """Start the server (or find the one running here); its state once the bucket exists."""
        found = self.load()
        if found is not None and self.running():
            return found
        credentials = Credentials(ACCESS_KEY, secrets.token_hex(20))
        state = ObjectStoreState(address, free_port(), BUCKET, credentials.access_key,
                                 credentials.secret_key)  # fmt: skip
        return self.restart(state, timeout)

    def restart(self, state: ObjectStoreState, timeout: float = 90) -> ObjectStoreState:
        """Start the server with a state it had (its address, port and credentials) on the data
        it kept: what a client that knew it before sees as the same store, back."""
        weed = tools.ensure(tools.SEAWEEDFS) / "weed"
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        credentials = Credentials(state.access_key, state.secret_key)
        self._config.write_text(json.dumps(s3_identities(credentials), indent=2))
        self._config.chmod(0o600)
        command = mini_command(weed, state, self.directory / "data", self._config)
        state = ObjectStoreState(**{**asdict(state), "pid": 0})
        # SeaweedFS takes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its environment as an
        # identity of its own, over its configuration: a client's variables (another server's,
        # say) must not reach it, or it refuses its own credentials (403).
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        state.pid = processes.launch(command, self.log, self.directory, clean)
        self._state_file.write_text(json.dumps(asdict(state), indent=2))
        self._state_file.chmod(0o600)
        deadline = time.monotonic() + timeout
        while not bucket_exists(state):
            if not processes.alive(state.pid, str(self._config)) or time.monotonic() > deadline:
                self.stop()
                raise ObjectStoreError(
                    f"SeaweedFS did not serve bucket {state.bucket} within {timeout:.0f} s; "
                    f"see {self.log}:\n{log_tail(self.log)}"
                )
            time.sleep(0.3)
        return state

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL: as a crash does); its data stays in `directory` for the next
        start."""
        state = self.load()
        if state is not None:
            processes.stop(state.pid, str(self._config), 10, sig)
        self._state_file.unlink(missing_ok=True)


def bucket_exists(state: ObjectStoreState) -> bool:
    """Whether the server answers a signed HEAD of the bucket with 200."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    s3 = session.create_client(
        "s3", endpoint_url=environment(state)["AWS_ENDPOINT_URL"], region_name=REGION,
        aws_access_key_id=state.access_key, aws_secret_access_key=state.secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )  # fmt: skip
    try:
        s3.head_bucket(Bucket=state.bucket)
    except Exception:
        return False
    return True
