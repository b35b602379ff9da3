"""The pure parts of the development object store: its S3 identities, its command line and the
variables it hands to clients."""

from __future__ import annotations

from pathlib import Path

from devcluster.objectstore import (
    Credentials,
    ObjectStoreState,
    env_file,
    mini_command,
    s3_identities,
)


def test_the_server_knows_one_identity_and_no_anonymous_access() -> None:
    config = s3_identities(Credentials("key", "secret"))
    identities = config["identities"]
    assert isinstance(identities, list)
    [identity] = identities
    assert identity["credentials"] == [{"accessKey": "key", "secretKey": "secret"}]
    assert {"Read", "Write", "List"} <= set(identity["actions"])


def test_every_port_is_chosen_and_nothing_unused_is_started() -> None:
    state = ObjectStoreState("127.0.0.1", 9000, "bucket", "key", "secret")
    command = mini_command(Path("/bin/weed"), state, Path("/data"), Path("/s3.json"))
    flags = dict(argument.removeprefix("-").split("=", 1) for argument in command[2:])
    assert flags["s3.port"] == "9000"
    assert flags["ip.bind"] == "127.0.0.1"
    for port in ("master.port", "volume.port", "filer.port", "master.port.grpc",
                 "volume.port.grpc", "filer.port.grpc", "s3.port.grpc"):  # fmt: skip
        assert int(flags[port]) > 0
    assert flags["webdav"] == flags["admin.ui"] == flags["master.telemetry"] == "false"
    assert "secret" not in " ".join(command)  # the secret is in the 0600 config file only


def test_the_env_file_holds_the_standard_variables() -> None:
    state = ObjectStoreState("127.0.0.1", 9000, "bucket", "key", "secret")
    lines = dict(line.split("=", 1) for line in env_file(state).splitlines())
    assert lines == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret", "AWS_REGION": "us-east-1",
        "PRETRAIN_TEST_BUCKET": "bucket",
    }  # fmt: skip
