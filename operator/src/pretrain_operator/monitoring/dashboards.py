"""The Grafana dashboards (overview, job, operator), built with grafana-foundation-sdk and written
into the chart by `make manifests`; the chart ships each as a ConfigMap for Grafana's sidecar.

Panels are described here as plain data (title, unit, PromQL) so that tests can read every query
back; `build` turns a description into the SDK's typed dashboard. Every query takes its data
source from the `datasource` variable, rates use `$__rate_interval`, and trainer series are
reduced per job with `max` (every pod of a job serves the job's global values)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from pretrain_operator.monitoring.rules import mean_step_seconds

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
JOB = '{namespace="$namespace", job="$job"}'  # one job: the job dashboard's variables
JOBS = '{namespace=~"$namespace"}'  # every job of the chosen namespaces: the overview


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Panel:
    title: str
    description: str
    unit: str
    """A Grafana unit id: s, bytes, percentunit, short, ops, ..."""
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 8
    stacked: bool = False
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str
    """`label_values(METRIC{...}, LABEL)`, the Prometheus data source's variable query."""
    multi: bool = False


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    variables: tuple[Variable, ...] = field(default=())

    def queries(self) -> list[str]:
        return [query.expr for _, panels in self.rows for p in panels for query in p.queries]


def _quantiles(metric: str, selector: str, by: str = "le", window: str = RATE) -> tuple[Query, ...]:
    bucket = f"sum by ({by}) (rate({metric}_bucket{selector}[{window}]))"
    extra = by.removeprefix("le").strip(", ")
    return tuple(
        Query(
            f"histogram_quantile({q}, {bucket})",
            f"p{int(q * 100)}" + (f" {{{{{extra}}}}}" if extra else ""),
        )
        for q in (0.5, 0.9, 0.99)
    )


OVERVIEW = Dashboard(
    uid="pretrain-overview",
    title="Pretrain / Overview",
    description="Every PretrainJob and FinetuneJob: phases, restarts, throughput and MFU.",
    variables=(
        Variable("namespace", "Namespace", "label_values(pretrain_train_step, namespace)", True),
    ),
    rows=(
        ("Jobs", (
            Panel("Jobs by phase", "PretrainJobs and FinetuneJobs the operator sees, by phase.",
                  "short", (Query("sum by (kind, phase) (pretrain_operator_jobs)",
                                  "{{kind}} {{phase}}"),), stacked=True),
            Panel("Training now", "Jobs whose trainers are being scraped.", "short",
                  (Query(f"count(max by (namespace, job) (pretrain_train_step{JOBS}))"),),
                  kind="stat"),
            Panel("Node pod restarts", "Node pods recreated after a failure or loss.", "short",
                  (Query(f"sum by (kind) (increase(pretrain_operator_restarts_total[{RATE}]))",
                         "{{kind}}"),)),
        )),
        ("Throughput", (
            Panel("Tokens per second", "Tokens trained on per second, per job.", "short",
                  (Query(f"max by (namespace, job) (rate(pretrain_tokens_total{JOBS}[{RATE}]))",
                         "{{namespace}}/{{job}}"),), width=12, stacked=True),
            Panel("Model FLOPs utilisation", "MFU per job; absent on devices without a known "
                  "peak (CPUs).", "percentunit",
                  (Query(f"max by (namespace, job) (pretrain_mfu_ratio{JOBS})",
                         "{{namespace}}/{{job}}"),), width=12, min=0, max=1),
            Panel("Training loss", "The loss of each job's last step.", "none",
                  (Query(f"max by (namespace, job) (pretrain_train_loss{JOBS})",
                         "{{namespace}}/{{job}}"),), width=12),
            Panel("World size", "Processes training each job now (elastic jobs vary).", "short",
                  (Query(f"max by (namespace, job) (pretrain_world_size{JOBS})",
                         "{{namespace}}/{{job}}"),), width=12),
        )),
    ),
)  # fmt: skip

JOB_DETAIL = Dashboard(
    uid="pretrain-job",
    title="Pretrain / Job",
    description="One training job: loss, optimisation, speed, data, checkpoints, devices.",
    variables=(
        Variable("namespace", "Namespace", "label_values(pretrain_train_step, namespace)"),
        Variable("job", "Job", 'label_values(pretrain_train_step{namespace="$namespace"}, job)'),
    ),
    rows=(
        ("Optimisation", (
            Panel("Loss", "Training loss of the last optimizer step.", "none",
                  (Query(f"max(pretrain_train_loss{JOB})", "train"),)),
            Panel("Evaluation metrics", "Latest evaluation metrics (validation loss, accuracy, "
                  "...).", "none",
                  (Query(f"max by (name) (pretrain_eval_metric{JOB})", "{{name}}"),)),
            Panel("Step", "Optimizer steps done.", "short",
                  (Query(f"max(pretrain_train_step{JOB})"),), kind="stat"),
            Panel("Learning rate", "Learning rate of the last step.", "sci",
                  (Query(f"max(pretrain_learning_rate{JOB})", "learning rate"),)),
            Panel("Gradient norm", "Global gradient norm before clipping.", "none",
                  (Query(f"max(pretrain_grad_norm{JOB})", "grad norm"),)),
            Panel("World size", "Processes training now.", "short",
                  (Query(f"max(pretrain_world_size{JOB})", "processes"),)),
        )),
        ("Speed", (
            Panel("Step time", "Quantiles of the optimizer step's duration.", "s",
                  _quantiles("pretrain_step_duration_seconds", JOB)),
            Panel("Tokens per second", "Throughput: the counter's rate and the last step's.",
                  "short", (Query(f"max(rate(pretrain_tokens_total{JOB}[{RATE}]))", "rate"),
                            Query(f"max(pretrain_tokens_per_second{JOB})", "last step"))),
            Panel("Model FLOPs utilisation", "Absent on devices without a known peak (CPUs).",
                  "percentunit", (Query(f"max(pretrain_mfu_ratio{JOB})", "MFU"),), min=0, max=1),
            Panel("Data-loader wait", "Share of the time the loop waited for data.",
                  "percentunit",
                  (Query(f"max(rate(pretrain_dataloader_wait_seconds_total{JOB}[{RATE}]))",
                         "waiting"),), min=0),
            Panel("Device memory", "Peak device memory of local rank 0, per pod.", "bytes",
                  (Query(f"max by (instance) (pretrain_device_memory_bytes{JOB})",
                         "{{instance}}"),)),
        )),
        ("Checkpoints", (
            Panel("Checkpoint save time", "Time the loop blocked per save: the mean, and the "
                  "90th percentile over the dashboard's range.", "s",
                  (Query(f"max(pretrain_checkpoint_save_seconds_sum{JOB}"
                         f" / pretrain_checkpoint_save_seconds_count{JOB})", "mean"),
                   Query("histogram_quantile(0.9, sum by (le) "
                         f"(increase(pretrain_checkpoint_save_seconds_bucket{JOB}[$__range])))",
                         "p90"))),
            Panel("Checkpoint age", "Training time since the last checkpoint (steps since it "
                  "times the mean step time): the work a node loss would cost.", "s",
                  (Query(f"max by (namespace, job, kind) (pretrain_train_step{JOB} - "
                         f"pretrain_checkpoint_last_step{JOB}) * "
                         + mean_step_seconds(JOB), "age"),)),
            Panel("Last checkpoint step", "Step of the last checkpoint.", "short",
                  (Query(f"max(pretrain_checkpoint_last_step{JOB})"),), kind="stat"),
        )),
    ),
)  # fmt: skip

OPERATOR = Dashboard(
    uid="pretrain-operator",
    title="Pretrain / Operator",
    description="The operator: reconcile latency and errors, pods created, time to Running.",
    rows=(
        ("Reconciles", (
            Panel("Reconcile latency", "Time to reconcile one job once.", "s",
                  _quantiles("pretrain_operator_reconcile_duration_seconds", "", "le, kind")),
            Panel("Reconciles", "Reconciles per second.", "ops",
                  (Query("sum by (kind) (rate(pretrain_operator_reconcile_duration_seconds_count"
                         f"[{RATE}]))", "{{kind}}"),)),
            Panel("Reconcile errors", "Reconciles that raised an error, per second.", "ops",
                  (Query(f"sum by (kind) (rate(pretrain_operator_reconcile_errors_total[{RATE}]))",
                         "{{kind}}"),)),
        )),
        ("Pods and jobs", (
            Panel("Pods created and deleted", "Node and rendezvous pods, per second.", "ops",
                  (Query(f"sum by (kind) (rate(pretrain_operator_pods_created_total[{RATE}]))",
                         "created {{kind}}"),
                   Query(f"sum by (kind) (rate(pretrain_operator_pods_deleted_total[{RATE}]))",
                         "deleted {{kind}}"))),
            Panel("Time to Running", "From a job's creation to its first Running phase, over "
                  "the dashboard's range.", "s",
                  _quantiles("pretrain_operator_time_to_running_seconds", "", "le, kind",
                             "$__range"), kind="stat"),
            Panel("Restarts and resizes", "Node pods recreated after a failure or a "
                  "disruption, and changes of a running job's ready nodes, per second.", "ops",
                  (Query(f"sum by (kind) (rate(pretrain_operator_restarts_total[{RATE}]))",
                         "restarts {{kind}}"),
                   Query(f"sum by (kind) (rate(pretrain_operator_disruptions_total[{RATE}]))",
                         "disruptions {{kind}}"),
                   Query("sum by (kind) (rate(pretrain_operator_elastic_resize_events_total"
                         f"[{RATE}]))", "resizes {{kind}}"))),
            Panel("Jobs by phase", "Jobs the operator sees, by phase.", "short",
                  (Query("sum by (kind, phase) (pretrain_operator_jobs)", "{{kind}} {{phase}}"),),
                  stacked=True),
        )),
    ),
)  # fmt: skip

DASHBOARDS = (OVERVIEW, JOB_DETAIL, OPERATOR)


def _panel(panel: Panel, panel_id: int) -> timeseries.Panel | stat.Panel:
    built: timeseries.Panel | stat.Panel
    if panel.kind == "stat":
        built = stat.Panel().graph_mode(common.BigValueGraphMode.AREA)
    else:
        built = (
            timeseries.Panel()
            .line_width(1)
            .fill_opacity(10 if panel.stacked else 0)
            .legend(common_builders.VizLegendOptions().show_legend(True)
                    .display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM))
        )  # fmt: skip
        if panel.stacked:
            built = built.stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
    built = built.title(panel.title).description(panel.description).unit(panel.unit)
    built = built.id(panel_id).datasource(DATASOURCE).height(8).span(panel.width)
    if panel.min is not None:
        built = built.min(panel.min)
    if panel.max is not None:
        built = built.max(panel.max)
    for index, query in enumerate(panel.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index))
        target = target.datasource(DATASOURCE).legend_format(query.legend or "__auto")
        built = built.with_target(target.instant() if panel.kind == "stat" else target.range())
    return built


def build(spec: Dashboard) -> dict[str, object]:
    """The dashboard model Grafana imports (JSON-ready)."""
    built = (
        dashboard_builders.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["pretrain-operator"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(
            dashboard_builders.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
        )
    )
    for variable in spec.variables:
        query = (
            dashboard_builders.QueryVariable(variable.name)
            .label(variable.label)
            .query(variable.query)
            .datasource(DATASOURCE)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
        if variable.multi:
            query = (
                query.multi(True)
                .include_all(True)
                .all_value(".*")
                .current(VariableOption(selected=True, text="All", value="$__all"))
            )
        built = built.with_variable(query)
    panel_id = 0
    for title, panels in spec.rows:
        panel_id += 1
        built = built.with_row(dashboard_builders.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            built = built.with_panel(_panel(panel, panel_id))
    model: dict[str, object] = json.loads(json.dumps(built.build(), cls=JSONEncoder))
    return model


def render() -> dict[str, str]:
    """File name -> JSON of every dashboard."""
    return {
        f"{spec.uid.removeprefix('pretrain-')}.json": json.dumps(
            build(spec), indent=2, sort_keys=True
        )
        + "\n"
        for spec in DASHBOARDS
    }
