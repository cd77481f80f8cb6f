"""OTLP/HTTP metrics in (POST /api/v1/metrics): golden decoding of the official JSON example and
of a protobuf request with every metric kind, the OTLP answers, and the OpenTelemetry Python
SDK's own OTLP/HTTP exporter posting to the local runner."""
from __future__ import annotations

import gzip
import json

import azure.functions as func
import pytest
from runner import running_bridge, wait_until
from support import ROOT

from bridges.formats import BodyError, otlp
from bridges.triggers import http

DATA = ROOT / "tests" / "testdata" / "inputs" / "otlp"


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


def test_answers_are_export_responses_with_partial_success_for_refused_points(bridge):
    binary = (DATA / "all_kinds.binpb").read_bytes()
    response = _post(gzip.compress(binary), **{"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert response.status_code == 200
    partial = json.loads(response.get_body())["partialSuccess"]
    assert partial["rejectedDataPoints"] == "1" and "NaN" in partial["errorMessage"]
    request = otlp.parse(binary, False)
    del request.resource_metrics[0].scope_metrics[0].metrics[2].gauge.data_points[2]  # the NaN
    response = _post(request.SerializeToString(), **{"Content-Type": "application/x-protobuf"})
    assert (response.status_code, response.get_body(), response.headers["Content-Type"]) == (
        200, b"", "application/x-protobuf")  # an empty ExportMetricsServiceResponse
    response = _post(b'{"resourceMetrics": []}', **{"Content-Type": "application/json"})
    assert (response.status_code, json.loads(response.get_body())) == (200, {})
    response = _post(b"{", **{"Content-Type": "application/json"})
    assert response.status_code == 400 and json.loads(response.get_body())["code"] == 3
    assert _post(b"{}", **{"Content-Type": "text/plain"}).status_code == 415


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
