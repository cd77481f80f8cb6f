"""Prometheus remote-write 1.0 in: what the Prometheus sink sends comes back as the same metrics,
types are recovered from metadata or naming, bad series and samples are refused with their
origin, snappy and protobuf failures refuse the body, answers follow the spec, and no input
makes the decoder fail otherwise."""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS, drain, outbox_lines

from bridges.delivery.sinks.prometheus.sink import PrometheusSink
from bridges.formats import BodyError, Outcome, Refused, remote_write
from bridges.ingest.normalize import Normalizer
from bridges.model import CUMULATIVE, DELTA, Aggregate, Bucket, Counter, Gauge, Histogram, Metric, Quantile, Summary

CASES = Path(__file__).parent / "testdata" / "inputs" / "remote_write"
URL = "http://127.0.0.1:9/api/v1/write"
TYPE = "application/x-protobuf"
LIMIT = 1_000_000
AT = NOW_NS  # a whole millisecond, as remote-write carries
STALE = struct.unpack("<d", struct.pack("<Q", remote_write.STALE_NAN))[0]
SPECIAL = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf, "stale": STALE}


def body_of(request: dict) -> bytes:
    """protobuf + snappy of a readable request (see testdata/inputs/remote_write/README.md)."""
    WriteRequest = remote_write.messages()[0]
    message = WriteRequest()
    for series in request.get("timeseries", []):
        entry = message.timeseries.add()
        for name, value in series["labels"]:
            entry.labels.add(name=name, value=value)
        for value, stamp in series["samples"]:
            entry.samples.add(value=SPECIAL.get(value, value), timestamp=stamp)
    for metadata in request.get("metadata", []):
        message.metadata.add(**metadata)
    return remote_write.compress(message.SerializeToString())


def series(*labels: tuple[str, str], samples=((1.0, AT // 1_000_000),)) -> dict:
    return {"labels": list(labels), "samples": [list(s) for s in samples]}


def decode(request: dict | bytes, content_type: str | None = TYPE, max_bytes: int = LIMIT):
    body = request if isinstance(request, bytes) else body_of(request)
    return remote_write.decode(body, content_type, {}, max_bytes)


def as_json(decoded) -> dict:
    return {"items": decoded.items, "origins": decoded.origins,
            "refused": [[r.origin, r.message] for r in decoded.refused], "skipped": decoded.skipped}


def normalized(decoded) -> list[Metric]:
    result = Normalizer().normalize(decoded.items, NOW_NS)
    assert result.errors == [], result.errors
    return result.metrics


def sent_and_read(metrics: list[Metric], **sink_options) -> list[Metric]:
    """Encode with the Prometheus sink, decode every request body, normalize."""
    encoded = PrometheusSink(URL, None, **sink_options).encode(metrics, NOW_NS)
    assert encoded.rejected == []
    back = []
    for request in encoded.requests:
        assert request.headers["Content-Encoding"] in remote_write.OWN_ENCODINGS
        back += normalized(remote_write.decode(request.body, request.headers["Content-Type"], {}, LIMIT))
    return back


# --- round trips through the Prometheus sink -------------------------------------------------


def test_what_the_sink_sends_comes_back_as_the_same_metrics():
    tags = (("host", "web-1"), ("region", "eu"))
    metrics = [
        Metric("queue_depth", Gauge(-3.25), AT, tags),
        Metric("http_requests_total", Counter(1027), AT, tags),
        Metric("bytes_sent", Counter(512, DELTA), AT, tags),
        Metric("latency_seconds", Histogram(10, 4.5, (Bucket(0.1, 2), Bucket(0.5, 5), Bucket(1.0, 0))), AT, tags),
        Metric("empty_histogram", Histogram(3, 9.0, ()), AT),
        Metric("rpc_seconds", Summary(9, 12.5, (Quantile(0.5, 1.0), Quantile(0.9, 2.0), Quantile(0.99, 4.0))), AT, tags),
        Metric("cpu", Aggregate(0.5, 3.5, 8.0, 4), AT, tags),
        Metric("up", Gauge(1), AT + 15_000_000_000, (("job", "x"),)),
    ]
    assert sorted(sent_and_read(metrics), key=repr) == sorted(metrics, key=repr)


def test_what_the_wire_cannot_say_comes_back_as_documented():
    described = Metric("temperature", Gauge(21.5), AT + 123_456, (("room", "a b"), ("1st", "x"), ("empty", "")),
                       unit="Cel", description="Room temperature", namespace="home")
    metrics = [
        described,
        Metric("requests", Counter(5, CUMULATIVE), AT),  # not named *_total: a gauge
        Metric("jobs", Summary(4, 10.0, ()), AT),  # no quantiles: two gauges
        Metric("cpu.load", Gauge(0.5), AT),
    ]
    assert sorted(sent_and_read(metrics), key=repr) == sorted([
        # times to the millisecond; tag names sanitized, empty tags dropped; no unit, description, namespace
        Metric("temperature", Gauge(21.5), AT, (("_1st", "x"), ("room", "a b"))),
        Metric("requests", Gauge(5), AT),
        Metric("jobs_sum", Gauge(10.0), AT),
        Metric("jobs_count", Gauge(4), AT),
        Metric("cpu_load", Gauge(0.5), AT),
    ], key=repr)


def test_many_requests_and_many_points_of_one_series_come_back():
    metrics = [Metric("g", Gauge(i), AT + i * 1_000_000_000, (("i", str(i % 7)),)) for i in range(50)]
    metrics += [Metric("h", Histogram(i + 1, float(i), (Bucket(1.0, i),)), AT + i * 1_000_000_000) for i in range(10)]
    assert sorted(sent_and_read(metrics, max_samples=13), key=repr) == sorted(metrics, key=repr)


def test_the_spec_test_vector_decodes():
    body = bytes.fromhex("2eb40a2c0a0e0a085f5f6e616d655f5f120275700a080a036a6f62120178121009000000000000f03f1080d095ffbc31")
    decoded = decode(body)
    assert (decoded.items, decoded.origins) == ([{"name": "up", "gauge": {"value": 1.0}, "tags": {"job": "x"},
                                                 "dt": 1_700_000_000_000_000_000}], ["timeseries[0]"])


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_examples(case):
    """``UPDATE_GOLDEN=1`` rewrites expected.json: read every change before keeping it."""
    produced = as_json(decode(json.loads((case / "request.json").read_text())))
    expected = case / "expected.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(json.dumps(produced, indent=1) + "\n")
    assert produced == json.loads(expected.read_text())
    Normalizer().normalize(produced["items"], NOW_NS)  # and every item is readable by validation


def test_a_scrape_keeps_its_types():
    metrics = normalized(decode(json.loads((CASES / "scrape" / "request.json").read_text())))
    kinds = {(m.name, m.kind) for m in metrics}
    assert kinds == {("up", "gauge"), ("http_requests_total", "counter"), ("http_request_duration_seconds", "histogram"),
                     ("rpc_duration_seconds", "summary"), ("gc_duration_seconds", "summary"), ("go_goroutines", "gauge"),
                     ("cache_bytes_bucket", "gauge"), ("cache_bytes_sum", "gauge")}
    [histogram] = [m.point for m in metrics if m.kind == "histogram"]
    assert histogram == Histogram(144320, 53423.0, (Bucket(0.05, 24054), Bucket(0.1, 9390), Bucket(0.5, 95945)))
    assert histogram.overflow == 144320 - 129389
    [empty] = [m.point for m in metrics if m.name == "gc_duration_seconds"]
    assert empty == Summary(0, 0.0, ())  # its NaN quantile left out


def test_metadata_decides_types_and_gives_description_and_unit():
    by_name = {m.name: m for m in normalized(decode(json.loads((CASES / "metadata" / "request.json").read_text())))}
    assert by_name["process_cpu_seconds"].point == Counter(12.5)  # COUNTER without _total
    assert (by_name["process_cpu_seconds"].unit, by_name["process_cpu_seconds"].description) == (
        "seconds", "Total user and system CPU time spent in seconds.")
    assert by_name["requests_total"].point == Counter(7)
    assert by_name["requests_total"].description.startswith("Requests handled")
    assert by_name["queue_total"].point == Gauge(3)  # GAUGE wins over the name
    assert by_name["build_info"].point == Gauge(1)
    assert by_name["latency_seconds"].point == Histogram(3, 2.5, (Bucket(1.0, 2),))
    assert by_name["latency_seconds"].unit == "seconds"
    assert by_name["jobs_seconds"].point == Summary(4, 9.0, ())  # SUMMARY: _sum and _count alone are one summary


def test_incomplete_or_inconsistent_families_fall_back_to_gauges():
    ms = AT // 1_000_000

    def family(*parts):
        return {"timeseries": [series(("__name__", name), *labels, samples=[(value, ms)]) for name, labels, value in parts]}

    cases = {
        "no _count": [("h_bucket", [("le", "1")], 1), ("h_bucket", [("le", "+Inf")], 2), ("h_sum", [], 3)],
        "counts go down": [("h_bucket", [("le", "1")], 5), ("h_bucket", [("le", "+Inf")], 2), ("h_sum", [], 3),
                           ("h_count", [], 2)],
        "+Inf is not the count": [("h_bucket", [("le", "+Inf")], 2), ("h_sum", [], 3), ("h_count", [], 4)],
        "a count that is not whole": [("s", [("quantile", "0.5")], 1), ("s_sum", [], 3), ("s_count", [], 2.5)],
        "a bound twice": [("h_bucket", [("le", "1")], 1), ("h_bucket", [("le", "1.0")], 1), ("h_sum", [], 3),
                          ("h_count", [], 2)],
        "min over max": [("a_min", [], 5), ("a_max", [], 1), ("a_sum", [], 6), ("a_count", [], 2)],
    }
    for reason, parts in cases.items():
        metrics = normalized(decode(family(*parts)))
        assert [(m.name, m.kind, m.tag_dict()) for m in metrics] == [
            (name, "gauge", dict(labels)) for name, labels, _ in parts], reason


def test_families_group_by_labels_and_timestamp():
    ms = AT // 1_000_000
    request = {"timeseries": [
        series(("__name__", "h_bucket"), ("le", "+Inf"), ("pod", "a"), samples=[(2, ms), (3, ms + 1000)]),
        series(("__name__", "h_bucket"), ("le", "+Inf"), ("pod", "b"), samples=[(1, ms)]),
        series(("__name__", "h_count"), ("pod", "a"), samples=[(2, ms), (3, ms + 1000)]),
        series(("__name__", "h_count"), ("pod", "b"), samples=[(1, ms)]),
        series(("__name__", "h_sum"), ("pod", "a"), samples=[(4, ms), (6, ms + 1000)]),
        series(("__name__", "h_sum"), ("pod", "b"), samples=[(1, ms)]),
    ]}
    decoded = decode(request)
    assert decoded.origins == ["timeseries[0,2,4]", "timeseries[0,2,4]", "timeseries[1,3,5]"]
    assert [(m.tag_dict()["pod"], m.time_ns, m.point) for m in normalized(decoded)] == [
        ("a", AT, Histogram(2, 4.0, ())), ("a", AT + 1_000_000_000, Histogram(3, 6.0, ())), ("b", AT, Histogram(1, 1.0, ()))]


def test_delta_and_total_names_with_negative_values_stay_gauges():
    ms = AT // 1_000_000
    decoded = decode({"timeseries": [series(("__name__", "x_delta"), samples=[(-1, ms)]),
                                     series(("__name__", "y_total"), samples=[(-2, ms)]),
                                     series(("__name__", "_delta"), samples=[(1, ms)])]})
    assert [(m.name, m.point) for m in normalized(decoded)] == [("x_delta", Gauge(-1)), ("y_total", Gauge(-2)),
                                                                 ("_delta", Gauge(1))]


def test_small_timestamps_are_exact():
    decoded = decode({"timeseries": [series(("__name__", "g"), samples=[(1, 0), (2, 1500)])]})
    assert [m.time_ns for m in normalized(decoded)] == [0, 1_500_000_000]


# --- refusals ---------------------------------------------------------------------------------


def test_nan_quantiles_without_their_sum_and_count_are_skipped_not_refused():
    """Prometheus shards its queue by series, so a summary's quantiles can arrive without their
    _sum and _count; NaN is still an empty summary's quantile, not a refused sample (which would be a 400)."""
    decoded = decode({"timeseries": [
        series(("__name__", "prometheus_engine_query_duration_seconds"), ("quantile", q), samples=(("NaN", AT // 1_000_000),))
        for q in ("0.5", "0.9", "0.99")] + [series(("__name__", "lonely"), ("quantile", "0.5"))]})
    assert decoded.refused == [] and decoded.skipped == {remote_write.SKIPPED_NAN_QUANTILE: 3}
    assert decoded.items == [{"name": "lonely", "gauge": {"value": 1.0}, "tags": {"quantile": "0.5"}, "dt": AT}]


def test_bad_series_and_samples_are_refused_with_their_origin():
    decoded = decode(json.loads((CASES / "refusals" / "request.json").read_text()))
    assert [(r.origin, r.message) for r in decoded.refused] == [
        ("timeseries[0]", "the series has no __name__ label"),
        ("timeseries[1].samples[0]", "the label 'job' appears twice"),
        ("timeseries[1].samples[1]", "the label 'job' appears twice"),
        ("timeseries[2]", "a label has an empty name"),
        ("timeseries[8]", "timestamp -1000 ms is before 1970"),
        ("timeseries[3]", "the value NaN cannot be carried: metrics hold finite numbers only"),
        ("timeseries[4]", "the value +Inf cannot be carried: metrics hold finite numbers only"),
    ]
    assert decoded.skipped == {remote_write.SKIPPED_EMPTY: 1, remote_write.SKIPPED_STALE: 1}
    assert decoded.origins == ["timeseries[5]", "timeseries[6].samples[0]", "timeseries[6].samples[1]"]
    assert decoded.items[1] == {"name": "old", "gauge": {"value": 1.0}, "dt": "1970-01-01T00:00:00Z"}  # empty label: none


def test_the_body_is_refused_when_it_cannot_be_read():
    protobuf = bytes.fromhex("0a2c0a0e0a085f5f6e616d655f5f120275700a080a036a6f62120178121009000000000000f03f1080d095ffbc31")
    cases = {
        b"": (400, "empty"),
        bytes(cramjam.snappy.compress(protobuf)): (400, "framed snappy"),
        b"\x05garbage": (400, "not snappy block data"),
        b"\xff\xff\xff\xff\xff\xff": (400, "length at its start is malformed"),
        remote_write.compress(b"\x0a\x05\x0a\x03"): (400, "not a remote-write WriteRequest"),
        remote_write.compress(b"\x0a\x04\x0a\x02\x0a\x80"): (400, "not a remote-write WriteRequest"),
    }
    for body, (status, text) in cases.items():
        with pytest.raises(BodyError) as caught:
            decode(body)
        assert (caught.value.status, text in caught.value.message) == (status, True), (body, caught.value.message)


def test_a_body_that_would_inflate_beyond_the_limit_is_refused_before_inflating(monkeypatch):
    def never(_):
        raise AssertionError("inflated")

    monkeypatch.setattr(cramjam.snappy, "decompress_raw", never)
    bomb = b"\x80\x80\x80\x80\x08" + b"\x00" * 10  # declares 2**31 bytes
    with pytest.raises(BodyError) as caught:
        decode(bomb, max_bytes=1000)
    assert caught.value.status == 413 and "2147483648 bytes" in caught.value.message
    with pytest.raises(BodyError) as caught:
        decode(remote_write.compress(b"\x00" * 1001), max_bytes=1000)
    assert caught.value.status == 413


@pytest.mark.parametrize("content_type, status", [
    ("application/x-protobuf", None), (None, None), ("application/x-protobuf;proto=prometheus.WriteRequest", None),
    ("application/x-protobuf;proto=io.prometheus.write.v2.Request", 415), ("application/json", 415), ("text/plain", 415),
])
def test_content_types(content_type, status):
    body = body_of({"timeseries": [series(("__name__", "up"))]})
    if status is None:
        assert len(decode(body, content_type).items) == 1
    else:
        with pytest.raises(BodyError) as caught:
            decode(body, content_type)
        assert caught.value.status == status


# --- answers ----------------------------------------------------------------------------------


def test_answers():
    assert remote_write.answer(Outcome(accepted=3, rejected=0, problems=[], units=4, skipped={"x": 1})) == (204, None, {})
    problems = [Refused(f"timeseries[{i}]", f"reason {i}") for i in range(5)]
    assert remote_write.answer(Outcome(accepted=1, rejected=6, problems=problems, units=7)) == (400, {
        "error": "6 samples refused: timeseries[0]: reason 0; timeseries[1]: reason 1; timeseries[2]: reason 2 (and 3 more)"}, {})
    assert remote_write.answer(Outcome(0, 1, problems[:1], 1)) == (400, {"error": "1 sample refused: timeseries[0]: reason 0"}, {})
    assert remote_write.refuse(BodyError(413, "too big")) == (413, {"error": "too big"}, {})


def test_through_the_bridge(bridge):
    ms = AT // 1_000_000
    good = body_of({"timeseries": [series(("__name__", "up"), ("job", "x"), samples=[(1, ms)])]})
    reply = bridge.receive(remote_write, good, TYPE, "snappy")
    assert (reply.status, reply.body) == (204, None)
    drain(bridge)
    assert outbox_lines(bridge) == [{"name": "up", "gauge": {"value": 1.0}, "tags": {"job": "x"},
                                     "dt": "2026-11-22T10:00:00Z"}]
    mixed = body_of({"timeseries": [series(("__name__", "a"), samples=[(1, ms)]),
                                    series(("__name__", "b"), samples=[(math.nan, ms)]),
                                    {"labels": [["__name__", "c"]] * 2, "samples": [[1, ms]]}]})
    reply = bridge.receive(remote_write, mixed, TYPE, "snappy")
    assert reply.status == 400
    assert reply.body["error"].startswith("2 samples refused: timeseries[1]: the value NaN")
    assert "timeseries[2]: the label '__name__' appears twice" in reply.body["error"]
    reply = bridge.receive(remote_write, bytes(cramjam.snappy.compress(b"x")), TYPE, "snappy")
    assert reply.status == 400 and "framed snappy" in reply.body["error"]


# --- fuzzing ----------------------------------------------------------------------------------


def _decodes_or_refuses(body: bytes, max_bytes: int = 100_000) -> None:
    try:
        decoded = remote_write.decode(body, TYPE, {}, max_bytes)
    except BodyError as exc:
        assert 400 <= exc.status < 500
        return
    assert len(decoded.items) == len(decoded.origins)
    Normalizer().normalize(decoded.items, NOW_NS)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(body):
    _decodes_or_refuses(body)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_protobuf_bytes(protobuf):
    _decodes_or_refuses(remote_write.compress(protobuf))


_VALID = [json.loads((case / "request.json").read_text()) for case in sorted(CASES.iterdir()) if case.is_dir()]
_VALID_PROTOBUF = [remote_write.decompress(body_of(request)) for request in _VALID]


@FUZZ
@given(st.sampled_from(_VALID_PROTOBUF), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       st.booleans())
def test_fuzz_mutated_valid_bodies(protobuf, changes, compressed_after):
    """Bytes of a valid request changed, before snappy (protobuf damage) or after (snappy damage)."""
    data = bytearray(protobuf if compressed_after else remote_write.compress(protobuf))
    for position, value in changes:
        data[position % len(data)] = value
    _decodes_or_refuses(remote_write.compress(bytes(data)) if compressed_after else bytes(data))


@FUZZ
@given(st.lists(st.tuples(
    st.sampled_from(["up", "h_bucket", "h_sum", "h_count", "s", "s_sum", "s_count", "a_min", "a_max", "x_total", "x_delta", ""]),
    st.dictionaries(st.sampled_from(["le", "quantile", "job", ""]), st.sampled_from(["0.5", "1", "+Inf", "NaN", "x", ""]),
                    max_size=3),
    st.sampled_from([0.0, 1.0, 2.0, 2.5, -1.0, math.nan, math.inf, STALE]),
    st.sampled_from([0, 1500, AT // 1_000_000])), max_size=12))
def test_fuzz_families(entries):
    """Any mix of family-looking series decodes, and every item it gives passes validation
    (families fall back to gauges rather than failing)."""
    request = {"timeseries": [series(("__name__", name), *labels.items(), samples=[(value, ms)])
                              for name, labels, value, ms in entries]}
    decoded = decode(request)
    result = Normalizer().normalize(decoded.items, NOW_NS)
    assert [e.message for e in result.errors] == []


# --- the decoder's own reading of series equals the protobuf runtime's ------------------------
# decode reads each TimeSeries from its bytes (the label set by the runtime, cached); these
# check that it gives what reading the whole WriteRequest through the runtime gives.


def _runtime_series(protobuf: bytes) -> tuple[list, dict]:
    """The reference: every series' labels and samples, and the metadata, read by the runtime."""
    request = remote_write.messages()[0].FromString(protobuf)
    series = [(tuple((label.name, label.value) for label in entry.labels),
               [(sample.value, sample.timestamp) for sample in entry.samples]) for entry in request.timeseries]
    return series, {m.metric_family_name: m for m in request.metadata}


def _bits(series: list) -> list:
    """Series with values as their bits, so NaNs (staleness markers included) compare exactly."""
    return [(pairs, [(struct.pack("<d", value), ms) for value, ms in samples]) for pairs, samples in series]


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + remote_write._varint(len(payload)) + payload


_NAMES = st.sampled_from(["__name__", "le", "quantile", "job", "", "ünï", "x" * 130]) | st.text(max_size=4)
_VALUES = st.sampled_from(["up", "h_bucket", "h_sum", "h_count", "s", "s_sum", "s_count", "a_min", "a_max", "a_sum",
                           "a_count", "x_total", "x_delta", "0.5", "1", "+Inf", "NaN", "", "名前", "v" * 200]) | st.text(max_size=4)
_NUMBERS = st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.5, -1.0, math.nan, math.inf, -math.inf, STALE]) | st.floats()
_STAMPS = st.sampled_from([0, 1, 1500, AT // 1_000_000, -1, -1000, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
_SERIES = st.tuples(st.lists(st.tuples(_NAMES, _VALUES), max_size=5), st.lists(st.tuples(_NUMBERS, _STAMPS), max_size=3),
                    st.booleans())
_METADATA = st.lists(st.fixed_dictionaries({"type": st.integers(0, 7), "metric_family_name": _VALUES,
                                            "help": st.sampled_from(["", "Help."]), "unit": st.sampled_from(["", "s"])}),
                     max_size=3)


def _write_request(data, entries: list, metadata: list) -> bytes:
    """WriteRequest bytes; a series marked so has its fields shuffled and an unknown field added,
    which protobuf allows and the runtime reads alike."""
    _, TimeSeries, Label, Sample = remote_write.messages()
    out = b""
    for labels, samples, shuffled in entries:
        label_fields = [_field(1, Label(name=n, value=v).SerializeToString()) for n, v in labels]
        sample_fields = [_field(2, Sample(value=v, timestamp=t).SerializeToString()) for v, t in samples]
        if shuffled:
            fields = data.draw(st.permutations(label_fields + sample_fields + [b"\x18\x05", _field(7, b"?")]))
            body = b"".join(fields)
        else:
            body = TimeSeries(labels=[Label(name=n, value=v) for n, v in labels],
                              samples=[Sample(value=v, timestamp=t) for v, t in samples]).SerializeToString()
        out += _field(1, body)
    WriteRequest = remote_write.messages()[0]
    return out + b"".join(_field(3, WriteRequest(metadata=[m]).metadata[0].SerializeToString()) for m in metadata)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(_SERIES, max_size=8), _METADATA, st.booleans())
def test_decode_reads_series_as_the_protobuf_runtime_does(data, entries, metadata, twice):
    entries = entries + entries[:2]  # label sets that repeat, read from the cache
    remote_write.KNOWN.clear()  # each example knows only its own metadata
    protobuf = _write_request(data, entries, metadata)
    series, by_name = _runtime_series(protobuf)
    request = remote_write._parse(protobuf, "WriteRequestSeriesAsBytes")
    read = [remote_write._series(entry) for entry in request.timeseries]
    assert _bits([(labels.pairs, samples) for labels, samples in read]) == _bits(series)
    expected = as_json(remote_write._decoded([(remote_write._label_set(pairs), samples) for pairs, samples in series], by_name))
    for _ in range(2 if twice else 1):
        assert as_json(decode(remote_write.compress(protobuf))) == expected


def test_invalid_utf8_in_labels_refuses_the_body_even_after_the_valid_labels_were_cached():
    Label = remote_write.messages()[2]
    good = _field(1, _field(1, Label(name="__name__", value="up").SerializeToString()) + b"\x12\x00")
    bad_label = b"\x0a\x08__name__\x12\x02\xff\xfe"
    for body in (good, good + _field(1, _field(1, bad_label) + b"\x12\x00"), good + _field(1, b"\x12\x00" + _field(1, bad_label))):
        if body is good:
            assert len(decode(remote_write.compress(body)).items) == 1
            continue
        with pytest.raises(BodyError) as caught:
            decode(remote_write.compress(body))
        assert caught.value.status == 400 and "not a remote-write WriteRequest" in caught.value.message


@pytest.mark.parametrize("series", [
    b"\x0a\x06\x0a\x04ab",  # a label cut short
    b"\x0a\x0c\x0a\x08__name__\x12\x02up\x12\x05\x09\x00\x00",  # a sample cut short
    b"\x0a\x0c\x0a\x08__name__\x12\x02up\x12\x02\x10\x80",  # a timestamp cut short
    b"\x0a\x0c\x0a\x08__name__\x12\x02up\x12\x0b\x10" + b"\xff" * 10,  # a timestamp too long
])
def test_damaged_series_refuse_the_body(series):
    with pytest.raises(BodyError) as caught:
        decode(remote_write.compress(_field(1, series)))
    assert caught.value.status == 400


def test_a_family_part_sent_twice_loses_neither_sample():
    """Two h_sum samples of one family (same labels and time) make it inconsistent: every
    sample comes back as a gauge rather than one silently replacing the other."""
    from bridges.formats import remote_write
    from bridges.ingest.normalize import Normalizer

    series = [((("__name__", "h_sum"), ("job", "a")), 1.5, 1_000), ((("__name__", "h_sum"), ("job", "a")), 2.5, 1_000),
              ((("__name__", "h_count"), ("job", "a")), 3.0, 1_000)]
    decoded = remote_write.decode(remote_write.compress(remote_write.write_request(series)), "application/x-protobuf",
                                  {}, 1 << 20)
    metrics = Normalizer().normalize(decoded.items, 0).metrics
    assert sorted((m.name, m.point.value) for m in metrics) == [("h_count", 3.0), ("h_sum", 1.5), ("h_sum", 2.5)]


# --- metadata kept across requests ----------------------------------------------------------
# Prometheus sends HELP, TYPE and UNIT in metadata-only requests of their own; the process
# remembers them (bounded) and applies them to later samples of the family.


@pytest.fixture(autouse=True)
def _knowing_no_family():
    """Every test here starts, and leaves the process, with no family's metadata remembered."""
    remote_write.KNOWN.clear()
    yield
    remote_write.KNOWN.clear()


def _metadata(family: str, kind: str, help: str = "", unit: str = "") -> dict:
    return {"type": kind, "metric_family_name": family, "help": help, "unit": unit}


def test_metadata_of_one_request_applies_to_the_samples_of_the_next():
    ms = AT // 1_000_000
    only_metadata = decode({"metadata": [
        _metadata("jobs_done", "COUNTER", "Jobs finished.", "jobs"),
        _metadata("wait_seconds", "HISTOGRAM", "Time waited in the queue.", "seconds"),
        _metadata("run_seconds", "SUMMARY", "Run times."),
        _metadata("shape_bucket", "GAUGE", "Named like buckets, but a gauge."),
    ]})
    assert (only_metadata.items, only_metadata.refused) == ([], [])  # answered 204, and remembered
    samples = decode({"timeseries": [
        series(("__name__", "jobs_done"), samples=[(5, ms)]),
        series(("__name__", "wait_seconds_bucket"), ("le", "1"), samples=[(2, ms)]),
        series(("__name__", "wait_seconds_bucket"), ("le", "+Inf"), samples=[(3, ms)]),
        series(("__name__", "wait_seconds_sum"), samples=[(2.5, ms)]),
        series(("__name__", "wait_seconds_count"), samples=[(3, ms)]),
        series(("__name__", "run_seconds_sum"), samples=[(9, ms)]),
        series(("__name__", "run_seconds_count"), samples=[(4, ms)]),
        series(("__name__", "shape_bucket"), ("le", "1"), samples=[(7, ms)]),
    ]})
    by_name = {m.name: m for m in normalized(samples)}
    assert (by_name["jobs_done"].point, by_name["jobs_done"].description, by_name["jobs_done"].unit) == (
        Counter(5), "Jobs finished.", "jobs")  # COUNTER without _total: only the metadata says so
    wait = by_name["wait_seconds"]
    assert (wait.point, wait.description, wait.unit) == (
        Histogram(3, 2.5, (Bucket(1.0, 2),)), "Time waited in the queue.", "seconds")
    assert by_name["run_seconds"].point == Summary(4, 9.0, ())  # no quantiles: a summary only by its metadata
    assert by_name["run_seconds"].description == "Run times."
    assert (by_name["shape_bucket"].point, by_name["shape_bucket"].description) == (
        Gauge(7), "Named like buckets, but a gauge.")
    assert samples.origins == ["timeseries[0]", "timeseries[1,2,3,4]", "timeseries[5,6]", "timeseries[7]"]
    # Without the earlier metadata the same request says less: the naming rules alone.
    remote_write.KNOWN.clear()
    alone = {m.name: m for m in normalized(decode(body_of({"timeseries": [
        series(("__name__", "jobs_done"), samples=[(5, ms)]), series(("__name__", "run_seconds_sum"), samples=[(9, ms)]),
        series(("__name__", "run_seconds_count"), samples=[(4, ms)])]})))}
    assert (alone["jobs_done"].point, alone["jobs_done"].description) == (Gauge(5), None)
    assert set(alone) == {"jobs_done", "run_seconds_sum", "run_seconds_count"}


def test_a_request_s_own_metadata_wins_and_teaches_the_next():
    ms = AT // 1_000_000
    decode({"metadata": [_metadata("depth", "GAUGE", "Remembered help.", "items")]})
    same_request = decode({"timeseries": [series(("__name__", "depth"), samples=[(1, ms)])],
                           "metadata": [_metadata("depth", "GAUGE", "This request's help.")]})
    assert same_request.items[0]["description"] == "This request's help." and "unit" not in same_request.items[0]
    later = decode({"timeseries": [series(("__name__", "depth"), samples=[(2, ms)])]})
    assert (later.items[0]["description"], later.items[0].get("unit")) == ("This request's help.", None)


def test_a_later_metadata_update_replaces_the_earlier():
    ms = AT // 1_000_000
    request = {"timeseries": [series(("__name__", "tasks"), samples=[(4, ms)])]}
    decode({"metadata": [_metadata("tasks", "COUNTER", "Tasks run.", "tasks")]})
    [first] = normalized(decode(request))
    assert (first.point, first.description, first.unit) == (Counter(4), "Tasks run.", "tasks")
    decode({"metadata": [_metadata("tasks", "GAUGE", "Tasks running now.")]})
    [second] = normalized(decode(request))
    assert (second.point, second.description, second.unit) == (Gauge(4), "Tasks running now.", None)


def test_the_bound_holds_and_the_least_recently_used_family_is_forgotten():
    ms = AT // 1_000_000
    known = remote_write.KnownFamilies(max_families=2)

    def described(name: str) -> str | None:
        request = body_of({"timeseries": [series(("__name__", name), samples=[(1, ms)])]})
        return remote_write.decode(request, TYPE, {}, LIMIT, known).items[0].get("description")

    for name in ("a", "b"):
        remote_write.decode(body_of({"metadata": [_metadata(name, "GAUGE", f"{name} help")]}), TYPE, {}, LIMIT, known)
    assert described("a") == "a help"  # a used: b is now the least recently used
    remote_write.decode(body_of({"metadata": [_metadata("c", "GAUGE", "c help")]}), TYPE, {}, LIMIT, known)
    assert len(known) == 2 and known.get("b") is None
    assert (described("a"), described("b"), described("c")) == ("a help", None, "c help")
    assert remote_write.KNOWN.max_families == remote_write.MAX_KNOWN_FAMILIES


def test_what_is_remembered_stays_bounded_whatever_is_sent():
    ms = AT // 1_000_000
    known = remote_write.KnownFamilies(max_families=100)
    flood = [_metadata(f"family_{i}", "GAUGE", "h" * 5000, "u") for i in range(1000)]
    flood += [_metadata("n" * 300, "COUNTER", "Too long a name to be any metric's."),
              _metadata("odd_unit", "GAUGE", "A unit no metric can carry.", "u" * 65)]
    remote_write.decode(body_of({"metadata": flood}), TYPE, {}, 10**8, known)
    assert len(known) == 100 and known.get("family_899") is None
    assert known.get("family_999") == remote_write.Known(remote_write.METRIC_TYPES.index("GAUGE"),
                                                         "h" * remote_write.MAX_DESCRIPTION_CHARS, "u")
    assert known.get("n" * 300) is None and known.get("odd_unit") is None
    decode({"metadata": [_metadata("odd_unit", "GAUGE", "Fine at first.", "s")]})
    decode({"metadata": [_metadata("odd_unit", "GAUGE", "Then a bad unit.", "u" * 65)]})
    assert remote_write.KNOWN.get("odd_unit") is None  # forgotten, not kept as it was
    later = decode({"timeseries": [series(("__name__", "odd_unit"), samples=[(1, ms)])]})
    assert "description" not in later.items[0]


def test_concurrent_requests_share_the_metadata_safely():
    """Threads each alternate a request with metadata for a new family and samples of the family
    they described before; every sample finds its description, and the bound holds throughout."""
    from concurrent.futures import ThreadPoolExecutor

    ms = AT // 1_000_000
    threads, rounds = 8, 60
    roomy, tight = remote_write.KnownFamilies(max_families=threads * rounds), remote_write.KnownFamilies(max_families=16)

    def run(thread: int) -> list:
        seen = []
        for number in range(rounds):
            family = f"t{thread}_f{number}"
            request = {"metadata": [_metadata(family, "COUNTER", f"help of {family}", "s")]}
            if number:
                request["timeseries"] = [series(("__name__", f"t{thread}_f{number - 1}"), samples=[(number, ms)])]
            body = body_of(request)
            for known in (roomy, tight):
                decoded = remote_write.decode(body, TYPE, {}, LIMIT, known)
                assert len(known) <= known.max_families
                if known is roomy:
                    seen += [(item["name"], item.get("description"), "counter" in item) for item in decoded.items]
        return seen

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(run, range(threads)))
    for thread, seen in enumerate(results):
        assert seen == [(f"t{thread}_f{n}", f"help of t{thread}_f{n}", True) for n in range(rounds - 1)]
    assert len(roomy) == threads * rounds and len(tight) == 16


def test_metadata_only_requests_reach_the_sink_with_later_samples(bridge):
    ms = AT // 1_000_000
    metadata = body_of({"metadata": [_metadata("queue_wait_seconds", "HISTOGRAM", "Time in the queue.", "seconds")]})
    assert (bridge.receive(remote_write, metadata, TYPE, "snappy").status, drain(bridge)) == (204, [])
    samples = body_of({"timeseries": [
        series(("__name__", "queue_wait_seconds_bucket"), ("le", "+Inf"), samples=[(2, ms)]),
        series(("__name__", "queue_wait_seconds_sum"), samples=[(0.5, ms)]),
        series(("__name__", "queue_wait_seconds_count"), samples=[(2, ms)])]})
    assert bridge.receive(remote_write, samples, TYPE, "snappy").status == 204
    drain(bridge)
    [written] = outbox_lines(bridge)
    assert (written["name"], written["description"], written["unit"], written["histogram"]["count"]) == (
        "queue_wait_seconds", "Time in the queue.", "seconds", 2)
