"""`make bench` stays runnable: each benchmark script runs end to end at its smallest size (one
tiny iteration; the figures mean nothing and are not checked against any time). Kubeflow's
operator is left out here (its Go build would add minutes to CI); `make bench` runs it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def run_module(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_trainer_benchmark_compares_both_sides(tmp_path: Path) -> None:
    report = run_module("bench.trainer_throughput", "--model", "gpt", "--runs", "1",
                        "--steps", "3", "--warmup", "1", "--corpus", str(tmp_path))  # fmt: skip
    gpt = report["models"]["gpt"]
    assert gpt["ours_tokens_per_second"] > 0
    assert gpt["plain_tokens_per_second"] > 0
    assert gpt["ratio"] == pytest.approx(
        gpt["ours_tokens_per_second"] / gpt["plain_tokens_per_second"]
    )


@pytest.mark.slow
def test_operator_benchmark_runs_ours_and_the_floor() -> None:
    report = run_module("bench.operator_scale", "--jobs", "2", "--system", "ours",
                        "--system", "floor")  # fmt: skip
    results = {r["system"]: r for r in report["results"]}
    assert set(results) == {"ours", "floor"}
    assert results["ours"]["pods"] == 10  # 2 jobs x (4 node pods + the rendezvous pod)
    assert results["floor"]["pods"] == 8
    assert math.isfinite(results["ours"]["seconds_to_running"])
    assert results["ours"]["reconciles"] > 0
    assert results["ours"]["rss_bytes"] > 0
    assert "ours/floor time to Running" in report["ratios"]["2"]


def test_s3_checkpoint_benchmark_compares_with_a_plain_put() -> None:
    from bench.checkpoint_s3 import measure

    report = measure(width=256, layers=2, runs=1)
    assert all(seconds > 0 for seconds in report["commit_seconds"].values())  # both committed
    assert report["plain_put_seconds"] > 0
    assert report["ratio"] == pytest.approx(
        report["commit_seconds"]["sync"] / report["plain_put_seconds"]
    )


def test_checkpoint_benchmark_times_both_ways_of_saving() -> None:
    from bench.checkpointing import measure

    report = measure(width=256, layers=2, runs=1)
    assert set(report["blocked_seconds"]) == {"sync", "background"}
    assert all(seconds > 0 for seconds in report["commit_seconds"].values())  # both committed
    assert report["blocked_ratio"] == pytest.approx(
        report["blocked_seconds"]["background"] / report["blocked_seconds"]["sync"]
    )
