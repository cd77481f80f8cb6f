"""The Unleash sink: exact wire bodies for both endpoints, aggregation, splitting, every
answer's outcome against a fake Unleash, the auto switch to impact metrics, and delivery to
real unleash-server 7.5.1 (custom endpoint) and 8.2.0 (impact metrics)."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid

import pytest
import requests
from fakes.server import RESET, Scripted
from fakes.unleash import FakeUnleash, custom_problem, impact_problem
from golden import cases, encode_case
from peers.unleash import parse_prometheus
from support import walk_status_table

from bridges.delivery import transport
from bridges.delivery.deliver import Delivery
from bridges.delivery.sinks.base import Drop, Reply, Resend, Retry
from bridges.delivery.sinks.unleash.sink import (
    CUSTOM_PATH,
    IMPACT_PATH,
    MAX_SERIES,
    UnleashSink,
    base_url,
    custom_name,
    impact_name,
)
from bridges.masking import Secret
from bridges.model import Aggregate, Bucket, Counter, Gauge, Histogram, Metric, Summary
from bridges.settings import load_settings

TOKEN = "default:development.fake-client-token"
FRONTEND_TOKEN = "default:development.fake-frontend-token"
TIMEOUT = 10


# --- golden files -------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("unleash"), ids=lambda p: p.name)
def test_golden_requests(case):
    produced = encode_case("unleash", case)
    for request in produced["requests"]:
        body = request["body"]
        if "instanceId" in body:  # stable per process: the host name and process id
            assert body["instanceId"] == f"{socket.gethostname()}-{os.getpid()}"
            body["instanceId"] = "<hostname>-<pid>"
    assert produced == json.loads((case / "expected.json").read_text())
    for request in produced["requests"]:  # and the fake's independent checks accept every body
        body = request["body"]
        assert (impact_problem(body["impactMetrics"]) if "impactMetrics" in body else custom_problem(body)) is None


def test_settings_build_the_sink_without_showing_the_token():
    settings = load_settings({"UNLEASH_URL": "https://unleash.example.com/api", "UNLEASH_API_TOKEN": "s3cret-token",
                              "UNLEASH_API": "impact", "UNLEASH_APP_NAME": "shop", "BRIDGE_SINKS": "unleash"})
    sink = UnleashSink.from_settings(settings)
    assert (sink.base_url, sink.api, sink.mode, sink.app_name) == ("https://unleash.example.com", "impact", "impact", "shop")
    assert sink.status() == {"configured": True, "endpoint": "unleash.example.com", "api": "impact", "mode": "impact"}
    [request] = sink.encode([Metric("g", Gauge(1), time.time_ns())], time.time_ns()).requests
    assert request.headers["Authorization"] == "s3cret-token"  # raw, no "Bearer"
    assert "s3cret" not in repr(sink) + repr(request) + json.dumps(sink.status())


@pytest.mark.parametrize("url, base", [
    ("https://u.example.com", "https://u.example.com"), ("https://u.example.com/api/", "https://u.example.com"),
    ("https://example.com/unleash/api", "https://example.com/unleash"), ("http://localhost:4242/", "http://localhost:4242"),
])
def test_base_url(url, base):
    assert base_url(url) == base


@pytest.mark.parametrize("name, custom, impact", [
    ("http.requests-total", "http_requests_total", "http_requests_total"), ("ns:metric", "ns:metric", "ns_metric"),
    ("5xx.count", "_5xx_count", "_5xx_count"), ("ok_name", "ok_name", "ok_name"), ("temp °C", "temp__C", "temp__C"),
])
def test_names(name, custom, impact):
    assert custom_name(name) == custom and impact_name(name) == impact


# --- aggregation and validation -----------------------------------------------------------


def now_ns() -> int:
    return time.time_ns()


def sink_for(url: str, api: str = "custom", token: str = TOKEN, **kwargs) -> UnleashSink:
    return UnleashSink(url, Secret(token), api=api, instance_id="bridge-tests", **kwargs)


def bodies(encoded) -> list[dict]:
    return [json.loads(r.body) for r in encoded.requests]


def test_four_delta_increments_in_a_minute_arrive_as_four():
    t = now_ns()
    metrics = [Metric("hooks", Counter(1, "delta"), t + i, (("src", "gh"),)) for i in range(4)]
    with FakeUnleash(version="7", token=TOKEN) as fake:
        report = Delivery([sink_for(fake.url)], RecordingHandoff(), session_factory=plain_session).deliver(metrics, t)
        assert report["unleash"].delivered == 4
        assert fake.custom_latest() == {("hooks", (("src", "gh"),)): 4}


def test_the_latest_point_wins_for_gauges_and_running_totals_whatever_the_order():
    t = now_ns()
    metrics = [Metric("depth", Gauge(5), t + 10), Metric("depth", Gauge(9), t),
               Metric("total", Counter(100), t), Metric("total", Counter(120), t + 5)]
    for api in ("custom", "impact"):
        [body] = bodies(sink_for("http://u.local", api).encode(metrics, t))
        values = ({m["name"]: m["value"] for m in body["metrics"]} if api == "custom"
                  else {m["name"]: m["samples"][0]["value"] for m in body["impactMetrics"]})
        assert values == {"depth": 5, "total": 120}


def test_impact_counters_and_histograms_are_summed_per_series():
    t = now_ns()
    hist = Histogram(2, 0.3, (Bucket(0.1, 1), Bucket(0.5, 1)))
    metrics = [Metric("hits", Counter(2, "delta"), t, (("a", "1"),)), Metric("hits", Counter(3, "delta"), t, (("a", "1"),)),
               Metric("hits", Counter(1, "delta"), t, (("a", "2"),)), Metric("lat", hist, t), Metric("lat", hist, t)]
    [body] = bodies(sink_for("http://u.local", "impact").encode(metrics, t))
    hits, lat = body["impactMetrics"]
    assert hits["samples"] == [{"value": 5, "labels": {"a": "1"}}, {"value": 1, "labels": {"a": "2"}}]
    assert lat["samples"] == [{"count": 4, "sum": 0.6, "labels": {},
                               "buckets": [{"le": 0.1, "count": 2}, {"le": 0.5, "count": 4}, {"le": "+Inf", "count": 4}]}]


def test_unsendable_values_are_refused_locally():
    t = now_ns()
    metrics = [Metric("neg", Counter(-1, "delta"), t), Metric("nan", Gauge(float("nan")), t),
               Metric("huge", Gauge(1e308), t), Metric("big", Counter(1e308, "delta"), t),
               Metric("big", Counter(1e308, "delta"), t), Metric("fine", Gauge(1), t)]
    encoded = sink_for("http://u.local", "impact").encode(metrics, t)
    assert [r.index for r in encoded.rejected] == [0, 1, 4]
    assert "cannot be negative" in encoded.rejected[0].reason and "finite" in encoded.rejected[2].reason
    assert [r.items for r in encoded.requests] == [(2, 3, 5)]


def test_summary_and_aggregate_in_impact_form_pass_the_contract():
    t = now_ns()
    metrics = [Metric("resp", Summary(4, 10.5, ()), t), Metric("agg", Aggregate(-3, 1, -4, 4), t)]
    [body] = bodies(sink_for("http://u.local", "impact").encode(metrics, t))
    assert impact_problem(body["impactMetrics"]) is None  # a negative sum sits in a histogram, not a counter
    assert [m["name"] for m in body["impactMetrics"]] == ["resp_count", "resp_sum", "agg", "agg_min", "agg_max"]


# --- request sizes ------------------------------------------------------------------------


def gauges(count: int, tag_chars: int = 0, t: int | None = None) -> list[Metric]:
    t = t or now_ns()
    return [Metric(f"bridge_g{i}", Gauge(i), t, (("tag", "v" * tag_chars),) if tag_chars else ()) for i in range(count)]


@pytest.mark.parametrize("api", ["custom", "impact"])
def test_requests_hold_at_most_1000_series_and_the_fewest(api):
    t = now_ns()
    metrics = [Metric("bridge_g", Gauge(i), t, (("i", str(i)),)) for i in range(2500)]
    encoded = sink_for("http://u.local", api).encode(metrics, t)
    assert [len(r.items) for r in encoded.requests] == [MAX_SERIES, MAX_SERIES, 500]
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(2500))
    assert all(len(r.body) <= 100_000 for r in encoded.requests)


@pytest.mark.parametrize("api", ["custom", "impact"])
def test_requests_stay_within_the_body_limit(api):
    encoded = sink_for("http://u.local", api).encode(gauges(400, tag_chars=1000), now_ns())
    sizes = [len(r.body) for r in encoded.requests]
    assert all(size <= 100_000 for size in sizes)
    assert len(sizes) == -(-sum(sizes) // 100_000)  # no more requests than the bytes need
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(400))


def test_the_points_of_one_series_stay_in_one_request():
    t = now_ns()
    metrics = [Metric(f"g{i % 300}", Counter(1, "delta"), t) for i in range(900)]
    encoded = sink_for("http://u.local", "custom", max_body_bytes=2000).encode(metrics, t)
    assert len(encoded.requests) > 1
    for request in encoded.requests:
        names = {m["name"] for m in json.loads(request.body)["metrics"]}
        assert {f"g{i % 300}" for i in request.items} == names
        assert all(m["value"] == 3 for m in json.loads(request.body)["metrics"])


def test_a_metric_too_large_alone_is_refused():
    t = now_ns()
    big = Histogram(1, 1, tuple(Bucket(i, 0) for i in range(256)))
    metric = Metric("h", big, t, tuple((f"t{i:02d}", "v" * 1000) for i in range(5)))
    encoded = sink_for("http://u.local", "custom").encode([metric, Metric("g", Gauge(1), t)], t)
    assert [r.index for r in encoded.rejected] == [0] and "body limit" in encoded.rejected[0].reason
    assert [r.items for r in encoded.requests] == [(1,)]


# --- answers ------------------------------------------------------------------------------


def test_status_table_covers_every_listed_status():
    sink = sink_for("http://u.local", "auto")
    [request] = sink.encode(gauges(1), now_ns()).requests
    outcomes = walk_status_table(sink_for("http://u.local", "custom"), request)
    assert outcomes[404].misconfigured and outcomes[415] == Drop("Unleash answered 415: the body was not taken as JSON (a bridge bug)")
    assert sink.classify(request, Reply(404, {}, b"")) == Resend(
        "Unleash has no custom metrics endpoint (8.1 or later): sent as impact metrics instead", split=False)


@pytest.mark.parametrize("api, path, misconfigured", [("custom", CUSTOM_PATH, "UNLEASH_API"),
                                                      ("impact", IMPACT_PATH, "UNLEASH_URL")])
def test_404_outside_auto_mode_is_a_misconfiguration(api, path, misconfigured):
    sink = sink_for("http://u.local", api)
    [request] = sink.encode(gauges(1), now_ns()).requests
    outcome = sink.classify(request, Reply(404, {}, b'{"message":"The path you were looking for is not available."}'))
    assert isinstance(outcome, Drop) and outcome.misconfigured and misconfigured in outcome.reason
    assert request.url.endswith(path) and sink.mode == api


def test_400_reason_is_unleash_message():
    sink = sink_for("http://u.local")
    [request] = sink.encode(gauges(1), now_ns()).requests
    body = json.dumps({"name": "BadDataError", "message": "Request validation failed",
                       "details": [{"message": "The `metrics` property is required."}]}).encode()
    assert sink.classify(request, Reply(400, {}, body)) == Drop(
        "Unleash answered 400: Request validation failed (The `metrics` property is required.)")
    assert sink.classify(request, Reply(400, {}, b"")) == Drop("Unleash answered 400: no details")


def test_415_is_logged_as_our_bug(caplog):
    sink = sink_for("http://u.local")
    [request] = sink.encode(gauges(1), now_ns()).requests
    with caplog.at_level(logging.ERROR, logger="bridges.delivery.sinks.unleash.sink"):
        outcome = sink.classify(request, Reply(415, {}, b'{"message":"We do not accept the content-type"}'))
    assert isinstance(outcome, Drop) and not outcome.misconfigured
    assert "bug" in caplog.text


@pytest.fixture
def fake7():
    with FakeUnleash(version="7", token=TOKEN, frontend_token=FRONTEND_TOKEN) as receiver:
        yield receiver


def exchange(sink: UnleashSink, metrics, timeout: float = 5.0):
    [request] = sink.encode(metrics, now_ns()).requests
    with plain_session() as session:
        return request, sink.classify(request, transport.send(session, request, timeout))


@pytest.mark.parametrize(
    "script, expected",
    [
        (Scripted(429, {"RateLimit-Limit": "6000", "RateLimit-Remaining": "0", "RateLimit-Reset": "42"}),
         Retry("Unleash answered 429", 42.0)),
        (Scripted(429, {"Retry-After": "7", "RateLimit-Reset": "42"}), Retry("Unleash answered 429", 7.0)),
        (Scripted(500), Retry("Unleash answered 500", None)),
        (Scripted(503, {"Retry-After": "30"}, b'{"message":"down for maintenance"}'),
         Retry("Unleash answered 503: down for maintenance", 30.0)),
        (Scripted(413, {}, b'{"message":"request entity too large"}'), "resend-split"),
    ],
    ids=["429-ratelimit-reset", "429-retry-after", "500", "503", "413"],
)
def test_scripted_failures(fake7, script, expected):
    fake7.script(script)
    _, outcome = exchange(sink_for(fake7.url), gauges(2))
    if expected == "resend-split":
        assert isinstance(outcome, Resend) and outcome.split
    else:
        assert outcome == expected


def test_a_body_over_100_kb_is_refused_by_the_receiver_and_resent_in_halves(fake7):
    sink = sink_for(fake7.url, max_body_bytes=300_000)  # pretend we did not know the limit
    _, outcome = exchange(sink, gauges(900, tag_chars=200))
    assert isinstance(outcome, Resend) and outcome.split and "413" in outcome.reason


def test_wrong_and_frontend_tokens_are_misconfigurations(fake7):
    _, outcome = exchange(sink_for(fake7.url, token="default:development.wrong"), gauges(1))
    assert isinstance(outcome, Drop) and outcome.misconfigured and "401" in outcome.reason
    assert "requires an API token" in outcome.reason and "wrong" not in outcome.reason
    _, outcome = exchange(sink_for(fake7.url, token=FRONTEND_TOKEN), gauges(1))
    assert isinstance(outcome, Drop) and outcome.misconfigured and "403" in outcome.reason


def test_connection_reset_and_timeout_retry(fake7):
    fake7.script(RESET)
    _, outcome = exchange(sink_for(fake7.url), gauges(1))
    assert isinstance(outcome, Retry) and outcome.reason.startswith("no answer")
    fake7.script(Scripted(slow=1.0))
    _, outcome = exchange(sink_for(fake7.url), gauges(1), timeout=0.2)
    assert isinstance(outcome, Retry) and "Timeout" in outcome.reason


# --- delivery, the auto switch ------------------------------------------------------------


class RecordingHandoff:
    """Keeps what delivery hands off for a later retry."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list, str, float | None]] = []

    def hand_off(self, sink, metrics, reason, after, now_ns) -> None:
        self.calls.append((sink, list(metrics), reason, after))


def plain_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never send loopback traffic through a proxy from the environment
    return session


def test_auto_switches_to_impact_once_and_resends_the_same_metrics(caplog):
    t = now_ns()
    metrics = [Metric("hooks", Counter(1, "delta"), t), Metric("hooks", Counter(1, "delta"), t),
               Metric("depth", Gauge(3), t, (("queue", "a"),))]
    with FakeUnleash(version="8", token=TOKEN) as fake, caplog.at_level(logging.INFO, logger="bridges.delivery.sinks.unleash.sink"):
        sink = sink_for(fake.url, "auto")
        handoff = RecordingHandoff()
        delivery = Delivery([sink], handoff, session_factory=plain_session)
        assert sink.status()["mode"] == "custom"
        report = delivery.deliver(metrics, t)["unleash"]
        assert (report.delivered, report.rejected, report.pending, handoff.calls) == (3, [], 0, [])
        assert [r.path for r in fake.received] == [CUSTOM_PATH, IMPACT_PATH]
        assert sink.mode == "impact" and sink.status()["mode"] == "impact"
        assert fake.dropped == [] and fake.impact_value("hooks") == 2 and fake.impact_value("depth", queue="a") == 3

        report = delivery.deliver(metrics, t)["unleash"]  # straight to impact metrics from now on
        assert report.delivered == 3 and [r.path for r in fake.received][2:] == [IMPACT_PATH]
        assert fake.impact_value("hooks") == 4
    switches = [r for r in caplog.records if "custom metrics endpoint" in r.getMessage()]
    assert len(switches) == 1 and switches[0].levelno >= logging.INFO
    assert TOKEN not in caplog.text


def test_several_custom_requests_switch_once(caplog):
    t = now_ns()
    with FakeUnleash(version="8", token=TOKEN) as fake, caplog.at_level(logging.INFO, logger="bridges.delivery.sinks.unleash.sink"):
        sink = sink_for(fake.url, "auto", max_body_bytes=2000)
        outcomes = []
        with plain_session() as session:
            for request in sink.encode(gauges(100, t=t), t).requests:
                outcomes.append(sink.classify(request, transport.send(session, request, 5)))
        assert len(outcomes) > 1 and all(isinstance(o, Resend) and not o.split for o in outcomes)
        report = Delivery([sink], RecordingHandoff(), session_factory=plain_session).deliver(gauges(100, t=t), t)
        assert report["unleash"].delivered == 100 and len(fake.impact) == 100 and fake.dropped == []
    assert len([r for r in caplog.records if "custom metrics endpoint" in r.getMessage()]) == 1


def test_failures_in_delivery_are_handed_off_with_the_servers_wait(fake7):
    fake7.script(Scripted(429, {"RateLimit-Reset": "15"}))
    handoff = RecordingHandoff()
    report = Delivery([sink_for(fake7.url)], handoff, session_factory=plain_session).deliver(gauges(3), now_ns())
    assert report["unleash"].pending == 3
    [(name, metrics, reason, after)] = handoff.calls
    assert (name, len(metrics), reason, after) == ("unleash", 3, "Unleash answered 429", 15.0)


def test_a_wrong_token_marks_the_sink_misconfigured_without_showing_it(fake7, caplog):
    delivery = Delivery([sink_for(fake7.url, token="default:development.not-the-token")], RecordingHandoff(),
                        session_factory=plain_session)
    report = delivery.deliver(gauges(2), now_ns())["unleash"]
    assert len(report.rejected) == 2 and "unleash" in delivery.misconfigured
    assert "not-the-token" not in caplog.text + json.dumps(delivery.status()) + json.dumps(report.to_json())


def test_impact_reports_add_up_in_the_fake():
    t = now_ns()
    hist = Histogram(3, 1.2, (Bucket(0.1, 1), Bucket(0.5, 1)))
    with FakeUnleash(version="8", token=TOKEN) as fake:
        delivery = Delivery([sink_for(fake.url, "impact")], RecordingHandoff(), session_factory=plain_session)
        for _ in range(2):
            delivery.deliver([Metric("lat", hist, t, (("route", "/x"),)), Metric("n", Counter(2, "delta"), t)], t)
        assert fake.dropped == [] and fake.recreated == []
        assert fake.impact_value("n") == 4
        assert fake.impact_value("lat", route="/x") == {"count": 6, "sum": 2.4, "buckets": {0.1: 2, 0.5: 4, "+Inf": 6}}


# --- real peers ---------------------------------------------------------------------------


def unique(prefix: str) -> str:
    """The servers keep metrics in memory for the whole session: keep tests apart."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def peer_metrics(counter: str, gauge: str, hist: str, t: int) -> list[Metric]:
    h = Histogram(3, 1.25, (Bucket(0.1, 1), Bucket(0.5, 1)))  # cumulative: 1, 2, 3
    return [Metric(counter, Counter(1, "delta"), t + i, (("source", "github"),)) for i in range(4)] + [
        Metric(gauge, Gauge(2.5), t, (("queue", "a"),)),
        Metric(gauge, Gauge(7.5), t + 5, (("queue", "a"),)),
        Metric(hist, h, t, (("route", "/x"),)),
    ]


def test_real_unleash_7_custom_endpoint(unleash_7):
    counter, gauge, hist = unique("bridge_hooks_total"), unique("bridge_queue_depth"), unique("bridge_latency_seconds")
    t = now_ns()
    sink = UnleashSink(unleash_7.url, Secret(unleash_7.client_token), api="custom", instance_id="peer-tests")
    handoff = RecordingHandoff()
    with plain_session() as session:
        report = Delivery([sink], handoff, session_factory=lambda: session).deliver(peer_metrics(counter, gauge, hist, t), t)
        assert (report["unleash"].delivered, report["unleash"].rejected, handoff.calls) == (7, [], [])
        r = session.get(f"{unleash_7.url}/api/admin/custom-metrics", headers={"Authorization": unleash_7.admin_token},
                        timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    got = {(m["name"], tuple(sorted(m["labels"].items()))): m["value"] for m in r.json()["metrics"]
           if m["name"].startswith((counter, gauge, hist))}
    assert got == {
        (counter, (("source", "github"),)): 4,  # four increments of 1 in one request
        (gauge, (("queue", "a"),)): 7.5,  # the latest point
        (f"{hist}_count", (("route", "/x"),)): 3,
        (f"{hist}_sum", (("route", "/x"),)): 1.25,
        (f"{hist}_bucket", (("le", "0.1"), ("route", "/x"))): 1,
        (f"{hist}_bucket", (("le", "0.5"), ("route", "/x"))): 2,
        (f"{hist}_bucket", (("le", "+Inf"), ("route", "/x"))): 3,
    }


def test_real_unleash_8_auto_switches_to_impact_metrics(unleash_8):

    counter, gauge, hist = unique("bridge_hooks_total"), unique("bridge_queue_depth"), unique("bridge_latency_seconds")
    t = now_ns()
    sink = UnleashSink(unleash_8.url, Secret(unleash_8.client_token), api="auto", instance_id="peer-tests")
    handoff = RecordingHandoff()
    with plain_session() as session:
        delivery = Delivery([sink], handoff, session_factory=lambda: session)
        report = delivery.deliver(peer_metrics(counter, gauge, hist, t), t)["unleash"]
        assert (report.delivered, report.rejected, handoff.calls, sink.mode) == (7, [], [], "impact")

        def read_back() -> dict:
            r = session.get(f"{unleash_8.url}/internal-backstage/impact/metrics", timeout=TIMEOUT)
            assert r.status_code == 200, r.text
            return parse_prometheus(r.text)

        def values(samples: dict) -> dict:
            return {(name, tuple(sorted((k, v) for k, v in labels if k not in ("origin", "metric_type")))): value
                    for (name, labels), value in samples.items() if name.startswith((counter, gauge, hist))}

        route = (("route", "/x"),)
        assert values(read_back()) == {
            (counter, (("source", "github"),)): 4,
            (gauge, (("queue", "a"),)): 7.5,
            (f"{hist}_bucket", (("le", "0.1"), *route)): 1,
            (f"{hist}_bucket", (("le", "0.5"), *route)): 2,
            (f"{hist}_bucket", (("le", "+Inf"), *route)): 3,
            (f"{hist}_sum", route): 1.25,
            (f"{hist}_count", route): 3,
        }
        # A second report: counter increments and histogram observations add, the gauge is set.
        later = [Metric(counter, Counter(2, "delta"), t + 60, (("source", "github"),)),
                 Metric(gauge, Gauge(1), t + 60, (("queue", "a"),)),
                 Metric(hist, Histogram(1, 0.05, (Bucket(0.1, 1), Bucket(0.5, 0))), t + 60, route)]
        assert delivery.deliver(later, t + 60)["unleash"].delivered == 3
        got = values(read_back())
    assert got[(counter, (("source", "github"),))] == 6
    assert got[(gauge, (("queue", "a"),))] == 1
    assert [got[(f"{hist}_bucket", (("le", le), *route))] for le in ("0.1", "0.5", "+Inf")] == [2, 3, 4]
    assert got[(f"{hist}_sum", route)] == pytest.approx(1.3) and got[(f"{hist}_count", route)] == 4
