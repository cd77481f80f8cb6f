"""Every input route as the host calls it: the vendor shapes of the answers, and fuzzing of
the whole path (any body, any content type: a 2xx, or a 4xx with a JSON body; never a 5xx)."""
from __future__ import annotations

import gzip
import json
import sqlite3

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS, drain, outbox_lines, use_bridge

from bridges import runtime
from bridges.core import Bridge
from bridges.formats import remote_write
from bridges.settings import load_settings
from bridges.triggers import http

RESOURCE = "subscriptions/0000/resourceGroups/rg/providers/Microsoft.Web/sites/shop"
ROUTES = {  # route -> (function, route parameters)
    "v2/metrics/ingest": (http.ingest_dynatrace, {}),
    "v1/write": (http.ingest_remote_write, {}),
    "client/metrics/custom": (http.ingest_unleash_custom, {}),
    "client/metrics": (http.ingest_unleash_client, {}),
    f"azure/{RESOURCE}/metrics": (http.ingest_azure_monitor, {"resourceId": f"{RESOURCE}/metrics"}),
    "webhooks/alertmanager": (http.webhook, {"source": "alertmanager"}),
    "metrics": (http.ingest_metrics, {}),
}


def post(route: str, body: bytes, **headers: str) -> func.HttpResponse:
    function, params = ROUTES[route]
    request = func.HttpRequest("POST", f"http://localhost/api/{route}", headers=headers, body=body, route_params=params)
    return function(request)


def answer_of(response: func.HttpResponse):
    body = response.get_body()
    return json.loads(body) if body else None


def test_dynatrace_lines_are_answered_as_dynatrace_answers(bridge):
    body = b"shop.orders,currency=eur count,delta=3\nbad key! 1\n#shop.orders count dt.meta.unit=Count\n"
    response = post("v2/metrics/ingest", body, **{"Content-Type": "text/plain; charset=utf-8"})
    answer = answer_of(response)
    assert response.status_code == 400
    assert (answer["linesOk"], answer["linesInvalid"]) == (2, 1)
    assert [line["line"] for line in answer["error"]["invalidLines"]] == [2]
    drain(bridge)
    [written] = outbox_lines(bridge)
    assert written["counter"] == {"value": 3, "temporality": "delta"} and written["unit"] == "Count"
    response = post("v2/metrics/ingest", b"shop.orders 1", **{"Content-Type": "text/plain"})
    assert (response.status_code, answer_of(response)["linesOk"]) == (202, 1)


def test_remote_write_is_answered_204_and_keeps_the_labels(bridge):
    now_ms = NOW_NS // 1_000_000
    protobuf = remote_write.write_request([((("__name__", "queue_depth"), ("queue", "orders")), 7.0, now_ms)])
    response = post("v1/write", remote_write.compress(protobuf), **{
        "Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0"})
    assert (response.status_code, response.get_body()) == (204, b"")
    drain(bridge)
    assert outbox_lines(bridge) == [{"name": "queue_depth", "gauge": {"value": 7.0}, "tags": {"queue": "orders"},
                                     "dt": "2026-11-22T10:00:00Z"}]


def test_azure_documents_keep_their_resource_and_namespace(bridge):
    document = {"time": "2026-11-22T09:59:00Z", "data": {"baseData": {
        "metric": "QueueDepth", "namespace": "Shop", "dimNames": ["Queue"],
        "series": [{"dimValues": ["orders"], "min": 1, "max": 9, "sum": 20, "count": 4}]}}}
    response = post(f"azure/{RESOURCE}/metrics", gzip.compress(json.dumps(document).encode()),
                    **{"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert (response.status_code, response.get_body()) == (200, b"")
    drain(bridge)
    [written] = outbox_lines(bridge)
    assert written["azure"] == {"resource_id": "/" + RESOURCE}
    assert (written["namespace"], written["aggregate"]) == ("Shop", {"min": 1, "max": 9, "sum": 20, "count": 4})


def test_unleash_custom_metrics_are_answered_202_empty(bridge):
    body = json.dumps({"metrics": [{"name": "checkout_clicks", "value": 4, "labels": {"env": "prod"}}]}).encode()
    response = post("client/metrics/custom", body, **{"Content-Type": "application/json"})
    assert (response.status_code, response.get_body()) == (202, b"")
    drain(bridge)
    [written] = outbox_lines(bridge)
    assert written["name"] == "checkout_clicks" and written["tags"] == {"env": "prod"}


def test_a_delivery_that_cannot_be_kept_is_a_503_in_the_vendors_shape(settings_env, tmp_path):
    """Inline delivery: the outbox is written before the answer."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the outbox folder should be")
    use_bridge({**settings_env, "BRIDGE_OUTBOX_DIR": str(blocked / "outbox"), "BRIDGE_DELIVERY": "inline"})
    response = post("v2/metrics/ingest", b"shop.orders 1", **{"Content-Type": "text/plain"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert "send again" in answer_of(response)["error"]["message"]


def test_a_delivery_queue_that_cannot_be_written_is_a_503_in_the_vendors_shape(settings_env):
    """Queued delivery: the answer waits only for the delivery queue."""
    class Unwritable:
        name = "bridge-deliver"

        def send(self, text, visibility_timeout=0):
            raise sqlite3.OperationalError("disk I/O error")

    runtime.use(Bridge(load_settings(settings_env), clock=lambda: NOW_NS, delivery_queue=Unwritable()))
    response = post("v2/metrics/ingest", b"shop.orders 1", **{"Content-Type": "text/plain"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    message = answer_of(response)["error"]["message"]
    assert "bridge-deliver could not be written (OperationalError)" in message and "send again" in message


CONTENT_TYPES = st.sampled_from([None, "text/plain", "application/json", "application/x-ndjson",
                                 "application/x-protobuf", "application/msgpack", "text/html", "multipart/form-data",
                                 ";;;\x7f", "application/json;", "text/plain; charset=\"x"]) | st.text(max_size=20)
ENCODINGS = st.sampled_from([None, "gzip", "snappy", "br", "identity"])


def _with_huge_integer(document: bytes) -> st.SearchStrategy[bytes]:
    """A JSON body with an integer too long for Python put where a number or string was."""
    return st.integers(4301, 6000).map(lambda digits: document.replace(b"1", b"7" * digits, 1))


BODIES = st.binary(max_size=300) | st.sampled_from([
    b'{"name": "m", "gauge": {"value": 1}}', b'{"metrics": [{"name": "m", "value": 1}]}',
    b'{"appName": "a", "impactMetrics": [{"name": "m", "type": "gauge", "samples": [{"value": 1}]}]}',
    b'{"time": "2026-11-22T09:59:00Z", "data": {"baseData": {"metric": "m", "series": [{"count": 1}]}}}',
    b'{"alerts": [{"status": "firing", "labels": {"alertname": "1"}}]}']).flatmap(
    lambda document: st.just(document) | _with_huge_integer(document)).flatmap(
    lambda body: st.just(body) | st.sampled_from([gzip.compress(body), gzip.compress(body) * 2,
                                                  gzip.compress(body) + b"\x00"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(sorted(ROUTES)), body=BODIES, content_type=CONTENT_TYPES, encoding=ENCODINGS)
def test_any_body_on_any_route_is_a_2xx_or_a_4xx_with_a_json_body(bridge, route, body, content_type, encoding):
    headers = {k: v for k, v in (("Content-Type", content_type), ("Content-Encoding", encoding)) if v}
    response = post(route, body, **headers)
    assert 200 <= response.status_code < 500, (response.status_code, response.get_body())
    if response.status_code >= 400:
        assert isinstance(answer_of(response), dict)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_json_shaped_garbage_is_refused_with_a_json_reason(bridge, route):
    for body in (b"{}", b"[]", b'{"metrics": 5}', b"null", b'"text"', b'{"data": {"baseData": []}}'):
        response = post(route, body, **{"Content-Type": "application/json"})
        assert 200 <= response.status_code < 500
        if response.status_code >= 400:
            assert isinstance(answer_of(response), dict), (route, body)


LONG = b"9" * 5000  # more digits than Python turns into an int
BIG_INTEGER_BODIES = {  # route -> (body with a 5,000-digit integer, content type)
    "metrics": (b'[{"name": "m", "gauge": {"value": 1}},\n {"name": "n", "gauge": {"value": ' + LONG + b"}}]",
                "application/json"),
    "client/metrics/custom": (b'{"metrics": [{"name": "m", "value": ' + LONG + b"}]}", "application/json"),
    "client/metrics": (b'{"appName": "a", "instanceId": ' + LONG + b"}", "application/json"),
    f"azure/{RESOURCE}/metrics": (b'{"time": "2026-11-22T09:59:00Z", "data": ' + LONG + b"}", "application/json"),
    "webhooks/alertmanager": (b'{"alerts": [], "groupKey": ' + LONG + b"}", "application/json"),
}


@pytest.mark.parametrize("route", sorted(BIG_INTEGER_BODIES))
def test_an_integer_too_long_for_python_is_a_400_naming_its_position_on_every_json_route(bridge, route):
    body, content_type = BIG_INTEGER_BODIES[route]
    response = post(route, body, **{"Content-Type": content_type})
    assert response.status_code == 400, response.get_body()
    said = json.dumps(answer_of(response))
    position = body.index(LONG)
    assert "more than 4300 digits" in said and f"position {position}" in said


def test_an_ndjson_line_with_a_long_integer_names_its_line_and_column(bridge):
    body = b'{"name": "m", "gauge": {"value": 1}}\n{"name": "n", "gauge": {"value": -' + LONG + b"}}\n"
    response = post("metrics", body, **{"Content-Type": "application/x-ndjson"})
    assert response.status_code == 400
    column = body.split(b"\n")[1].index(b"-") + 1
    assert answer_of(response) == {"error": f"the number at line 2, column {column} has more than 4300 digits",
                                   "line": 2, "column": column}


GZIP_ROUTES = {  # route -> (a body in two parts, its content type), each part naming one metric m1, m2
    "metrics": (b'{"name": "m1", "gauge": {"value": 1}}\n', b'{"name": "m2", "gauge": {"value": 2}}\n',
                "application/x-ndjson"),
    "v2/metrics/ingest": (b"shop.m1 1\n", b"shop.m2 2\n", "text/plain"),
    "client/metrics/custom": (b'{"metrics": [{"name": "m1", "value": 1},', b' {"name": "m2", "value": 2}]}',
                              "application/json"),
    f"azure/{RESOURCE}/metrics": (
        b'{"time": "2026-11-22T09:59:00Z", "data": {"baseData": {"metric": "m1", "namespace": "Shop", '
        b'"series": [{"min": 1, "max": 1, "sum": 1, "count": 1}]}}}\n',
        b'{"time": "2026-11-22T09:59:00Z", "data": {"baseData": {"metric": "m2", "namespace": "Shop", '
        b'"series": [{"min": 2, "max": 2, "sum": 2, "count": 1}]}}}\n', "application/x-ndjson"),
}


@pytest.mark.parametrize("route", sorted(GZIP_ROUTES))
def test_every_member_of_a_multi_member_gzip_body_is_read(bridge, route):
    first, second, content_type = GZIP_ROUTES[route]
    body = gzip.compress(first) + gzip.compress(second)  # what `cat a.gz b.gz` makes
    response = post(route, body, **{"Content-Type": content_type, "Content-Encoding": "gzip"})
    assert 200 <= response.status_code < 300, response.get_body()
    drain(bridge)
    assert {line["name"].removeprefix("shop.") for line in outbox_lines(bridge)} == {"m1", "m2"}


def test_a_webhook_in_a_multi_member_gzip_body_is_read_whole(bridge):
    alert = {"status": "firing", "labels": {"alertname": "Down", "severity": "page"}, "annotations": {},
             "startsAt": "2026-11-22T09:58:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "1"}
    document = json.dumps({"version": "4", "status": "firing", "receiver": "bridge", "groupKey": "g",
                           "alerts": [alert]}).encode()
    half = len(document) // 2
    response = post("webhooks/alertmanager", gzip.compress(document[:half]) + gzip.compress(document[half:]),
                    **{"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 202, response.get_body()
    drain(bridge)
    assert {line["name"] for line in outbox_lines(bridge)} == {"alertmanager.alerts", "alertmanager.alert.firing"}


@pytest.mark.parametrize("route", sorted(set(ROUTES) - {"v1/write"}))
def test_data_after_the_last_gzip_member_is_a_400(bridge, route):
    body = gzip.compress(b'{"name": "m", "gauge": {"value": 1}}') + b"trailing garbage"
    response = post(route, body, **{"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 400, (route, response.get_body())
    assert "not gzip" in json.dumps(answer_of(response))
    assert drain(bridge) == [] and outbox_lines(bridge) == []


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("content_type", [";;;\x7f", "json", "application/json; charset", "/", "text/plain;\x00"])
def test_a_content_type_that_is_not_a_media_type_is_a_415(bridge, route, content_type):
    response = post(route, b'{"name": "m", "gauge": {"value": 1}}', **{"Content-Type": content_type})
    assert response.status_code == 415, (route, response.get_body())
    assert "not a media type" in json.dumps(answer_of(response)) or route.startswith(("client", "v1", "v2"))
    assert drain(bridge) == [] and outbox_lines(bridge) == []
