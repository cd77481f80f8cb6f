"""A real Prometheus server remote-writes into the bridge's local runner (POST /api/v1/write).

Prometheus scrapes itself every second and sends what it stores, with its metadata, to the
bridge, which keeps it in the outbox. This is the drop-in promise: only the URL changes.

Prometheus sends HELP, TYPE and UNIT in metadata-only requests of their own (every
``metadata_config.send_interval``), apart from the samples: the bridge remembers them and puts
the descriptions and units on later samples. Prometheus's own metrics declare no unit, so a
second target, a small OpenMetrics endpoint here, declares units as OpenMetrics does.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from peers import serve_peer
from peers.prometheus import run_prometheus
from runner import running_bridge, wait_until

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EXPOSITION = b"""\
# TYPE demo_wait_seconds histogram
# UNIT demo_wait_seconds seconds
# HELP demo_wait_seconds Time a job waited in the queue.
demo_wait_seconds_bucket{le="1.0"} 2
demo_wait_seconds_bucket{le="+Inf"} 3
demo_wait_seconds_sum 2.5
demo_wait_seconds_count 3
# TYPE demo_processed_bytes counter
# UNIT demo_processed_bytes bytes
# HELP demo_processed_bytes Bytes the jobs processed.
demo_processed_bytes_total 1024
# EOF
"""


class _OpenMetrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", OPENMETRICS)
        self.send_header("Content-Length", str(len(EXPOSITION)))
        self.end_headers()
        self.wfile.write(EXPOSITION)

    def log_message(self, *args) -> None:
        pass


def _config(bridge_url: str, demo_port: int):
    def config(port: int) -> str:
        return (
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1h\n"
            "scrape_configs:\n  - job_name: self\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\n"
            "  - job_name: demo\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{demo_port}']\n"
            "remote_write:\n"
            f"  - url: '{bridge_url}/api/v1/write'\n"
            "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}\n"
            "    metadata_config: {send_interval: 1s}\n"
        )
    return config


def _outbox(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.ndjson")) for line in path.read_text().splitlines()]


def _kind(metric: dict) -> str:
    return next(k for k in ("gauge", "counter", "histogram", "summary", "aggregate") if k in metric)


def test_prometheus_remote_write_lands_in_the_bridge_with_its_types(tmp_path):
    outbox = tmp_path / "outbox"
    env = {"BRIDGE_SINKS": "outbox", "BRIDGE_OUTBOX_DIR": str(outbox), "BRIDGE_STATE_DIR": str(tmp_path / "state")}
    demo = ThreadingHTTPServer(("127.0.0.1", 0), _OpenMetrics)
    threading.Thread(target=demo.serve_forever, daemon=True).start()
    try:
        with running_bridge(env=env, cwd=tmp_path) as (base, lines):
            peers = serve_peer(lambda: run_prometheus(_config(base, demo.server_address[1])), "Prometheus peer")
            next(peers)
            try:
                def arrived() -> bool:
                    metrics = _outbox(outbox)
                    kinds = {(m["name"], _kind(m)) for m in metrics}
                    described = {(m["name"], m.get("unit")) for m in metrics if "description" in m}
                    return ({("up", "gauge"), ("prometheus_http_requests_total", "counter"),
                             ("prometheus_http_request_duration_seconds", "histogram"),
                             ("go_gc_duration_seconds", "summary")} <= kinds
                            and {("go_goroutines", None), ("prometheus_http_requests_total", None),
                                 ("demo_wait_seconds", "seconds"), ("demo_processed_bytes_total", "bytes")} <= described)
                wait_until(arrived, timeout=60, what="up, a counter, a histogram and a summary, described, in the outbox")
            finally:
                peers.close()
    finally:
        demo.shutdown()
        demo.server_close()
    metrics = _outbox(outbox)
    up = [m for m in metrics if m["name"] == "up"]
    assert {m["tags"]["job"] for m in up} == {"self", "demo"} and all(m["gauge"]["value"] == 1 for m in up)
    requests = [m for m in metrics if m["name"] == "prometheus_http_requests_total"]
    assert all(m["counter"]["temporality"] == "cumulative" for m in requests)
    histogram = next(m for m in metrics if m["name"] == "prometheus_http_request_duration_seconds")["histogram"]
    assert histogram["count"] >= sum(b["count"] for b in histogram["buckets"])
    # Descriptions: Prometheus's HELP texts, from its metadata-only requests, on later samples.
    helps = {m["name"]: m["description"] for m in metrics if "description" in m}
    assert helps["go_goroutines"] == "Number of goroutines that currently exist."
    assert helps["prometheus_http_requests_total"].startswith("Counter of HTTP requests")
    assert helps["prometheus_http_request_duration_seconds"].startswith("Histogram of latencies for HTTP requests")
    # Units: none of Prometheus's own metrics declares one (none is made up); the OpenMetrics
    # target's do, the counter's family named without _total as OpenMetrics names it.
    units = {(m["name"], m["unit"]) for m in metrics if "unit" in m}
    assert units == {("demo_wait_seconds", "seconds"), ("demo_processed_bytes_total", "bytes")}
    wait = next(m for m in metrics if m["name"] == "demo_wait_seconds" and "unit" in m)
    assert (wait["description"], wait["histogram"]["count"], wait["histogram"]["sum"]) == (
        "Time a job waited in the queue.", 3, 2.5)
    processed = next(m for m in metrics if m["name"] == "demo_processed_bytes_total" and "unit" in m)
    assert (processed["description"], processed["counter"]["value"]) == ("Bytes the jobs processed.", 1024)
    # Every remote-write request was taken whole: Prometheus never had to drop a batch.
    statuses = [int(found.group(1)) for line in lines if (found := re.search(r"/api/v1/write -> \S+ (\d{3})", line))]
    assert statuses and set(statuses) == {204}, [line for line in lines if "/api/v1/write" in line][-5:]
