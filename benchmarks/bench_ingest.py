"""Decode + validate + normalize cost per point, against the floor of json.loads + msgpack.packb.

Builds a 10,000-point canonical payload (gauges, counters, histograms, summaries and
aggregates, 3 tags each, a mix of timestamp forms) and prints microseconds per point for the
bridge's parse and for the floor measured in the same run, and their ratio (target <= 4x).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import best_and_median, report  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

POINTS = 10_000
ROUNDS = 15


def payload(points: int = POINTS, stamp: int | None = None) -> bytes:
    """The benchmark body; ``stamp`` (epoch seconds) gives every point that time instead of a
    mix of timestamp forms, so no sink's time window refuses any."""
    base = 1_795_341_600
    items = []
    for i in range(points):
        tags = {"host": f"web-{i % 50}", "region": ("eu", "us", "ap")[i % 3], "service": f"svc-{i % 7}"}
        kind = i % 5
        if kind == 0:
            point = {"gauge": {"value": i * 0.5}}
        elif kind == 1:
            point = {"counter": {"value": i, "temporality": "delta" if i % 2 else "cumulative"}}
        elif kind == 2:
            point = {"histogram": {"count": 10, "sum": 4.5, "buckets": [
                {"upper_limit": 0.1, "count": 2}, {"upper_limit": 0.5, "count": 5}, {"upper_limit": 1.0, "count": 3}]}}
        elif kind == 3:
            point = {"summary": {"count": 10, "sum": 4.5, "quantiles": [
                {"quantile": 0.5, "value": 0.4}, {"quantile": 0.99, "value": 0.9}]}}
        else:
            point = {"aggregate": {"min": 1, "max": 9, "sum": 20, "count": 4}}
        dt = stamp if stamp is not None else (base + i, (base + i) * 1000, f"2026-11-22T10:{i % 60:02d}:00.123Z")[i % 3]
        items.append({"name": f"bench_metric_{i % 20}", **point, "tags": tags, "dt": dt})
    return json.dumps(items).encode()


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    body = payload()
    bridge = Bridge(load_settings({}))
    result = bridge.parse(body, "application/json")  # warm up: compiles the schema once
    assert len(result.metrics) == POINTS and result.rejected == 0, result.errors[:3]

    floor, ours = [], []
    for _ in range(ROUNDS):  # alternate, so machine noise hits both alike
        floor.append(seconds(lambda: msgpack.packb(json.loads(body))))
        ours.append(seconds(lambda: bridge.parse(body, "application/json")))
    floor_best, floor_median = best_and_median(floor)
    ours_best, ours_median = best_and_median(ours)
    per_point = lambda seconds: seconds / POINTS * 1e6  # noqa: E731
    lines = [
        f"payload: {POINTS} points, {len(body)} bytes of JSON, 3 tags each, mixed types and timestamp forms",
        f"floor (json.loads + msgpack.packb): {per_point(floor_best):.2f} us/point (median {per_point(floor_median):.2f})",
        f"bridge decode+validate+normalize:   {per_point(ours_best):.2f} us/point (median {per_point(ours_median):.2f})",
        f"ratio: {ours_best / floor_best:.2f}x best, {ours_median / floor_median:.2f}x median (target <= 4x)",
    ]
    report("ingest", lines)


if __name__ == "__main__":
    main()
