"""OTLP/HTTP metrics in (POST /api/v1/metrics): golden decoding of the official JSON example and
of a protobuf request with every metric kind; generated requests that must give the same metrics
in protobuf and in every proto3 JSON spelling; hostile JSON; the answers in the request's encoding;
and two real clients posting to the local runner: the OpenTelemetry Python SDK's OTLP/HTTP
exporter (protobuf) and the JS SDK's (JSON, the npm peer in .peers/otel-js)."""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
from collections import Counter

import azure.functions as func
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from peers import npm_package, unavailable
from runner import running_bridge, wait_until
from support import ROOT, use_bridge

from bridges.formats import BodyError, otlp
from bridges.triggers import http

DATA = ROOT / "tests" / "testdata" / "inputs" / "otlp"
PROTOBUF = "application/x-protobuf"
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _decoded(body: bytes, content_type: str) -> dict:
    decoded = otlp.Otlp().decode(body, content_type, {}, 10**7)
    return {"items": decoded.items, "origins": decoded.origins,
            "refused": [[r.origin, r.message] for r in decoded.refused], "skipped": decoded.skipped}


def test_every_metric_kind_in_protobuf_and_json_decodes_to_the_golden_items():
    expected = json.loads((DATA / "all_kinds.expected.json").read_text())
    assert _decoded((DATA / "all_kinds.binpb").read_bytes(), "application/x-protobuf") == expected
    assert _decoded((DATA / "all_kinds.json").read_bytes(), "application/json; charset=utf-8") == expected


def test_the_official_json_example_keeps_counter_and_gauge_and_refuses_its_inconsistent_histogram():
    # examples/metrics.json gives its histogram 3 bucket counts for 1 explicit bound (OTLP needs 2).
    decoded = _decoded((DATA / "metrics.json").read_bytes(), "application/json")
    counter, gauge = decoded["items"]
    assert counter == {"name": "my.counter", "counter": {"value": 5.0, "temporality": "delta"},
                       "tags": {"service.name": "my.service", "my.counter.attr": "some value"},
                       "dt": 1544712660300000000, "unit": "1", "description": "I`m a Counter"}
    assert gauge["gauge"] == {"value": 10.0} and gauge["tags"]["my.gauge.attr"] == "some value"
    assert decoded["refused"] == [["resourceMetrics[0].scopeMetrics[0].metrics[2].dataPoints[0]",
                                   "3 bucket counts for 1 explicit bounds (expected 2)"]]


def test_resource_attributes_become_tags_only_when_named():
    body = (DATA / "all_kinds.json").read_bytes()
    items = otlp.Otlp(("host.name",)).decode(body, "application/json", {}, 10**7).items
    assert items[0]["tags"] == {"host.name": "web-1", "region": "eu"}


@pytest.mark.parametrize("body, content_type, status", [
    (b"\xff\xff\xff", "application/x-protobuf", 400),
    (b"{not json", "application/json", 400),
    (b'{"resourceMetrics": 3}', "application/json", 400),
    (b"{}", "text/plain", 415),
    (b"{}", None, 415),
])
def test_unreadable_bodies_and_other_content_types_are_refused(body, content_type, status):
    with pytest.raises(BodyError) as caught:
        otlp.Otlp().decode(body, content_type, {}, 10**7)
    assert caught.value.status == status
    answer = otlp.Otlp().refuse(caught.value)
    assert answer[0] == status and answer[1]["code"] in (3, 8) and answer[1]["message"]


def _post(body: bytes, **headers: str) -> func.HttpResponse:
    return http.ingest_otlp(func.HttpRequest("POST", "http://localhost/api/v1/metrics", headers=headers, body=body))


def _status(response: func.HttpResponse):
    """A protobuf answer read as a google.rpc.Status by googleapis-common-protos' own message."""
    from google.rpc.status_pb2 import Status

    assert response.headers["Content-Type"] == PROTOBUF
    status = Status()
    status.ParseFromString(response.get_body())
    return status


def test_a_protobuf_request_is_answered_in_protobuf(bridge):
    binary = (DATA / "all_kinds.binpb").read_bytes()
    response = _post(gzip.compress(binary), **{"Content-Type": PROTOBUF, "Content-Encoding": "gzip"})
    assert (response.status_code, response.headers["Content-Type"]) == (200, PROTOBUF)
    answer = ExportMetricsServiceResponse.FromString(response.get_body())
    assert answer.partial_success.rejected_data_points == 1  # the NaN gauge point
    assert "dataPoints[2]" in answer.partial_success.error_message and "NaN" in answer.partial_success.error_message
    request = otlp.parse(binary)
    del request.resource_metrics[0].scope_metrics[0].metrics[2].gauge.data_points[2]  # the NaN
    response = _post(request.SerializeToString(), **{"Content-Type": PROTOBUF})
    assert (response.status_code, response.get_body(), response.headers["Content-Type"]) == (
        200, b"", PROTOBUF)  # an empty ExportMetricsServiceResponse
    response = _post(b"\xff\xff\xff", **{"Content-Type": PROTOBUF})
    assert response.status_code == 400
    status = _status(response)
    assert status.code == 3 and "not an OTLP ExportMetricsServiceRequest" in status.message
    response = _post(b"not gzip", **{"Content-Type": PROTOBUF, "Content-Encoding": "gzip"})  # refused before decoding
    assert response.status_code == 400 and "gzip" in _status(response).message


def test_a_json_request_is_answered_in_json(bridge):
    response = _post((DATA / "all_kinds.json").read_bytes(), **{"Content-Type": "application/json"})
    assert (response.status_code, response.mimetype) == (200, "application/json")
    partial = json.loads(response.get_body())["partialSuccess"]
    assert partial["rejectedDataPoints"] == "1" and "NaN" in partial["errorMessage"]
    response = _post(b'{"resourceMetrics": []}', **{"Content-Type": "application/json"})
    assert (response.status_code, json.loads(response.get_body())) == (200, {})
    response = _post(b"{", **{"Content-Type": "application/json"})
    assert response.status_code == 400 and json.loads(response.get_body())["code"] == 3
    response = _post(b"{}", **{"Content-Type": "text/plain"})
    assert response.status_code == 415 and json.loads(response.get_body())["code"] == 3


def test_what_cannot_be_kept_is_a_503_with_retry_after_in_the_requests_encoding(settings_env, tmp_path):
    """Inline delivery to an outbox that cannot be written: the sender must send again."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    use_bridge({**settings_env, "BRIDGE_OUTBOX_DIR": str(blocked / "outbox"), "BRIDGE_DELIVERY": "inline"})
    response = _post((DATA / "all_kinds.binpb").read_bytes(), **{"Content-Type": PROTOBUF})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "30")
    status = _status(response)
    assert status.code == 14 and "send again" in status.message  # UNAVAILABLE: retryable
    response = _post((DATA / "all_kinds.json").read_bytes(), **{"Content-Type": "application/json"})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "30")
    assert json.loads(response.get_body())["code"] == 14


def test_a_bad_setting_is_a_503_with_retry_after_in_the_requests_encoding(monkeypatch):
    monkeypatch.setenv("BRIDGE_MAX_ITEMS", "many")
    response = _post((DATA / "all_kinds.binpb").read_bytes(), **{"Content-Type": PROTOBUF})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "30")
    assert "BRIDGE_MAX_ITEMS" in _status(response).message


# ---------------------------------------------------------------- one request, both encodings

TEXT = st.text(max_size=6)
DOUBLES = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308])
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
COUNTS = st.integers(0, 5) | UINT64
TIMES = st.sampled_from([0, 1_700_000_000_123_456_789]) | UINT64
ANY_VALUES = st.recursive(
    st.just(common_pb2.AnyValue()) | TEXT.map(lambda v: common_pb2.AnyValue(string_value=v))
    | st.booleans().map(lambda v: common_pb2.AnyValue(bool_value=v)) | INT64.map(lambda v: common_pb2.AnyValue(int_value=v))
    | DOUBLES.map(lambda v: common_pb2.AnyValue(double_value=v))
    | st.binary(max_size=5).map(lambda v: common_pb2.AnyValue(bytes_value=v)),
    lambda inner: st.lists(inner, max_size=3).map(lambda vs: common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=vs)))
    | st.lists(st.builds(common_pb2.KeyValue, key=TEXT, value=inner), max_size=3).map(
        lambda kvs: common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=kvs))),
    max_leaves=5)
ATTRIBUTES = st.lists(st.builds(common_pb2.KeyValue, key=TEXT, value=ANY_VALUES), max_size=3)
EXEMPLARS = st.lists(st.builds(metrics_pb2.Exemplar, as_double=DOUBLES, span_id=st.binary(min_size=8, max_size=8),
                               trace_id=st.binary(min_size=16, max_size=16)), max_size=2)
FLAGS = st.sampled_from([0, 0, 1])
TEMPORALITIES = st.sampled_from([0, 1, 2, 7])


@st.composite
def number_points(draw) -> metrics_pb2.NumberDataPoint:
    point = metrics_pb2.NumberDataPoint(attributes=draw(ATTRIBUTES), time_unix_nano=draw(TIMES), flags=draw(FLAGS),
                                        exemplars=draw(EXEMPLARS))
    value = draw(st.sampled_from(["as_double", "as_int", None]))
    if value == "as_double":
        point.as_double = draw(DOUBLES)
    elif value == "as_int":
        point.as_int = draw(INT64)
    return point


@st.composite
def histogram_points(draw) -> metrics_pb2.HistogramDataPoint:
    bounds = draw(st.lists(DOUBLES, max_size=4))
    counts = draw(st.lists(COUNTS, min_size=len(bounds) + 1, max_size=len(bounds) + 1) | st.lists(COUNTS, max_size=6))
    point = metrics_pb2.HistogramDataPoint(attributes=draw(ATTRIBUTES), time_unix_nano=draw(TIMES), flags=draw(FLAGS),
                                           count=draw(COUNTS), explicit_bounds=bounds, bucket_counts=counts,
                                           exemplars=draw(EXEMPLARS))
    if draw(st.booleans()):
        point.sum = draw(DOUBLES)
    return point


@st.composite
def exponential_points(draw) -> metrics_pb2.ExponentialHistogramDataPoint:
    def buckets():
        return st.builds(metrics_pb2.ExponentialHistogramDataPoint.Buckets, offset=st.integers(-(2**31), 2**31 - 1)
                         | st.integers(-20, 20), bucket_counts=st.lists(st.integers(0, 3), max_size=300))

    point = metrics_pb2.ExponentialHistogramDataPoint(
        attributes=draw(ATTRIBUTES), time_unix_nano=draw(TIMES), flags=draw(FLAGS), count=draw(COUNTS),
        scale=draw(st.integers(-12, 22)), zero_count=draw(COUNTS), zero_threshold=draw(DOUBLES),
        positive=draw(buckets()), negative=draw(buckets()), exemplars=draw(EXEMPLARS))
    if draw(st.booleans()):
        point.sum = draw(DOUBLES)
    return point


SUMMARY_POINTS = st.builds(
    metrics_pb2.SummaryDataPoint, attributes=ATTRIBUTES, time_unix_nano=TIMES, flags=FLAGS, count=COUNTS, sum=DOUBLES,
    quantile_values=st.lists(st.builds(metrics_pb2.SummaryDataPoint.ValueAtQuantile, quantile=DOUBLES, value=DOUBLES),
                             max_size=3))
POINTS = st.lists(number_points(), max_size=3)
METRICS = st.builds(metrics_pb2.Metric, name=TEXT, unit=TEXT, description=TEXT) | st.one_of(
    st.builds(metrics_pb2.Metric, name=TEXT, unit=TEXT, gauge=st.builds(metrics_pb2.Gauge, data_points=POINTS)),
    st.builds(metrics_pb2.Metric, name=TEXT, description=TEXT, sum=st.builds(
        metrics_pb2.Sum, data_points=POINTS, aggregation_temporality=TEMPORALITIES, is_monotonic=st.booleans())),
    st.builds(metrics_pb2.Metric, name=TEXT, histogram=st.builds(
        metrics_pb2.Histogram, data_points=st.lists(histogram_points(), max_size=2), aggregation_temporality=TEMPORALITIES)),
    st.builds(metrics_pb2.Metric, name=TEXT, exponential_histogram=st.builds(
        metrics_pb2.ExponentialHistogram, data_points=st.lists(exponential_points(), max_size=2))),
    st.builds(metrics_pb2.Metric, name=TEXT, summary=st.builds(metrics_pb2.Summary,
                                                               data_points=st.lists(SUMMARY_POINTS, max_size=2))))
REQUESTS = st.builds(ExportMetricsServiceRequest, resource_metrics=st.lists(st.builds(
    metrics_pb2.ResourceMetrics, resource=st.builds(resource_pb2.Resource, attributes=ATTRIBUTES),
    scope_metrics=st.lists(st.builds(metrics_pb2.ScopeMetrics, metrics=st.lists(METRICS, max_size=3)), max_size=2)),
    max_size=2))
INT64_FIELDS = {"timeUnixNano", "time_unix_nano", "startTimeUnixNano", "start_time_unix_nano", "count", "bucketCounts",
                "bucket_counts", "asInt", "as_int", "intValue", "int_value", "zeroCount", "zero_count"}


def _int64_as_numbers(document: object) -> object:
    """proto3 JSON writes 64-bit integers as strings; a parser must take them as numbers too."""
    if isinstance(document, list):
        return [_int64_as_numbers(value) for value in document]
    if not isinstance(document, dict):
        return document
    return {key: (json.loads(value) if key in INT64_FIELDS and isinstance(value, str) else
                  [int(v) for v in value] if key in INT64_FIELDS and isinstance(value, list) else _int64_as_numbers(value))
            for key, value in document.items()}


def _same_text(decoded: dict) -> str:
    """The decoded request as text, so that 3 and 3.0 differ (json.dumps writes NaN too)."""
    return json.dumps(decoded, sort_keys=True)


@FUZZ
@given(request=REQUESTS, snake_case=st.booleans(), enum_numbers=st.booleans(), int64_numbers=st.booleans())
def test_json_and_protobuf_encodings_of_one_request_give_the_same_metrics(request, snake_case, enum_numbers,
                                                                        int64_numbers):
    """MessageToJson writes lowerCamelCase (or, preserving, snake_case) names, enum names (or
    numbers), 64-bit integers as strings (turned into numbers here), "NaN"/"Infinity" strings."""
    text = json_format.MessageToJson(request, preserving_proto_field_name=snake_case,
                                     use_integers_for_enums=enum_numbers)
    if int64_numbers:
        text = json.dumps(_int64_as_numbers(json.loads(text)))
    from_protobuf = _decoded(request.SerializeToString(), PROTOBUF)
    from_json = _decoded(text.encode(), "application/json")
    assert _same_text(from_json) == _same_text(from_protobuf)


PLAIN_POINTS = st.builds(  # gauge and sum points as SDKs write them, the form the walker reads in one call
    metrics_pb2.NumberDataPoint, time_unix_nano=st.just(1_700_000_000_123_456_789) | TIMES, as_double=DOUBLES, flags=FLAGS,
    attributes=st.lists(st.builds(common_pb2.KeyValue, key=TEXT, value=TEXT.map(
        lambda v: common_pb2.AnyValue(string_value=v))), max_size=3))
PLAIN_REQUESTS = st.builds(ExportMetricsServiceRequest, resource_metrics=st.lists(st.builds(
    metrics_pb2.ResourceMetrics, resource=st.builds(resource_pb2.Resource, attributes=ATTRIBUTES),
    scope_metrics=st.lists(st.builds(metrics_pb2.ScopeMetrics, metrics=st.lists(st.one_of(
        st.builds(metrics_pb2.Metric, name=TEXT, gauge=st.builds(metrics_pb2.Gauge, data_points=st.lists(PLAIN_POINTS, max_size=3))),
        st.builds(metrics_pb2.Metric, name=TEXT, unit=TEXT, sum=st.builds(
            metrics_pb2.Sum, data_points=st.lists(PLAIN_POINTS | number_points(), max_size=3),
            aggregation_temporality=TEMPORALITIES, is_monotonic=st.booleans()))), max_size=3)), max_size=2)), max_size=2))


@FUZZ
@given(request=REQUESTS | PLAIN_REQUESTS, snake_case=st.booleans(), int64_numbers=st.booleans())
def test_the_one_call_reading_of_usual_points_gives_what_reading_field_by_field_gives(request, snake_case, int64_numbers):
    """``plain`` (both readers) is a shortcut only: without it every request decodes the same."""
    from unittest import mock

    text = json_format.MessageToJson(request, preserving_proto_field_name=snake_case)
    if int64_numbers:
        text = json.dumps(_int64_as_numbers(json.loads(text)))
    bodies = [(request.SerializeToString(), PROTOBUF), (text.encode(), "application/json")]
    with_shortcut = [_same_text(_decoded(body, content_type)) for body, content_type in bodies]
    with mock.patch.object(otlp._Json, "plain", lambda point, tags: None), \
            mock.patch.object(otlp._Messages, "plain", lambda point, tags: None):
        without = [_same_text(_decoded(body, content_type)) for body, content_type in bodies]
    assert with_shortcut == without


def test_the_proto3_json_spellings_read_alike():
    """The same sum point with every spelling proto3 JSON allows."""
    camel = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "orders", "sum": {
        "aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [
            {"asInt": "42", "timeUnixNano": "1700000000000000000", "attributes": [
                {"key": "size", "value": {"doubleValue": "Infinity"}}, {"key": "id", "value": {"bytesValue": "_-8"}}]}]}}]}]}]}
    snake = {"resource_metrics": [{"scope_metrics": [{"metrics": [{"name": "orders", "sum": {
        "aggregation_temporality": "AGGREGATION_TEMPORALITY_CUMULATIVE", "is_monotonic": True, "data_points": [
            {"as_int": 42, "time_unix_nano": 1.7e18, "unknown": {"ignored": []}, "attributes": [
                {"key": "size", "value": {"double_value": "inf"}}, {"key": "id", "value": {"bytes_value": "/+8="}}]}]}}]}]}]}
    expected = [{"name": "orders", "counter": {"value": 42, "temporality": "cumulative"},
                 "tags": {"size": "inf", "id": "/+8="}, "dt": 1700000000000000000}]
    for document in (camel, snake):
        assert _decoded(json.dumps(document).encode(), "application/json")["items"] == expected


# ---------------------------------------------------------------- hostile JSON

def _replaced(document: object, path: list, value: object) -> object:
    if not path:
        return value
    key, *rest = path
    if isinstance(document, list):
        return [_replaced(v, rest, value) if i == key else v for i, v in enumerate(document)]
    return {**document, key: _replaced(document.get(key), rest, value)}


def _paths(document: object, here: tuple = ()) -> list[tuple]:
    """Every place in a JSON document, where a value of any kind may be put."""
    inner: list[tuple] = []
    if isinstance(document, list):
        for i, value in enumerate(document):
            inner += _paths(value, (*here, i))
    elif isinstance(document, dict):
        for key, value in document.items():
            inner += _paths(value, (*here, key))
    return [here, *inner]


ALL_KINDS = json.loads((DATA / "all_kinds.json").read_text())
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=10)


@FUZZ
@given(place=st.sampled_from(_paths(ALL_KINDS)), value=JSON_VALUES)
def test_a_json_value_of_any_kind_anywhere_is_read_or_a_400_naming_where(bridge, place, value):
    body = json.dumps(_replaced(ALL_KINDS, list(place), value)).encode()
    try:
        _decoded(body, "application/json")
    except BodyError as exc:
        assert exc.status == 400 and "not an OTLP ExportMetricsServiceRequest in JSON: " in exc.message, exc.message
        assert exc.message.split(": ")[1].startswith(("resourceMetrics", "the body")), exc.message
    response = _post(body, **{"Content-Type": "application/json"})
    assert response.status_code in (200, 400), response.get_body()
    assert isinstance(json.loads(response.get_body()), dict)


BODIES = st.binary(max_size=200) | st.sampled_from([(DATA / "all_kinds.binpb").read_bytes(), b"{}", b"[]", b"null"]).flatmap(
    lambda body: st.sampled_from([body, body[:len(body) // 2], gzip.compress(body), gzip.compress(body)[:-3]]))


@FUZZ
@given(body=BODIES, content_type=st.sampled_from([PROTOBUF, "application/json", "text/plain", None, ";;"]),
       encoding=st.sampled_from([None, "gzip", "br"]))
def test_any_body_is_answered_in_the_requests_encoding_never_with_a_5xx(bridge, body, content_type, encoding):
    headers = {name: value for name, value in (("Content-Type", content_type), ("Content-Encoding", encoding)) if value}
    response = _post(body, **headers)
    assert response.status_code in (200, 400, 413, 415), response.get_body()
    if content_type == PROTOBUF and response.status_code == 200:
        ExportMetricsServiceResponse.FromString(response.get_body())
    elif content_type == PROTOBUF:
        assert _status(response).code in (3, 8)
    else:
        assert isinstance(json.loads(response.get_body()), dict)


@pytest.mark.parametrize("body", [
    b'{"resourceMetrics": [{"resource": {"attributes": [{"key": "k", "value": ' + b'{"arrayValue": {"values": [' * 400
    + b"]}}" * 400 + b"}]}}]}",
    b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", "gauge": {"dataPoints": [{"asInt": '
    + b"9" * 5000 + b"}]}}]}]}]}",
])
def test_deep_or_long_json_is_a_400(bridge, body):
    response = _post(body, **{"Content-Type": "application/json"})
    assert response.status_code == 400 and json.loads(response.get_body())["code"] == 3


def _outbox(folder) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.ndjson")) for line in path.read_text().splitlines()]


def test_the_opentelemetry_python_sdk_exports_to_the_bridge(tmp_path):
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricExportResult
    from opentelemetry.sdk.resources import Resource

    outbox = tmp_path / "outbox"
    env = {"BRIDGE_SINKS": "outbox", "BRIDGE_OUTBOX_DIR": str(outbox), "BRIDGE_STATE_DIR": str(tmp_path / "state")}
    with running_bridge(env=env, cwd=tmp_path) as (base, lines):
        exporters = {}
        for temporality in ("cumulative", "delta"):
            chosen = AggregationTemporality.CUMULATIVE if temporality == "cumulative" else AggregationTemporality.DELTA
            reader = InMemoryMetricReader(preferred_temporality={Counter: chosen})
            provider = MeterProvider(resource=Resource.create({"service.name": f"shop-{temporality}"}),
                                     metric_readers=[reader])
            meter = provider.get_meter("shop.meter")
            meter.create_counter("orders", unit="{order}", description="Orders placed").add(3, {"region": "eu"})
            if temporality == "cumulative":
                updown = meter.create_up_down_counter("inflight")
                updown.add(5)
                updown.add(-7)
                latency = meter.create_histogram("latency", unit="s")
                for value in (0.003, 0.2, 7.5):
                    latency.record(value)
                meter.create_observable_gauge("temperature", [lambda options: [Observation(21.5, {"room": "a"})]])
            data = reader.get_metrics_data()
            exporter = OTLPMetricExporter(endpoint=f"{base}/api/v1/metrics")
            assert exporter.export(data) == MetricExportResult.SUCCESS
            exporters[temporality] = data
            provider.shutdown()
        wait_until(lambda: len(_outbox(outbox)) >= 5, timeout=30, what="the SDK's five points in the outbox")
    metrics = {(m["name"], m["tags"]["service.name"]): m for m in _outbox(outbox)}
    cumulative, delta = metrics[("orders", "shop-cumulative")], metrics[("orders", "shop-delta")]
    assert cumulative["counter"] == {"value": 3, "temporality": "cumulative"}
    assert delta["counter"] == {"value": 3, "temporality": "delta"}
    assert cumulative["tags"]["region"] == "eu" and cumulative["unit"] == "{order}"
    assert cumulative["description"] == "Orders placed"
    assert metrics[("inflight", "shop-cumulative")]["gauge"] == {"value": -2}
    histogram = metrics[("latency", "shop-cumulative")]["histogram"]
    point = next(m for m in exporters["cumulative"].resource_metrics[0].scope_metrics[0].metrics
                 if m.name == "latency").data.data_points[0]
    assert histogram["count"] == 3 and histogram["sum"] == pytest.approx(7.703)
    assert [b["upper_limit"] for b in histogram["buckets"]] == list(point.explicit_bounds)
    assert [b["count"] for b in histogram["buckets"]] == list(point.bucket_counts[:-1])
    temperature = metrics[("temperature", "shop-cumulative")]
    assert temperature["gauge"] == {"value": 21.5} and temperature["tags"]["room"] == "a"
    assert any("/api/v1/metrics" in line and " 200" in line for line in lines)


OTEL_JS = ROOT / ".peers" / "otel-js"
OTEL_JS_PACKAGES = {"api": "1.9.1", "sdk-metrics": "2.12.0", "resources": "2.12.0",
                    "exporter-metrics-otlp-http": "0.223.0"}  # scripts/install-peers.sh pins the same
OTEL_JS_SCRIPT = ROOT / "tests" / "peers" / "otel-js-export.js"


def _expected_from_js(service: str, metric: dict, point: dict) -> tuple:
    """What the bridge should deliver for one point the JS SDK exported (a key to compare by)."""
    tags = json.dumps({"service.name": service, **point["attributes"]}, sort_keys=True)
    value = point["value"]
    if metric["name"] == "orders":  # a Counter: a monotonic sum
        return metric["name"], tags, "counter", json.dumps({"temporality": metric["temporality"], "value": float(value)})
    if metric["name"] == "latency":  # per-bucket counts; the last (+Inf) bucket is implied by count
        buckets = [{"upper_limit": float(bound), "count": count}
                   for bound, count in zip(value["buckets"]["boundaries"], value["buckets"]["counts"], strict=False)]
        return metric["name"], tags, "histogram", json.dumps(
            {"count": value["count"], "sum": value["sum"], "buckets": buckets}, sort_keys=True)
    return metric["name"], tags, "gauge", json.dumps({"value": float(value)})  # up-down counter, observable gauge


def _delivered(metric: dict) -> tuple:
    kind = next(k for k in ("counter", "gauge", "histogram") if k in metric)
    point = metric[kind]
    if kind == "histogram":
        point = {**point, "buckets": [{**b, "upper_limit": float(b["upper_limit"])} for b in point["buckets"]]}
    else:
        point = {**point, "value": float(point["value"])}
    return metric["name"], json.dumps(metric["tags"], sort_keys=True), kind, json.dumps(point, sort_keys=True)


def test_the_opentelemetry_js_sdk_exports_json_to_the_bridge(tmp_path):
    """The JS SDK's OTLP/HTTP exporter (JSON), configured by the environment as a deployed SDK
    is, with the function key in OTEL_EXPORTER_OTLP_HEADERS: every point it exported reaches the
    sink as the SDK recorded it (counter, up-down counter, histogram, observable gauge; cumulative
    and delta)."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not on PATH")
    for name, version in OTEL_JS_PACKAGES.items():
        npm_package(OTEL_JS / "node_modules" / "@opentelemetry" / name, version, "package.json")
    outbox, state = tmp_path / "outbox", tmp_path / "state"
    env = {"BRIDGE_SINKS": "outbox", "BRIDGE_OUTBOX_DIR": str(outbox), "BRIDGE_STATE_DIR": str(state)}
    with running_bridge("--require-keys", env=env, cwd=tmp_path) as (base, lines):
        key = (state / "function-key").read_text().strip()
        sdk_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{base}/api/v1/metrics",
                   "OTEL_EXPORTER_OTLP_HEADERS": f"x-functions-key={key}"}
        done = subprocess.run([node, str(OTEL_JS_SCRIPT), str(OTEL_JS)], env=sdk_env, capture_output=True, text=True,
                              check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        exported = json.loads(done.stdout)
        expected = Counter(_expected_from_js(f"shop-{temporality}", metric, point)
                           for temporality, exports in exported.items() for export in exports
                           for metric in export["metrics"] for point in metric["points"])
        assert all(export["code"] == 0 for exports in exported.values() for export in exports), exported  # SUCCESS
        wait_until(lambda: len(_outbox(outbox)) >= sum(expected.values()), timeout=30,
                   what="every point the SDK exported in the outbox")
    assert Counter(_delivered(metric) for metric in _outbox(outbox)) == expected
    kinds = {(name, kind, json.loads(point).get("temporality")) for name, _, kind, point in expected}
    assert kinds >= {("orders", "counter", "cumulative"), ("orders", "counter", "delta"), ("inflight", "gauge", None),
                     ("latency", "histogram", None), ("temperature", "gauge", None)}
    delivered = {metric["name"]: metric for metric in _outbox(outbox)}
    assert delivered["orders"]["unit"] == "{order}" and delivered["orders"]["description"] == "Orders placed"
    assert json.loads(_delivered(delivered["inflight"])[3]) == {"value": -2.0}
    assert sum(" 200" in line and "/api/v1/metrics" in line for line in lines) == sum(map(len, exported.values()))
