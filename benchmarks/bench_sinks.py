"""Cost of building each sink's requests for the foundation benchmark's 10,000-point payload.

Prints, per sink, microseconds per point for ``encode`` beside the floor (json.loads +
msgpack.packb of the same payload, measured in the same run; target <= 3x), and the number of
requests and bytes it would send against the fewest its limits allow. Every point is stamped
with the receipt time so that no sink's time window drops any.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import sys
import time
from pathlib import Path

import cramjam
import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ingest import ROUNDS, payload, seconds  # noqa: E402
from benchmarks.common import best_and_median, report  # noqa: E402
from bridges.delivery.sinks import build_sinks  # noqa: E402
from bridges.ingest.normalize import Normalizer  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

UNLEASH = {"UNLEASH_URL": "https://unleash.example.com", "UNLEASH_API_TOKEN": "bench"}
SINKS = [  # (label, sink, settings)
    ("dynatrace", "dynatrace", {"DYNATRACE_URL": "https://abc.live.dynatrace.com", "DYNATRACE_API_TOKEN": "dt0c01.BENCH"}),
    ("betterstack", "betterstack", {"BETTERSTACK_URL": "https://in.logs.betterstack.com", "BETTERSTACK_SOURCE_TOKEN": "b"}),
    ("unleash custom", "unleash", {**UNLEASH, "UNLEASH_API": "custom"}),
    ("unleash impact", "unleash", {**UNLEASH, "UNLEASH_API": "impact"}),
    ("azure_monitor", "azure_monitor", {"AZURE_MONITOR_RESOURCE_ID": "/subscriptions/0/resourceGroups/rg/providers/"
                                        "Microsoft.Web/sites/bench", "AZURE_MONITOR_REGION": "westeurope"}),
    ("prometheus", "prometheus", {"PROMETHEUS_REMOTE_WRITE_URL": "https://dce.eastus-1.metrics.ingest.monitor.azure.com/"
                                  "dataCollectionRules/dcr-1/streams/Microsoft-PrometheusMetrics/api/v1/write"
                                  "?api-version=2023-04-24"}),
]


def plain_size(request) -> int:
    """Body bytes before any Content-Encoding: what the byte limits count."""
    encoding = {k.lower(): v for k, v in request.headers.items()}.get("content-encoding", "")
    if encoding == "gzip":
        return len(gzip.decompress(request.body))
    if encoding == "snappy":
        return len(cramjam.snappy.decompress_raw(request.body))
    return len(request.body)


def units(request) -> int:
    """What a sink's ``max_items`` counts in a request: lines (Dynatrace), series (Unleash),
    samples (Prometheus)."""
    if request.lines:
        return len(request.lines)
    if {k.lower(): v for k, v in request.headers.items()}.get("content-encoding") == "snappy":
        from bridges.formats.remote_write import decode_write_request

        return sum(len(series["samples"]) for series in decode_write_request(request.body)["timeseries"])
    document = json.loads(request.body)
    if "impactMetrics" in document:
        return sum(len(metric["samples"]) for metric in document["impactMetrics"])
    return len(document["metrics"])


def fewest_requests(sink, requests) -> int:
    """The fewest requests the sink's limits allow for what it sent."""
    limits = sink.limits
    by_bytes = math.ceil(sum(plain_size(r) for r in requests) / limits.max_body_bytes)
    by_count = math.ceil(sum(units(r) for r in requests) / limits.max_items) if limits.max_items else 1
    return max(1, by_bytes, by_count)


def main() -> None:
    body = payload()
    now_ns = time.time_ns()
    metrics = [dataclasses.replace(m, time_ns=now_ns) for m in Normalizer().normalize(json.loads(body), now_ns).metrics]
    floor = [seconds(lambda: msgpack.packb(json.loads(body))) for _ in range(ROUNDS)]
    floor_best, _ = best_and_median(floor)
    per_point = lambda s: s / len(metrics) * 1e6  # noqa: E731
    lines = [f"payload: {len(metrics)} points; floor (json.loads + msgpack.packb): {per_point(floor_best):.2f} us/point"]
    for label, name, settings in SINKS:
        [sink] = build_sinks(load_settings({**settings, "BRIDGE_SINKS": name}))
        encoded = sink.encode(metrics, now_ns)
        best, median = best_and_median([seconds(lambda s=sink: s.encode(metrics, now_ns)) for _ in range(ROUNDS)])
        sent = sum(len(r.body) for r in encoded.requests)
        plain = sum(plain_size(r) for r in encoded.requests)
        lines.append(
            f"{label}: {per_point(best):.2f} us/point (median {per_point(median):.2f}), "
            f"{best / floor_best:.2f}x the floor (target <= 3x); {len(encoded.requests)} requests "
            f"(fewest its limits allow: {fewest_requests(sink, encoded.requests)}), {sent} bytes"
            + (f" ({plain} before compression)" if plain != sent else "") + ", "
            f"{len(encoded.rejected)} refused locally"
        )
    report("sinks", lines)


if __name__ == "__main__":
    main()
