"""The operator's own Prometheus metrics (the trainer's are served by the training pods)."""

from __future__ import annotations

from collections.abc import Callable

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
ADMISSIONS = Counter(
    "pretrain_operator_kueue_admissions_total",
    "Queued jobs that Kueue admitted (their pods are made).",
    ["kind"],
)
EVICTIONS = Counter(
    "pretrain_operator_kueue_evictions_total",
    "Admitted jobs that Kueue took the admission back from (preempted, ...): Queued again.",
    ["kind", "reason"],
)
QUEUED_SECONDS = Histogram(
    "pretrain_operator_kueue_queued_seconds",
    "How long a job waited Queued before Kueue admitted it.",
    ["kind"],
    buckets=(1, 5, 10, 30, 60, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
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

# The work queue and leader election, under controller-runtime's names (workqueue_*,
# leader_election_master_status) with our prefix; `name` is the queue's.
_QUEUE_BUCKETS = (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WORKQUEUE_DEPTH = Gauge("pretrain_operator_workqueue_depth", "Keys waiting for a worker.", ["name"])
WORKQUEUE_ADDS = Counter(
    "pretrain_operator_workqueue_adds_total", "Keys marked for a reconcile.", ["name"]
)
WORKQUEUE_QUEUE_SECONDS = Histogram(
    "pretrain_operator_workqueue_queue_duration_seconds",
    "How long a key waited in the queue before a worker took it.",
    ["name"],
    buckets=_QUEUE_BUCKETS,
)
WORKQUEUE_WORK_SECONDS = Histogram(
    "pretrain_operator_workqueue_work_duration_seconds",
    "How long processing one key took.",
    ["name"],
    buckets=_QUEUE_BUCKETS,
)
WORKQUEUE_RETRIES = Counter(
    "pretrain_operator_workqueue_retries_total", "Keys retried after a failed reconcile.", ["name"]
)
WORKQUEUE_UNFINISHED = Gauge(
    "pretrain_operator_workqueue_unfinished_work_seconds",
    "Seconds of work in progress not yet observed by work_duration (large: a stuck worker).",
    ["name"],
)
WORKQUEUE_LONGEST = Gauge(
    "pretrain_operator_workqueue_longest_running_processor_seconds",
    "Seconds the longest-running worker has been on its key.",
    ["name"],
)
LEADER = Gauge(
    "pretrain_operator_leader_election_master_status",
    "1 while this instance holds the leader Lease (always 1 without --leader-elect).",
    ["name"],
)


class WorkQueueMetrics:
    """One queue's series."""

    def __init__(
        self, name: str, unfinished: Callable[[], float], longest: Callable[[], float]
    ) -> None:
        self.depth = WORKQUEUE_DEPTH.labels(name)
        self.adds = WORKQUEUE_ADDS.labels(name)
        self.queue_seconds = WORKQUEUE_QUEUE_SECONDS.labels(name)
        self.work_seconds = WORKQUEUE_WORK_SECONDS.labels(name)
        self.retries = WORKQUEUE_RETRIES.labels(name)
        WORKQUEUE_UNFINISHED.labels(name).set_function(unfinished)
        WORKQUEUE_LONGEST.labels(name).set_function(longest)
