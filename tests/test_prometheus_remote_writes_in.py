"""A real Prometheus server remote-writes into the bridge's local runner (POST /api/v1/write).

Prometheus scrapes itself every second and sends what it stores, with its metadata, to the
bridge, which keeps it in the outbox. This is the drop-in promise: only the URL changes.
"""
from __future__ import annotations

import json
import re

from peers import serve_peer
from peers.prometheus import run_prometheus
from runner import running_bridge, wait_until


def _config(bridge_url: str):
    def config(port: int) -> str:
        return (
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1h\n"
            "scrape_configs:\n  - job_name: self\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{port}']\n"
            "remote_write:\n"
            f"  - url: '{bridge_url}/api/v1/write'\n"
            "    queue_config: {batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s}\n"
            "    metadata_config: {send_interval: 1s}\n"
        )
    return config


def _outbox(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.ndjson")) for line in path.read_text().splitlines()]


def test_prometheus_remote_write_lands_in_the_bridge_with_its_types(tmp_path):
    outbox = tmp_path / "outbox"
    env = {"BRIDGE_SINKS": "outbox", "BRIDGE_OUTBOX_DIR": str(outbox), "BRIDGE_STATE_DIR": str(tmp_path / "state")}
    with running_bridge(env=env, cwd=tmp_path) as (base, lines):
        peers = serve_peer(lambda: run_prometheus(_config(base)), "Prometheus peer")
        next(peers)
        try:
            def arrived() -> bool:
                kinds = {(m["name"], next(k for k in ("gauge", "counter", "histogram", "summary") if k in m))
                         for m in _outbox(outbox)}
                return {("up", "gauge"), ("prometheus_http_requests_total", "counter"),
                        ("prometheus_http_request_duration_seconds", "histogram"),
                        ("go_gc_duration_seconds", "summary")} <= kinds
            wait_until(arrived, timeout=60, what="up, a counter, a histogram and a summary in the outbox")
        finally:
            peers.close()
    metrics = _outbox(outbox)
    up = [m for m in metrics if m["name"] == "up"]
    assert up and all(m["tags"]["job"] == "self" and m["gauge"]["value"] == 1 for m in up)
    requests = [m for m in metrics if m["name"] == "prometheus_http_requests_total"]
    assert all(m["counter"]["temporality"] == "cumulative" for m in requests)
    histogram = next(m for m in metrics if m["name"] == "prometheus_http_request_duration_seconds")["histogram"]
    assert histogram["count"] >= sum(b["count"] for b in histogram["buckets"])
    # Every remote-write request was taken whole: Prometheus never had to drop a batch.
    statuses = [int(found.group(1)) for line in lines if (found := re.search(r"/api/v1/write -> \S+ (\d{3})", line))]
    assert statuses and set(statuses) == {204}, [line for line in lines if "/api/v1/write" in line][-5:]
