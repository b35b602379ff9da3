"""The arithmetic behind the figures `make bench` reports: quantiles of Prometheus histograms
(reconcile latency) and nearest-rank percentiles."""

from __future__ import annotations

import math

import pytest

from bench.stats import (
    counter_total,
    difference,
    histogram_buckets,
    histogram_quantile,
    percentile,
)

SCRAPE = """\
# TYPE pretrain_operator_reconcile_duration_seconds histogram
pretrain_operator_reconcile_duration_seconds_bucket{kind="PretrainJob",le="0.1"} 50.0
pretrain_operator_reconcile_duration_seconds_bucket{kind="PretrainJob",le="1.0"} 90.0
pretrain_operator_reconcile_duration_seconds_bucket{kind="PretrainJob",le="+Inf"} 100.0
pretrain_operator_reconcile_duration_seconds_count{kind="PretrainJob"} 100.0
pretrain_operator_reconcile_duration_seconds_bucket{kind="FinetuneJob",le="0.1"} 7.0
pretrain_operator_reconcile_duration_seconds_bucket{kind="FinetuneJob",le="1.0"} 7.0
pretrain_operator_reconcile_duration_seconds_bucket{kind="FinetuneJob",le="+Inf"} 7.0
"""
NAME = "pretrain_operator_reconcile_duration_seconds"
ERRORS = """\
# TYPE pretrain_operator_reconcile_errors_total counter
pretrain_operator_reconcile_errors_total{kind="PretrainJob"} 2.0
pretrain_operator_reconcile_errors_total{kind="FinetuneJob"} 1.0
pretrain_operator_reconcile_errors_created{kind="PretrainJob"} 1.7e9
"""


def test_a_counter_adds_up_its_series_and_is_0_when_absent() -> None:
    assert counter_total(ERRORS, "pretrain_operator_reconcile_errors_total") == 3.0
    assert counter_total(SCRAPE, "pretrain_operator_reconcile_errors_total") == 0.0


def test_buckets_of_one_series_or_of_all_series_added_up() -> None:
    assert histogram_buckets(SCRAPE, NAME, {"kind": "PretrainJob"}) == [
        (0.1, 50.0), (1.0, 90.0), (math.inf, 100.0)
    ]  # fmt: skip
    assert histogram_buckets(SCRAPE, NAME, {}) == [(0.1, 57.0), (1.0, 97.0), (math.inf, 107.0)]


def test_quantiles_interpolate_inside_a_bucket_as_promql_does() -> None:
    buckets = histogram_buckets(SCRAPE, NAME, {"kind": "PretrainJob"})
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.1 + 0.9 * 20 / 40)
    assert histogram_quantile(buckets, 0.99) == 1.0  # in +Inf: the last finite bound
    assert math.isnan(histogram_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.5))


def test_difference_keeps_only_what_was_observed_between_two_scrapes() -> None:
    before = [(0.1, 10.0), (1.0, 10.0), (math.inf, 10.0)]
    after = [(0.1, 10.0), (1.0, 30.0), (math.inf, 30.0)]
    window = difference(after, before)
    assert window == [(0.1, 0.0), (1.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(window, 0.5) == pytest.approx(0.55)


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
