"""Every metric a dashboard, variable or alert names is one the code exports: a renamed metric
breaks this test, not a user's dashboard."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Metric

from shipped_queries import dashboard_queries, dashboard_variables, metric_names, rule_expressions

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported(registry: CollectorRegistry) -> set[str]:
    """Sample names the registry serves (counters with _total, histograms with their series)."""
    families: list[Metric] = list(registry.collect())
    return {family.name + suffix for family in families for suffix in SUFFIXES[family.type]}


def operator_metrics() -> set[str]:
    from prometheus_client import REGISTRY

    import pretrain_operator.metrics  # noqa: F401  (registers the operator's metrics)

    return {name for name in exported(REGISTRY) if name.startswith("pretrain_")}


def trainer_metrics() -> set[str]:
    from pretrain_trainer import metrics

    return exported(metrics.create("ns", "job", "PretrainJob").registry)


def test_the_exported_names_are_read_as_prometheus_serves_them() -> None:
    names = operator_metrics() | trainer_metrics()
    assert {"pretrain_tokens_total", "pretrain_step_duration_seconds_bucket",
            "pretrain_operator_reconcile_errors_total", "pretrain_mfu_ratio",
            "pretrain_eval_metric"} <= names  # fmt: skip
    assert "pretrain_tokens" not in names


def test_dashboards_and_rules_name_only_exported_metrics() -> None:
    known = operator_metrics() | trainer_metrics()
    shipped = [(q.where, q.expr) for q in [*dashboard_queries(), *rule_expressions()]]
    shipped += [(where, selector) for where, selector, _ in dashboard_variables()]
    unknown = {
        f"{where}: {name}"
        for where, expr in shipped
        for name in metric_names(expr)
        if name not in known
    }
    assert unknown == set()
    used = {name for _, expr in shipped for name in metric_names(expr)}
    assert len(used) > 20  # the queries were really read
