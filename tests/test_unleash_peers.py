"""Smoke tests against real unleash-server peers (7.5.1 and 8.2.0), plain `requests` only.

The peers are installed by `bash scripts/install-peers.sh`; without them these tests skip
(or fail when CI=true). See tests/peers/unleash.py.
"""
from __future__ import annotations

import re
import uuid

import pytest
import requests
from peers.unleash import parse_prometheus

TIMEOUT = 10


@pytest.fixture
def http():
    s = requests.Session()
    s.trust_env = False  # never send loopback traffic through a proxy from the environment
    yield s
    s.close()


def unique(prefix: str) -> str:
    """Metric names are kept in server memory for the whole session: keep tests apart."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def labels(**kw: str) -> frozenset:
    return frozenset(kw.items())


# ------------------------------------------------------------------------ 7.5.1: custom


def test_7_custom_metric_is_accepted_and_read_back(unleash_7, http):
    name = unique("bridge_test_total")
    r = http.post(
        f"{unleash_7.url}/api/client/metrics/custom",
        json={"metrics": [{"name": name, "value": 3, "labels": {"env": "test"}}]},
        headers={"Authorization": unleash_7.client_token},
        timeout=TIMEOUT,
    )
    assert r.status_code == 202, r.text
    assert r.content == b""

    r = http.get(
        f"{unleash_7.url}/api/admin/custom-metrics",
        headers={"Authorization": unleash_7.admin_token},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    mine = [m for m in body["metrics"] if m["name"] == name]
    assert len(mine) == 1, body
    assert mine[0]["value"] == 3
    assert mine[0]["labels"] == {"env": "test"}
    assert name in body["metricNames"]

    # With the customMetrics flag on they are also on the server's Prometheus page.
    r = http.get(f"{unleash_7.url}/internal-backstage/prometheus", timeout=TIMEOUT)
    assert r.status_code == 200
    assert parse_prometheus_lines_for(r.text, name) == {(name, labels(env="test")): 3.0}


def parse_prometheus_lines_for(text: str, name: str) -> dict:
    """Only the samples of one metric (the full page carries Node and Unleash internals)."""
    wanted = "\n".join(
        line for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )
    return parse_prometheus(wanted)


def test_7_custom_metric_needs_a_token(unleash_7, http):
    r = http.post(
        f"{unleash_7.url}/api/client/metrics/custom",
        json={"metrics": [{"name": unique("no_token_total"), "value": 1}]},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401
    assert "requires an API token" in r.json()["message"]


def test_7_custom_metric_bad_bodies_are_400(unleash_7, http):
    url = f"{unleash_7.url}/api/client/metrics/custom"
    auth = {"Authorization": unleash_7.client_token}
    r = http.post(url, json={}, headers=auth, timeout=TIMEOUT)
    assert r.status_code == 400
    assert r.json()["name"] == "BadDataError"  # OpenAPI validation: `metrics` is required
    r = http.post(url, json={"metrics": [{"name": "", "value": 1}]}, headers=auth, timeout=TIMEOUT)
    assert r.status_code == 400  # Joi validation in the handler: empty body
    assert r.content == b""


# ------------------------------------------------------------------------ 8.2.0: impact


def post_impact(peer, http, impact_metrics: list, **extra) -> requests.Response:
    body = {"appName": "bridge-tests", "instanceId": "peer-tests", **extra, "impactMetrics": impact_metrics}
    return http.post(
        f"{peer.url}/api/client/metrics",
        json=body,
        headers={"Authorization": peer.client_token},
        timeout=TIMEOUT,
    )


def impact_samples(peer, http) -> dict:
    r = http.get(f"{peer.url}/internal-backstage/impact/metrics", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return parse_prometheus(r.text)


def test_8_custom_endpoint_is_gone(unleash_8, http):
    r = http.post(
        f"{unleash_8.url}/api/client/metrics/custom",
        json={"metrics": [{"name": "bridge_test_total", "value": 3, "labels": {"env": "test"}}]},
        headers={"Authorization": unleash_8.client_token},
        timeout=TIMEOUT,
    )
    assert r.status_code == 404


def test_8_impact_counter_gauge_histogram_read_back(unleash_8, http):
    counter, gauge, hist = unique("bridge_requests_total"), unique("bridge_queue_depth"), unique("bridge_latency_seconds")
    first = [
        {"name": counter, "help": "Requests seen", "type": "counter",
         "samples": [{"value": 3, "labels": {"env": "test", "code": 200}}]},
        {"name": gauge, "help": "Queue depth", "type": "gauge",
         "samples": [{"value": 7.5, "labels": {"queue": "a"}}]},
        {"name": hist, "help": "Latency", "type": "histogram",
         "samples": [{"count": 3, "sum": 1.2, "labels": {"route": "/x"},
                      "buckets": [{"le": 0.1, "count": 1}, {"le": 0.5, "count": 2}, {"le": "+Inf", "count": 3}]}]},
    ]
    # The bucket is optional on 8.2.0; send one anyway, as SDKs do.
    r = post_impact(unleash_8, http, first, environment="development",
                    bucket={"start": "2026-11-22T10:00:00Z", "stop": "2026-11-22T10:01:00Z", "toggles": {}})
    assert r.status_code == 202, r.text

    got = impact_samples(unleash_8, http)
    base = {"origin": "sdk"}
    assert got[(counter, labels(**base, metric_type="counter", env="test", code="200"))] == 3
    assert got[(gauge, labels(**base, metric_type="gauge", queue="a"))] == 7.5
    h = {**base, "metric_type": "histogram", "route": "/x"}
    assert got[(f"{hist}_bucket", labels(**h, le="0.1"))] == 1
    assert got[(f"{hist}_bucket", labels(**h, le="0.5"))] == 2
    assert got[(f"{hist}_bucket", labels(**h, le="+Inf"))] == 3
    assert got[(f"{hist}_sum", labels(**h))] == pytest.approx(1.2)
    assert got[(f"{hist}_count", labels(**h))] == 3

    # Second report (no bucket at all): counters and histograms ADD (samples are deltas),
    # gauges are SET.
    second = [
        {"name": counter, "help": "Requests seen", "type": "counter",
         "samples": [{"value": 2, "labels": {"env": "test", "code": 200}}]},
        {"name": gauge, "help": "Queue depth", "type": "gauge",
         "samples": [{"value": 1, "labels": {"queue": "a"}}]},
        {"name": hist, "help": "Latency", "type": "histogram",
         "samples": [{"count": 1, "sum": 0.05, "labels": {"route": "/x"},
                      "buckets": [{"le": 0.1, "count": 1}, {"le": 0.5, "count": 1}, {"le": "+Inf", "count": 1}]}]},
    ]
    assert post_impact(unleash_8, http, second).status_code == 202
    got = impact_samples(unleash_8, http)
    assert got[(counter, labels(**base, metric_type="counter", env="test", code="200"))] == 5
    assert got[(gauge, labels(**base, metric_type="gauge", queue="a"))] == 1
    assert got[(f"{hist}_bucket", labels(**h, le="0.1"))] == 2
    assert got[(f"{hist}_bucket", labels(**h, le="0.5"))] == 3
    assert got[(f"{hist}_bucket", labels(**h, le="+Inf"))] == 4
    assert got[(f"{hist}_sum", labels(**h))] == pytest.approx(1.25)
    assert got[(f"{hist}_count", labels(**h))] == 4


def test_8_impact_names_are_sanitized(unleash_8, http):
    name = unique("bridge-dashed.metric")
    r = post_impact(unleash_8, http, [
        {"name": name, "help": "h", "type": "counter",
         "samples": [{"value": 1, "labels": {"my-label": "v", "9digit": "dropped"}}]},
    ])
    assert r.status_code == 202
    got = impact_samples(unleash_8, http)
    sanitized = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    assert got[(sanitized, labels(origin="sdk", metric_type="counter", my_label="v"))] == 1


def test_8_invalid_impact_batch_is_202_but_dropped_whole(unleash_8, http):
    good, bad = unique("good_total"), unique("bad_total")
    r = post_impact(unleash_8, http, [
        {"name": good, "help": "h", "type": "counter", "samples": [{"value": 1}]},
        {"name": bad, "help": "h", "type": "counter", "samples": [{"value": "not a number"}]},
    ])
    assert r.status_code == 202  # rejection is only logged by the server
    names = {name for name, _ in impact_samples(unleash_8, http)}
    assert good not in names and bad not in names


def test_8_client_metrics_need_a_token(unleash_8, http):
    r = http.post(
        f"{unleash_8.url}/api/client/metrics",
        json={"appName": "bridge-tests", "impactMetrics": []},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401
