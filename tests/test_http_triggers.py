"""The HTTP functions called directly with func.HttpRequest, as the host would call them."""
from __future__ import annotations

import gzip
import json
import sqlite3
from datetime import datetime, timezone

import azure.functions as func
import msgpack
import pytest
from support import NOW_NS, drain, outbox_lines, use_bridge

from bridges import runtime
from bridges.core import Bridge
from bridges.settings import load_settings
from bridges.triggers.http import health, ingest_metrics

GAUGE = {"name": "node_cpu_temperature_celsius", "gauge": {"value": 63.5}, "tags": {"host": "server_1"}}
COUNTER = {"name": "http_requests_total", "counter": {"value": 42}}


def post(body: bytes, content_type: str | None = "application/json", **headers: str):
    if content_type:
        headers["Content-Type"] = content_type
    request = func.HttpRequest("POST", "http://localhost/api/metrics", headers=headers, body=body)
    response = ingest_metrics(request)
    return response.status_code, json.loads(response.get_body())


def as_json(document) -> bytes:
    return json.dumps(document).encode()


def test_single_object_is_accepted_and_written_to_the_outbox(bridge):
    status, answer = post(as_json(GAUGE))
    assert status == 202
    assert answer == {"accepted": 1, "rejected": 0, "errors": [], "delivery": {"queued": 1}}
    assert outbox_lines(bridge) == []  # the delivery function writes it
    [batch] = drain(bridge)
    assert (batch.metrics, batch.reports["outbox"].delivered) == (1, 1)
    assert outbox_lines(bridge) == [{**GAUGE, "dt": "2026-11-22T10:00:00Z"}]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (as_json([GAUGE, COUNTER]), "application/json"),
        (as_json({"metrics": [GAUGE, COUNTER]}), "application/json; charset=utf-8"),
        (b"\n".join(map(as_json, [GAUGE, COUNTER])) + b"\n", "application/x-ndjson"),
        (msgpack.packb([GAUGE, COUNTER]), "application/msgpack"),
    ],
    ids=["array", "wrapper", "ndjson", "msgpack"],
)
def test_every_container_and_content_type(bridge, body, content_type):
    status, answer = post(body, content_type)
    assert (status, answer["accepted"], answer["delivery"]) == (202, 2, {"queued": 2})
    drain(bridge)
    written = outbox_lines(bridge)
    assert [m["name"] for m in written] == ["node_cpu_temperature_celsius", "http_requests_total"]
    assert written[1]["counter"] == {"value": 42, "temporality": "cumulative"}


def test_valid_items_are_kept_when_others_fail(bridge):
    bad = {"name": "x", "gauge": {"value": "high"}}
    status, answer = post(as_json({"metrics": [GAUGE, bad, COUNTER]}))
    assert status == 202
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    assert answer["errors"] == [
        {"index": 1, "pointer": "/metrics/1/gauge/value", "message": "'high' is not of type 'number'"}
    ]
    assert answer["delivery"] == {"queued": 2}
    drain(bridge)
    assert len(outbox_lines(bridge)) == 2


def test_none_accepted_is_400_with_pointers(bridge):
    status, answer = post(as_json([{"name": "x", "counter": {"value": -1}}, {"name": "y"}]))
    assert status == 400
    assert (answer["accepted"], answer["rejected"]) == (0, 2)
    assert [e["pointer"] for e in answer["errors"]] == ["/0/counter/value", "/1"]
    assert "exactly one of gauge" in answer["errors"][1]["message"]
    assert drain(bridge) == []  # nothing was queued
    assert outbox_lines(bridge) == []


def test_single_object_errors_point_into_the_object(bridge):
    status, answer = post(as_json({"name": "x", "gauge": {"value": 1}, "dt": "2024-01-01T00:00:00"}))
    assert status == 400
    assert answer["errors"][0]["pointer"] == "/dt"
    assert "time zone" in answer["errors"][0]["message"]


def test_ndjson_errors_point_at_the_item(bridge):
    body = as_json(GAUGE) + b"\n\n" + as_json({"name": "x", "gauge": {}}) + b"\n"
    status, answer = post(body, "application/x-ndjson")
    assert status == 202
    assert answer["errors"][0]["pointer"] == "/1/gauge"


@pytest.mark.parametrize(
    "body, content_type, where",
    [
        (b'{"name": "x", "gauge": {"value": 1}', "application/json", {"line": 1, "column": 36, "position": 35}),
        (b'[\n{"name": "x"},\n{oops}\n]', "application/json", {"line": 3, "column": 2, "position": 18}),
        (as_json(GAUGE) + b"\n{\"name\": \n", "application/x-ndjson", {"line": 2, "column": 10}),
        (msgpack.packb([GAUGE])[:-3], "application/msgpack", {"position": len(msgpack.packb([GAUGE])) - 3}),
        (msgpack.packb(GAUGE) + b"\xc1", "application/msgpack", {"position": len(msgpack.packb(GAUGE))}),
        (b"\xff\xfe\x00garbage", "application/json", {"position": 0}),
    ],
    ids=["json-truncated", "json-bad-token", "ndjson-line-2", "msgpack-truncated", "msgpack-extra", "not-utf8"],
)
def test_malformed_bodies_are_400_with_the_position(bridge, body, content_type, where):
    status, answer = post(body, content_type)
    assert status == 400
    assert answer["error"]
    assert {k: answer[k] for k in where} == where


def test_unsupported_content_type_is_415(bridge):
    status, answer = post(b"x=1", "application/x-www-form-urlencoded")
    assert status == 415
    assert "application/json" in answer["error"]


def test_missing_content_type_is_read_as_json(bridge):
    status, _ = post(as_json(GAUGE), None)
    assert status == 202


def test_body_over_the_limit_is_413(tmp_path, settings_env):
    use_bridge({**settings_env, "BRIDGE_MAX_BODY_BYTES": "100"})
    status, answer = post(as_json([GAUGE] * 5))
    assert status == 413
    assert "BRIDGE_MAX_BODY_BYTES" in answer["error"]


def test_gzip_body_is_accepted_and_a_gzip_bomb_is_413(settings_env):
    use_bridge({**settings_env, "BRIDGE_MAX_BODY_BYTES": "10000"})
    status, _ = post(gzip.compress(as_json([GAUGE])), **{"Content-Encoding": "gzip"})
    assert status == 202
    bomb = gzip.compress(b"[" + b" " * 1_000_000 + b"]")
    assert len(bomb) < 10000
    status, answer = post(bomb, **{"Content-Encoding": "gzip"})
    assert status == 413
    status, answer = post(b"not gzip", **{"Content-Encoding": "gzip"})
    assert status == 400
    status, answer = post(as_json(GAUGE), **{"Content-Encoding": "br"})
    assert status == 415


def test_too_many_items_is_413(settings_env):
    use_bridge({**settings_env, "BRIDGE_MAX_ITEMS": "3"})
    status, answer = post(as_json([GAUGE] * 4))
    assert status == 413
    assert "BRIDGE_MAX_ITEMS" in answer["error"]


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"[" * 200_000 + b"]" * 200_000, "application/json"),
        (b"\x91" * 200_000 + b"\xc0", "application/msgpack"),
        (b"[]", "application/json"),
        (b"   ", "application/json"),
        (as_json({"metrics": {"name": "x"}}), "application/json"),
    ],
    ids=["deep-json", "deep-msgpack", "empty-array", "blank", "metrics-not-array"],
)
def test_hostile_or_empty_bodies_get_a_4xx(bridge, body, content_type):
    status, answer = post(body, content_type)
    assert 400 <= status < 500
    assert answer["error"]


def test_huge_string_is_rejected_with_a_short_message(bridge):
    status, answer = post(as_json({"name": "n" * 5_000_000, "gauge": {"value": 1}}))
    assert status == 400
    assert answer["errors"][0]["pointer"] == "/name"
    assert len(answer["errors"][0]["message"]) <= 300


def test_huge_array_of_bad_items_reports_a_bounded_list(bridge):
    status, answer = post(as_json([{"name": "x"}] * 5000))
    assert status == 400
    assert answer["rejected"] == 5000
    assert len(answer["errors"]) == 100
    assert answer["errors_not_shown"] == 4900


def test_nan_and_infinity_are_rejected_per_item(bridge):
    status, answer = post(b'[{"name":"a","gauge":{"value":NaN}},{"name":"b","gauge":{"value":-Infinity}},'
                          b'{"name":"c","gauge":{"value":1e999}},{"name":"d","gauge":{"value":1}}]')
    assert status == 202
    assert answer["accepted"] == 1
    assert [e["pointer"] for e in answer["errors"]] == ["/0/gauge/value", "/1/gauge/value", "/2/gauge/value"]


def test_msgpack_timestamp_extension_keeps_nanoseconds(bridge):
    stamp = msgpack.Timestamp(1672490759, 123456789)
    status, _ = post(msgpack.packb({"name": "x", "gauge": {"value": 1}, "dt": stamp}), "application/msgpack")
    assert status == 202
    drain(bridge)
    assert outbox_lines(bridge)[0]["dt"] == "2022-12-31T12:45:59.123456789Z"


def test_msgpack_values_json_cannot_carry_are_rejected(bridge):
    body = msgpack.packb([{"name": "x", "gauge": {"value": 1}, "tags": {"k": b"bytes"}}, {b"name": "y"}])
    status, answer = post(body, "application/msgpack")
    assert status == 400
    assert [e["pointer"] for e in answer["errors"]] == ["/0/tags/k", "/1"]


def test_lone_surrogates_are_rejected(bridge):
    status, answer = post(b'{"name": "bad\\ud800name", "gauge": {"value": 1}}')
    assert status == 400
    assert answer["errors"][0]["pointer"] == "/name"


def test_outbox_failure_is_503_with_retry_after(tmp_path, settings_env):
    """Inline delivery: the outbox is written before the answer."""
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    use_bridge({"BRIDGE_OUTBOX_DIR": str(blocker / "outbox"), "BRIDGE_DELIVERY": "inline"})
    status, answer = post(as_json(GAUGE))
    assert status == 503
    assert "send again" in answer["error"]
    response = ingest_metrics(func.HttpRequest("POST", "/api/metrics", body=as_json(GAUGE)))
    assert response.headers["Retry-After"] == "30"


def test_a_delivery_queue_that_cannot_be_written_is_503_with_retry_after(settings_env):
    """Queued delivery: the answer waits only for the delivery queue; when that cannot be
    written, the sender must send again."""
    class Unwritable:
        name = "bridge-deliver"

        def send(self, text, visibility_timeout=0):
            raise sqlite3.OperationalError("database is locked")

    runtime.use(Bridge(load_settings(settings_env), clock=lambda: NOW_NS, delivery_queue=Unwritable()))
    response = ingest_metrics(func.HttpRequest("POST", "/api/metrics", body=as_json(GAUGE),
                                               headers={"Content-Type": "application/json"}))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    error = json.loads(response.get_body())["error"]
    assert "bridge-deliver could not be written (OperationalError)" in error and "send again" in error


def test_outbox_files_are_named_by_the_utc_day_the_outbox_took_them(settings_env):
    late = int(datetime(2026, 11, 22, 23, 59, 59, tzinfo=timezone.utc).timestamp()) * 10**9
    instance = use_bridge(settings_env, now_ns=late)
    post(as_json(GAUGE))
    drain(instance)
    assert [p.name for p in instance.settings.outbox_dir.iterdir()] == ["metrics-2026-11-22.ndjson"]


def test_health_reports_version_and_sinks(bridge):
    response = health(func.HttpRequest("GET", "http://localhost/api/health", body=b""))
    assert response.status_code == 200
    answer = json.loads(response.get_body())
    assert answer["status"] == "ok"
    assert answer["version"]
    assert answer["sinks"]["outbox"]["configured"] is True
    assert answer["problems"] == []


def test_health_reports_an_outbox_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    use_bridge({"BRIDGE_OUTBOX_DIR": str(blocker / "outbox")})
    answer = json.loads(health(func.HttpRequest("GET", "/api/health", body=b"")).get_body())
    assert answer["status"] == "degraded"
    assert answer["sinks"]["outbox"]["writable"] is False
    assert "outbox" in answer["problems"][0]


@pytest.mark.parametrize("depth", [17, 900, 990, 5000])
def test_deep_nesting_inside_an_item_is_refused_without_exhausting_the_stack(bridge, depth):
    deep = b"\x91" * depth + b"\xc0"
    status, answer = post(b"\x81\xa4name" + deep, "application/msgpack")
    assert status == 400
    assert "nested" in (answer.get("error") or answer["errors"][0]["message"])
    status, answer = post(b"\x82\xa4name\xa1x\xa5gauge\x81\xa5value" + deep, "application/msgpack")
    assert status == 400
    assert "nested" in (answer.get("error") or answer["errors"][0]["message"])


@pytest.mark.parametrize(
    "item, pointer, reason",
    [
        ({"name": "x", "gauge": {"value": 1}, "tags": {f"k{i}": "v" for i in range(300_000)}}, "/tags", "has too many properties"),
        ({"name": "x", "summary": {"count": 1, "sum": 1, "quantiles": [{"quantile": 0.5, "value": 1}] * 300_000}}, "/summary/quantiles", "is too long"),
        ({"name": "x", "gauge": {"value": 1}, **{f"field{i}": 1 for i in range(300_000)}}, "", "Additional properties are not allowed"),
    ],
    ids=["many-tags", "many-quantiles", "many-fields"],
)
def test_huge_items_are_explained_briefly_and_truly(bridge, item, pointer, reason):
    status, answer = post(as_json(item))
    assert status == 400
    [error] = answer["errors"]
    assert error["pointer"] == pointer
    assert reason in error["message"] and len(error["message"]) <= 300
