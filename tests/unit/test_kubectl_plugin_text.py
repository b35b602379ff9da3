"""`kubectl pretrain`'s text: progress bar, sparkline, status report, the watch table, and the
local loss history behind the sparkline."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pretrain_operator.kubectl_plugin import history, render
from pretrain_operator.kubectl_plugin.__main__ import parser
from pretrain_operator.kubectl_plugin.cluster import PluginError, kind_named

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def job(**status: Any) -> dict[str, Any]:
    return {
        "kind": "PretrainJob",
        "metadata": {"name": "gpt", "namespace": "research", "uid": "u-1",
                     "creationTimestamp": "2026-11-27T11:00:00Z"},
        "spec": {"suspend": False},
        "status": status,
    }  # fmt: skip


def test_progress_bar_fills_in_proportion_and_caps_at_the_total() -> None:
    assert render.progress_bar(0, 100, width=10) == "[..........] 0/100   0.0%"
    assert render.progress_bar(25, 100, width=10) == "[##........] 25/100  25.0%"
    assert render.progress_bar(150, 100, width=10) == "[##########] 150/100 100.0%"
    assert render.progress_bar(7, None) == "step 7"


def test_sparkline_spans_the_range_of_its_values() -> None:
    line = render.sparkline([4.0, 3.0, 2.0, 1.0])
    assert line[0] == "█"
    assert line[-1] == "▁"
    assert len(line) == 4
    assert render.sparkline([2.0, 2.0]) == "▅▅"
    assert render.sparkline([]) == ""
    assert len(render.sparkline([float(i) for i in range(100)], width=40)) == 40


def test_durations_read_like_kubectl() -> None:
    assert [render.duration(s) for s in (5, 119, 600, 3600, 3660, 200_000)] == [
        "5s", "119s", "10m", "1h", "1h1m", "2d7h"
    ]  # fmt: skip


def test_status_shows_phase_progress_trend_checkpoint_and_conditions() -> None:
    running = job(
        phase="Running", nodes="3/4", worldSize=24, restarts=1,
        replicas={"desired": 4, "ready": 3, "pending": 1, "failed": 0},
        progress={"step": 250, "totalSteps": 1000, "tokens": 2_560_000, "loss": 2.5,
                  "tokensPerSecond": 10240.0},
        checkpoint={"step": 200, "uri": "pvc://ckpt/gpt/step-000000200"},
        conditions=[{"type": "Running", "status": "True", "reason": "MinNodesReady",
                     "message": "3 of 4 node pods ready",
                     "lastTransitionTime": "2026-11-27T11:50:00Z"}],
    )  # fmt: skip
    text = render.status_text(running, [3.0, 2.8, 2.5], NOW)
    lines = text.splitlines()
    assert lines[0] == "PretrainJob research/gpt  phase Running  age 1h"
    assert "3/4" in lines[1]
    assert "world size 24" in lines[1]
    assert "restarts 1" in lines[1]
    assert "250/1000" in lines[2]
    # 750 steps left at 10240 tokens per step and 10240 tokens/s: 750 s.
    assert "ETA 12m" in lines[2]
    assert "loss" in lines[3].lower()
    assert "2.500" in lines[3]
    assert "10,240" in lines[3]
    assert "3.000 -> 2.500 over 3 samples" in text
    assert "step 200  pvc://ckpt/gpt/step-000000200" in text
    assert "MinNodesReady" in text
    assert "3 of 4 node pods ready" in text
    assert "10m" in text.splitlines()[-1]  # the condition's age


def test_a_fresh_job_renders_without_any_status() -> None:
    text = render.status_text({"kind": "FinetuneJob", "metadata": {"name": "f"}}, [], NOW)
    assert "phase Pending" in text
    assert "Checkpoint  none yet" in text
    assert "(none yet)" in text
    assert "needs two observed steps" in text


def test_finetune_status_shows_its_base_and_evaluation() -> None:
    finetuned = job(phase="Succeeded", base={"resolvedCheckpoint": "pvc://c/base/step-1"},
                    evaluation={"step": 40, "metrics": {"accuracy": 0.9125}})  # fmt: skip
    finetuned["kind"] = "FinetuneJob"
    finetuned["spec"]["suspend"] = True
    text = render.status_text(finetuned, [], NOW)
    assert "(suspended)" in text
    assert "Base        pvc://c/base/step-1" in text
    assert "Evaluation  step 40  accuracy 0.9125" in text


def test_watch_table_has_a_row_per_job() -> None:
    jobs = [job(phase="Running", progress={"step": 5, "totalSteps": 10, "loss": 1.0}),
            {**job(phase="Pending"), "kind": "FinetuneJob"}]  # fmt: skip
    jobs[1]["metadata"] = {**jobs[1]["metadata"], "name": "tuned", "uid": "u-2"}
    lines = render.jobs_table(jobs, {"u-1": [2.0, 1.0]}, NOW).splitlines()
    assert lines[0].split()[:4] == ["KIND", "NAME", "PHASE", "NODES"]
    assert lines[1].split()[:3] == ["ptj", "gpt", "Running"]
    assert "5/10" in lines[1]
    assert "█▁" in lines[1]
    assert lines[2].split()[:3] == ["ftj", "tuned", "Pending"]
    assert render.jobs_table([], {}, NOW) == "No PretrainJobs or FinetuneJobs."
    everywhere = render.jobs_table(jobs, {}, NOW, all_namespaces=True).splitlines()
    assert everywhere[1].split()[0] == "research"


def test_history_keeps_one_loss_per_new_step_and_forgets_steps_undone_by_a_resume() -> None:
    seen: list[tuple[int, float]] = []
    for step, loss in ((10, 3.0), (10, 3.0), (20, 2.5), (30, 2.2)):
        seen = history.observe(seen, job(progress={"step": step, "loss": loss}))
    assert seen == [(10, 3.0), (20, 2.5), (30, 2.2)]
    # Resumed from the checkpoint of step 20: steps 21.. are trained again.
    seen = history.observe(seen, job(progress={"step": 25, "loss": 2.4}))
    assert seen == [(10, 3.0), (20, 2.5), (25, 2.4)]
    assert history.observe(seen, job(progress={"step": 0})) == seen


def test_history_survives_between_invocations(tmp_path: Path) -> None:
    history.save("u-1", [(1, 2.0), (2, 1.5)], tmp_path)
    assert history.load("u-1", tmp_path) == [(1, 2.0), (2, 1.5)]
    assert history.load("other", tmp_path) == []
    (tmp_path / "broken.json").write_text("{not json")
    assert history.load("broken", tmp_path) == []


def test_kinds_by_any_of_their_names_and_a_clear_error_otherwise() -> None:
    assert kind_named("ptj").kind == "PretrainJob"
    assert kind_named("FinetuneJobs").kind == "FinetuneJob"
    with pytest.raises(PluginError, match="--kind: 'job' is not one of PretrainJob, FinetuneJob"):
        kind_named("job")


def test_connection_flags_go_before_or_after_the_command() -> None:
    before = parser().parse_args(["-n", "research", "status", "gpt"])
    after = parser().parse_args(["status", "gpt", "-n", "research", "--context", "c"])
    assert before.namespace == after.namespace == "research"
    assert after.context == "c"
    assert not hasattr(before, "context")  # unset: the kubeconfig decides
