"""Real worker processes under torchrun (gloo on CPU): the loss does not depend on the world size,
checkpoints reshard from 3 workers to 2 and 1, a partial checkpoint is never used, and the
metrics endpoint says what metrics.jsonl says."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer import metrics as trainer_metrics
from pretrain_trainer.checkpoint import latest, save
from pretrain_trainer.distributed import Runtime
from pretrain_trainer.models.gpt import GPT, GPTConfig
from pretrain_trainer.train import run
from trainer_runs import (
    JOB,
    descendants,
    finished,
    job_file,
    largest_relative_difference,
    pretrain,
    step_losses,
)


def test_the_loss_does_not_depend_on_the_number_of_workers(
    pvc_root: Path, tmp_path: Path, figure: Callable[[str, float], None]
) -> None:
    curves = {}
    for workers in (1, 2, 3):
        output = tmp_path / f"workers-{workers}"
        finished(pretrain("-f", job_file(tmp_path), "--output", output, "--nproc", workers,
                          pvc_root=pvc_root))  # fmt: skip
        curves[workers] = step_losses(output)
    for workers in (2, 3):
        difference = largest_relative_difference(curves[1], curves[workers])
        figure(f"1 vs {workers} workers, largest relative loss difference", difference)
        assert difference < 1e-4


@pytest.mark.parametrize(
    ("resume_with", "data_format"), [(2, "jsonl"), (1, "jsonl"), (2, "tokens")]
)
def test_a_checkpoint_of_3_workers_resumes_with_fewer(
    pvc_root: Path,
    tmp_path: Path,
    resume_with: int,
    data_format: str,
    request: pytest.FixtureRequest,
) -> None:
    """Also from token shards (`pretrain prepare`): there the resume computes its samples from
    the step, where raw text replays every sample since step 0."""
    data = dict(JOB["spec"]["data"])
    if data_format == "tokens":
        data["sources"] = [{"uri": request.getfixturevalue("prepared_corpus"), "format": "tokens"}]
    job = job_file(tmp_path, training={"maxSteps": 12}, checkpoint={"everySteps": 4}, data=data)
    reference = tmp_path / "reference"
    finished(pretrain("-f", job, "--output", reference, pvc_root=pvc_root))

    output = tmp_path / "interrupted"
    three = pretrain("-f", job, "--output", output, "--nproc", 3, pvc_root=pvc_root)
    deadline = time.monotonic() + 300
    while not (output / "checkpoints" / "step-000000004").exists():
        assert three.poll() is None, three.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint at step 4"
        time.sleep(0.2)
    # Every process at once, mid-run: a lost node pool. torchrun starts its workers in sessions
    # of their own, so the whole tree is killed, not only the process group.
    for pid in descendants(three.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(three.pid, signal.SIGKILL)
    three.wait()

    finished(pretrain("-f", job, "--output", output, "--nproc", resume_with, pvc_root=pvc_root))
    resumed = step_losses(output)
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    sizes = {line["step"]: line["world_size"] for line in lines if "world_size" in line}
    assert sizes[1] == 3
    assert sizes[12] == resume_with  # the last steps were trained by the resumed run
    assert sorted(resumed) == list(range(1, 13))  # each step once, none lost, none twice
    assert largest_relative_difference(step_losses(reference), resumed) < 1e-4
    last = json.loads((output / "metrics.jsonl").read_text().splitlines()[-2])
    assert last["tokens"] == 12 * 12 * 32  # tokens counted once per step


def tiny_gpt() -> tuple[GPT, Any]:
    import torch

    model = GPT(GPTConfig(vocab_size=64, hidden_size=16, layers=1, heads=2, intermediate_size=32))
    return model, torch.optim.AdamW(model.parameters())


def test_a_partial_or_corrupted_checkpoint_is_never_used(tmp_path: Path) -> None:
    model, optimizer = tiny_gpt()
    root = tmp_path / "checkpoints"
    save(root, 2, 24, model, optimizer, Runtime(), keep=5)
    newest = save(root, 4, 48, model, optimizer, Runtime(), keep=5)
    (root / ".partial-step-000000006-dead").mkdir()  # a save killed before its commit
    shard = next(p for p in Path(newest.path).iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-10])  # a torn write
    found = latest(root)
    assert found is not None
    assert found[0].name == "step-000000002"
    assert found[1]["data_position"] == 24


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    model, optimizer = tiny_gpt()
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        save(root, step, step, model, optimizer, Runtime(), keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000000003", "step-000000004"]


def test_the_metrics_endpoint_agrees_with_metrics_jsonl(
    pvc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRETRAIN_PVC_ROOT", str(pvc_root))
    spec = PretrainJobSpec.model_validate({**JOB["spec"], "training": {
        **JOB["spec"]["training"], "maxSteps": 5}, "checkpoint": {"everySteps": 2}})  # fmt: skip
    metrics = trainer_metrics.create("team-a", "invariance", "PretrainJob")
    port = trainer_metrics.serve(metrics, 0)
    run(spec, tmp_path, metrics=metrics)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    labels = '{job="invariance",kind="PretrainJob",namespace="team-a"}'
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [line for line in lines if "loss" in line][-1]
    assert samples[f"pretrain_train_step{labels}"] == 5
    assert samples[f"pretrain_tokens_total{labels}"] == last["tokens"] == 5 * 12 * 32
    assert samples[f"pretrain_samples_total{labels}"] == 5 * 12
    assert samples[f"pretrain_train_loss{labels}"] == pytest.approx(last["loss"])
    assert samples[f"pretrain_tokens_per_second{labels}"] == pytest.approx(
        last["tokens_per_second"]
    )
    assert samples[f"pretrain_world_size{labels}"] == 1
    assert samples[f"pretrain_checkpoint_last_step{labels}"] == 5
    assert samples[f"pretrain_step_duration_seconds_count{labels}"] == 5
    assert samples[f"pretrain_checkpoint_save_seconds_count{labels}"] == 3  # steps 2, 4, 5
    assert 0 < samples[f"pretrain_learning_rate{labels}"] <= 1e-3
    assert samples[f"pretrain_grad_norm{labels}"] > 0
    assert f"pretrain_dataloader_wait_seconds_total{labels}" in samples
    assert f"pretrain_device_memory_bytes{labels}" in samples
    evaluation = '{job="invariance",kind="PretrainJob",name="loss",namespace="team-a"}'
    assert samples[f"pretrain_eval_metric{evaluation}"] > 0
    # No known peak FLOP/s for a CPU: MFU is absent rather than wrong.
    assert "# TYPE pretrain_mfu_ratio gauge" in text
    assert not any(name.startswith("pretrain_mfu_ratio{") for name in samples)


def test_sigterm_saves_a_checkpoint_and_exits_143(pvc_root: Path, tmp_path: Path) -> None:
    """Eviction or preemption: the worker finishes its step, checkpoints, and says so."""
    job = job_file(tmp_path, training={"maxSteps": 100000}, checkpoint={"everySteps": 100000})
    output = tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-m", "pretrain_trainer", "train", f"--config={job}",
         f"--output={output}"],
        env={**os.environ, "PRETRAIN_PVC_ROOT": str(pvc_root)},
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = output / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count('"loss": ') >= 5):
        assert worker.poll() is None, worker.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, errors = worker.communicate(timeout=120)
    assert worker.returncode == 143, errors
    assert "checkpoint saved" in errors
    found = latest(output / "checkpoints")
    assert found is not None
    assert found[1]["step"] >= 4
    assert found[1]["step"] == max(step_losses(output))


def test_fsdp_trains_like_one_worker_and_its_checkpoint_resumes_alone(
    pvc_root: Path, tmp_path: Path
) -> None:
    """FSDP2 shards parameters, gradients and optimizer state over the workers; the steps are the
    same as one worker's, and its sharded checkpoint reshards into a single process."""
    steps = {"maxSteps": 8}
    reference = tmp_path / "reference"
    finished(pretrain("-f", job_file(tmp_path, training=steps), "--output", reference,
                      pvc_root=pvc_root))  # fmt: skip
    sharded = job_file(tmp_path, training={**steps, "strategy": "FSDP"},
                       checkpoint={"everySteps": 4})  # fmt: skip
    output = tmp_path / "fsdp"
    finished(pretrain("-f", sharded, "--output", output, "--nproc", 2, pvc_root=pvc_root))
    assert largest_relative_difference(step_losses(reference), step_losses(output)) < 1e-4

    shutil.rmtree(output / "checkpoints" / "step-000000008")  # as if lost after step 4
    finished(pretrain("-f", sharded, "--output", output, pvc_root=pvc_root))
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    sizes = {line["step"]: line["world_size"] for line in lines if "world_size" in line}
    assert sizes == {1: 2, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 1, 8: 1}
    # The resume says when it happened, in order, before the first step it trained.
    [restart] = [line for line in lines if "restart" in line]
    times = restart["restart"]
    assert restart["step"] == 4
    assert times["world_size"] == 1
    step_5 = next(line for line in lines if line["step"] == 5 and "loss" in line)
    assert (times["process_started"] <= times["restore_started"] <= times["restored"]
            <= times["loop_started"] <= step_5["time"])  # fmt: skip
    assert largest_relative_difference(step_losses(reference), step_losses(output)) < 1e-4
