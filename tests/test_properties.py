"""Whatever arrives at /api/metrics, the answer is a 2xx or 4xx with a JSON body, never a 5xx or an exception."""
from __future__ import annotations

import json
import os
import re

import azure.functions as func
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS, use_bridge

from bridges.triggers.http import ingest_metrics

CONTENT_TYPES = ["application/json", "application/x-ndjson", "application/msgpack", None, "text/plain",
                 ";;;\x7f", "application/json; charset", "json"]


class HugeInteger:
    """An integer of more digits than Python reads (4,300): written into JSON text by ``dumps``."""

    def __init__(self, digits: int):
        self.digits = digits


def dumps(document: object) -> bytes:
    """JSON text of a generated document, its HugeIntegers written out as digits."""
    text = json.dumps(document, default=lambda huge: f"@@huge{huge.digits}@@")
    return re.sub(r'"@@huge(\d+)@@"', lambda m: "7" * int(m.group(1)), text).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.integers(4301, 6000).map(HugeInteger),
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


@SETTINGS
@given(document=json_values | st.lists(metric_like, max_size=4) | metric_like, content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_json(tmp_path, document, content_type):
    use_bridge({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox")})
    _answer(dumps(document), content_type)
    if content_type == "application/x-ndjson" and isinstance(document, list):
        _answer(b"\n".join(dumps(item) for item in document), content_type)
    try:
        packed = msgpack.packb(document, default=lambda huge: None)
    except OverflowError:  # integers beyond 64 bits have no MessagePack form
        return
    _answer(packed, "application/msgpack")


@SETTINGS
@given(body=st.binary(max_size=300), content_type=st.sampled_from(CONTENT_TYPES))
def test_arbitrary_bytes(tmp_path, body, content_type):
    use_bridge({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox")})
    _answer(body, content_type)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
counts = st.integers(min_value=0, max_value=10**6)


@st.composite
def histograms(draw):
    limits = sorted(set(draw(st.lists(finite, max_size=8))))
    per_bucket = [draw(counts) for _ in limits]
    total = sum(per_bucket) + draw(counts)
    return {"count": total, "sum": draw(finite), "buckets": [{"upper_limit": u, "count": c} for u, c in zip(limits, per_bucket, strict=True)]}


@st.composite
def summaries(draw):
    quantiles = sorted(set(draw(st.lists(st.floats(min_value=0, max_value=1), max_size=5))))
    return {"count": draw(counts), "sum": draw(finite), "quantiles": [{"quantile": q, "value": draw(finite)} for q in quantiles]}


@st.composite
def aggregates(draw):
    low, high = sorted([draw(st.integers(-10**6, 10**6)), draw(st.integers(-10**6, 10**6))])
    count = draw(st.integers(min_value=1, max_value=1000))
    return {"min": low, "max": high, "sum": draw(st.integers(low * count, high * count)), "count": count}


moments = st.datetimes(min_value=__import__("datetime").datetime(1971, 1, 1), max_value=__import__("datetime").datetime(2200, 1, 1))
valid_metrics = st.fixed_dictionaries(
    {"name": st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30)},
    optional={
        "tags": st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=5),
        "dt": st.one_of(
            st.integers(min_value=0, max_value=10**18),
            moments.map(lambda m: m.isoformat() + "Z"),
            moments.map(lambda m: m.isoformat(sep=" ") + "+05:30"),
        ),
        "unit": st.sampled_from(["ms", "By", "1"]),
    },
).flatmap(lambda base: st.one_of(
    st.fixed_dictionaries({"gauge": st.fixed_dictionaries({"value": finite})}),
    st.fixed_dictionaries({"counter": st.fixed_dictionaries({"value": st.floats(min_value=0, allow_infinity=False)}, optional={"temporality": st.sampled_from(["delta", "cumulative"])})}),
    st.fixed_dictionaries({"histogram": histograms()}),
    st.fixed_dictionaries({"summary": summaries()}),
    st.fixed_dictionaries({"aggregate": aggregates()}),
).map(lambda point: {**base, **point}))


@SETTINGS
@given(items=st.lists(valid_metrics, min_size=1, max_size=5))
def test_valid_metrics_are_accepted_and_their_canonical_form_reads_back_the_same(items):
    from bridges.ingest.normalize import Normalizer

    normalizer = Normalizer()
    first = normalizer.normalize(items, NOW_NS)
    assert first.errors == [] and len(first.metrics) == len(items)
    again = normalizer.normalize([m.to_json() for m in first.metrics], NOW_NS)
    assert again.metrics == first.metrics
