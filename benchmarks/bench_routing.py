"""Routing and per-sink processing cost per point, against the ingest benchmark's floor.

The ingest benchmark's 10,000-point payload (20 metric names, 3 tags each), normalized once,
goes through ``Router.route`` with a declaration of 20 routes (name globs and regular
expressions, tag matchers, inputs, ``continue``) and 5 processors for each of the five backends
(keep or drop, rename, add_tags, tag_keys, cardinality), and with no declaration, in the same run
as the floor (json.loads + msgpack.packb of the payload). Printed: microseconds per point and
the cost beyond no declaration as a multiple of the floor (issue 19: at most 0.5x), warm (the
process's second and later payloads: decisions and plans already worked out) and cold (a fresh
Router for each payload).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ingest import POINTS, payload, seconds  # noqa: E402
from benchmarks.common import best_and_median, report  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.routing import Origin, Router, parse_routes  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

ROUNDS = 15
SINKS = ("dynatrace", "betterstack", "unleash", "azure_monitor", "prometheus")
NOW_NS = 1_795_341_600 * 1_000_000_000


def declaration() -> dict:
    """20 routes: 14 that ingest can match (names, tags, continue), 5 for other inputs, a catch-all."""
    routes = [
        {"name": "flags", "match": {"name": "bench_metric_0", "tags": {"region": "eu"}}, "sinks": ["unleash"]},
        {"name": "ci", "match": {"route": "webhook", "source": ["github", "gitlab"]}, "sinks": ["azure_monitor"]},
        {"name": "checks", "match": {"route": "checks"}, "sinks": ["betterstack"]},
        {"name": "teens", "match": {"name": {"regex": "bench_metric_1[0-9]"}, "tags": {"service": "svc-[0-2]"}},
         "sinks": ["azure_monitor"], "continue": True},
        {"name": "polled", "match": {"route": "poll", "rule": "jobs*"}, "sinks": ["prometheus"]},
    ]
    for i in range(1, 10):
        routes.append({"name": f"metric {i}", "match": {"name": f"bench_metric_{i}", "tags": {"host": f"web-{i}*"}},
                       "sinks": [SINKS[i % 5]]})
    routes += [
        {"name": "otlp", "match": {"route": ["otlp", "influx"]}, "sinks": ["dynatrace", "prometheus"]},
        {"name": "deploys", "match": {"route": "webhook", "rule": "deploy*"}, "sinks": ["dynatrace"]},
        {"name": "us", "match": {"tags": {"region": "us"}, "name": "bench_metric_1?"}, "sinks": ["prometheus"]},
        {"name": "ap", "match": {"tags": {"region": "ap"}}, "sinks": ["betterstack"], "continue": True},
        {"name": "quiet", "match": {"name": "bench_metric_19"}, "sinks": []},
        {"name": "rest", "sinks": ["dynatrace"]},
    ]
    assert len(routes) == 20
    processors = {
        sink: {
            "drop": {"tags": {"host": "web-4?"}},
            "rename": {"prefix": f"{sink}.", "replace": {"regex": "^bench_", "with": ""}},
            "add_tags": {"env": "prod"},
            "tag_keys": {"drop": ["region"]} if i % 2 else {"keep": ["env", "host", "service"]},
            "cardinality": {"limit": 3, "tags": ["host"]},
        }
        for i, sink in enumerate(SINKS)
    }
    return {"routes": routes, "sinks": processors}


def main() -> None:
    body = payload()
    metrics = Bridge(load_settings({})).parse(body, "application/json").metrics
    assert len(metrics) == POINTS
    origin = Origin.of("ingest")
    declared = parse_routes(declaration(), "benchmark")
    none = Router.none()
    routed = declared.route(metrics, origin, SINKS, NOW_NS)  # warm up, and what it does
    delivered = sum(len(m) for m in routed.per_sink.values())

    floor, bare, warm, cold = [], [], [], []
    for round_ in range(ROUNDS):  # alternate, so machine noise hits all alike
        floor.append(seconds(lambda: msgpack.packb(json.loads(body))))
        bare.append(seconds(lambda: none.route(metrics, origin, SINKS, NOW_NS)))
        warm.append(seconds(lambda now=NOW_NS + round_: declared.route(metrics, origin, SINKS, now)))
        fresh = parse_routes(declaration(), "benchmark")
        cold.append(seconds(lambda router=fresh: router.route(metrics, origin, SINKS, NOW_NS)))
    per_point = lambda seconds: seconds / POINTS * 1e6  # noqa: E731
    floor_best, floor_median = best_and_median(floor)
    bare_best, bare_median = best_and_median(bare)
    lines = [
        f"payload: the ingest benchmark's {POINTS} points (20 names, 3 tags each), normalized; 5 sinks enabled",
        "declaration: 20 routes; per sink drop, rename (replace + prefix), add_tags, tag_keys, cardinality (limit 3 hosts)",
        (f"what it does: {delivered} metrics delivered in all, {routed.unrouted} unrouted, "
         f"dropped {sum(routed.dropped.values())}, folded {sum(routed.folded.values())}"),
        f"floor (json.loads + msgpack.packb): {per_point(floor_best):.2f} us/point (median {per_point(floor_median):.2f})",
        f"no declaration:                     {per_point(bare_best):.2f} us/point (median {per_point(bare_median):.2f})",
    ]
    for label, samples in (("declared, warm", warm), ("declared, cold", cold)):
        best, median = best_and_median(samples)
        lines.append(f"{label + ':':<36}{per_point(best):.2f} us/point (median {per_point(median):.2f}); "
                     f"beyond no declaration {(best - bare_best) / floor_best:.2f}x floor best, "
                     f"{(median - bare_median) / floor_median:.2f}x median (target <= 0.5x)")
    report("routing", lines)


if __name__ == "__main__":
    main()
