"""What `make demo` shows of a job, and what it applies."""

from __future__ import annotations

from pathlib import Path

import yaml

from devcluster.demo import DEMO_JOBS, job_view, last_loss
from pretrain_operator import children
from pretrain_operator.api import FINETUNE_JOB, PRETRAIN_JOB

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_a_progress_bar_shows_phase_step_total_loss_and_speed() -> None:
    body = {
        "kind": "PretrainJob",
        "metadata": {"name": "bert-tiny"},
        "spec": {"training": {"maxSteps": 80}},
        "status": {
            "phase": "Running",
            "progress": {"step": 12, "loss": 5.4321, "tokensPerSecond": 1234.5},
        },
    }
    view = job_view(body)
    assert (view.phase, view.step, view.total) == ("Running", 12, 80)
    assert (view.loss_text, view.speed_text) == ("5.432", "1,234")
    fresh = job_view({"kind": "FinetuneJob", "metadata": {"name": "f"}, "spec": {}})
    assert (fresh.phase, fresh.step, fresh.loss_text, fresh.speed_text) == ("Pending", 0, "-", "-")


def test_the_summary_takes_the_last_step_loss_from_metrics_jsonl(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    assert last_loss(metrics) is None
    metrics.write_text(
        '{"step": 1, "loss": 2.5}\n{"step": 1, "eval": {"loss": 2.0}}\n'
        '{"step": 2, "loss": 2.25}\n{"step": 2, "eval": {"loss": 1.5}}\n'
    )
    assert last_loss(metrics) == 2.25


def test_the_demo_jobs_are_examples_whose_pods_mount_the_corpus_claim() -> None:
    for name in DEMO_JOBS:
        manifest = yaml.safe_load((EXAMPLES / name).read_text())
        kind = PRETRAIN_JOB if manifest["kind"] == "PretrainJob" else FINETUNE_JOB
        spec = kind.spec.model_validate(manifest["spec"])
        job = children.Job(kind, manifest["metadata"]["name"], "demo", "uid", spec, "image")
        pod = children.node_pod(job, 0)
        claims = {v["persistentVolumeClaim"]["claimName"]: v["name"] for v in pod["spec"]["volumes"]
                  if "persistentVolumeClaim" in v}  # fmt: skip
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts[claims["corpus"]] == "/mnt/pvc/corpus"
