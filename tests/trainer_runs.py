"""Jobs run the way users run them, in real processes: `pretrain run` (N local workers under
torchrun) on a tiny BERT over the offline corpus, and what their metrics.jsonl says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# A Byte tokenizer: Hugging Face's trainers break ties differently in every process, so a
# trained vocabulary would differ between two runs of the same job (see README).
JOB: dict[str, Any] = {
    "apiVersion": "pretrain.dev/v1alpha1",
    "kind": "PretrainJob",
    "metadata": {"name": "invariance"},
    "spec": {
        "objective": {"type": "MaskedLM"},
        "model": {"family": "bert", "size": "tiny"},
        "tokenizer": {"type": "Byte"},
        "data": {"sources": [{"uri": "pvc://corpus/python-docs.jsonl"}], "sequenceLength": 32,
                 "validationFraction": 0.05},
        "training": {"globalBatchSize": 12, "microBatchSize": 2, "maxSteps": 30,
                     "precision": "fp32", "optimizer": {"learningRate": 1.0e-3}},
        "checkpoint": {"everySteps": 1000},
    },
}  # fmt: skip


def job_file(directory: Path, **training: Any) -> Path:
    manifest = json.loads(json.dumps(JOB))
    manifest["spec"]["training"].update(training.pop("training", {}))
    manifest["spec"].update(training)
    path = directory / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def pretrain(*args: str | Path | int, pvc_root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pretrain_trainer", "run", *map(str, args), "--quiet",
         "--pvc-root", str(pvc_root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finished(process: subprocess.Popen[str]) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors


def step_losses(output: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    reports = [line for line in lines if "loss" in line]
    steps = [line["step"] for line in reports]
    assert len(steps) == len(set(steps)), "a step was reported twice"
    return {line["step"]: line["loss"] for line in reports}


def largest_relative_difference(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[s] - b[s]) / abs(a[s]) for s in a)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first found first."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(child) for child in found.split()]
    return [d for child in children for d in (child, *descendants(child))]
