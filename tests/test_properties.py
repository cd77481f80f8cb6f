"""Whatever arrives at /api/metrics, the answer is a 2xx or 4xx with a JSON body, never a 5xx or an exception."""
from __future__ import annotations

import json
import os

import azure.functions as func
import msgpack
from hypothesis import HealthCheck, given, settings, strategies as st

from bridges import runtime
from bridges.core import Bridge
from bridges.settings import load_settings
from bridges.triggers.http import ingest_metrics
from conftest import NOW_NS

CONTENT_TYPES = ["application/json", "application/x-ndjson", "application/msgpack", None, "text/plain"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
metric_like = st.fixed_dictionaries(
    {"name": st.text(max_size=8)},
    optional={
        "gauge": st.fixed_dictionaries({"value": json_values}),
        "counter": st.dictionaries(st.sampled_from(["value", "temporality"]), json_values),
        "histogram": st.dictionaries(st.sampled_from(["count", "sum", "buckets"]), json_values),
        "tags": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "dt": json_values,
    },
)
SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _answer(body: bytes, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = ingest_metrics(func.HttpRequest("POST", "http://localhost/api/metrics", headers=headers, body=body))
    assert response.status_code in (202, 400, 413, 415), response.get_body()
    assert isinstance(json.loads(response.get_body()), dict)


def _use_bridge(tmp_path) -> None:
    runtime.use(Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox")}), clock=lambda: NOW_NS))


@SETTINGS
@given(document=json_values | st.lists(metric_like, max_size=4) | metric_like, content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_json(tmp_path, document, content_type):
    _use_bridge(tmp_path)
    _answer(json.dumps(document).encode(), content_type)
    try:
        packed = msgpack.packb(document)
    except OverflowError:  # integers beyond 64 bits have no MessagePack form
        return
    _answer(packed, "application/msgpack")


@SETTINGS
@given(body=st.binary(max_size=300), content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(tmp_path, body, content_type):
    _use_bridge(tmp_path)
    _answer(body, content_type)
