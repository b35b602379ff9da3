"""The operator's own Prometheus metrics (the trainer's are served by the training pods)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "pretrain_operator_reconcile_duration_seconds",
    "Time to reconcile one job once.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter(
    "pretrain_operator_reconcile_errors_total", "Reconciles that raised an error.", ["kind"]
)
JOBS = Gauge("pretrain_operator_jobs", "Jobs by phase.", ["kind", "phase"])
PODS_CREATED = Counter("pretrain_operator_pods_created_total", "Pods created.", ["kind"])
PODS_DELETED = Counter("pretrain_operator_pods_deleted_total", "Pods deleted.", ["kind"])
RESTARTS = Counter(
    "pretrain_operator_restarts_total", "Node pods recreated after failure or loss.", ["kind"]
)
DISRUPTIONS = Counter(
    "pretrain_operator_disruptions_total",
    "Node pods recreated after a disruption (eviction, preemption, drain, lost node).",
    ["kind"],
)
RESIZES = Counter(
    "pretrain_operator_elastic_resize_events_total",
    "Changes of the number of ready nodes of a running job.",
    ["kind"],
)
TIME_TO_RUNNING = Histogram(
    "pretrain_operator_time_to_running_seconds",
    "From a job's creation to its first Running phase.",
    ["kind"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)

# Series exist from the start (at zero), so dashboards and rate() see them before the first job.
for _kind in ("PretrainJob", "FinetuneJob"):
    for _metric in (RECONCILE_SECONDS, RECONCILE_ERRORS, PODS_CREATED, PODS_DELETED, RESTARTS,
                    DISRUPTIONS, RESIZES, TIME_TO_RUNNING):  # fmt: skip
        _metric.labels(_kind)
