"""`pretrain run` end to end on the CPU: the example jobs train on the bundled corpus and lower
their validation loss; bad input exits 78 with one line that names the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# (example, steps, the fraction of the first validation loss the last must fall below). Figures
# measured on 2 CPU cores: gpt 7.62 -> 6.06 and bert 7.71 -> 6.10 (60 steps), electra 42.2 ->
# 27.0 (60), t5 7.62 -> 6.11 (120), MAE 1.20 -> 0.54 (40), CLIP 3.86 -> 2.66 (60), SimCLR 4.12 ->
# 3.96 (100: contrastive learning on 32-pixel digits starts slowly).
RUNS = [
    ("gpt-tiny-cpu", 60, 0.85),
    ("bert-tiny-cpu", 60, 0.85),
    ("electra-tiny-cpu", 60, 0.85),
    ("t5-tiny-cpu", 120, 0.85),
    ("vit-mae-tiny-cpu", 40, 0.85),
    ("clip-tiny-cpu", 60, 0.85),
    ("vit-simclr-tiny-cpu", 100, 0.98),
]


def pretrain(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pretrain_trainer", "run", *map(str, args), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize(("example", "steps", "fraction"), RUNS, ids=[r[0] for r in RUNS])
def test_example_job_lowers_its_validation_loss(
    example: str, steps: int, fraction: float, pvc_root: Path, tmp_path: Path
) -> None:
    result = pretrain("-f", EXAMPLES / f"{example}.yaml", "--output", tmp_path,
                      "--max-steps", steps, "--pvc-root", pvc_root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reports = [line for line in lines if "loss" in line]
    evaluations = [line["eval"]["loss"] for line in lines if "eval" in line]
    assert [line["step"] for line in reports] == list(range(1, steps + 1))
    assert all({"step", "loss", "tokens", "world_size"} <= line.keys() for line in reports)
    first, last = evaluations[0], evaluations[-1]
    print(f"{example}: validation loss {first:.3f} -> {last:.3f} in {steps} steps")
    assert last < fraction * first
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "model").iterdir()}


def test_a_bad_spec_exits_78_naming_the_field(tmp_path: Path) -> None:
    manifest = yaml.safe_load((EXAMPLES / "gpt-tiny-cpu.yaml").read_text())
    manifest["spec"]["replicas"] = {"min": 3, "max": 2}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = pretrain("-f", path, "--output", tmp_path / "out")
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "pretrain: spec.replicas: replicas.min must not exceed replicas.max"
    ]


def test_missing_data_exits_78_naming_the_source(tmp_path: Path) -> None:
    result = pretrain("-f", EXAMPLES / "gpt-tiny-cpu.yaml", "--output", tmp_path / "out",
                      "--pvc-root", tmp_path)  # fmt: skip
    assert result.returncode == 78
    assert "spec.data.sources[0].uri" in result.stderr
    assert "does not exist" in result.stderr
