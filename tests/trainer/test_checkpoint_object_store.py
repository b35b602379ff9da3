"""Checkpoints on an object store, against the tests' real servers: S3 (SeaweedFS) and Google Cloud
Storage (fake-gcs-server). On both, a step exists once its manifest is written, last, and
`pretrain run` reads its corpus from the bucket, checkpoints to it and resumes from it. On S3, a
save cut short (the process killed, the server killed) is never loaded, and refused credentials
end the run at once (the GCS emulator checks none)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gcsfs
import pytest
import s3fs
import torch
from torch import nn

from devcluster.objectstore import ObjectStore, ObjectStoreState, environment
from pretrain_trainer.checkpoint import MANIFEST, complete, latest, restore, save
from pretrain_trainer.distributed import Runtime
from trainer_runs import finished, job_file, pretrain, step_losses

SAVER = textwrap.dedent("""
    import sys
    import torch
    from torch import nn
    from pretrain_trainer.checkpoint import save
    from pretrain_trainer.distributed import Runtime

    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(6)])  # 100 MB of weights
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        print(f"saving {step}", flush=True)
        save(sys.argv[1], step, step * 10, model, optimizer, Runtime(), keep=5)
""")


@dataclass(frozen=True)
class Bucket:
    """The bucket of one of the tests' servers, and a client of its filesystem (which takes
    whole URLs)."""

    url: str  # s3://NAME, gs://NAME
    fs: Any

    def prefix(self, name: str) -> str:
        """A prefix of this test's own."""
        return f"{self.url}/{name}-{secrets.token_hex(4)}"


def s3_bucket(s3_env: dict[str, str]) -> Bucket:
    return Bucket(f"s3://{s3_env['PRETRAIN_TEST_BUCKET']}", s3fs.S3FileSystem())


@pytest.fixture(params=["s3", "gs"])
def bucket(request: pytest.FixtureRequest) -> Bucket:
    if request.param == "s3":
        return s3_bucket(request.getfixturevalue("s3_env"))
    env = request.getfixturevalue("gcs_env")
    return Bucket(f"gs://{env['PRETRAIN_TEST_GCS_BUCKET']}", gcsfs.GCSFileSystem())


def tiny() -> tuple[nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def steps_in(root: str) -> list[str]:
    return sorted(entry.name for entry in complete(root))


def test_a_step_exists_once_its_manifest_matches_its_objects(bucket: Bucket) -> None:
    root = bucket.prefix("checkpoints")
    model, optimizer = tiny()
    for step in (1, 2, 3):
        save(root, step, step * 10, model, optimizer, Runtime(), keep=2)
    assert steps_in(root) == ["step-000000002", "step-000000003"]  # keep, after the commit
    found = latest(root)
    assert found is not None
    assert str(found[0]) == f"{root}/step-000000003"
    assert all(entry["version"] for entry in found[1]["files"].values())  # ETags, generations
    fresh = nn.Linear(64, 64)
    restored = restore(found, fresh, torch.optim.AdamW(fresh.parameters()))
    assert (restored.step, restored.data_position) == (3, 30)
    assert torch.equal(fresh.weight, model.weight)

    fs = bucket.fs
    newest = f"{root}/step-000000003"
    shard = next(name for name in fs.ls(newest) if name.endswith(".distcp"))
    fs.pipe(shard, fs.cat(shard)[:-10])  # an object replaced behind the manifest's back
    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"

    fs.rm(f"{newest}/{MANIFEST}")  # every object there, no manifest: a save cut short
    fs.pipe(f"{root}/step-000000004/__0_0.distcp", b"half a shard")
    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"
    save(root, 5, 50, model, optimizer, Runtime(), keep=2)
    # What the cut-short saves left is gone once a later step commits; keep counts whole ones.
    assert steps_in(root) == ["step-000000002", "step-000000005"]


def test_a_save_killed_half_way_leaves_the_previous_checkpoint_in_use(
    s3_env: dict[str, str],
) -> None:
    root = s3_bucket(s3_env).prefix("killed-saver")
    saver = subprocess.Popen([sys.executable, "-c", SAVER, root], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert saver.stdout is not None
    while saver.stdout.readline().strip() != "saving 3":
        assert saver.poll() is None, "the saver died before its third save"
    time.sleep(0.5)  # the 300 MB shard of step 3 is on its way
    saver.send_signal(signal.SIGKILL)
    saver.wait()

    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"
    assert found[1]["data_position"] == 20


@pytest.fixture
def own_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ObjectStore, ObjectStoreState]]:
    """A server of this test's own, which it kills: the session's stays up for the others."""
    store = ObjectStore(tmp_path / "store")
    state = store.start()
    for name, value in environment(state).items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield store, state
    store.stop(signal.SIGKILL)
    s3fs.S3FileSystem.clear_instance_cache()


def test_the_server_killed_during_a_save_leaves_the_previous_checkpoint_in_use(
    own_store: tuple[ObjectStore, ObjectStoreState],
) -> None:
    store, state = own_store
    root = f"s3://{state.bucket}/server-killed"
    saver = subprocess.Popen([sys.executable, "-c", SAVER, root], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert saver.stdout is not None
    while saver.stdout.readline().strip() != "saving 3":
        assert saver.poll() is None, "the saver died before its third save"
    time.sleep(0.5)
    store.stop(signal.SIGKILL)  # as a crash, mid-upload
    saver.kill()  # s3fs would retry for minutes; its pod would be restarted
    saver.wait()
    store.restart(state)
    s3fs.S3FileSystem.clear_instance_cache()

    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"
    model, optimizer = tiny()
    save(root, 3, 30, model, optimizer, Runtime(), keep=5)  # the store works again
    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000003"


def test_pretrain_run_reads_and_checkpoints_to_the_bucket_and_resumes_from_it(
    bucket: Bucket, pvc_root: Path, tmp_path: Path
) -> None:
    """30 steps, then 50 from another run directory: the second run starts at step 31 from the
    bucket. (Not compared with an uninterrupted 50-step run: the schedule decays over the total,
    which --max-steps changes; the e2e test compares a resumed job with its uninterrupted run.)"""
    root = bucket.prefix("pretrain-run")
    bucket.fs.put_file(str(pvc_root / "corpus" / "python-docs.jsonl"),
                       f"{root}/corpus/python-docs.jsonl")  # fmt: skip
    on_bucket = {"data": {"sources": [{"uri": f"{root}/corpus/"}], "sequenceLength": 32,
                      "validationFraction": 0.05},
             "checkpoint": {"everySteps": 10, "keep": 3,
                            "storage": {"uri": f"{root}/checkpoints"}}}  # fmt: skip
    (tmp_path / "job").mkdir()
    job = job_file(tmp_path / "job", **on_bucket)
    finished(pretrain("-f", job, "--output", tmp_path / "first", "--max-steps", 30,
                      pvc_root=pvc_root))  # fmt: skip
    assert steps_in(f"{root}/checkpoints") == [f"step-{s:09d}" for s in (10, 20, 30)]
    finished(pretrain("-f", job, "--output", tmp_path / "second", "--max-steps", 50,
                      pvc_root=pvc_root))  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text()
               .splitlines()]  # fmt: skip
    assert "restart" in records[0]
    assert records[0]["step"] == 30
    resumed = step_losses(tmp_path / "second")
    assert sorted(resumed) == list(range(31, 51))
    assert steps_in(f"{root}/checkpoints") == [f"step-{s:09d}" for s in (30, 40, 50)]
    assert {"config.json", "model.safetensors"} <= {
        Path(name).name for name in bucket.fs.ls(f"{root}/checkpoints/model")
    }  # the export beside the checkpoints

    # It trains on from the bucket's weights, not from fresh ones (whose loss is the first's).
    first = step_losses(tmp_path / "first")
    assert resumed[31] < 0.8 * first[1], (resumed[31], first[1], first[30])


@pytest.mark.parametrize("where", ["checkpoints", "data"])
def test_refused_credentials_exit_78_at_once_with_one_line_naming_the_field(
    where: str, s3_env: dict[str, str], pvc_root: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    s3 = s3_bucket(s3_env)
    root = s3.prefix("refused")
    s3.fs.pipe(f"{root}/corpus/part-0.jsonl", b'{"text": "a document"}\n')
    spec: dict[str, Any] = {"checkpoint": {"storage": {"uri": f"{root}/checkpoints"}}}
    field = "spec.checkpoint.storage.uri"
    if where == "data":
        spec = {"data": {"sources": [{"uri": f"{root}/corpus/"}], "sequenceLength": 32}}
        field = "spec.data.sources[0].uri"
    job = job_file(tmp_path, **spec)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    started = time.monotonic()
    process = pretrain("-f", job, "--output", tmp_path / "out", "--max-steps", 5,
                       pvc_root=pvc_root)  # fmt: skip
    _, errors = process.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert process.returncode == 78, errors
    said = [line for line in errors.splitlines() if line.startswith("pretrain: ")]
    assert len(said) == 1, errors
    assert said[0].startswith(f"pretrain: {field}: s3://"), said[0]
    assert "refused" in said[0]
    assert "not-the-secret" not in errors
    assert elapsed < 60
