"""The Prometheus alert rules, written into the chart by `make manifests` (checked and unit-tested
with promtool: tests/monitoring/rules_test.yaml has a test for every alert).

Every training pod serves its job's global values, so trainer series are reduced per job with
`max by (namespace, job, kind)`; their `job` label is the job's name (the PodMonitor honours the
trainer's labels). Each alert keeps its `signal` apart from its condition: the signal must return
data from a real scrape (tests/integration/test_monitoring.py), or the alert could never fire."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOB = "namespace, job, kind"
WHERE = "{{ $labels.kind }} {{ $labels.namespace }}/{{ $labels.job }}"


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    signal: str
    """The PromQL the condition judges: data whenever the thing watched exists."""
    condition: str
    """The alert's expression, with `{signal}` where the signal goes (`{signal} == 0`, ...)."""
    duration: str
    """How long the condition must hold before the alert fires ("" for at once)."""
    severity: str
    summary: str
    description: str

    @property
    def expr(self) -> str:
        return self.condition.format(signal=self.signal)

    def rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.duration:
            rule["for"] = self.duration
        rule["labels"] = {"severity": self.severity}
        rule["annotations"] = {"summary": self.summary, "description": self.description}
        return rule


def mean_step_seconds(selector: str = "") -> str:
    """Mean step time over the last 15 minutes, per job."""
    return (
        f"(max by ({JOB}) (rate(pretrain_step_duration_seconds_sum{selector}[15m]))"
        f" / max by ({JOB}) (rate(pretrain_step_duration_seconds_count{selector}[15m])))"
    )


ALERTS = [
    Alert(
        name="PretrainTrainingStalled",
        signal=f"max by ({JOB}) (changes(pretrain_train_step[15m]))",
        condition="{signal} == 0",
        duration="5m",
        severity="critical",
        summary="Training makes no progress",
        description=f"{WHERE}: the trainer is up but its step has not advanced for 20 minutes "
        "(hung collective, data source or storage). Check its pods' logs.",
    ),
    Alert(
        name="PretrainLossNaN",
        signal="pretrain_train_loss",
        condition="({signal} != {signal}) or (abs({signal}) == Inf)",  # NaN is unequal to itself
        duration="2m",
        severity="critical",
        summary="Training loss is NaN or infinite",
        description=f"{WHERE}: the loss is {{{{ $value }}}}. Lower the learning rate or use "
        "bf16/fp32, then resume from the last checkpoint.",
    ),
    Alert(
        name="PretrainLossExploding",
        signal=f"max by ({JOB}) (pretrain_train_loss)"
        f" / max by ({JOB}) (min_over_time((pretrain_train_loss > 0)[1h:]))",
        condition="{signal} > 2",
        duration="10m",
        severity="warning",
        summary="Training loss is exploding",
        description=f"{WHERE}: the loss is {{{{ $value | humanize }}}} times its lowest value of "
        "the last hour.",
    ),
    Alert(
        name="PretrainThroughputCollapsed",
        # Per process, so an elastic resize is no collapse; the last 10 minutes against the
        # last hour (no offset: a young job has data for both).
        signal=f"max by ({JOB}) (rate(pretrain_tokens_total[10m])"
        " / avg_over_time(pretrain_world_size[10m]))"
        f" / max by ({JOB}) (rate(pretrain_tokens_total[1h])"
        " / avg_over_time(pretrain_world_size[1h]))",
        condition="{signal} < 0.5",
        duration="15m",
        severity="warning",
        summary="Training throughput collapsed",
        description=f"{WHERE}: tokens per second per process are "
        "{{ $value | humanizePercentage }} of the last hour's (a slow node, throttling, a data "
        "source falling behind).",
    ),
    Alert(
        name="PretrainJobRestartingRepeatedly",
        signal="sum by (kind) (increase(pretrain_operator_restarts_total[30m]))",
        condition="{signal} > 3",
        duration="",
        severity="warning",
        summary="Training pods keep restarting",
        description="{{ $value | humanize }} {{ $labels.kind }} node pods were recreated in 30 "
        "minutes. `kubectl get ptj,ftj -A` (RESTARTS) and the jobs' events name them.",
    ),
    Alert(
        name="PretrainCheckpointTooOld",
        signal=f"max by ({JOB}) (pretrain_train_step - pretrain_checkpoint_last_step)"
        f" * {mean_step_seconds()}",
        condition="{signal} > 7200",
        duration="15m",
        severity="warning",
        summary="No recent checkpoint",
        description=f"{WHERE}: about {{{{ $value | humanizeDuration }}}} of training since the "
        "last checkpoint; a node loss now loses that much work. Check the checkpoint storage.",
    ),
    Alert(
        name="PretrainOperatorReconcileErrors",
        signal="sum by (kind) (increase(pretrain_operator_reconcile_errors_total[10m]))",
        condition="{signal} > 0",
        duration="10m",
        severity="warning",
        summary="The operator fails to reconcile jobs",
        description="{{ $value | humanize }} {{ $labels.kind }} reconciles failed in 10 minutes; "
        "the operator's log says why.",
    ),
]


def rule_groups() -> dict[str, Any]:
    """The rule file (Prometheus's format; a PrometheusRule's spec is the same)."""
    return {"groups": [{"name": "pretrain-operator", "rules": [a.rule() for a in ALERTS]}]}
