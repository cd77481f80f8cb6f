"""The Azure Monitor custom-metrics format in: what the Azure Monitor sink posts comes back as
the same aggregates, Microsoft's sample decodes, documents without the documented shape are
refused naming the field, and the answers have the service's shape."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import NOW_NS, drain, outbox_lines

from bridges.delivery.sinks.azure_monitor.sink import AzureMonitorSink
from bridges.formats import BodyError, Decoded, Outcome, Refused, azure_monitor, decompress
from bridges.ingest.normalize import Normalizer
from bridges.model import DELTA, Aggregate, AzureTarget, Bucket, Counter, Gauge, Histogram, Metric

EXAMPLES = Path(__file__).parent / "testdata" / "inputs" / "azure_monitor"
RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-bridge/providers/Microsoft.Web/sites/func-bridge"
OTHER = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-vm/providers/Microsoft.Compute/virtualMachines/vm1"
PARAMS = {"resourceId": RESOURCE[1:] + "/metrics"}
NS_PER_MINUTE = 60_000_000_000
MINUTE = (NOW_NS // NS_PER_MINUTE - 3) * NS_PER_MINUTE  # a minute start inside the sink's window


def decode(document, content_type: str | None = "application/json", params=PARAMS) -> Decoded:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return azure_monitor.decode(body, content_type, params, 4_000_000)


def document(*series: dict, names=("Process",), **fields) -> dict:
    base = {"metric": "Memory_Bytes", "namespace": "Profile", "dimNames": list(names),
            "series": list(series) or [{"dimValues": ["a.exe"], "min": 1, "max": 3, "sum": 4, "count": 2}]}
    doc = {"time": "2026-11-22T09:57:00Z", "data": {"baseData": base}}
    for path, value in fields.items():  # e.g. metric=None removes data.baseData.metric
        target = doc if path == "time" else base
        if value is None:
            target.pop(path)
        else:
            target[path] = value
    return doc


def round_trip(metrics: list[Metric], sink: AzureMonitorSink | None = None) -> list[Metric]:
    """Encode with the Azure Monitor sink, then decode each request as the bridge's route would
    receive it (the path after the host is the route's resourceId), and normalize."""
    sink = sink or AzureMonitorSink(RESOURCE, "westeurope", None)
    encoded = sink.encode(metrics, NOW_NS)
    assert not encoded.rejected
    back = []
    for request in encoded.requests:
        assert request.headers["Content-Encoding"] == "gzip"
        body = decompress(request.body, "gzip", 4_000_000)  # the pipeline's step
        params = {"resourceId": urlsplit(request.url).path.lstrip("/")}
        decoded = azure_monitor.decode(body, request.headers["Content-Type"], params, 4_000_000)
        assert decoded.refused == []
        result = Normalizer().normalize(decoded.items, NOW_NS)
        assert result.errors == []
        back += result.metrics
    return back


def here(resource: str = RESOURCE) -> AzureTarget:
    return AzureTarget(resource, None)  # the region is in the host name, not the body


# --- round trips ------------------------------------------------------------------------------


def test_aggregates_come_back_as_they_were_sent():
    tags = (("Process", "ContosoApp.exe"), ("host", "web 1"))
    metrics = [
        Metric("Memory_Bytes", Aggregate(10, 89, 190, 4), MINUTE, tags, namespace="Memory Profile", azure=here()),
        Metric("Memory_Bytes", Aggregate(10, 23, 86, 4), MINUTE, (("Process", "SalesApp.exe"), ("host", "web 1")),
               namespace="Memory Profile", azure=here()),
        Metric("latency_ms", Aggregate(0.5, 12.25, 30.0, 7), MINUTE - NS_PER_MINUTE, (), namespace="Bridge", azure=here()),
        Metric("vm_cpu", Aggregate(1.5, 1.5, 1.5, 1), MINUTE, (("core", "0"),), namespace="Bridge", azure=AzureTarget(OTHER, "westeurope")),
    ]
    back = round_trip(metrics)
    expected = metrics[:3] + [Metric("vm_cpu", Aggregate(1.5, 1.5, 1.5, 1), MINUTE, (("core", "0"),), namespace="Bridge",
                                     azure=here(OTHER))]
    assert sorted(back, key=repr) == sorted(expected, key=repr)


def test_the_sinks_conversions_come_back_as_sent():
    """Gauges and delta counters become one observation each, merged per minute and series;
    names keep only [A-Za-z0-9_]; time is the minute's start; the default namespace is named."""
    metrics = [
        Metric("cpu.load", Gauge(2.0), MINUTE + 5_000_000_000, (("host", "a"),)),
        Metric("cpu.load", Gauge(4.0), MINUTE + 35_000_000_000, (("host", "a"),)),
        Metric("requests", Counter(3, DELTA), MINUTE + 1, (), namespace="Web"),
        Metric("duration", Histogram(4, 10.0, (Bucket(1.0, 1),)), MINUTE, ()),
    ]
    back = round_trip(metrics, AzureMonitorSink(RESOURCE, "westeurope", None, namespace="Custom"))
    assert sorted(back, key=repr) == sorted([
        Metric("cpu_load", Aggregate(2.0, 4.0, 6.0, 2), MINUTE, (("host", "a"),), namespace="Custom", azure=here()),
        Metric("requests", Aggregate(3, 3, 3, 1), MINUTE, (), namespace="Web", azure=here()),
        Metric("duration", Aggregate(2.5, 2.5, 10.0, 4), MINUTE, (), namespace="Custom", azure=here()),
    ], key=repr)


# --- Microsoft's sample -----------------------------------------------------------------------


def test_the_documented_sample_decodes():
    decoded = decode((EXAMPLES / "custommetric.json").read_bytes())
    assert decoded.refused == []
    assert decoded.origins == ["/data/baseData/series/0", "/data/baseData/series/1"]
    metrics = Normalizer().normalize(decoded.items, NOW_NS).metrics
    time_ns = 1_704_651_920 * 1_000_000_000  # 2024-01-07T11:25:20-07:00 = 18:25:20Z
    assert metrics == [
        Metric("Memory Bytes in Use", Aggregate(10, 89, 190, 4), time_ns, (("Process", "ContosoApp.exe"),),
               namespace="Memory Profile", azure=here()),
        Metric("Memory Bytes in Use", Aggregate(10, 23, 86, 4), time_ns, (("Process", "SalesApp.exe"),),
               namespace="Memory Profile", azure=here()),
    ]


def test_ndjson_documents_are_read_line_by_line():
    body = b"\n".join(json.dumps(document(names=())).encode() for _ in range(2)) + b"\n\n" + json.dumps(document()).encode()
    body = body.replace(b'"dimValues": ["a.exe"], ', b"", 2)
    decoded = decode(body, "application/x-ndjson")
    assert decoded.origins == ["line 1 /data/baseData/series/0", "line 2 /data/baseData/series/0", "line 4 /data/baseData/series/0"]
    assert [item.get("tags") for item in decoded.items] == [None, None, {"Process": "a.exe"}]


@pytest.mark.parametrize("time, expected", [("2026-11-22T09:57:00Z", "2026-11-22T09:57:00Z"),
                                            ("2026-11-22T10:57:00+1:00", "2026-11-22T10:57:00+01:00"),
                                            ("2026-11-22T09:57:00.5-00:00", "2026-11-22T09:57:00.5-00:00")])
def test_times(time, expected):
    assert decode(document(time=time)).items[0]["dt"] == expected


def test_the_resource_id_comes_from_the_path():
    decoded = decode(document(), params={"resourceId": OTHER[1:] + "/metrics/"})
    assert decoded.items[0]["azure"] == {"resource_id": OTHER}


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, pointer, reason",
    [
        ({"time": None}, "/time", "'time' is required"),
        ({"time": "yesterday"}, "/time", "'time' 'yesterday' cannot be read: not an RFC 3339 timestamp"),
        ({"time": "2026-11-22T09:57:00"}, "/time", "a time zone is required"),
        ({"metric": None}, "/data/baseData/metric", "'metric' is required"),
        ({"metric": 7}, "/data/baseData/metric", "'metric' is required"),
        ({"namespace": None}, "/data/baseData/namespace", "'namespace' is required"),
        ({"dimNames": "Process"}, "/data/baseData/dimNames", "'dimNames' must be an array of strings"),
        ({"dimNames": ["a", "a"]}, "/data/baseData/dimNames", "names a dimension twice"),
        ({"series": []}, "/data/baseData/series", "'series' is required"),
        ({"series": {"min": 1}}, "/data/baseData/series", "'series' is required"),
    ],
)
def test_documents_without_the_documented_shape_are_refused_naming_the_field(changes, pointer, reason):
    decoded = decode(document(**changes))
    assert decoded.items == []
    [refused] = decoded.refused
    assert refused.origin == pointer and reason in refused.message


def test_a_document_that_is_not_an_object_or_the_data_is_missing():
    assert decode([1, 2]).refused == [Refused("", "a custom metric document must be a JSON object")]
    [refused] = decode({"time": "2026-11-22T09:57:00Z"}).refused
    assert refused.origin == "/data/baseData" and "'data.baseData' is required" in refused.message


def test_a_series_that_does_not_match_the_dimension_names_is_refused_alone():
    good = {"dimValues": ["a.exe"], "min": 1, "max": 1, "sum": 1, "count": 1}
    decoded = decode(document(good, {"dimValues": ["a", "b"], "min": 1, "max": 1, "sum": 1, "count": 1}, "text",
                              {"dimValues": [3], "min": 1, "max": 1, "sum": 1, "count": 1}), "application/x-ndjson")
    assert decoded.origins == ["line 1 /data/baseData/series/0"]
    assert [(r.origin, r.message) for r in decoded.refused] == [
        ("line 1 /data/baseData/series/1/dimValues", "'dimValues' holds 2 values for 1 'dimNames': they must match one to one"),
        ("line 1 /data/baseData/series/2", "a series must be an object with dimValues, min, max, sum and count"),
        ("line 1 /data/baseData/series/3/dimValues", "'dimValues' must be an array of strings"),
    ]


def test_the_numbers_of_a_series_are_checked_by_the_normalizer():
    decoded = decode(document({"dimValues": ["x"], "min": 5, "max": 1, "sum": 6, "count": 2},
                              {"dimValues": ["y"], "min": 1, "max": 1, "sum": 0, "count": 0},
                              {"dimValues": ["z"], "max": 1, "sum": 1, "count": 1}))
    result = Normalizer().normalize(decoded.items, NOW_NS)
    assert result.rejected == 3 and not result.metrics


def test_a_malformed_ndjson_line_is_refused_alone_and_a_malformed_json_body_whole():
    body = json.dumps(document()).encode() + b"\n{nope\n"
    decoded = decode(body, "application/x-ndjson")
    assert len(decoded.items) == 1
    assert decoded.refused == [Refused("line 2", "malformed JSON: Expecting property name enclosed in double quotes (column 2)")]
    with pytest.raises(BodyError) as caught:
        decode(b"{nope", "application/json")
    status, answer, _ = azure_monitor.refuse(caught.value)
    assert status == 400 and answer["error"]["code"] == "BadRequest"
    assert answer["error"]["message"].startswith("malformed JSON: Expecting property name") and "column 2" in answer["error"]["message"]


@pytest.mark.parametrize(
    "path, status",
    [
        ("subscriptions/00000000-0000-0000-0000-000000000001/metrics", 400),
        ("subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-bridge/metrics", 400),
        ("subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/metrics", 400),  # no resource name: type/name pairs
        (RESOURCE[1:], 404),
        (RESOURCE[1:] + "/metrics/extra", 404),
        ("", 404),
    ],
)
def test_paths_that_do_not_name_a_resources_metrics_are_refused(path, status):
    with pytest.raises(BodyError) as caught:
        decode(document(), params={"resourceId": path})
    assert caught.value.status == status
    answer = azure_monitor.refuse(caught.value)
    assert answer[0] == status
    assert answer[1]["error"]["code"] == {400: "BadRequest", 404: "ResourceNotFound"}[status]
    if status == 400:
        assert "custom metrics cannot be sent to a subscription or resource group" in answer[1]["error"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/msgpack"])
def test_other_content_types_are_415(content_type):
    with pytest.raises(BodyError) as caught:
        decode(document(), content_type)
    assert azure_monitor.refuse(caught.value) == (
        415, {"error": {"code": "UnsupportedMediaType", "message": caught.value.message}}, {})


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_an_empty_body_is_400(body):
    with pytest.raises(BodyError) as caught:
        decode(body)
    assert caught.value.status == 400


def test_refusals_of_the_pipeline_get_the_matching_code():
    assert azure_monitor.refuse(BodyError(413, "too large"))[1] == {"error": {"code": "RequestEntityTooLarge", "message": "too large"}}
    assert azure_monitor.refuse(BodyError(503, "later"))[1]["error"]["code"] == "ServiceUnavailable"


# --- answers ----------------------------------------------------------------------------------


def test_everything_taken_is_200_with_an_empty_body():
    assert azure_monitor.answer(Outcome(accepted=2, rejected=0, problems=[], units=2)) == (200, None, {})


def test_problems_are_400_bad_request_naming_the_first_fields():
    problems = [Refused("line 1 /time", "'time' is required: an ISO 8601 time such as 2024-01-07T18:25:20Z"),
                Refused("/data/baseData/series/1", "/aggregate/count: 0 is less than the minimum of 1")]
    problems += [Refused(f"/data/baseData/series/{i}", "/aggregate: 'min' is a required property") for i in range(2, 8)]
    status, body, _ = azure_monitor.answer(Outcome(accepted=1, rejected=8, problems=problems, units=9))
    assert status == 400 and body["error"]["code"] == "BadRequest"
    message = body["error"]["message"]
    assert message.startswith("8 of the series or documents could not be taken: line 1 /time: 'time' is required")
    assert "/data/baseData/series/1/count: 0 is less than the minimum of 1" in message
    assert "/data/baseData/series/2: 'min' is a required property" in message
    assert message.endswith("; and 3 more")


def test_through_the_bridge_the_valid_series_are_kept(bridge):
    body = json.dumps(document({"dimValues": ["ok"], "min": 1, "max": 2, "sum": 3, "count": 2},
                               {"dimValues": ["bad"], "min": 1, "max": 2, "sum": 3, "count": 0})).encode()
    reply = bridge.receive(azure_monitor, body, "application/json", None, PARAMS)
    assert reply.status == 400 and reply.body["error"]["code"] == "BadRequest"
    assert "/data/baseData/series/1/count" in reply.body["error"]["message"]
    drain(bridge)
    [kept] = outbox_lines(bridge)
    assert kept["tags"] == {"Process": "ok"} and kept["azure"] == {"resource_id": RESOURCE}


def test_through_the_bridge_gzip_ndjson_is_200_with_no_body(bridge):
    import gzip

    body = gzip.compress(json.dumps(document()).encode() + b"\n")
    reply = bridge.receive(azure_monitor, body, "application/x-ndjson", "gzip", PARAMS)
    assert (reply.status, reply.body) == (200, None)


def test_through_the_bridge_a_resource_group_is_refused(bridge):
    params = {"resourceId": "subscriptions/s/resourceGroups/rg/metrics"}
    reply = bridge.receive(azure_monitor, json.dumps(document()).encode(), "application/json", None, params)
    assert reply.status == 400 and reply.body["error"]["code"] == "BadRequest"
    assert drain(bridge) == []
    assert outbox_lines(bridge) == []


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None)
CONTENT_TYPES = st.sampled_from([None, "application/json", "application/x-ndjson", "text/plain"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
series_like = st.fixed_dictionaries({}, optional={k: json_values for k in ("dimValues", "min", "max", "sum", "count")})
document_like = st.fixed_dictionaries({}, optional={
    "time": st.sampled_from(["2026-11-22T09:57:00Z", "2026-11-22T09:57:00-7:00", "x"]) | json_values,
    "data": st.fixed_dictionaries({}, optional={"baseData": st.fixed_dictionaries({}, optional={
        "metric": st.text(max_size=5) | json_values, "namespace": st.text(max_size=5) | json_values,
        "dimNames": st.lists(st.text(max_size=3), max_size=3) | json_values,
        "series": st.lists(series_like | json_values, max_size=3) | json_values,
    })}),
})
PATHS = st.sampled_from([PARAMS["resourceId"], "subscriptions/s/metrics", "x", ""]) | st.text(max_size=20)


def _survives(body: bytes, content_type: str | None, path: str) -> None:
    """A Decoded that normalizes and answers, or a BodyError with a 4xx status; nothing else."""
    try:
        decoded = azure_monitor.decode(body, content_type, {"resourceId": path}, 4_000_000)
    except BodyError as error:
        assert 400 <= error.status < 500
        status, answer, _ = azure_monitor.refuse(error)
        assert status == error.status and set(answer["error"]) == {"code", "message"}
        return
    assert len(decoded.origins) == len(decoded.items)
    result = Normalizer().normalize(decoded.items, NOW_NS, lambda i: "")
    problems = decoded.refused + [  # as the pipeline words them: the field's pointer in the item first
        Refused(decoded.origins[e.index], f"{e.pointer}: {e.message}" if e.pointer else e.message) for e in result.errors]
    outcome = Outcome(len(result.metrics), len(decoded.refused) + result.rejected, problems, 0)
    status, answer, _ = azure_monitor.answer(outcome)
    assert (status, answer is None) in ((200, True), (400, False))
    json.dumps(answer)


@FUZZ
@given(body=st.binary(max_size=200), content_type=CONTENT_TYPES, path=PATHS)
def test_fuzz_arbitrary_bytes(body, content_type, path):
    _survives(body, content_type, path)


@FUZZ
@given(documents=st.lists(document_like | json_values, min_size=1, max_size=3), ndjson=st.booleans())
def test_fuzz_document_like_json(documents, ndjson):
    if ndjson:
        _survives(b"\n".join(json.dumps(d).encode() for d in documents), "application/x-ndjson", PARAMS["resourceId"])
    else:
        _survives(json.dumps(documents[0]).encode(), "application/json", PARAMS["resourceId"])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.binary(max_size=3)), min_size=1, max_size=4))
def test_fuzz_mutated_sample(edits):
    body = (EXAMPLES / "custommetric.json").read_bytes()
    for position, removed, inserted in edits:
        body = body[:position] + inserted + body[position + removed:]
    _survives(body, "application/json", PARAMS["resourceId"])


def test_through_the_http_trigger_the_route_gives_the_resource(bridge):
    import azure.functions as func

    from bridges.triggers.http import ingest_azure_monitor

    url = f"http://localhost/api/azure/{PARAMS['resourceId']}"
    request = func.HttpRequest("POST", url, headers={"Content-Type": "application/json"},
                               body=(EXAMPLES / "custommetric.json").read_bytes(), route_params=dict(PARAMS))
    response = ingest_azure_monitor(request)
    assert (response.status_code, response.get_body()) == (200, b"")
    drain(bridge)
    assert [m["tags"]["Process"] for m in outbox_lines(bridge)] == ["ContosoApp.exe", "SalesApp.exe"]
