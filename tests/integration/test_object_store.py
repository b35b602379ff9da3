"""`make storage-up` / `make storage-down` run `python -m devcluster storage-up|storage-down`:
a real S3 server (SeaweedFS) that outlives the command, `.storage/env` with the standard
variables, and credentials the server enforces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest
from botocore.exceptions import ClientError

from devcluster.objectstore import ObjectStore


def devcluster(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devcluster", "--storage-dir", str(directory),
                           *args], capture_output=True, text=True, timeout=600)  # fmt: skip


def sourced(env_file: Path) -> dict[str, str]:
    """The variables a shell gets from `set -a; . FILE; set +a`."""
    printed = subprocess.run(["bash", "-c", f"set -a; . {env_file}; set +a; env -0"],
                             capture_output=True, text=True, check=True, env={})  # fmt: skip
    pairs = (entry.split("=", 1) for entry in printed.stdout.split("\0") if "=" in entry)
    return {name: value for name, value in pairs if name.startswith(("AWS_", "PRETRAIN_"))}


def s3_client(env: dict[str, str], secret: str | None = None):  # type: ignore[no-untyped-def]
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def test_storage_up_serves_a_bucket_with_enforced_credentials_until_down(tmp_path: Path) -> None:
    directory = tmp_path / "storage"
    started = devcluster(directory, "storage-up")
    assert started.returncode == 0, started.stderr
    try:
        env = sourced(directory / "env")
        assert set(env) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                            "AWS_REGION", "PRETRAIN_TEST_BUCKET"}  # fmt: skip
        assert env["AWS_SECRET_ACCESS_KEY"] not in started.stdout + started.stderr
        assert env["AWS_SECRET_ACCESS_KEY"] not in ObjectStore(directory).log.read_text()
        s3 = s3_client(env)
        bucket = env["PRETRAIN_TEST_BUCKET"]
        s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"from the test")
        assert s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read() == b"from the test"
        with pytest.raises(ClientError) as refused:
            s3_client(env, secret="not-the-secret").get_object(Bucket=bucket, Key="hello.txt")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        again = devcluster(directory, "storage-up")  # finds the running server
        assert again.returncode == 0, again.stderr
        assert sourced(directory / "env") == env
    finally:
        stopped = devcluster(directory, "storage-down")
    assert stopped.returncode == 0, stopped.stderr
    assert not ObjectStore(directory).running()
    assert not (directory / "env").exists()


def test_a_clients_aws_variables_do_not_reach_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS would take AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from its environment as an
    identity over its configuration, and refuse its own credentials; a starter that holds another
    server's variables (a benchmark's, a test's) must still get a server that serves."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-servers-secret")
    store = ObjectStore(tmp_path / "store")
    try:
        state = store.start(timeout=60)  # serves its bucket to its own credentials
        assert state.secret_key != "another-servers-secret"
    finally:
        store.stop()
