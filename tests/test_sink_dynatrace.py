"""The Dynatrace sink: exact wire bodies, normalization, splitting, and every answer's outcome
against a fake receiver that enforces the ingest contract."""
from __future__ import annotations

import time

import pytest
import requests

from bridges import transport
from bridges.model import Counter, Gauge, Metric
from bridges.settings import Secret
from bridges.sinks.base import Delivered, Drop, Partial, Reply, Resend, Retry
from bridges.sinks.dynatrace import STATUS_OUTCOMES, DynatraceSink, dimension_key, dimension_value, metric_key, number
from golden import cases, check_case
from conftest import NOW_NS
from fakes.dynatrace import FakeDynatrace, line_error
from fakes.server import RESET, Scripted

TOKEN = "dt0c01.TEST"


@pytest.mark.parametrize("case", cases("dynatrace"), ids=lambda p: p.name)
def test_golden_requests(case):
    produced = check_case("dynatrace", case)
    for request in produced["requests"]:  # and the fake's independent parser accepts every line
        assert [line_error(line, NOW_NS // 1_000_000) for line in request["body"]] == [None] * len(request["body"])


@pytest.mark.parametrize(
    "name, key",
    [("cpu.load", "cpu.load"), ("1m.load", "_m.load"), ("system.load.1m", "system.load._m"), ("a b/c", "a_b_c"),
     ("..a..b..", "a.b"), ("é", None), ("ab", None), ("x" * 300, "x" * 250), ("-x.-y", "_x._y")],
)
def test_metric_keys(name, key):
    assert metric_key(name) == key


@pytest.mark.parametrize(
    "raw, key", [("Host", "host"), ("a b", "a_b"), ("1a", "_a"), ("a..b", "a.b"), ("ns:key-x", "ns:key-x"), ("!!", "_"), ("...", None)]
)
def test_dimension_keys(raw, key):
    assert dimension_key(raw) == key


@pytest.mark.parametrize(
    "raw, value",
    [("plain", "plain"), ("a b", "a\\ b"), ('q"x', 'q\\"x'), ("a=b,c", "a\\=b\\,c"), ("back\\", "back\\\\"),
     ("x" * 300, "x" * 250), ("x" * 249 + "\\", "x" * 249), ("bell\x07\x07!", "bell_!")],
)
def test_dimension_values(raw, value):
    assert dimension_value(raw) == value


@pytest.mark.parametrize("value, text", [(1, "1"), (1.5, "1.5"), (1e16, "1.0e+16"), (1.5e-7, "1.5e-07"), (-0.25, "-0.25")])
def test_numbers(value, text):
    assert number(value) == text


def now_ns() -> int:
    return time.time_ns()


def gauges(count: int, tags: int = 0, now: int | None = None) -> list[Metric]:
    now = now or now_ns()
    dims = tuple((f"tag{t:02d}", "v" * 200) for t in range(tags))
    return [Metric(f"bridge.test.g{i}", Gauge(i), now, dims) for i in range(count)]


def test_requests_hold_at_most_1000_lines_and_the_fewest():
    encoded = DynatraceSink("http://dt.local", Secret(TOKEN)).encode(gauges(2500), now_ns())
    assert [len(r.body.split(b"\n")) for r in encoded.requests] == [1000, 1000, 500]
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(2500))


def test_requests_stay_within_a_million_bytes():
    encoded = DynatraceSink("http://dt.local", Secret(TOKEN)).encode(gauges(400, tags=20), now_ns())
    sizes = [len(r.body) for r in encoded.requests]
    assert all(size <= 1_000_000 for size in sizes)
    assert len(sizes) == -(-sum(sizes) // 1_000_000)  # no more requests than the bytes need
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(400))


@pytest.fixture
def fake():
    with FakeDynatrace(token=TOKEN, refuse_keys={"bridge.test.g3"}) as receiver:
        yield receiver


def exchange(sink: DynatraceSink, metrics, timeout: float = 5.0):
    [request] = sink.encode(metrics, now_ns()).requests
    with requests.Session() as session:
        return request, sink.classify(request, transport.send(session, request, timeout))


def test_accepted_lines_reach_the_receiver(fake):
    metrics = [Metric("bridge.test.g1", Gauge(1.5), now_ns(), (("host", "a b"),)),
               Metric("bridge.test.c", Counter(2, "delta"), now_ns())]
    _, outcome = exchange(DynatraceSink(fake.url, Secret(TOKEN)), metrics)
    assert outcome == Delivered()
    assert [line.rsplit(" ", 1)[0] for line in fake.accepted_lines] == [
        "bridge.test.g1,host=a\\ b gauge,1.5", "bridge.test.c count,delta=2"]


def test_400_is_a_partial_success_mapped_back_to_metrics(fake):
    request, outcome = exchange(DynatraceSink(fake.url, Secret(TOKEN)), gauges(6))
    assert isinstance(outcome, Partial)
    assert [r.index for r in outcome.rejected] == [3]
    assert "refused by the test" in outcome.rejected[0].reason
    assert outcome.unidentified == 0
    assert len(fake.accepted_lines) == 5


def test_more_than_ten_invalid_lines_are_counted_without_detail():
    refused = {f"bridge.test.g{i}" for i in range(15)}
    with FakeDynatrace(token=TOKEN, refuse_keys=refused) as receiver:
        _, outcome = exchange(DynatraceSink(receiver.url, Secret(TOKEN)), gauges(20))
    assert isinstance(outcome, Partial)
    assert len(outcome.rejected) == 10 and outcome.unidentified == 5


@pytest.mark.parametrize(
    "script, expected",
    [
        (Scripted(429, {"Retry-After": "7"}), Retry("Dynatrace answered 429", 7.0)),
        (Scripted(503, {"Retry-After": "120"}), Retry("Dynatrace answered 503", 120.0)),
        (Scripted(500), Retry("Dynatrace answered 500", None)),
        (Scripted(413), Resend("Dynatrace answered 413: request too large")),
        (Scripted(404), Drop("Dynatrace answered 404: the ingest URL is wrong (misconfigured)", misconfigured=True)),
        (Scripted(403), Drop("Dynatrace answered 403: the token lacks metrics.ingest (misconfigured)", misconfigured=True)),
    ],
    ids=["429", "503", "500", "413", "404", "403"],
)
def test_status_table(fake, script, expected):
    fake.script(script)
    _, outcome = exchange(DynatraceSink(fake.url, Secret(TOKEN)), gauges(2))
    assert outcome == expected


def test_status_table_covers_every_listed_status():
    sink = DynatraceSink("http://dt.local", Secret(TOKEN))
    [request] = sink.encode(gauges(1), now_ns()).requests
    kinds = {Delivered: "delivered", Partial: "partial", Drop: "drop", Resend: "resend", Retry: "retry"}
    for status, meaning in STATUS_OUTCOMES.items():
        body = b'{"linesOk":0,"linesInvalid":1,"error":{"code":400,"message":"x","invalidLines":[{"line":1,"error":"bad"}]}}'
        outcome = sink.classify(request, Reply(status, {}, body if status == 400 else b""))
        assert meaning.startswith(kinds[type(outcome)]), (status, outcome)


def test_a_wrong_token_is_refused_by_the_receiver_and_dropped_as_misconfigured(fake):
    _, outcome = exchange(DynatraceSink(fake.url, Secret("dt0c01.WRONG")), gauges(1))
    assert outcome == Drop("Dynatrace answered 401: the token is wrong (misconfigured)", misconfigured=True)


def test_connection_reset_and_timeout_retry(fake):
    fake.script(RESET)
    _, outcome = exchange(DynatraceSink(fake.url, Secret(TOKEN)), gauges(1))
    assert isinstance(outcome, Retry) and outcome.reason.startswith("no answer")
    fake.script(Scripted(slow=1.0))
    _, outcome = exchange(DynatraceSink(fake.url, Secret(TOKEN)), gauges(1), timeout=0.2)
    assert isinstance(outcome, Retry) and "Timeout" in outcome.reason


def test_oneagent_local_endpoint_sends_no_token():
    with FakeDynatrace(token=None) as receiver:
        _, outcome = exchange(DynatraceSink(receiver.url + "/metrics/ingest"), gauges(1))
        assert outcome == Delivered()
        assert "authorization" not in receiver.received[0].headers
        assert receiver.received[0].path == "/metrics/ingest"
