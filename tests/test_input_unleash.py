"""Unleash in: the custom metrics endpoint and the SDKs' metrics call. What the Unleash sink sends
comes back as the same metrics (or as its documented conversions), the vendor examples decode,
bad entries are refused with their path in Unleash's BadDataError shape, whole-body failures
answer as Unleash does, and no input makes the decoders fail otherwise."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS, drain, outbox_lines

from bridges.delivery.sinks.unleash.sink import UnleashSink
from bridges.formats import BodyError, Outcome, Refused, unleash
from bridges.ingest.normalize import Normalizer
from bridges.masking import Secret
from bridges.model import CUMULATIVE, DELTA, Aggregate, Bucket, Counter, Gauge, Histogram, Metric, Quantile, Summary

CASES = Path(__file__).parent / "testdata" / "inputs" / "unleash"
JSON = "application/json"
LIMIT = 1_000_000
AT = NOW_NS  # a whole millisecond: the impact bucket carries milliseconds
STOP = "2026-11-22T10:00:00.000Z"
TAGS = (("region", "eu"), ("shop", "berlin"))


def decode(fmt, document, content_type: str | None = JSON):
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return fmt.decode(body, content_type, {}, LIMIT)


def as_json(decoded) -> dict:
    return {"items": decoded.items, "origins": decoded.origins,
            "refused": [[r.origin, r.message] for r in decoded.refused], "skipped": decoded.skipped}


def normalized(decoded, now_ns: int = NOW_NS) -> list[Metric]:
    result = Normalizer().normalize(decoded.items, now_ns)
    assert result.errors == [], result.errors
    return result.metrics


def sent_and_read(metrics: list[Metric], api: str, now_ns: int = NOW_NS) -> list[Metric]:
    """Encode with the Unleash sink, decode each body with the matching input, normalize."""
    sink = UnleashSink("http://127.0.0.1:9", Secret("input-tests-token"), api=api, instance_id="input-tests")
    encoded = sink.encode(metrics, now_ns)
    assert encoded.rejected == []
    fmt = unleash.CUSTOM if api == "custom" else unleash.CLIENT
    return [m for request in encoded.requests
            for m in normalized(fmt.decode(request.body, request.headers["Content-Type"], {}, LIMIT), now_ns)]


def by_repr(metrics):
    return sorted(metrics, key=repr)


# --- round trips through the Unleash sink ------------------------------------------------------


def test_impact_metrics_come_back_as_sent():
    metrics = [
        Metric("active_users", Gauge(150.5), AT, TAGS, description="Currently active users", unit="users"),
        Metric("purchases", Counter(42, DELTA), AT, TAGS, description="Completed purchases"),
        Metric("checkout_seconds", Histogram(10, 12.5, (Bucket(0.5, 2), Bucket(1.0, 5), Bucket(5.0, 0))), AT, TAGS),
        Metric("plain", Gauge(-1), AT),
    ]
    assert by_repr(sent_and_read(metrics, "impact")) == by_repr(metrics)


def test_impact_conversions_come_back_as_documented():
    metrics = [
        Metric("cpu", Aggregate(1.0, 3.0, 4.0, 2), AT, TAGS),
        Metric("requests_total", Counter(9, CUMULATIVE), AT, TAGS),
        Metric("rpc_seconds", Summary(4, 8.0, (Quantile(0.5, 1.5),)), AT),
        Metric("queue.depth", Gauge(3), AT, (("host.name", "a"), ("origin", "x"), ("empty", ""))),
    ]
    assert by_repr(sent_and_read(metrics, "impact")) == by_repr([
        Metric("cpu", Histogram(2, 4.0, ()), AT, TAGS),  # a +Inf-only histogram
        Metric("cpu_min", Gauge(1.0), AT, TAGS, description="cpu"),
        Metric("cpu_max", Gauge(3.0), AT, TAGS, description="cpu"),
        Metric("requests_total", Gauge(9), AT, TAGS),  # impact counters take increments
        Metric("rpc_seconds", Gauge(1.5), AT, (("quantile", "0.5"),)),
        Metric("rpc_seconds_count", Gauge(4), AT, description="rpc_seconds"),
        Metric("rpc_seconds_sum", Gauge(8.0), AT, description="rpc_seconds"),
        # names made Unleash-safe (help keeps the original name); reserved and empty labels dropped
        Metric("queue_depth", Gauge(3), AT, (("host_name", "a"),), description="queue.depth"),
    ])


def test_custom_metrics_come_back_as_the_series_the_sink_wrote():
    metrics = [
        Metric("temperature", Gauge(-3.5), AT, TAGS),
        Metric("orders_total", Counter(17), AT, TAGS),
        Metric("orders", Counter(17), AT),
        Metric("bytes", Counter(5, DELTA), AT),
        Metric("latency", Histogram(3, 1.5, (Bucket(0.5, 1),)), AT),
        Metric("rpc", Summary(2, 3.0, (Quantile(0.9, 2.5),)), AT),
        Metric("cpu", Aggregate(1.0, 2.0, 3.0, 2), AT),
    ]
    receipt = AT + 7_000_000_000  # the custom body has no time: the point is at receipt
    assert by_repr(sent_and_read(metrics, "custom", receipt)) == by_repr([
        Metric("temperature", Gauge(-3.5), receipt, TAGS),
        Metric("orders_total", Counter(17), receipt, TAGS),  # *_total: a cumulative counter
        Metric("orders", Gauge(17), receipt),  # other names: the last value, a gauge
        Metric("bytes", Gauge(5), receipt),  # the summed increase of the request
        Metric("latency_count", Gauge(3), receipt), Metric("latency_sum", Gauge(1.5), receipt),
        Metric("latency_bucket", Gauge(1), receipt, (("le", "0.5"),)),
        Metric("latency_bucket", Gauge(3), receipt, (("le", "+Inf"),)),
        Metric("rpc_count", Gauge(2), receipt), Metric("rpc_sum", Gauge(3.0), receipt),
        Metric("rpc", Gauge(2.5), receipt, (("quantile", "0.9"),)),
        Metric("cpu_min", Gauge(1.0), receipt), Metric("cpu_max", Gauge(2.0), receipt),
        Metric("cpu_sum", Gauge(3.0), receipt), Metric("cpu_count", Gauge(2), receipt),
    ])


# --- examples ----------------------------------------------------------------------------------


def _format(case: Path):
    return unleash.CUSTOM if case.name.startswith("custom_") else unleash.CLIENT


@pytest.mark.parametrize("case", sorted(p for p in CASES.iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_examples(case):
    """``UPDATE_GOLDEN=1`` rewrites expected.json: read every change before keeping it."""
    produced = as_json(_format(case).decode((case / "request.json").read_bytes(), JSON, {}, LIMIT))
    expected = case / "expected.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(json.dumps(produced, indent=1) + "\n")
    assert produced == json.loads(expected.read_text())


def test_the_seed_example_is_a_counter():
    decoded = decode(unleash.CUSTOM, json.loads((CASES / "custom_seed" / "request.json").read_text()))
    assert normalized(decoded) == [Metric("http_responses_total", Counter(1), NOW_NS)]


def test_the_sdk_specification_example():
    decoded = decode(unleash.CLIENT, json.loads((CASES / "client_sdk_spec" / "request.json").read_text()))
    stop = 1_704_067_260 * 1_000_000_000  # bucket.stop, 2024-01-01T00:01:00Z
    labels = (("appName", "my-app"), ("environment", "prod"))
    assert normalized(decoded) == [
        Metric("purchases", Counter(42, DELTA), stop, labels, description="Number of purchases"),
        Metric("response_time_seconds", Histogram(100, 25.5, (Bucket(0.1, 50), Bucket(0.5, 35), Bucket(1.0, 10))),
               stop, labels, description="API response time"),
    ]


def test_feature_evaluations_become_delta_counters():
    decoded = decode(unleash.CLIENT, json.loads((CASES / "client_toggles" / "request.json").read_text()))
    result = Normalizer().normalize(decoded.items, NOW_NS)
    evaluations = [(m.name, m.tag_dict(), m.point) for m in result.metrics if m.name.startswith("unleash_")]
    app = {"app": "web", "environment": "production"}
    assert evaluations == [
        ("unleash_feature_evaluations", {"feature": "new-checkout", "result": "yes", **app}, Counter(120, DELTA)),
        ("unleash_feature_evaluations", {"feature": "new-checkout", "result": "no", **app}, Counter(30, DELTA)),
        ("unleash_feature_variant_evaluations", {"feature": "new-checkout", "variant": "blue", **app}, Counter(70, DELTA)),
        ("unleash_feature_variant_evaluations", {"feature": "new-checkout", "variant": "green", **app}, Counter(50, DELTA)),
        ("unleash_feature_evaluations", {"feature": "dark-mode", "result": "yes", **app}, Counter(0, DELTA)),
        ("unleash_feature_evaluations", {"feature": "dark-mode", "result": "no", **app}, Counter(4, DELTA)),
    ]
    assert {m.time_ns for m in result.metrics} == {AT}  # bucket.stop
    others = {m.name: m for m in result.metrics if not m.name.startswith("unleash_")}
    assert others["active_users"].tag_dict() == {"appName": "web", "shard": "3"}  # a number label: its text
    assert others["cart_items"].description is None  # help equal to the name: no description
    assert (others["checkout_seconds"].unit, others["checkout_seconds"].description) == ("s", "Checkout flow duration")
    assert others["checkout_seconds"].point == Histogram(3, 4.5, (Bucket(1, 1), Bucket(2, 0)))


def test_a_regular_sdk_report_without_metrics_is_fine():
    decoded = decode(unleash.CLIENT, {"appName": "web", "bucket": {"start": STOP, "stop": STOP, "toggles": {}}})
    assert (decoded.items, decoded.refused) == ([], [])
    assert unleash.CLIENT.answer(Outcome(0, 0, [], 0)) == (202, None, {})


# --- refusals ----------------------------------------------------------------------------------


def details_of(fmt, document) -> list[dict]:
    """The BadDataError details for a body, validation included (as the pipeline reports it)."""
    decoded = decode(fmt, document)
    result = Normalizer().normalize(decoded.items, NOW_NS, lambda i: "")
    problems = list(decoded.refused) + [Refused(decoded.origin(e.index), f"{e.pointer}: {e.message}") for e in result.errors]
    status, body, _ = fmt.answer(Outcome(len(result.metrics), len(problems), problems, len(decoded.items)))
    assert (status, body["name"], body["message"]) == (400, "BadDataError", unleash.VALIDATION_FAILED)
    return sorted(body["details"], key=lambda detail: detail["path"])  # the pipeline puts them in request order


def test_custom_refusals_name_the_field():
    details = details_of(unleash.CUSTOM, json.loads((CASES / "custom_mixed" / "request.json").read_text()))
    assert details == [
        {"path": "metrics[3].value", "message": "The `value` property is required."},
        {"path": "metrics[4]", "message": "a metric must be an object with name and value"},
        {"path": "metrics[5].labels.n", "message": "5 is not of type 'string'"},
        {"path": "metrics[6].value", "message": "'12' is not of type 'number'"},
    ]


def test_client_refusals_name_the_field():
    details = details_of(unleash.CLIENT, json.loads((CASES / "client_toggles" / "request.json").read_text()))
    assert details == [
        {"path": "bucket.toggles.broken", "message": "must be an object with yes, no and variants counts"},
        {"path": "impactMetrics[3].type", "message": "must be one of counter, gauge, histogram"},
        {"path": "impactMetrics[4].samples[0].value", "message": "-2 is less than the minimum of 0"},
        {"path": "impactMetrics[4].samples[1].value", "message": "'value' is a required property"},
    ]
    more = details_of(unleash.CLIENT, {"appName": "a", "bucket": {"start": STOP, "stop": STOP, "toggles": {"f": {"yes": -1}}},
                                       "impactMetrics": [
                                           {"name": "", "help": "h", "type": "gauge", "samples": [{"value": 1}]},
                                           {"name": "h", "help": "h", "type": "histogram", "samples": [
                                               {"count": 2, "sum": 1, "buckets": [{"le": 1, "count": 2}, {"le": 0.5, "count": 2}]},
                                               {"count": 2, "sum": 1, "buckets": [{"le": 1, "count": 3}, {"le": "+Inf", "count": 2}]},
                                               {"count": 2, "sum": 1, "buckets": [{"le": "+Inf", "count": 3}]},
                                               {"count": 2.5, "sum": 1, "buckets": []}]}]})
    assert {"path": "impactMetrics[0].name", "message": "'' should be non-empty"} in more
    assert [detail for detail in more if detail["path"] != "impactMetrics[0].name"] == [
        {"path": "bucket.toggles.f.yes", "message": "-1 is less than the minimum of 0"},
        {"path": "impactMetrics[1].samples[0].buckets[1].le",
         "message": 'bucket bounds must be increasing numbers (or "+Inf", last)'},
        {"path": "impactMetrics[1].samples[1].buckets[1]",
         "message": "bucket counts must be cumulative (never smaller than the previous one)"},
        {"path": "impactMetrics[1].samples[2].buckets[0]", "message": "the +Inf bucket must hold the count"},
        {"path": "impactMetrics[1].samples[3].count", "message": "2.5 is not of type 'integer'"},
    ]


@pytest.mark.parametrize("fmt, body, content_type, status, path", [
    (unleash.CUSTOM, b"{", JSON, 400, None),
    (unleash.CUSTOM, b"{}", JSON, 400, "metrics"),
    (unleash.CUSTOM, b"", JSON, 400, "metrics"),
    (unleash.CUSTOM, b'{"data": []}', JSON, 400, "metrics"),
    (unleash.CUSTOM, b'{"metrics": {}}', JSON, 400, "metrics"),
    (unleash.CUSTOM, b'{"metrics": []}', "text/plain", 415, None),
    (unleash.CLIENT, b"[]", JSON, 400, ""),
    (unleash.CLIENT, b'{"bucket": {}}', JSON, 400, "appName"),
    (unleash.CLIENT, b'{"appName": "a", "bucket": []}', JSON, 400, "bucket"),
    (unleash.CLIENT, b'{"appName": "a", "bucket": {"start": "2026-11-22T10:00:00Z"}}', JSON, 400, "bucket.stop"),
    (unleash.CLIENT, b'{"appName": "a", "bucket": {"start": "x", "stop": "2026-11-22T10:00:00Z"}}', JSON, 400, "bucket.start"),
    (unleash.CLIENT, b'{"appName": "a", "impactMetrics": {}}', JSON, 400, "impactMetrics"),
    (unleash.CLIENT, b'{"appName": "a", "bucket": {"start": 1, "stop": 2, "toggles": []}}', JSON, 400, "bucket.toggles"),
    (unleash.CLIENT, b'{"appName": "a"}', "application/x-www-form-urlencoded", 415, None),
])
def test_whole_body_refusals(fmt, body, content_type, status, path):
    with pytest.raises(BodyError) as caught:
        fmt.decode(body, content_type, {}, LIMIT)
    assert (caught.value.status, caught.value.where.get("path")) == (status, path)
    answer_status, answer, headers = fmt.refuse(caught.value)
    assert (answer_status, headers) == (status, {})
    assert set(answer) == {"id", "name", "message", "details"}
    assert answer["name"] == ("BadDataError" if status == 400 else "ContentTypeError")
    assert answer["details"][0]["message"] == caught.value.message
    assert ("path" in answer["details"][0]) == (path is not None)


def test_answers():
    assert unleash.CUSTOM.answer(Outcome(accepted=2, rejected=0, problems=[], units=2)) == (202, None, {})
    status, body, headers = unleash.CUSTOM.answer(
        Outcome(accepted=1, rejected=3, problems=[Refused("metrics[2]", "/gauge/value: 'x' is not of type 'number'"),
                                                  Refused("metrics[4]", "something")], units=4))
    assert (status, headers) == (400, {})
    assert body == {"id": body["id"], "name": "BadDataError", "message": unleash.VALIDATION_FAILED, "details": [
        {"path": "metrics[2].value", "message": "'x' is not of type 'number'"},
        {"path": "metrics[4]", "message": "something"},
        {"path": "", "message": "1 more refused, not listed"}]}
    assert len(body["id"]) == 36 and body["id"] == unleash.CUSTOM.answer(
        Outcome(1, 3, [Refused("metrics[2]", "/gauge/value: 'x' is not of type 'number'"), Refused("metrics[4]", "something")],
                4))[1]["id"]  # derived from the content, so answers are reproducible
    status, body, _ = unleash.CLIENT.refuse(BodyError(503, "could not be kept; send again"))
    assert (status, body["name"], body["details"]) == (503, "ServiceUnavailableError",
                                                      [{"message": "could not be kept; send again"}])


def test_through_the_bridge(bridge):
    reply = bridge.receive(unleash.CUSTOM, b'{"metrics": [{"name": "orders_total", "value": 3, "labels": {"a": "b"}}]}', JSON)
    assert (reply.status, reply.body) == (202, None)
    drain(bridge)
    assert outbox_lines(bridge) == [{"name": "orders_total", "counter": {"value": 3, "temporality": "cumulative"},
                                     "tags": {"a": "b"}, "dt": "2026-11-22T10:00:00Z"}]
    reply = bridge.receive(unleash.CUSTOM, b'{"metrics": [{"name": "ok", "value": 1}, {"name": "x", "value": true}]}', JSON)
    assert reply.status == 400
    assert reply.body["details"] == [{"path": "metrics[1].value", "message": "True is not of type 'number'"}]
    reply = bridge.receive(unleash.CLIENT, b'{"appName": "a"}', "text/plain")
    assert (reply.status, reply.body["name"]) == (415, "ContentTypeError")


# --- fuzzing -----------------------------------------------------------------------------------


def _decodes_or_refuses(fmt, body: bytes) -> None:
    try:
        decoded = fmt.decode(body, JSON, {}, LIMIT)
    except BodyError as exc:
        assert 400 <= exc.status < 500
        fmt.refuse(exc)
        return
    assert len(decoded.items) == len(decoded.origins)
    result = Normalizer().normalize(decoded.items, NOW_NS, lambda i: "")
    problems = list(decoded.refused) + [Refused(decoded.origin(e.index), f"{e.pointer}: {e.message}") for e in result.errors]
    status, answer, _ = fmt.answer(Outcome(len(result.metrics), len(problems), problems, len(decoded.items)))
    assert status in (202, 400)
    json.dumps(answer)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = st.sampled_from([unleash.CUSTOM, unleash.CLIENT])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "+Inf", "x", "2026-11-22T10:00:00Z", "counter", "gauge", "histogram"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["metrics", "name", "value", "labels", "appName", "bucket", "start", "stop", "toggles", "yes",
                         "no", "variants", "impactMetrics", "type", "help", "samples", "count", "sum", "buckets", "le", "x"]),
        inner, max_size=5),
    max_leaves=20)
_VALID = [(_format(case), json.loads((case / "request.json").read_text()))
          for case in sorted(CASES.iterdir()) if case.is_dir()]


@FUZZ
@given(FORMATS, st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(fmt, body):
    _decodes_or_refuses(fmt, body)


@FUZZ
@given(FORMATS, JSON_VALUES)
def test_fuzz_arbitrary_json(fmt, document):
    _decodes_or_refuses(fmt, json.dumps(document).encode())


def _mutate(document, path: list[int], replacement):
    """The document with the node that ``path`` picks (indexes into each container) replaced."""
    if not path or not isinstance(document, (dict, list)) or not document:
        return replacement
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = keys[path[0] % len(keys)]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[key] = _mutate(document[key], path[1:], replacement)
    return copy


@FUZZ
@given(st.sampled_from(_VALID), st.lists(st.integers(0, 50), min_size=1, max_size=6), JSON_VALUES)
def test_fuzz_mutated_valid_bodies(case, path, replacement):
    fmt, document = case
    _decodes_or_refuses(fmt, json.dumps(_mutate(document, path, replacement)).encode())


def test_a_help_text_longer_than_a_description_is_cut_not_refused():
    """Found by tests/test_sink_roundtrip.py: the sink's help is the description (up to 1,024
    characters) plus `` [unit]``; a unit the reader cannot split off (it holds a bracket) left the
    whole help as the description, over the canonical limit, and the sample was refused."""
    metric = Metric("queue_depth", Gauge(3), AT, description="d" * 1024, unit="[items]")
    [read] = sent_and_read([metric], "impact")
    assert read.description == "d" * 1024 and read.unit is None
    assert read.point == Gauge(3)
