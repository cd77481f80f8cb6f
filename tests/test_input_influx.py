"""InfluxDB line protocol in: the reference's examples decode, every field type and escape reads
as the reference says, precision scales timestamps, bad lines are refused naming their line
number in InfluxDB's error shapes (the good ones kept), no body makes the decoder fail otherwise,
and the influxdb-client library's WriteApi is answered 204 with its points in the outbox."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runner import running_bridge
from support import NOW_NS, drain, outbox_lines

from bridges.formats import BodyError, Decoded, Outcome, Refused, influx
from bridges.ingest.normalize import Normalizer

EXAMPLES = Path(__file__).parent / "testdata" / "inputs" / "influx"
T = NOW_NS - 60 * 1_000_000_000  # a minute before the fixed clock, whole seconds


def decode(text: str | bytes, precision: str | None = None, fmt=influx.V2) -> Decoded:
    body = text.encode() if isinstance(text, str) else text
    return fmt.decode(body, "text/plain; charset=utf-8", {"precision": precision} if precision else {}, 1_000_000)


def reason(line: str) -> str:
    with pytest.raises(influx.LineError) as caught:
        influx.parse_line(line)
    return str(caught.value)


# --- golden cases -----------------------------------------------------------------------------


def test_examples():
    decoded = decode((EXAMPLES / "examples.txt").read_bytes())
    expected = json.loads((EXAMPLES / "examples.expected.json").read_text(encoding="utf-8"))
    assert [{"line": line, **item} for item, line in zip(decoded.items, decoded.origins, strict=True)] == expected["items"]
    assert [[problem.origin, problem.message] for problem in decoded.refused] == expected["refused"]
    assert decoded.skipped == expected["skipped"]


# --- field types and escapes ------------------------------------------------------------------


def test_every_field_type():
    assert influx.parse_line('m f=1.5,g=-2,h=1e3,i=-7i,u=7u,b=t,c=FALSE,s="x y"') == (
        "m", {}, {"f": 1.5, "g": -2.0, "h": 1000.0, "i": -7, "u": 7, "b": True, "c": False, "s": "x y"}, None)
    [f, i, u, b] = decode("m f=1.5,i=3i,u=4u,b=true,s=\"skipped\"").items
    assert [f["gauge"], i["gauge"], u["gauge"], b["gauge"]] == [{"value": 1.5}, {"value": 3}, {"value": 4}, {"value": 1}]
    assert decode('m s="only a string"').items == [] and decode('m s="a",t="b"').skipped == {"string fields": 2}


@pytest.mark.parametrize(("line", "measurement", "tags", "fields"), [
    (r"my\ m\,x f=1", "my m,x", {}, {"f": 1.0}),
    (r"m\=x f=1", r"m\=x", {}, {"f": 1.0}),  # '=' needs no escape in a measurement: the backslash stays
    (r"m,k\ 1\,2\=3=v\ 1\,2\=3 f=1", "m", {"k 1,2=3": "v 1,2=3"}, {"f": 1.0}),
    (r"m f\ 1\,2\=3=1", "m", {}, {"f 1,2=3": 1.0}),
    (r'm s="a \"q\" b \\ c"', "m", {}, {"s": 'a "q" b \\ c'}),
    (r'm s="a\b,c=d e"', "m", {}, {"s": r"a\b,c=d e"}),  # any other backslash is literal
    (r"m\\,t=v f=1", "m\\", {"t": "v"}, {"f": 1.0}),  # an escaped backslash, then a separating comma
    (r"m,t=a\b f=1", "m", {"t": r"a\b"}, {"f": 1.0}),
    ("m,t=🍭 f=1", "m", {"t": "🍭"}, {"f": 1.0}),
])
def test_every_escape(line, measurement, tags, fields):
    assert influx.parse_line(line) == (measurement, tags, fields, None)


def test_keys_given_twice_keep_the_last_value():
    assert influx.parse_line("m,t=1,t=2 f=1,f=2") == ("m", {"t": "2"}, {"f": 2.0}, None)


def test_an_integer_past_pythons_digit_limit_is_refused_as_out_of_range():
    [refused] = decode("m f=" + "9" * 5000 + "i").refused
    assert refused.origin == 1 and refused.message.endswith("value out of range")
    assert "value out of range" in reason("m f=" + "1" * 5000 + "u")


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["m", ",", "=", " ", "  ", "\\", '"', "t", "1", "i", "u", "-", ".", "e", "+", "é",
                                 "\t", "٣", "²", "0", "true", "1700000000000000000", "k=v", "f=1.5"]), max_size=40).map("".join))
def test_lines_without_escapes_read_by_splitting_read_as_the_element_parser_reads_them(line):
    """parse_line reads a line without backslash or quote by splitting: the same result, or the
    same reason, as the parser that knows the escapes."""
    def read(parse):
        try:
            return parse(line)
        except influx.LineError as exc:
            return str(exc)

    assert read(influx.parse_line) == read(influx._escaped_line)


# --- precision and time -----------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "stamp"), [
    (None, T), ("ns", T), ("us", T // 1_000), ("ms", T // 1_000_000), ("s", T // 1_000_000_000)])
def test_v2_precisions(precision, stamp):
    assert decode(f"m f=1 {stamp}", precision).items[0]["dt"] == T


@pytest.mark.parametrize(("precision", "stamp"), [
    ("n", T), ("ns", T), ("u", T // 1_000), ("µ", T // 1_000), ("ms", T // 1_000_000), ("s", T // 1_000_000_000),
    ("m", T // 60_000_000_000), ("h", T // 3_600_000_000_000)])
def test_v1_precisions(precision, stamp):
    expected = stamp * {"m": 60_000_000_000, "h": 3_600_000_000_000}.get(precision, T // stamp)
    assert decode(f"m f=1 {stamp}", precision, influx.V1).items[0]["dt"] == expected


@pytest.mark.parametrize(("fmt", "precision"), [(influx.V2, "m"), (influx.V2, "u"), (influx.V2, "n"), (influx.V1, "x")])
def test_an_unknown_precision_refuses_the_request(fmt, precision):
    with pytest.raises(BodyError) as caught:
        decode("m f=1 1", precision, fmt)
    assert caught.value.status == 400 and "invalid precision" in caught.value.message


def test_a_line_without_a_timestamp_takes_the_time_of_receipt():
    [item] = decode("m f=1").items
    assert "dt" not in item
    [metric] = Normalizer().normalize([item], NOW_NS).metrics
    assert metric.time_ns == NOW_NS


def test_early_timestamps_go_as_text_and_negative_ones_are_refused():
    assert decode("m f=1 1000").items[0]["dt"] == "1970-01-01T00:00:00.000001Z"
    assert decode("m f=1 -1").refused == [Refused(1, "unable to parse 'm f=1 -1': time before 1970-01-01: "
                                                     "the bridge's metric model cannot keep it")]
    assert "time outside range" in decode("m f=1 9223372036854775807", "s").refused[0].message


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("line", "why"), [
    ("m", "missing fields"), ("m ", "missing fields"), (",t=v f=1", "missing measurement"),
    ("m,=v f=1", "missing tag key"), ("m,t f=1", "missing tag value"), ("m,t= f=1", "missing tag value"),
    ("m,t=a=b f=1", "invalid tag format"), ("m =1", "missing field key"), ("m f", "missing field value"),
    ("m f=", "missing field value"), ("m f=1,", "missing field key"), ('m f="open', "unbalanced quotes"),
    ("m f=yes", "invalid boolean"), ("m f=1.2.3", "invalid number"), ("m f=1x", "invalid number"),
    ("m f=NaN", "invalid boolean"), ("m f=1e999", "value out of range"), ("m f=9223372036854775808i", "value out of range"),
    ("m f=-1u", "invalid number"), ("m f=18446744073709551616u", "value out of range"),
    ('m f="a"x', "invalid field format"), ("m f=1 12a", "bad timestamp"), ("m f=1 1 2", "bad timestamp"),
])
def test_bad_lines_are_refused_with_influxdbs_reason(line, why):
    assert why in reason(line)


def test_refusals_name_their_line_and_the_good_lines_are_kept():
    decoded = decode("# comment\n\nm f=1\nbad\n  m,t=v g=2i\r\nm f=\xff\n".encode("latin-1"))
    assert [item["name"] for item in decoded.items] == ["m_f", "m_g"] and decoded.origins == [3, 5]
    assert decoded.refused == [Refused(4, "unable to parse 'bad': missing fields"),
                               Refused(6, "the line is not valid UTF-8 (byte 4)")]


def test_a_body_without_lines_is_refused():
    for body in ("", "\n\n", "# only a comment\n"):
        with pytest.raises(BodyError) as caught:
            decode(body)
        assert (caught.value.status, caught.value.message) == (400, "writing requires points")


def test_answers():
    assert influx.V2.answer(Outcome(3, 0, [], 3)) == (204, None, {})
    problems = [Refused(4, "unable to parse 'bad': missing fields"), Refused(9, "x")]
    message = "line 4: unable to parse 'bad': missing fields (2 refused, 1 written)"
    assert influx.V2.answer(Outcome(1, 2, problems, 3)) == (
        400, {"code": "invalid", "message": message}, {"X-Platform-Error-Code": "invalid"})
    assert influx.V1.answer(Outcome(1, 2, problems, 3)) == (400, {"error": message}, {})
    assert influx.V2.refuse(BodyError(413, "too big")) == (
        413, {"code": "request too large", "message": "too big"}, {"X-Platform-Error-Code": "request too large"})
    assert influx.V1.refuse(BodyError(413, "too big")) == (413, {"error": "too big"}, {})


def test_through_the_bridge(bridge):
    body = gzip.compress(f"cpu,host=a usage=0.5,up=t {T}\ncpu,host=a oops\ncpu,host=b usage=0.25 {T}\n".encode())
    reply = bridge.receive(influx.V2, body, "text/plain; charset=utf-8", "gzip", {"precision": "ns"})
    assert reply.status == 400
    assert reply.body == {"code": "invalid",
                          "message": "line 2: unable to parse 'cpu,host=a oops': missing field value (1 refused, 3 written)"}
    drain(bridge)
    written = sorted((line["name"], line["tags"]["host"], line["gauge"]["value"]) for line in outbox_lines(bridge))
    assert written == [("cpu_up", "a", 1), ("cpu_usage", "a", 0.5), ("cpu_usage", "b", 0.25)]
    reply = bridge.receive(influx.V1, f"cpu usage=1 {T // 1_000_000_000}".encode(), None, None, {"precision": "s"})
    assert (reply.status, reply.body) == (204, None)
    reply = bridge.receive(influx.V2, b"x" * (bridge.settings.max_body_bytes + 1), None, None, {})
    assert reply.status == 413 and reply.body["code"] == "request too large"


def test_the_http_trigger_reads_the_precision_and_nothing_else_of_the_query(bridge):
    import azure.functions as func

    from bridges.triggers import http

    request = func.HttpRequest("POST", "http://localhost/api/v2/write", body=f"m f=1 {T // 1_000_000}".encode(),
                               headers={"Authorization": "Token secret-token"},
                               params={"org": "o", "bucket": "b", "precision": "ms", "code": "key"})
    assert http.ingest_influx_v2(request).status_code == 204
    request = func.HttpRequest("POST", "http://localhost/api/write", body=b"m f=1 1", params={"precision": "ns", "p": "pw"})
    assert http.ingest_influx_v1(request).status_code == 204
    request = func.HttpRequest("POST", "http://localhost/api/write", body=b"m f=1 1", params={"precision": "w"})
    response = http.ingest_influx_v1(request)
    assert response.status_code == 400 and "invalid precision" in json.loads(response.get_body())["error"]
    drain(bridge)
    [first, second] = outbox_lines(bridge)
    assert first["name"] == "m_f" and "tags" not in first and "tags" not in second


# --- fuzzing ----------------------------------------------------------------------------------


def _decodes_or_refuses(body: bytes, precision: str | None = None) -> None:
    for fmt in (influx.V2, influx.V1):
        try:
            decoded = fmt.decode(body, None, {"precision": precision} if precision else {}, 100_000)
        except BodyError as exc:
            assert 400 <= exc.status < 500
            continue
        assert len(decoded.items) == len(decoded.origins)
        Normalizer().normalize(decoded.items, NOW_NS)
        outcome = Outcome(len(decoded.items), len(decoded.refused), decoded.refused, len(decoded.items))
        status, _, _ = fmt.answer(outcome)
        assert status in (204, 400)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PIECES = st.sampled_from(["m", ",", "=", " ", "\\", '"', "\n", "t", "1", "i", "u", "-", ".", "e", "#", "é", "\r"])


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([None, "ns", "s", "h", "x"]))
def test_fuzz_arbitrary_bytes(body, precision):
    _decodes_or_refuses(body, precision)


@FUZZ
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_fuzz_line_protocol_pieces(text):
    _decodes_or_refuses(text.encode())


# --- a real client ----------------------------------------------------------------------------


def test_the_influxdb_client_write_api_is_answered_204_and_its_points_land_in_the_outbox(tmp_path):
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    outbox = tmp_path / "outbox"
    now_ns = time.time_ns() // 1_000_000 * 1_000_000
    with running_bridge(env={"BRIDGE_OUTBOX_DIR": str(outbox)}) as (base, lines):
        with InfluxDBClient(url=base, token="influx-token", org="my-org", enable_gzip=True) as client:
            write_api = client.write_api(write_options=SYNCHRONOUS)
            write_api.write(bucket="my-bucket", record=[
                Point("cpu").tag("host", "web 1").tag("region", "eu,west").field("usage", 0.5)
                .field("procs", 12).field("up", True).field("note", "ok").time(now_ns, WritePrecision.NS),
                "mem,host=web\\ 1 used=1024u",
            ])
            write_api.write(bucket="my-bucket", record=f"disk free=2.5 {now_ns // 1_000_000}", write_precision=WritePrecision.MS)
        written: list[dict] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(written) < 5:
            text = "".join(f.read_text() for f in sorted(outbox.glob("*.ndjson")))
            if text.endswith("\n"):
                written = [json.loads(line) for line in text.splitlines()]
            time.sleep(0.1)
        assert "influx-token" not in "\n".join(lines)
    got = sorted((line["name"], line["gauge"]["value"], line.get("tags", {})) for line in written)
    assert got == [
        ("cpu_procs", 12, {"host": "web 1", "region": "eu,west"}),
        ("cpu_up", 1, {"host": "web 1", "region": "eu,west"}),
        ("cpu_usage", 0.5, {"host": "web 1", "region": "eu,west"}),
        ("disk_free", 2.5, {}),
        ("mem_used", 1024, {"host": "web 1"}),
    ]
    stamped = {line["name"]: line["dt"] for line in written if line["name"].startswith(("cpu", "disk"))}
    assert len(set(stamped.values())) == 1, stamped  # the points' own time, in ns and in ms precision
