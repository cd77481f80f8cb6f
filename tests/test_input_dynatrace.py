"""The Dynatrace ingest format in: what the Dynatrace sink writes comes back as the same metrics,
Dynatrace's own examples decode, bad lines are refused with Dynatrace-like reasons and answered
in Dynatrace's ValidationResponse shape, and no body makes the decoder fail otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import NOW_NS, drain, outbox_lines

from bridges.delivery.sinks.dynatrace.sink import DynatraceSink
from bridges.formats import BodyError, Decoded, Outcome, Refused, dynatrace
from bridges.ingest.normalize import Normalizer
from bridges.masking import Secret
from bridges.model import DELTA, Aggregate, Bucket, Counter, Gauge, Histogram, Metric, Quantile, Summary

EXAMPLES = Path(__file__).parent / "testdata" / "inputs" / "dynatrace"
NS_PER_MS = 1_000_000
T = NOW_NS - 5 * 60 * 1_000_000_000 + 123 * NS_PER_MS  # inside Dynatrace's window, millisecond precision


def decode(text: str | bytes, content_type: str | None = "text/plain; charset=utf-8") -> Decoded:
    body = text.encode() if isinstance(text, str) else text
    return dynatrace.decode(body, content_type, {}, 1_000_000)


def round_trip(metrics: list[Metric], sink: DynatraceSink | None = None) -> list[Metric]:
    """Encode with the Dynatrace sink, decode every request body, normalize."""
    sink = sink or DynatraceSink("http://dt.local", Secret("dt0c01.TEST"))
    encoded = sink.encode(metrics, NOW_NS)
    assert not encoded.rejected
    back = []
    for request in encoded.requests:
        decoded = dynatrace.decode(request.body, request.headers["Content-Type"], {}, 1_000_000)
        assert decoded.refused == []
        result = Normalizer().normalize(decoded.items, NOW_NS)
        assert result.errors == []
        back += result.metrics
    return back


# --- round trips ------------------------------------------------------------------------------


def test_what_the_sink_writes_comes_back_as_the_same_metrics():
    tags = (("host", "web 1"), ("path", 'a=b,c "q" back\\'), ("region", "eu-west"))
    metrics = [
        Metric("bridge.requests", Gauge(42), T, tags),
        Metric("bridge.load", Gauge(-0.25), T + NS_PER_MS),
        Metric("bridge.big", Gauge(1e16), T),
        Metric("bridge.tiny", Gauge(1.5e-7), T),
        Metric("bridge.latency", Aggregate(0.5, 12.25, 30.0, 7), T, tags[:1]),
        Metric("bridge.sent", Counter(17, DELTA), T, tags[2:]),
        Metric("bridge.fraction", Counter(0.5, DELTA), T),
        Metric("bridge.temperature", Gauge(21.5), T, (), unit="Cel", description='The "room" temperature \\ inside'),
        Metric("bridge.errors", Counter(3, DELTA), T, (), unit="count", description="Errors since the last report"),
    ]
    assert round_trip(metrics) == metrics


def test_metadata_lines_give_the_unit_and_description_to_every_point_of_the_key():
    metrics = [Metric("bridge.queue", Gauge(i), T + i * NS_PER_MS, (("q", str(i)),), unit="count", description="Depth")
               for i in range(3)]
    encoded = DynatraceSink("http://dt.local").encode(metrics, NOW_NS)
    assert encoded.requests[0].body.decode().count("#bridge.queue") == 1  # one metadata line for all three
    assert round_trip(metrics) == metrics


def test_cumulative_counters_come_back_as_gauges_of_the_total():
    metric = Metric("bridge.total", Counter(1234, "cumulative"), T, (("k", "v"),))
    assert round_trip([metric]) == [Metric("bridge.total", Gauge(1234), T, (("k", "v"),))]


def test_histograms_come_back_as_the_gauges_the_sink_sent():
    histogram = Metric("bridge.duration", Histogram(10, 4.5, (Bucket(0.1, 3), Bucket(1.0, 5))), T, (("k", "v"),))
    assert round_trip([histogram]) == [
        Metric("bridge.duration_count", Gauge(10), T, (("k", "v"),)),
        Metric("bridge.duration_sum", Gauge(4.5), T, (("k", "v"),)),
        Metric("bridge.duration_bucket", Gauge(3), T, (("k", "v"), ("le", "0.1"))),
        Metric("bridge.duration_bucket", Gauge(8), T, (("k", "v"), ("le", "1.0"))),
        Metric("bridge.duration_bucket", Gauge(10), T, (("k", "v"), ("le", "+Inf"))),
    ]


def test_summaries_come_back_as_the_gauges_the_sink_sent():
    summary = Metric("bridge.size", Summary(4, 10.0, (Quantile(0.5, 2.0), Quantile(0.99, 4.0))), T)
    assert round_trip([summary]) == [
        Metric("bridge.size_count", Gauge(4), T),
        Metric("bridge.size_sum", Gauge(10.0), T),
        Metric("bridge.size", Gauge(2.0), T, (("quantile", "0.5"),)),
        Metric("bridge.size", Gauge(4.0), T, (("quantile", "0.99"),)),
    ]


def test_the_sinks_prefix_default_dimensions_and_normalization_come_back_as_sent():
    sink = DynatraceSink("http://dt.local", prefix="acme", default_dimensions={"env": "prod", "host": "ignored"})
    metric = Metric("cpu load/1m", Gauge(1), T, (("Host", "a"), ("Bad Key", "b")))
    assert round_trip([metric], sink) == [
        Metric("acme.cpu_load_1m", Gauge(1), T, (("bad_key", "b"), ("env", "prod"), ("host", "a"))),
    ]


# --- Dynatrace's own examples -----------------------------------------------------------------


def test_the_documented_examples_decode_as_expected():
    decoded = decode((EXAMPLES / "examples.txt").read_bytes(), "text/plain")
    expected = json.loads((EXAMPLES / "examples.expected.json").read_text())
    assert [{"line": line, "item": item} for line, item in zip(decoded.origins, decoded.items, strict=True)] == expected["items"]
    assert decoded.skipped == expected["skipped"]
    assert decoded.refused == []
    result = Normalizer().normalize(decoded.items, NOW_NS)
    assert result.errors == [] and len(result.metrics) == len(expected["items"])


def test_the_seed_curl_example():
    decoded = decode("cpu.temperature,dt.entity.host=HOST-06F288EE2A930951,cpu=1 55")
    [metric] = Normalizer().normalize(decoded.items, NOW_NS).metrics
    assert metric == Metric("cpu.temperature", Gauge(55), NOW_NS, (("cpu", "1"), ("dt.entity.host", "HOST-06F288EE2A930951")))


@pytest.mark.parametrize(
    "line, item",
    [
        ("my.metric 55", {"name": "my.metric", "gauge": {"value": 55}}),
        ("my.metric gauge,-1.5e+3", {"name": "my.metric", "gauge": {"value": -1500.0}}),
        ("my.metric gauge,count=2,sum=4,max=3,min=1", {"name": "my.metric", "aggregate": {"min": 1, "max": 3, "sum": 4, "count": 2}}),
        ("my.metric count,delta=0.5", {"name": "my.metric", "counter": {"value": 0.5, "temporality": "delta"}}),
        ("my.metric,a=x,a=y 1", {"name": "my.metric", "gauge": {"value": 1}, "tags": {"a": "x"}}),  # one value kept
        ('my.metric,a="x y, z=\\"q\\"",b=p\\ q\\,r\\=s\\\\ 1', {"name": "my.metric", "gauge": {"value": 1},
                                                               "tags": {"a": 'x y, z="q"', "b": "p q,r=s\\"}}),
        ("my.metric,k= 1", {"name": "my.metric", "gauge": {"value": 1}, "tags": {"k": ""}}),
        ("my.metric\t7\t1795341600000", {"name": "my.metric", "gauge": {"value": 7}, "dt": NOW_NS}),
        ("my.metric 7 1000", {"name": "my.metric", "gauge": {"value": 7}, "dt": "1970-01-01T00:00:01Z"}),
        ("  my.metric 7  \r", {"name": "my.metric", "gauge": {"value": 7}}),
    ],
)
def test_lines(line, item):
    decoded = decode(line)
    assert decoded.refused == []
    assert decoded.items == [item]


def test_metadata_applies_wherever_it_is_and_the_first_of_a_key_and_kind_wins():
    decoded = decode(
        "a.gauge 1\n"
        "a.gauge count,delta=1\n"
        '#a.gauge gauge dt.meta.unit=ms,dt.meta.description="first"\n'
        '#a.gauge gauge dt.meta.unit=s,dt.meta.description="second"\n'
        "#a.gauge count dt.meta.unit=count\n"
        "b.other 2\n"
    )
    assert [(i.get("unit"), i.get("description")) for i in decoded.items] == [("ms", "first"), ("count", None), (None, None)]
    assert decoded.skipped == {"metadata lines": 3}


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, reason",
    [
        ("system.load.1m 5", "failed to parse metric key 'system.load.1m'; error at '1' (index 12)"),
        ("1abc 5", "failed to parse metric key '1abc'; error at '1' (index 0)"),
        ("ab 5", "invalid metric key 'ab': the length must be 3 to 255 characters"),
        ("caf\u00e9.x 5", "failed to parse metric key 'café.x'; error at 'é' (index 3)"),
        ("dt.cpu.usage 5", "invalid metric key 'dt.cpu.usage': the prefix 'dt.' is reserved for Dynatrace"),
        ("my.metric", "missing payload after metric key 'my.metric'"),
        ("my.metric count,5", "invalid count payload 'count,5': a count value is given as the delta field (count,delta=<value>)"),
        ("my.metric gauge,min=1,max=2,sum=3", "all of min, max, sum and count are required (missing count)"),
        ("my.metric gauge,min=1,max=2,sum=3,count=1.5", "count must be a whole number"),
        ("my.metric NaN", "invalid payload 'NaN'"),
        ("my.metric 1e999", "number '1e999' in payload '1e999' is out of range"),
        ("my.metric 5 soon", "invalid timestamp 'soon': expected UTC milliseconds"),
        ("my.metric 5 1 2", "unexpected '2' after the timestamp"),
        ("my.metric,Host=a 5", "invalid dimension key 'Host'"),
        ("my.metric,host 5", "invalid dimension 'host': expected key=value"),
        ('my.metric,host="a 5', "invalid dimension value for 'host': the quoted value is not closed"),
        ('my.metric,host=a"b 5', "invalid dimension value for 'host': a double quote must be escaped"),
        ('my.metric,host="a"b 5', "invalid dimension value for 'host': unexpected 'b' after the closing quote"),
        ("my.metric,host=a\\", "invalid dimension value for 'host': it ends in a lone backslash"),
        ("my.metric," + ",".join(f"d{i}=v" for i in range(51)) + " 1", "too many dimensions (more than 50): at most 50"),
        ("#my.metric gauge", "invalid metadata line"),
        ("#my.metric histogram dt.meta.unit=ms", "unknown payload format 'histogram'"),
        ("#my.metric gauge dt.meta.colour=red", "invalid metadata property 'dt.meta.colour'"),
        ("#my.metric gauge dt.meta.unit=ms dt.meta.description=x", "invalid metadata line: unexpected ' '"),
        ("# just a comment", "invalid metadata line"),
    ],
)
def test_refused_lines(line, reason):
    decoded = decode("ok.metric 1\n\n" + line + "\n")
    assert len(decoded.items) == 1
    [refused] = decoded.refused
    assert refused.origin == 3  # the physical line, blank lines counted
    assert reason in refused.message


def test_reasons_stay_short_for_huge_lines():
    decoded = decode("x" * 100_000 + " 1")
    assert len(decoded.refused[0].message) < 200


def test_a_line_past_50000_characters_is_refused_by_its_length_before_it_is_read():
    huge = "my.metric" + "".join(f",d{i}=v" for i in range(2_500_000)) + " 1"  # 26 MB, 2.5 million dimensions
    decoded = decode("ok.metric 1\n" + huge + "\n" + "x" * 50_001)
    assert len(decoded.items) == 1
    assert [r.message for r in decoded.refused] == [
        f"the line is {len(huge)} characters long: at most 50000 are allowed",
        "the line is 50001 characters long: at most 50000 are allowed"]


def test_reading_a_line_stops_at_the_51st_dimension():
    """Refused as soon as the limit is passed: what follows is never read, however much it is."""
    line = "my.metric" + "".join(f",d{i}=v" for i in range(51)) + ',BAD="never read' + " 1"
    [refused] = decode(line).refused
    assert refused.message == "too many dimensions (more than 50): at most 50 are allowed"


def test_points_that_read_but_are_not_valid_metrics_are_left_to_the_normalizer():
    decoded = decode("a.b gauge,min=3,max=1,sum=4,count=2\na.b gauge,min=1,max=1,sum=0,count=0\na.b count,delta=-1")
    assert decoded.refused == [] and len(decoded.items) == 3
    result = Normalizer().normalize(decoded.items, NOW_NS)
    assert result.rejected == 3 and not result.metrics


# --- whole-body refusals and answers ----------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"\n\n", b"  \r\n\t\n"])
def test_an_empty_body_is_dynatraces_empty_request(body):
    with pytest.raises(BodyError) as caught:
        decode(body)
    assert dynatrace.refuse(caught.value) == (
        400, {"linesOk": 0, "linesInvalid": 0, "error": {"code": 400, "message": "empty request", "invalidLines": []}}, {},
    )


@pytest.mark.parametrize("content_type", ["application/json", "text/csv", "multipart/form-data; boundary=x"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(BodyError) as caught:
        decode("a.b 1", content_type)
    assert caught.value.status == 415
    status, body, _ = dynatrace.refuse(caught.value)
    assert status == 415 and body == {"error": {"code": 415, "message": caught.value.message}}


@pytest.mark.parametrize("content_type", [None, "text/plain", "TEXT/PLAIN; charset=UTF-8", 'text/plain; charset="us-ascii"'])
def test_text_plain_in_any_charset_or_none(content_type):
    assert decode("a.b 1", content_type).items == [{"name": "a.b", "gauge": {"value": 1}}]


def test_the_declared_charset_is_read_and_bytes_that_are_not_in_it_are_400():
    assert decode("a.b,city=K\u00f6ln 1".encode("latin-1"), "text/plain; charset=iso-8859-1").items[0]["tags"] == {"city": "Köln"}
    with pytest.raises(BodyError) as caught:
        decode(b"a.b,city=K\xf6ln 1", "text/plain")
    assert caught.value.status == 400 and caught.value.where == {"position": 10}
    with pytest.raises(BodyError) as caught:
        decode(b"a.b 1", "text/plain; charset=klingon")
    assert caught.value.status == 415


def test_all_lines_taken_is_202_with_counts():
    outcome = Outcome(accepted=3, rejected=0, problems=[], units=4, skipped={"metadata lines": 1})
    assert dynatrace.answer(outcome) == (202, {"linesOk": 4, "linesInvalid": 0, "error": None, "warnings": None}, {})


def test_invalid_lines_are_400_with_each_line_listed_once():
    problems = [Refused(2, "invalid payload 'x'"), Refused(5, "/aggregate/sum: sum/count (9) must lie between min and max"),
                Refused(5, "/tags: too many")]
    status, body, _ = dynatrace.answer(Outcome(accepted=7, rejected=2, problems=problems, units=10))
    assert status == 400
    assert body == {
        "linesOk": 8, "linesInvalid": 2, "warnings": None,
        "error": {"code": 400, "message": "2 invalid lines", "invalidLines": [
            {"line": 2, "error": "invalid payload 'x'"},
            {"line": 5, "error": "/aggregate/sum: sum/count (9) must lie between min and max; /tags: too many"},
        ]},
    }


def test_only_the_first_ten_invalid_lines_are_listed():
    problems = [Refused(line, "invalid metric key") for line in range(1, 30)]
    status, body, _ = dynatrace.answer(Outcome(accepted=163, rejected=29, problems=problems, units=192))
    assert status == 400
    assert (body["linesOk"], body["linesInvalid"]) == (163, 29)
    assert body["error"]["message"] == "First 10 errors reported"
    assert [entry["line"] for entry in body["error"]["invalidLines"]] == list(range(1, 11))


def test_through_the_bridge_valid_lines_are_kept_and_the_invalid_one_is_listed(bridge):
    body = b"bridge.a,host=h1 1\n#bridge.a gauge dt.meta.unit=ms\n\nbridge.b count,5\nbridge.c gauge,min=1,max=2,sum=3,count=2\n"
    reply = bridge.receive(dynatrace, body, "text/plain; charset=utf-8")
    assert reply.status == 400
    assert reply.body["linesOk"] == 3 and reply.body["linesInvalid"] == 1
    assert reply.body["error"]["invalidLines"][0]["line"] == 4
    drain(bridge)
    kept = outbox_lines(bridge)
    assert [(m["name"], m.get("unit")) for m in kept] == [("bridge.a", "ms"), ("bridge.c", None)]


def test_through_the_bridge_a_clean_body_is_202(bridge):
    reply = bridge.receive(dynatrace, b"bridge.a 1\nbridge.b count,delta=2\n", "text/plain")
    assert (reply.status, reply.body) == (202, {"linesOk": 2, "linesInvalid": 0, "error": None, "warnings": None})


def test_through_the_bridge_an_empty_body_is_the_empty_request(bridge):
    reply = bridge.receive(dynatrace, b"", "text/plain")
    assert reply.status == 400 and reply.body["error"]["message"] == "empty request"


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)
VALID = (EXAMPLES / "examples.txt").read_text() + 'a.b,k="v\\" w",x=y\\ z 1.5e+3 1795341600000\n'
CONTENT_TYPES = st.sampled_from([None, "text/plain", "text/plain; charset=utf-8", "text/plain; charset=latin-1",
                                 "text/plain; charset=utf-16", "text/plain; charset=base64", "application/json"])


def _survives(body: bytes, content_type: str | None) -> None:
    """A Decoded that normalizes and answers, or a BodyError with a 4xx status; nothing else."""
    try:
        decoded = dynatrace.decode(body, content_type, {}, 1_000_000)
    except BodyError as error:
        assert 400 <= error.status < 500
        status, answer, _ = dynatrace.refuse(error)
        assert status == error.status and "error" in answer
        return
    assert len(decoded.origins) == len(decoded.items)
    result = Normalizer().normalize(decoded.items, NOW_NS, lambda i: "")
    units = len(decoded.items) + len(decoded.refused) + sum(decoded.skipped.values())
    rejected = len(decoded.refused) + result.rejected
    problems = decoded.refused + [  # as the pipeline words them: the field's pointer in the item first
        Refused(decoded.origins[e.index], f"{e.pointer}: {e.message}" if e.pointer else e.message) for e in result.errors]
    status, answer, _ = dynatrace.answer(Outcome(len(result.metrics), rejected, problems, units))
    assert status in (202, 400) and answer["linesOk"] + answer["linesInvalid"] == units
    json.dumps(answer)


@FUZZ
@given(body=st.binary(max_size=300), content_type=CONTENT_TYPES)
def test_fuzz_arbitrary_bytes(body, content_type):
    _survives(body, content_type)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list('ab.1-_, ="\\#\t\n=egcountdltmixsu') + ["\u00e9", "\x00"]), max_size=80))
def test_fuzz_line_like_text(text):
    _survives(text.encode(), "text/plain")


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 3), st.text(max_size=3)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_bodies(edits):
    text = VALID
    for position, removed, inserted in edits:
        text = text[:position] + inserted + text[position + removed:]
    _survives(text.encode("utf-8", "surrogatepass"), "text/plain")


def test_through_the_http_trigger_the_answer_is_json(bridge):
    import azure.functions as func

    from bridges.triggers.http import ingest_dynatrace

    request = func.HttpRequest("POST", "http://localhost/api/v2/metrics/ingest", headers={"Content-Type": "text/plain"},
                               body=(EXAMPLES / "examples.txt").read_bytes())
    response = ingest_dynatrace(request)
    assert response.status_code == 202
    assert json.loads(response.get_body()) == {"linesOk": 12, "linesInvalid": 0, "error": None, "warnings": None}
