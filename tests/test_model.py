"""The canonical model's conversions that sinks rely on."""
from __future__ import annotations

import dataclasses

import pytest
from support import NOW_NS

from bridges.ingest.normalize import Normalizer
from bridges.model import Bucket, Gauge, Histogram, Metric


def test_per_bucket_counts_convert_to_cumulative():
    histogram = Histogram(140, 75.5, (Bucket(0.1, 15), Bucket(0.2, 30), Bucket(0.5, 45), Bucket(1.0, 50)))
    assert histogram.cumulative_buckets() == ((0.1, 15), (0.2, 45), (0.5, 90), (1.0, 140), (float("inf"), 140))
    assert histogram.overflow == 0
    assert Histogram(10, 1.0, (Bucket(1, 4),)).overflow == 6


def test_metrics_are_frozen():
    metric = Metric("x", Gauge(1), NOW_NS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metric.name = "y"


def test_tags_are_sorted_pairs_and_round_trip():
    item = {"name": "x", "gauge": {"value": 1.5}, "tags": {"zone": "b", "app": "a"}, "unit": "ms", "dt": "2024-01-01T00:00:00Z"}
    [metric] = Normalizer().normalize([item], NOW_NS).metrics
    assert metric.tags == (("app", "a"), ("zone", "b"))
    assert metric.to_json() == item
