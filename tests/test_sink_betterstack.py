"""The Better Stack sink: golden requests, the status table against the fake receiver,
splitting at the size limit, the 15-minute window, and a token that never leaks.

Golden cases live in ``testdata/sinks/betterstack/<case>/``; ``UPDATE_GOLDEN=1`` rewrites
their ``expected.json`` (review the diff before keeping it).
"""
from __future__ import annotations

import json
import logging
import math

import pytest
import requests
from fakes.betterstack import FakeBetterStack, decode_body
from fakes.server import RESET, Scripted
from golden import cases, check_case
from support import NOW_NS

from bridges.delivery.sinks.base import Delivered, Drop, Misconfigured, Reply, Request, Resend, Retry
from bridges.delivery.sinks.betterstack.sink import BetterStackSink, metrics_url

STATUS_OUTCOMES = BetterStackSink.status_outcomes
from bridges.delivery.transport import send
from bridges.ingest.normalize import Normalizer
from bridges.masking import Secret
from bridges.model import CUMULATIVE, Counter, Gauge, Metric
from bridges.settings import load_settings

TOKEN = "bs-test-token-7f3a9c"
MINUTE_NS = 60 * 1_000_000_000


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


# ---- golden requests -------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("betterstack"), ids=lambda p: p.name)
def test_golden_requests(case, session):
    check_case("betterstack", case)
    settings = json.loads((case / "settings.json").read_text())
    sink = BetterStackSink.from_settings(load_settings(settings))
    items = [json.loads(line) for line in (case / "input.ndjson").read_text().splitlines() if line.strip()]
    encoded = sink.encode(Normalizer().normalize(items, NOW_NS).metrics, NOW_NS)

    # The same requests, against the contract: accepted whole, nothing Better Stack would misread.
    token = settings["BETTERSTACK_SOURCE_TOKEN"]
    with FakeBetterStack(token, now_ns=NOW_NS) as fake:
        for request in encoded.requests:
            local = Request(request.method, fake.url + "/metrics", request.headers, request.body, request.items)
            assert sink.classify(local, send(session, local, 5.0)) == Delivered()
    assert fake.warnings == []
    assert len(fake.metrics) == sum(len(r.items) for r in encoded.requests)


def test_msgpack_dt_is_the_timestamp_extension_exact_to_the_nanosecond():
    import msgpack

    sink = BetterStackSink("https://in.logs.betterstack.com", Secret(TOKEN))
    time_ns = NOW_NS - 123_456_789
    [request] = sink.encode([Metric("x", Gauge(1.0), time_ns)], NOW_NS).requests
    [obj] = msgpack.unpackb(request.body, timestamp=0)
    assert isinstance(obj["dt"], msgpack.Timestamp) and obj["dt"].to_unix_nano() == time_ns


# ---- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("configured, used", [
    ("https://s1234567.eu-nbg-2.betterstackdata.com", "https://s1234567.eu-nbg-2.betterstackdata.com/metrics"),
    ("https://in.logs.betterstack.com", "https://in.logs.betterstack.com/metrics"),
    ("https://in.logs.betterstack.com/", "https://in.logs.betterstack.com/metrics"),
    ("https://in.logs.betterstack.com/metrics", "https://in.logs.betterstack.com/metrics"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/metrics"),
])
def test_metrics_path_is_appended_to_a_bare_host(configured, used):
    assert metrics_url(configured) == used
    assert BetterStackSink(configured, Secret(TOKEN)).url == used


@pytest.mark.parametrize("body_format, content_type", [
    ("msgpack", "application/msgpack"), ("json", "application/json"), ("ndjson", "application/x-ndjson"),
])
def test_from_settings(body_format, content_type):
    settings = load_settings({
        "BETTERSTACK_URL": "s1.eu-nbg-2.betterstackdata.com", "BETTERSTACK_SOURCE_TOKEN": TOKEN,
        "BETTERSTACK_FORMAT": body_format, "BETTERSTACK_MAX_REQUESTS_PER_MINUTE": "120",
    })
    sink = BetterStackSink.from_settings(settings)
    assert sink.name == "betterstack"
    assert sink.limits.max_body_bytes == 20 * 1024 * 1024
    assert sink.limits.max_age_seconds == 15 * 60
    assert sink.limits.max_requests_per_minute == 120
    [request] = sink.encode([Metric("x", Gauge(1), NOW_NS)], NOW_NS).requests
    assert request.url == "https://s1.eu-nbg-2.betterstackdata.com/metrics"
    assert request.headers == {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}


# ---- the status table, walked against the fake receiver ---------------------------------

def _bad_token(fake, sink):
    return BetterStackSink(fake.url, Secret("not-" + TOKEN)), None


def _unparsable(fake, sink):
    [request] = sink.encode([Metric("x", Gauge(1), NOW_NS)], NOW_NS).requests
    request.body = b"\xc1"  # a byte MessagePack never uses
    return sink, request


def _too_large(fake, sink):
    fake.max_body_bytes = 10
    return sink, None


def _scripted(*steps):
    def setup(fake, sink):
        fake.script(*steps)
        return sink, None

    return setup


# (table key, what the fake is made to do, the outcome, a text the reason must hold)
STATUS_CASES = [
    (202, _scripted(), Delivered(), None),
    ("2xx", _scripted(Scripted(200)), Delivered(), None),
    ("2xx", _scripted(Scripted(204)), Delivered(), None),
    ("3xx", _scripted(Scripted(301, {"Location": "https://elsewhere/metrics"})), Drop, "BETTERSTACK_URL"),
    (401, _scripted(Scripted(401)), Drop, "401"),
    (403, _bad_token, Drop, "Unauthorized"),
    (404, _scripted(Scripted(404)), Drop, "404"),
    (406, _unparsable, Drop, "Couldn't parse JSON content."),
    (413, _too_large, Resend, "payload reached size limit"),
    (429, _scripted(Scripted(429, {"Retry-After": "7"})), Retry("", after=7.0), "429"),
    (429, _scripted(Scripted(429)), Retry("", after=None), "429"),
    (408, _scripted(Scripted(408)), Retry("", after=None), "408"),
    ("4xx", _scripted(Scripted(400, body=b"Bad Request")), Drop, "Bad Request"),
    ("4xx", _scripted(Scripted(402, body=b"Quota exceeded")), Drop, "Quota exceeded"),
    ("5xx", _scripted(Scripted(500)), Retry("", after=None), "500"),
    ("5xx", _scripted(Scripted(503, {"Retry-After": "3"})), Retry("", after=3.0), "503"),
    ("reset", _scripted(RESET), Retry, "no answer"),
    ("timeout", _scripted(Scripted(slow=0.5)), Retry, "no answer"),
]


def test_every_table_entry_is_walked():
    assert set(STATUS_OUTCOMES) <= {key for key, *_ in STATUS_CASES}


@pytest.fixture(scope="module")
def shared_fake():
    """One receiver for many cases (each start and stop costs half a second)."""
    with FakeBetterStack(TOKEN) as fake:
        yield fake


@pytest.mark.parametrize("key, setup, expected, reason_holds", STATUS_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(STATUS_CASES)])
def test_status_table(key, setup, expected, reason_holds, shared_fake, session, caplog):
    caplog.set_level(logging.DEBUG)
    fake = shared_fake
    fake.max_body_bytes, fake.metrics = 20 * 1024 * 1024, []
    sink = BetterStackSink(fake.url, Secret(TOKEN))
    sink, request = setup(fake, sink)
    request = request or sink.encode([Metric("x", Gauge(1), NOW_NS)], NOW_NS).requests[0]
    reply = send(session, request, 0.2 if key == "timeout" else 5.0)
    outcome = sink.classify(request, reply)

    rule = STATUS_OUTCOMES.get(key)
    if isinstance(rule, type):
        assert type(outcome) is rule
    elif isinstance(rule, Misconfigured):
        assert outcome == Drop(outcome.reason, misconfigured=True, hint=rule.hint)
    if isinstance(expected, type):
        assert type(outcome) is expected
    else:  # an instance: compare every field except a free-text reason
        assert type(outcome) is type(expected)
        assert {k: v for k, v in vars(outcome).items() if k != "reason"} == \
               {k: v for k, v in vars(expected).items() if k != "reason"}
    if reason_holds:
        assert reason_holds in outcome.reason
    if isinstance(outcome, Drop):
        assert outcome.misconfigured == isinstance(rule, Misconfigured)
    if isinstance(outcome, Resend):
        assert outcome.split
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    if key == 406:
        [error] = errors
        assert "bug" in error.getMessage() and "Couldn't parse JSON content." in error.getMessage()
    else:
        assert errors == []
    if key == 202:
        assert fake.metrics == [{"name": "x", "gauge": {"value": 1}, "dt": fake.metrics[0]["dt"]}]


def test_statuses_outside_the_table_fall_back_by_class():
    sink = BetterStackSink("https://in.logs.betterstack.com", Secret(TOKEN))
    request = Request("POST", sink.url, {}, b"", (0,))
    assert sink.classify(request, Reply(201)) == Delivered()
    assert isinstance(sink.classify(request, Reply(404)), Drop)
    assert isinstance(sink.classify(request, Reply(502)), Retry)
    assert isinstance(sink.classify(request, Reply(101)), Drop)
    assert sink.classify(request, Reply(None, error=requests.ConnectionError("refused"))) == \
           Retry("no answer: ConnectionError")


# ---- splitting at the size limit --------------------------------------------------------

LIMIT = 2_000


def _uniform(count: int) -> list[Metric]:
    return [Metric(f"m{i:05d}", Gauge(1.5), NOW_NS - MINUTE_NS, (("i", f"{i:05d}"),)) for i in range(count)]


def _body_size(metrics: list[Metric], body_format: str) -> int:
    """Size of one request carrying all of these, measured by an unlimited sink."""
    sink = BetterStackSink("http://127.0.0.1", Secret(TOKEN), body_format, max_body_bytes=10**9)
    [request] = sink.encode(metrics, NOW_NS).requests
    return len(request.body)


@pytest.mark.parametrize("body_format", ["msgpack", "json", "ndjson"])
def test_split_into_fewest_requests_and_every_metric_arrives_once(body_format, session):
    metrics = _uniform(300)
    per_request = max(n for n in range(1, 60) if _body_size(metrics[:n], body_format) <= LIMIT)
    with FakeBetterStack(TOKEN, max_body_bytes=LIMIT, now_ns=NOW_NS) as fake:
        sink = BetterStackSink(fake.url, Secret(TOKEN), body_format, max_body_bytes=LIMIT)
        encoded = sink.encode(metrics, NOW_NS)
        assert encoded.rejected == []
        assert len(encoded.requests) == math.ceil(len(metrics) / per_request)
        assert all(len(r.body) <= LIMIT for r in encoded.requests)
        assert [i for r in encoded.requests for i in r.items] == list(range(len(metrics)))
        for request in encoded.requests:
            assert sink.classify(request, send(session, request, 5.0)) == Delivered()
    assert [m["name"] for m in fake.metrics] == [m.name for m in metrics]
    assert [len(batch) for batch in fake.batches] == [len(r.items) for r in encoded.requests]


@pytest.mark.parametrize("body_format", ["msgpack", "json", "ndjson"])
def test_split_of_uneven_metrics_is_greedy_and_tight(body_format):
    """No request could also have carried the next one's first metric: greedy packing in order,
    which for an ordered split is the fewest requests."""
    metrics = [Metric("n" * (1 + (i * 37) % 200), Gauge(i), NOW_NS, (("k", "v" * (i % 50)),)) for i in range(120)]
    sink = BetterStackSink("http://127.0.0.1", Secret(TOKEN), body_format, max_body_bytes=LIMIT)
    encoded = sink.encode(metrics, NOW_NS)
    assert len(encoded.requests) > 3
    for request in encoded.requests:
        assert len(request.body) == _body_size([metrics[i] for i in request.items], body_format) <= LIMIT
    for current, following in zip(encoded.requests, encoded.requests[1:], strict=False):
        carried = [metrics[i] for i in (*current.items, following.items[0])]
        assert _body_size(carried, body_format) > LIMIT


@pytest.mark.parametrize("body_format", ["msgpack", "json", "ndjson"])
@pytest.mark.parametrize("count", [1, 15, 16, 40])  # msgpack's array header grows at 16
def test_a_body_of_exactly_the_limit_is_one_request(body_format, count):
    metrics = _uniform(count)
    exact = _body_size(metrics, body_format)
    for limit, requests_expected in [(exact, 1), (exact - 1, 2 if count > 1 else 0)]:
        sink = BetterStackSink("http://127.0.0.1", Secret(TOKEN), body_format, max_body_bytes=limit)
        encoded = sink.encode(metrics, NOW_NS)
        assert len(encoded.requests) == requests_expected
        for request in encoded.requests:
            assert len(decode_body(request.body, request.headers["Content-Type"])) == len(request.items)


def test_a_metric_too_large_on_its_own_is_rejected_and_the_rest_sent():
    big = Metric("big", Gauge(1), NOW_NS, tuple((f"k{i:03d}", "v" * 100) for i in range(30)))
    sink = BetterStackSink("http://127.0.0.1", Secret(TOKEN), max_body_bytes=LIMIT)
    encoded = sink.encode([Metric("a", Gauge(1), NOW_NS), big, Metric("b", Gauge(2), NOW_NS)], NOW_NS)
    assert [r.index for r in encoded.rejected] == [1]
    assert "request limit" in encoded.rejected[0].reason
    assert [r.items for r in encoded.requests] == [(0, 2)]


# ---- the time window --------------------------------------------------------------------

def test_15_minute_window_and_clock_skew_ahead():
    times = [
        NOW_NS - 15 * MINUTE_NS,  # oldest accepted
        NOW_NS - 15 * MINUTE_NS - 1,
        NOW_NS - 60 * MINUTE_NS,
        NOW_NS,
        NOW_NS + 5 * MINUTE_NS,  # furthest ahead accepted
        NOW_NS + 5 * MINUTE_NS + 1,
    ]
    metrics = [Metric(f"m{i}", Gauge(i), t) for i, t in enumerate(times)]
    encoded = BetterStackSink("http://127.0.0.1", Secret(TOKEN)).encode(metrics, NOW_NS)
    assert [r.items for r in encoded.requests] == [(0, 3, 4)]
    assert [r.index for r in encoded.rejected] == [1, 2, 5]
    assert "15 minutes" in encoded.rejected[0].reason and "future" in encoded.rejected[2].reason


def test_conversions_are_counted():
    metrics = [
        Metric("a", Counter(1, "delta"), NOW_NS), Metric("b", Counter(1, "delta"), NOW_NS),
        Metric("c", Counter(1, CUMULATIVE), NOW_NS, unit="s"),
    ]
    encoded = BetterStackSink("http://127.0.0.1", Secret(TOKEN), "json").encode(metrics, NOW_NS)
    assert dict(encoded.conversions) == {"delta counter -> gauge": 2, "unit not sent": 1}


# ---- the token never leaks --------------------------------------------------------------

def test_token_never_in_logs_or_error_texts(session, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "tok-SECRET-5d1e0b"
    texts = []
    settings = load_settings({"BETTERSTACK_URL": "http://127.0.0.1:9", "BETTERSTACK_SOURCE_TOKEN": secret})
    texts += [repr(settings), str(settings.betterstack_source_token)]
    with FakeBetterStack("another-token") as fake:
        sink = BetterStackSink(fake.url, Secret(secret))
        texts.append(repr(sink))
        [request] = sink.encode([Metric("x", Gauge(1), NOW_NS)], NOW_NS).requests
        texts.append(repr(request))
        broken = Request(request.method, request.url, request.headers, b"\xc1", request.items)
        fake.script(Scripted(406, body=b"Couldn't parse JSON content."), RESET, Scripted(slow=0.5), Scripted(500))
        for req, timeout in [(request, 5.0), (broken, 5.0), (request, 0.2), (request, 5.0)]:
            reply = send(session, req, timeout)
            if reply.error is not None:
                texts += [str(reply.error), repr(reply.error)]
            texts.append(repr(sink.classify(req, reply)))
        texts.append(repr(sink.classify(request, send(session, request, 5.0))))  # 403 from the fake
    with pytest.raises(ValueError) as raised:
        BetterStackSink("http://127.0.0.1", Secret(secret), "xml")
    texts.append(str(raised.value))

    assert any("Better Stack answered 406" in t for t in texts) and any("Better Stack answered 403" in t for t in texts)
    logged = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("406" in m for m in logged)
    for text in texts + logged:
        assert secret not in text


# ---- the fake itself refuses what Better Stack refuses ----------------------------------

_GOOD = {"name": "x", "gauge": {"value": 1}}


@pytest.mark.parametrize("path, headers, body, status", [
    ("/metrics", {"Content-Type": "application/json"}, json.dumps(_GOOD).encode(), 202),
    ("/metrics", {"Content-Type": "application/x-ndjson"}, b'{"name":"x","counter":{"value":1}}\n', 202),
    ("/", {"Content-Type": "application/json"}, json.dumps(_GOOD).encode(), 404),
    ("/metrics", {"Content-Type": "application/json", "Authorization": "Bearer nope"}, b"{}", 403),
    ("/metrics", {"Content-Type": "application/json"}, b"x" * 101, 413),
    ("/metrics", {"Content-Type": "text/plain"}, json.dumps(_GOOD).encode(), 406),
    ("/metrics", {"Content-Type": "application/msgpack"}, b"\xc1", 406),
    ("/metrics", {"Content-Type": "application/json"}, b'{"name":"x","aggregate":{"min":1,"max":1,"sum":1,"count":1}}', 406),
    ("/metrics", {"Content-Type": "application/json"}, b'{"name":"x","gauge":{"value":1},"counter":{"value":1}}', 406),
    ("/metrics", {"Content-Type": "application/json"}, b'{"name":"x","gauge":{"value":1},"tags":{"a":1}}', 406),
    ("/metrics", {"Content-Type": "application/json"}, b'{"name":"x","gauge":{"value":1},"unit":"s"}', 406),
    ("/metrics", {"Content-Type": "application/json"}, b'{"name":"x","summary":{"count":1,"sum":1,"quantiles":[]}}', 406),
    ("/metrics", {"Content-Type": "application/json"},
     b'{"name":"x","histogram":{"count":1,"sum":1,"buckets":[{"upper_limit":1}]},"dt":1}', 406),
])
def test_fake_enforces_the_contract(path, headers, body, status, shared_fake, session):
    shared_fake.max_body_bytes = 100
    headers = {"Authorization": f"Bearer {TOKEN}", **headers}
    response = session.post(shared_fake.url + path, headers=headers, data=body, timeout=5)
    assert response.status_code == status
    expected_text = {202: "", 403: "Unauthorized", 406: "Couldn't parse JSON content.",
                     413: "payload reached size limit"}
    if status in expected_text:
        assert response.text == expected_text[status]


def test_a_count_beyond_msgpack_integers_is_refused_not_a_crash():
    """Found by tests/test_sink_roundtrip.py: the schema bounds no count, and packing 2^64 raised
    OverflowError out of encode, failing the whole batch for this sink."""
    from bridges.model import Histogram

    metrics = [Metric("big", Histogram(2**64, 1.0, ()), NOW_NS), Metric("ok", Gauge(1), NOW_NS)]
    encoded = BetterStackSink("http://127.0.0.1", Secret(TOKEN)).encode(metrics, NOW_NS)
    assert [(r.index, r.reason) for r in encoded.rejected] == [(0, "a count too large for MessagePack (at most 2^64 - 1)")]
    assert [r.items for r in encoded.requests] == [(1,)]
    as_json = BetterStackSink("http://127.0.0.1", Secret(TOKEN), "json").encode(metrics, NOW_NS)
    assert [r.items for r in as_json.requests] == [(0, 1)]  # JSON has no such limit
