"""The Prometheus remote-write sink: the spec's test vector byte for byte, golden bodies, label
rules, batching, every answer's outcome against a fake Azure Monitor workspace endpoint, the
managed-identity token through Delivery, and a real Prometheus reading back what was sent."""
from __future__ import annotations

import math
import time
import uuid

import cramjam
import golden
import pytest
import requests
from fakes.prometheus import FakePrometheusWrite, parse_write_request, series_error
from fakes.server import RESET, Scripted
from support import NOW_NS, walk_status_table

from bridges.delivery import transport
from bridges.delivery.deliver import Delivery
from bridges.delivery.sinks.base import Delivered, Drop, Reply, Resend, Retry
from bridges.delivery.sinks.prometheus.sink import MAX_BODY_BYTES, PrometheusSink, label_name, metric_name
from bridges.formats import remote_write
from bridges.model import Aggregate, Bucket, Counter, Gauge, Histogram, Metric, Quantile, Summary
from bridges.settings import load_settings

VECTOR_PROTOBUF = "0a2c0a0e0a085f5f6e616d655f5f120275700a080a036a6f62120178121009000000000000f03f1080d095ffbc31"
VECTOR_SNAPPY = "2eb4" + VECTOR_PROTOBUF
URL = ("https://amw-001-ci0b.eastus-1.metrics.ingest.monitor.azure.com/dataCollectionRules/"
       "dcr-3ff856c920bd45b08e8c11526c753824/streams/Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24")
AUDIENCE = "https://monitor.azure.com/"


# --- the wire ------------------------------------------------------------------------------


def test_spec_test_vector():
    protobuf = remote_write.write_request([((("__name__", "up"), ("job", "x")), 1.0, 1_700_000_000_000)])
    assert protobuf.hex() == VECTOR_PROTOBUF
    assert remote_write.compress(protobuf).hex() == VECTOR_SNAPPY


def test_the_sink_sends_the_test_vector():
    [request] = PrometheusSink(URL, None).encode([Metric("up", Gauge(1), 1_700_000_000_000 * 1_000_000, (("job", "x"),))],
                                                 NOW_NS).requests
    assert request.body.hex() == VECTOR_SNAPPY
    assert request.headers == {
        "Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
        "User-Agent": "webhook-metrics-bridge/0.1.0", "X-Prometheus-Remote-Write-Version": "0.1.0"}


@pytest.mark.parametrize("value, stamp", [(0.0, 1), (-0.0, 5), (1.5, 0), (math.nan, -1), (math.inf, 2**62), (-2.5, 99)])
def test_hand_framed_samples_equal_the_protobuf_runtime(value, stamp):
    WriteRequest, TimeSeries, Label, Sample = remote_write.messages()
    labels = (("__name__", "m"), ("long", "v" * 300))  # a TimeSeries longer than 127 bytes
    reference = WriteRequest(timeseries=[TimeSeries(labels=[Label(name=n, value=v) for n, v in labels],
                                                    samples=[Sample(value=value, timestamp=stamp)])])
    assert remote_write.write_request([(labels, value, stamp)]) == reference.SerializeToString()


def test_decoding_refuses_framed_snappy_and_garbage():
    protobuf = bytes.fromhex(VECTOR_PROTOBUF)
    assert remote_write.decode_write_request(bytes.fromhex(VECTOR_SNAPPY)) == {"timeseries": [
        {"labels": {"__name__": "up", "job": "x"}, "samples": [{"value": 1.0, "timestamp": 1_700_000_000_000}]}]}
    for body in (bytes(cramjam.snappy.compress(protobuf)), protobuf, b"\x05garbage"):
        with pytest.raises(ValueError):
            remote_write.decode_write_request(body)


# --- golden files --------------------------------------------------------------------------


@pytest.mark.parametrize("case", golden.cases("prometheus"), ids=lambda p: p.name)
def test_golden_requests(case):
    produced = golden.check_case("prometheus", case)
    for request in produced["requests"]:
        [raw] = [r for r in golden_requests(case) if list(r.items) == request["items"]]
        for entry in parse_write_request(remote_write.decompress(raw.body)):  # wire order, checked independently
            assert series_error(entry) is None, entry


def golden_requests(case):
    import json

    from bridges.ingest.normalize import Normalizer

    settings = load_settings({**json.loads((case / "settings.json").read_text()), "BRIDGE_SINKS": "prometheus"})
    sink = PrometheusSink(settings.prometheus_remote_write_url, None, settings.prometheus_max_samples_per_request)
    items = [json.loads(line) for line in (case / "input.ndjson").read_text().splitlines() if line.strip()]
    return sink.encode(Normalizer().normalize(items, NOW_NS).metrics, NOW_NS).requests


@pytest.mark.parametrize("name, expected", [("cpu.load", "cpu_load"), ("1m", "_1m"), ("ns:x", "ns:x"), ("a b-c", "a_b_c"),
                                            ("é", "_"), ("", None), ("__x", "__x")])
def test_metric_names(name, expected):
    assert metric_name(name) == expected


@pytest.mark.parametrize("name, expected", [("host.name", "host_name"), ("1st", "_1st"), ("__name__", "_name__"),
                                            ("ns:key", "ns_key"), ("___", "_"), ("Zone", "Zone"), ("", None)])
def test_label_names(name, expected):
    assert label_name(name) == expected


# --- batching --------------------------------------------------------------------------------


def now_ns() -> int:
    return time.time_ns() // 1_000_000 * 1_000_000


def gauges(count: int, prefix: str = "bridge_test_g", value_size: int = 0, at: int | None = None) -> list[Metric]:
    at = at or now_ns()
    tags = (("pad", "v" * value_size),) if value_size else ()
    return [Metric(f"{prefix}{i}", Gauge(i), at, tags) for i in range(count)]


def samples_in(request) -> int:
    return len(parse_write_request(remote_write.decompress(request.body)))


def test_requests_hold_at_most_max_samples_and_the_fewest():
    encoded = PrometheusSink(URL, None).encode(gauges(4500), now_ns())
    assert [samples_in(r) for r in encoded.requests] == [2000, 2000, 500]
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(4500))
    encoded = PrometheusSink(URL, None, max_samples=3).encode(gauges(7), now_ns())
    assert [r.items for r in encoded.requests] == [(0, 1, 2), (3, 4, 5), (6,)]


def test_requests_stay_within_the_byte_cap():
    encoded = PrometheusSink(URL, None).encode(gauges(300, value_size=10_000), now_ns())
    sizes = [len(remote_write.decompress(r.body)) for r in encoded.requests]
    assert all(size <= MAX_BODY_BYTES for size in sizes)
    assert len(sizes) == -(-sum(sizes) // MAX_BODY_BYTES)
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(300))


def test_a_metric_keeps_its_series_together_and_one_over_the_byte_cap_is_refused():
    at = now_ns()
    wide = Metric("wide", Histogram(20, 1.0, tuple(Bucket(b, 1) for b in range(19))), at)  # 22 samples
    huge = Metric("huge", Gauge(1), at, (("pad", "x" * MAX_BODY_BYTES),))
    encoded = PrometheusSink(URL, None, max_samples=10).encode([*gauges(3, at=at), wide, huge], at)
    assert [r.items for r in encoded.requests] == [(0, 1, 2), (3,)]
    assert samples_in(encoded.requests[1]) == 22
    assert [(r.index, "request cap" in r.reason) for r in encoded.rejected] == [(4, True)]


def test_samples_of_a_series_go_in_timestamp_order():
    at = now_ns()
    metrics = [Metric("s", Gauge(v), at + offset * 1_000_000) for v, offset in ((1, 3000), (2, 1000), (3, 2000))]
    [request] = PrometheusSink(URL, None).encode(metrics, at).requests
    assert request.items == (1, 2, 0)
    assert [e["samples"][0][1] - at // 1_000_000 for e in parse_write_request(remote_write.decompress(request.body))] == [
        1000, 2000, 3000]


# --- answers ---------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakePrometheusWrite(refuse={"bridge_test_bad"}) as receiver:
        yield receiver


@pytest.fixture
def sink(identity, fake):
    return PrometheusSink.from_settings(load_settings({"PROMETHEUS_REMOTE_WRITE_URL": fake.write_url,
                                                      "BRIDGE_SINKS": "prometheus"}))


def exchange(sink: PrometheusSink, metrics, timeout: float = 5.0):
    [request] = sink.encode(metrics, now_ns()).requests
    with requests.Session() as session:
        return request, sink.classify(request, transport.send(session, sink.authorize(request), timeout))


def test_accepted_series_reach_the_receiver(sink, fake):
    at = now_ns()
    metrics = [Metric("bridge.test.g", Gauge(1.5), at, (("host", "a b"), ("Zone", "z"))),
               Metric("bridge_test_h", Histogram(3, 1.5, (Bucket(1.0, 2),)), at)]
    _, outcome = exchange(sink, metrics)
    assert outcome == Delivered()
    assert [(list(e["labels"].items()), e["samples"]) for e in fake.accepted] == [
        ([("Zone", "z"), ("__name__", "bridge_test_g"), ("host", "a b")], [(1.5, at // 1_000_000)]),
        ([("__name__", "bridge_test_h_bucket"), ("le", "1.0")], [(2.0, at // 1_000_000)]),
        ([("__name__", "bridge_test_h_bucket"), ("le", "+Inf")], [(3.0, at // 1_000_000)]),
        ([("__name__", "bridge_test_h_sum")], [(1.5, at // 1_000_000)]),
        ([("__name__", "bridge_test_h_count")], [(3.0, at // 1_000_000)]),
    ]
    received = fake.received[0].headers
    assert received["authorization"] == f"Bearer mi-token.1.{AUDIENCE}"


ROLE_HINT = ("the token was refused: the identity needs Monitoring Metrics Publisher "
             "on the data collection rule; a new role assignment can take up to 30 minutes to apply (misconfigured)")
ROLE_DROP = "Prometheus receiver answered {}: " + ROLE_HINT


@pytest.mark.parametrize(
    "script, expected",
    [
        (Scripted(429, {"Retry-After": "7"}), Retry("Prometheus receiver answered 429", 7.0)),
        (Scripted(503, {"Retry-After": "120"}), Retry("Prometheus receiver answered 503", 120.0)),
        (Scripted(500), Retry("Prometheus receiver answered 500", None)),
        (Scripted(403), Drop(ROLE_DROP.format(403), misconfigured=True, hint=ROLE_HINT)),
        (Scripted(413, body=b"too big"), Drop("Prometheus receiver answered 413: too big")),
        (Scripted(200), Delivered()),
    ],
    ids=["429", "503", "500", "403", "413", "200"],
)
def test_status_table(sink, fake, script, expected):
    fake.script(script)
    _, outcome = exchange(sink, gauges(2))
    assert outcome == expected


def test_400_splits_several_metrics_and_drops_one_alone(sink, fake):
    _, outcome = exchange(sink, [*gauges(2), Metric("bridge_test_bad", Gauge(1), now_ns())])
    assert outcome == Resend("Prometheus receiver answered 400: out of order sample (refused by the test)", split=True)
    _, outcome = exchange(sink, [Metric("bridge_test_bad", Gauge(1), now_ns())])
    assert outcome == Drop("Prometheus receiver answered 400: out of order sample (refused by the test)")


def test_the_receiver_contract_refuses_what_the_sink_must_not_send(identity, fake):
    metric = [Metric("bridge_test_x", Gauge(1), now_ns())]
    no_token = PrometheusSink(fake.write_url, None)
    assert exchange(no_token, metric)[1] == Drop(ROLE_DROP.format(401) + ": missing bearer token", misconfigured=True,
                                                 hint=ROLE_HINT)
    bare_host = PrometheusSink(fake.url + "/api/v1/write", None)
    assert exchange(bare_host, metric)[1].misconfigured
    wrong = PrometheusSink(fake.write_url, None)
    [request] = wrong.encode(metric, now_ns()).requests
    request.headers["Authorization"] = "Bearer mi-token.1.https://monitoring.azure.com/"
    request.body = bytes(cramjam.snappy.compress(remote_write.decompress(request.body)))  # framed
    with requests.Session() as session:
        assert transport.send(session, request, 5).status == 403  # custom-metrics audience
        request.headers["Authorization"] = f"Bearer mi-token.1.{AUDIENCE}"
        reply = transport.send(session, request, 5)
    assert (reply.status, reply.body) == (400, b"snappy: framed format, expected block format")


def test_connection_reset_and_timeout_retry(sink, fake):
    fake.script(RESET)
    assert exchange(sink, gauges(1))[1].reason.startswith("no answer")
    fake.script(Scripted(slow=1.0))
    outcome = exchange(sink, gauges(1), timeout=0.2)[1]
    assert isinstance(outcome, Retry) and "Timeout" in outcome.reason


def test_status_table_covers_every_listed_status():
    sink = PrometheusSink(URL, None)
    requests_ = {n: sink.encode(gauges(n), now_ns()).requests[0] for n in (1, 2)}
    outcomes = walk_status_table(sink, requests_[2], b"bad sample")
    assert outcomes[400] == Resend("Prometheus receiver answered 400: bad sample", split=True)
    assert sink.classify(requests_[1], Reply(400, {}, b"bad sample")) == Drop("Prometheus receiver answered 400: bad sample")


# --- through the delivery stage ------------------------------------------------------------


class Kept:
    def __init__(self):
        self.pending = []

    def hand_off(self, sink, metrics, reason, after, now_ns):
        self.pending.append((sink, list(metrics), reason, after))


def test_delivery_fetches_the_token_once_and_isolates_a_bad_metric(identity, sink, fake):
    delivery = Delivery([sink], Kept())
    for round_ in range(3):
        report = delivery.deliver(gauges(4, prefix=f"bridge_test_r{round_}_"), now_ns())["prometheus"]
        assert (report.delivered, report.rejected, report.pending) == (4, [], 0)
    assert dict(identity.requests_per_resource) == {AUDIENCE: 1}
    assert {audience for audience in (r.headers["authorization"].split(".", 2)[2] for r in fake.received)} == {AUDIENCE}

    metrics = gauges(5, prefix="bridge_test_s")
    metrics.insert(3, Metric("bridge_test_bad", Gauge(1), now_ns()))
    report = delivery.deliver(metrics, now_ns())["prometheus"]
    assert report.delivered == 5
    assert [(r.index, r.reason) for r in report.rejected] == [
        (3, "Prometheus receiver answered 400: out of order sample (refused by the test)")]
    assert "bridge_test_bad" not in {e["labels"]["__name__"] for e in fake.accepted}
    assert dict(identity.requests_per_resource) == {AUDIENCE: 1}


# --- a real Prometheus -----------------------------------------------------------------------


def stored(peer, prefix: str, at_ms: int) -> set[tuple[frozenset, float]]:
    result = peer.query(f'{{__name__=~"{prefix}.*"}}', at=at_ms / 1000)
    return {(frozenset(r["metric"].items()), float(r["value"][1])) for r in result}


def series(name: str, value: float, **labels) -> tuple[frozenset, float]:
    return frozenset({"__name__": name, **labels}.items()), value


def test_real_prometheus_stores_every_type(prometheus_peer):
    p = f"bridge_{uuid.uuid4().hex[:8]}_"
    at = now_ns()
    metrics = [
        Metric(p + "temperature", Gauge(63.5), at, (("Region", "EU West"), ("host", "web-1"))),
        Metric(p + "requests_total", Counter(1234), at),
        Metric(p + "webhooks", Counter(3, "delta"), at, (("source", "github"),)),
        Metric(p + "duration", Histogram(10, 4.5, (Bucket(0.1, 2), Bucket(0.5, 5))), at, (("route", "/api"),)),
        Metric(p + "size", Summary(100, 25000, (Quantile(0.5, 200), Quantile(0.99, 600))), at),
        Metric(p + "latency", Aggregate(1, 9, 20, 4), at),
    ]
    kept = Kept()
    report = Delivery([PrometheusSink(prometheus_peer.write_url, None)], kept).deliver(metrics, at)["prometheus"]
    assert (report.delivered, report.rejected, report.pending) == (6, [], 0), kept.pending
    assert stored(prometheus_peer, p, at // 1_000_000) == {
        series(p + "temperature", 63.5, Region="EU West", host="web-1"),
        series(p + "requests_total", 1234),
        series(p + "webhooks_delta", 3, source="github"),
        series(p + "duration_bucket", 2, le="0.1", route="/api"),
        series(p + "duration_bucket", 7, le="0.5", route="/api"),
        series(p + "duration_bucket", 10, le="+Inf", route="/api"),
        series(p + "duration_sum", 4.5, route="/api"),
        series(p + "duration_count", 10, route="/api"),
        series(p + "size", 200, quantile="0.5"),
        series(p + "size", 600, quantile="0.99"),
        series(p + "size_sum", 25000),
        series(p + "size_count", 100),
        series(p + "latency_min", 1),
        series(p + "latency_max", 9),
        series(p + "latency_sum", 20),
        series(p + "latency_count", 4),
    }


def test_real_prometheus_bad_series_are_isolated_by_splitting(prometheus_peer):
    p = f"bridge_{uuid.uuid4().hex[:8]}_"
    sink = PrometheusSink(prometheus_peer.write_url, None)
    delivery = Delivery([sink], Kept())
    first = now_ns()
    assert delivery.deliver([Metric(p + "stored", Gauge(1), first)], first)["prometheus"].delivered == 1

    at = first + 1_000_000_000
    metrics = [
        Metric(p + "good_0", Gauge(10), at),
        Metric(p + "stored", Gauge(99), first - 60_000_000_000),  # older than what is stored: out of order
        Metric(p + "good_1", Histogram(2, 1.0, (Bucket(1.0, 2),)), at),
        Metric(p + "too_old", Gauge(5), first - 5 * 3600 * 1_000_000_000),  # a new series hours in the past
        Metric(p + "good_2", Gauge(12), at),
        Metric(p + "good_3", Summary(3, 3.0, (Quantile(0.5, 1.0),)), at),
    ]
    report = delivery.deliver(metrics, at)["prometheus"]
    assert (report.delivered, report.pending) == (4, 0)
    reasons = {r.index: r.reason for r in report.rejected}
    assert sorted(reasons) == [1, 3]
    assert all(reason.startswith("Prometheus receiver answered 400: ") for reason in reasons.values())
    assert "out of order" in reasons[1] and "out of bounds" in reasons[3], reasons
    assert stored(prometheus_peer, p, at // 1_000_000) == {
        series(p + "stored", 1),  # the first value; the rejected older one is not there
        series(p + "good_0", 10),
        series(p + "good_1_bucket", 2, le="1.0"),
        series(p + "good_1_bucket", 2, le="+Inf"),
        series(p + "good_1_sum", 1.0),
        series(p + "good_1_count", 2),
        series(p + "good_2", 12),
        series(p + "good_3", 1.0, quantile="0.5"),
        series(p + "good_3_sum", 3.0),
        series(p + "good_3_count", 3),
    }
    assert stored(prometheus_peer, p + "too_old", (first - 5 * 3600 * 1_000_000_000) // 1_000_000) == set()
