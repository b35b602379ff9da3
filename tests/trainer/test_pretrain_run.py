"""`pretrain run` end to end on the CPU: the example jobs train on the bundled corpus and lower
their validation loss; bad input exits 78 with one line that names the field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pretrain_trainer.corpus import build_text_corpus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STEPS = 60


@pytest.fixture(scope="module")
def pvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose `corpus/` is the claim the examples read."""
    root = tmp_path_factory.mktemp("pvc")
    build_text_corpus(root / "corpus")
    return root


def pretrain(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pretrain_trainer", "run", *map(str, args), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize("example", ["gpt-tiny-cpu", "bert-tiny-cpu"])
def test_example_job_lowers_its_validation_loss(
    example: str, pvc_root: Path, tmp_path: Path
) -> None:
    result = pretrain("-f", EXAMPLES / f"{example}.yaml", "--output", tmp_path,
                      "--max-steps", STEPS, "--pvc-root", pvc_root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    evaluations = [line["eval"]["loss"] for line in lines if "eval" in line]
    assert [line["step"] for line in steps] == list(range(1, STEPS + 1))
    assert all({"step", "loss", "tokens", "world_size"} <= line.keys() for line in steps)
    assert steps[-1]["tokens"] == STEPS * 32 * 128
    first, last = evaluations[0], evaluations[-1]
    print(f"{example}: validation loss {first:.3f} -> {last:.3f} in {STEPS} steps")
    assert last < 0.85 * first  # clearly lower, not noise
    model = tmp_path / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model.iterdir()
    }


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
