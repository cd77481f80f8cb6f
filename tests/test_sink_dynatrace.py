"""The Dynatrace sink: exact wire bodies, normalization, splitting, and every answer's outcome
against a fake receiver that enforces the ingest contract."""
from __future__ import annotations

import time

import pytest
import requests
from fakes.dynatrace import FakeDynatrace, line_error
from fakes.server import RESET, Scripted
from golden import cases, check_case
from support import NOW_NS, walk_status_table

from bridges.delivery import transport
from bridges.delivery.sinks.base import Delivered, Drop, Partial, Rejection, Resend, Retry
from bridges.delivery.sinks.dynatrace.sink import (
    DynatraceSink,
    dimension_key,
    dimension_value,
    metric_key,
    number,
)
from bridges.formats import dynatrace as dynatrace_format
from bridges.masking import Secret
from bridges.model import Bucket, Counter, Gauge, Histogram, Metric

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
        (Scripted(404), Drop("Dynatrace answered 404: the ingest URL is wrong (misconfigured)", misconfigured=True,
                             hint="the ingest URL is wrong (misconfigured)")),
        (Scripted(403), Drop("Dynatrace answered 403: the token lacks metrics.ingest (misconfigured)", misconfigured=True,
                             hint="the token lacks metrics.ingest (misconfigured)")),
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
    body = b'{"linesOk":0,"linesInvalid":1,"error":{"code":400,"message":"x","invalidLines":[{"line":1,"error":"bad"}]}}'
    outcomes = walk_status_table(sink, request, body)
    assert outcomes[400] == Partial((Rejection(0, "Dynatrace refused the line: bad"),))


def test_a_wrong_token_is_refused_by_the_receiver_and_dropped_as_misconfigured(fake):
    _, outcome = exchange(DynatraceSink(fake.url, Secret("dt0c01.WRONG")), gauges(1))
    assert outcome == Drop("Dynatrace answered 401: the token is wrong (misconfigured): Missing authorization parameter.",
                           misconfigured=True, hint="the token is wrong (misconfigured)")


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


# --- issue 13, defect 1: no text of a metric can break a line -----------------------------

INJECTED = "x\nevil.injected,host=prod gauge,999999"
LINE_BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]


def _read_back(encoded):
    """Each request's body as the bridge's own Dynatrace input reads it, and as text."""
    for request in encoded.requests:
        yield request, dynatrace_format.decode(request.body, request.headers["Content-Type"], {}, 10**6), request.body.decode()


@pytest.mark.parametrize("description", [INJECTED, INJECTED + "\n#victim.metric gauge dt.meta.unit=x\ny"])
def test_a_description_cannot_inject_lines(description):
    """Issue 13, defect 1: a description's newline went out unescaped, so a sender could add any
    line (here ``evil.injected,host=prod gauge,999999``) for any key and dimension."""
    metric = Metric("victim.metric", Gauge(1), NOW_NS, description=description)
    encoded = DynatraceSink("http://dt.local", Secret(TOKEN)).encode([metric], NOW_NS)
    [(request, decoded, text)] = _read_back(encoded)
    assert decoded.refused == []
    assert [item["name"] for item in decoded.items] == ["victim.metric"]
    assert decoded.skipped == {"metadata lines": 1}
    assert "evil.injected" not in [line.split(",")[0] for line in text.split("\n")]
    assert decoded.items[0]["description"].startswith("x_evil.injected")
    assert encoded.conversions["description control characters replaced"] == 1


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=repr)
def test_no_text_of_a_metric_can_break_a_line(brk):
    """Description, unit, tag keys and values, and the name: every line break any reader may
    split on (str.splitlines, Dynatrace's own) is replaced, and counted where it was data."""
    metric = Metric(f"victim{brk}metric", Counter(2, "delta"), NOW_NS, ((f"ho{brk}st", f"a{brk}b"), ("zone", '"q\\')),
                    unit=f"m{brk}s", description=f"d{brk}e")
    sink = DynatraceSink("http://dt.local", Secret(TOKEN), default_dimensions={"env": f"p{brk}d"})
    encoded = sink.encode([metric], NOW_NS)
    [(request, decoded, text)] = _read_back(encoded)
    assert len(text.splitlines()) == len(request.lines) == 2  # metadata and data: nothing else
    assert decoded.refused == []
    [item] = decoded.items
    assert item["tags"] == {"ho_st": "a_b", "zone": '"q\\', "env": "p_d"}
    assert (item["unit"], item["description"]) == ("m_s", "d_e")
    replaced = [f"{field} control characters replaced" for field in ("description", "unit", "dimension value")]
    assert {name: encoded.conversions[name] for name in replaced} == dict.fromkeys(replaced, 1)


@pytest.mark.parametrize("text", ["x" * 249 + "\\", "x" * 248 + '"', "\\" * 300, '"' * 300])
def test_cut_descriptions_and_values_never_end_in_a_dangling_escape(text):
    metric = Metric("cut.metric", Gauge(1), NOW_NS, (("tag", text),), description=text)
    encoded = DynatraceSink("http://dt.local", Secret(TOKEN)).encode([metric], NOW_NS)
    [(request, decoded, _)] = _read_back(encoded)
    assert decoded.refused == [] and len(decoded.items) == 1
    [item] = decoded.items
    assert text.startswith(item["tags"]["tag"]) and text.startswith(item["description"])


def test_a_unit_ending_in_a_space_keeps_its_metadata_line_readable():
    """Unquoted, ``dt.meta.unit=ms\\ `` ended its line in an escaped space, which a reader that
    trims lines turns into a dangling backslash: the metadata line was refused."""
    metric = Metric("unit.metric", Gauge(1), NOW_NS, unit="ms ")
    encoded = DynatraceSink("http://dt.local", Secret(TOKEN)).encode([metric], NOW_NS)
    [(request, decoded, text)] = _read_back(encoded)
    assert decoded.refused == [] and decoded.items[0]["unit"] == "ms "
    assert text.split("\n")[0] == '#unit.metric gauge dt.meta.unit="ms "'


def test_suffixed_keys_of_long_names_stay_within_255_characters():
    """Found by tests/test_sink_roundtrip.py: a 250-character key became a 257-character
    ``<key>_bucket``, which Dynatrace refuses."""
    name = "a" * 255
    metrics = [Metric(name, Histogram(1, 2.0, (Bucket(1.0, 1),)), NOW_NS), Metric(name, Gauge(1), NOW_NS)]
    [(request, decoded, _)] = _read_back(DynatraceSink("http://dt.local", Secret(TOKEN)).encode(metrics, NOW_NS))
    assert decoded.refused == []
    assert [item["name"] for item in decoded.items] == ["a" * 248 + "_count", "a" * 248 + "_sum", "a" * 248 + "_bucket",
                                                        "a" * 248 + "_bucket", "a" * 250]


def test_dimension_keys_longer_once_lower_cased_are_cut_after():
    """Found by tests/test_sink_roundtrip.py: ``"İ".lower()`` is two characters, so a key cut to
    100 before lower-casing came out at up to 200 (over Dynatrace's 100 and the schema's 128)."""
    assert dimension_key("İ" * 100) == "i_" * 50
