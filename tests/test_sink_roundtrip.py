"""Round trips, one per sink: for any valid canonical metrics (hostile texts included: control
characters, line breaks of every kind, quotes, backslashes, separators, texts as long as the
schema allows), what a sink sends reads back, with the bridge's own decoder of that wire format,
as exactly the series the sink meant: no line, series or label more or less, nothing refused
by the reader, and every metric the sink refused locally refused with a reason.

What "meant" is comes from the metric and the sink's documented rules, computed here without
looking at the wire: the sink's own name normalizers are used, the assembly is not.
``FUZZ_EXAMPLES`` sets the number of examples (200 by default)."""
from __future__ import annotations

import gzip
import json
import math
import os
import re
import unicodedata
from collections import Counter as Tally
from itertools import groupby
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS

from bridges.delivery.sinks.dynatrace import sink as dynatrace_sink
from bridges.delivery.sinks.prometheus import sink as prometheus_sink
from bridges.delivery.sinks.unleash import sink as unleash_sink
from bridges.delivery.sinks.azure_monitor.sink import AzureMonitorSink
from bridges.delivery.sinks.azure_monitor.sink import metric_name as azure_name
from bridges.delivery.sinks.betterstack.sink import BetterStackSink
from bridges.formats import azure_monitor as azure_format
from bridges.formats import canonical, remote_write
from bridges.formats import dynatrace as dynatrace_format
from bridges.formats import unleash as unleash_format
from bridges.ingest.normalize import Normalizer
from bridges.masking import Secret
from bridges.model import CUMULATIVE, MAX_COUNT, Aggregate, Counter, Gauge, Histogram, Metric, Quantile, Summary

SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NS = 1_000_000_000
NORMALIZER = Normalizer()

# --- valid canonical metrics with hostile texts ---------------------------------------------

SPECIAL = ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\x0b", "\x00", "\t", "\x7f", "\ufeff", "\u200b",
           '"', "\\", "\\\\", "=", ",", " ", "  ", "#", ".", "..", "-", "_", "__", ":", "[", "]", "{", "}",
           "é", "İ", "ß", "\u3000", "😀", "+Inf", "le", "dt.", "1"]
character = st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=["Cs"]))


def hostile(min_size: int, limit: int, alphabet=character):
    """Texts of ``min_size`` to ``limit`` characters: mostly short, sometimes as long as allowed."""
    short = st.lists(alphabet, min_size=min_size, max_size=12).map("".join).map(lambda text: text[:limit])
    long = st.tuples(st.lists(alphabet, min_size=1, max_size=6).map("".join), st.integers(max(min_size, 1), limit))
    return st.one_of(short, short, short, long.map(lambda pair: (pair[0] * pair[1])[:pair[1]]))


NOT_IN_NAMES = "".join(map(chr, range(32))) + "\x7f"  # the schema's pattern for names
name_character = st.one_of(st.sampled_from([text for text in SPECIAL if not set(text) & set(NOT_IN_NAMES)]),
                           st.characters(exclude_categories=["Cs"], exclude_characters=NOT_IN_NAMES))
names = st.one_of(st.from_regex(r"[a-z][a-z0-9_.]{2,20}", fullmatch=True), hostile(1, 255, name_character),
                  st.builds(lambda part, size: (part * size)[:size], st.sampled_from(["a", "a.", "a-", "a_b"]),
                            st.integers(240, 255)))
tag_keys = st.one_of(st.sampled_from(["le", "quantile", "origin", "metric_type", "__name__", "Host", "host", "HOST",
                                      "1x", "a.b", "dt.entity.host"]), hostile(1, 128))


@st.composite
def many_tags(draw) -> dict:
    """45 to 64 tags, for the limits (Dynatrace's 50 dimensions, Azure's 10, long lines): a
    few hostile keys and values repeated, as drawing 64 of each would be slow."""
    keys = draw(st.lists(tag_keys, min_size=3, max_size=3))
    values = draw(st.lists(hostile(0, 1024), min_size=3, max_size=3))
    return {keys[i % 3][:125] + str(i): values[i % 3] for i in range(draw(st.integers(45, 64)))}


few_tags = st.dictionaries(tag_keys, hostile(0, 1024), max_size=4)
tags = st.one_of(few_tags, few_tags, few_tags, few_tags, few_tags, few_tags, few_tags, many_tags())
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0, 1e16, 0.1]))
counts = st.one_of(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, MAX_COUNT), st.integers(2**62, MAX_COUNT))
moments = st.one_of(st.integers(-20 * 60, 4 * 60), st.integers(-2 * 3600, 30 * 60)).flatmap(
    lambda seconds: st.integers(NOW_NS + seconds * NS, NOW_NS + seconds * NS + NS - 1))


@st.composite
def histograms(draw):
    """Mostly a few buckets; sometimes 200 to 256 (the schema's limit), their counts a pattern."""
    if draw(st.integers(0, 7)):
        limits = sorted(set(draw(st.lists(finite, max_size=5))))
        per_bucket = [draw(st.integers(0, 1000)) for _ in limits]
    else:
        start, step = draw(st.floats(-1e6, 1e6)), draw(st.floats(1e-3, 1e3))
        limits = [start + i * step for i in range(draw(st.integers(200, 256)))]
        seed = draw(st.integers(0, 1000))
        per_bucket = [(seed + 7919 * i) % 1001 for i in range(len(limits))]
    return {"count": min(sum(per_bucket) + draw(counts), MAX_COUNT), "sum": draw(finite),
            "buckets": [{"upper_limit": u, "count": c} for u, c in zip(limits, per_bucket, strict=True)]}


@st.composite
def summaries(draw):
    quantiles = sorted(set(draw(st.lists(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 1)), max_size=6))))
    return {"count": draw(counts), "sum": draw(finite),
            "quantiles": [{"quantile": q, "value": draw(finite)} for q in quantiles]}


@st.composite
def aggregates(draw):
    low, high = sorted([draw(finite), draw(finite)])
    low, high = (low, high) if low < high else (low, low)  # 0.0 and -0.0 sort either way
    count = draw(st.one_of(st.integers(1, 1000), counts.map(lambda n: n or 1)))
    mean = draw(st.floats(low, high))
    total = mean * count
    if not math.isfinite(total):
        count, total = 1, mean
    return {"min": low, "max": high, "sum": total, "count": count}


points = st.one_of(
    st.fixed_dictionaries({"gauge": st.fixed_dictionaries(
        {"value": st.one_of(finite, st.integers(-2**63 + 1, 2**63 - 1))})}),
    st.fixed_dictionaries({"counter": st.fixed_dictionaries(
        {"value": st.one_of(st.floats(min_value=0, allow_infinity=False), st.integers(0, 2**63 - 1))},
        optional={"temporality": st.sampled_from(["delta", "cumulative"])})}),
    st.fixed_dictionaries({"histogram": histograms()}),
    st.fixed_dictionaries({"summary": summaries()}),
    st.fixed_dictionaries({"aggregate": aggregates()}),
)
OTHER_RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000002/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
items = st.fixed_dictionaries(
    {"name": names, "dt": moments},
    optional={"tags": tags, "unit": hostile(1, 64), "description": hostile(0, 1024), "namespace": hostile(1, 256),
              "azure": st.fixed_dictionaries({"resource_id": st.just(OTHER_RESOURCE)},
                                             optional={"region": st.sampled_from(["westus", "westeurope"])})},
).flatmap(lambda base: points.map(lambda point: {**base, **point}))


@st.composite
def metric_lists(draw, max_size: int = 6) -> list[Metric]:
    """Valid canonical metrics, a name or tag set sometimes repeated (series that merge)."""
    raw = draw(st.lists(items, min_size=1, max_size=max_size))
    repeat = draw(st.sampled_from(["none", "series", "point"]))
    if repeat == "series":  # another point of the first one's series: same name, tags, time, target
        raw.append({**{k: v for k, v in draw(items).items() if k not in ("tags", "namespace", "azure")},
                    **{k: v for k, v in raw[0].items() if k in ("name", "tags", "dt", "namespace", "azure")}})
    elif repeat == "point":  # the same point twice (a resent webhook)
        raw.append(raw[0])
    normalized = NORMALIZER.normalize(raw, NOW_NS)
    assert normalized.errors == []
    return normalized.metrics


def carried_or_refused(encoded, metrics, split: bool = False) -> set[int]:
    """Every metric is carried by exactly one request (or, ``split``, by one or more, each once)
    or refused with a reason; the carried ones."""
    carried = [index for request in encoded.requests for index in request.items]
    refused = [rejection.index for rejection in encoded.rejected]
    assert all(rejection.reason for rejection in encoded.rejected)
    assert all(len(set(request.items)) == len(request.items) for request in encoded.requests)
    if split:
        carried = list(dict.fromkeys(carried))
    assert sorted(carried + refused) == list(range(len(metrics)))
    return set(carried)


def strict_json(text) -> object:
    """JSON as a strict reader takes it: no NaN or Infinity."""
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def normalized(decoded) -> list[Metric]:
    """The decoded items as the bridge's pipeline would take them: all valid."""
    assert decoded.refused == []
    result = NORMALIZER.normalize(decoded.items, NOW_NS)
    assert result.errors == []
    return result.metrics


def as_read(number):
    """A number as the Normalizer reads it: integers beyond 64 bits become floats."""
    return float(number) if isinstance(number, int) and not -2**63 < number < 2**63 else number


# --- Dynatrace ------------------------------------------------------------------------------


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def dynatrace_dimensions(sink, metric: Metric, extra: tuple | None = None) -> dict:
    """The dimensions a line of this metric should carry: its own tags (first of a key), then
    the defaults, at most 50, ``le``/``quantile`` first when given (as a number)."""
    kept: dict = {}
    for key, value in metric.tags:
        key = dynatrace_sink.dimension_key(key)
        if key is not None and key not in kept and value != "":
            kept[key] = unescape(dynatrace_sink.dimension_value(value))
    for key, value in sink.default_dimensions:
        kept.setdefault(key, unescape(value))
    pairs = list(kept.items())
    if extra is not None:
        pairs = [extra] + [pair for pair in pairs if pair[0] != extra[0]]
    return dict(pairs[:50])


def dynatrace_lines(sink, metric: Metric) -> list[tuple[str, dict, object]]:
    """(key, dimensions, canonical point) of each line the metric should become; ``le`` and
    ``quantile`` are numbers."""
    key = sink._key(metric.name)
    suffixed = sink._key(metric.name, suffixed=True)
    dims = dynatrace_dimensions(sink, metric)
    point = metric.point
    if isinstance(point, Counter) and point.temporality == CUMULATIVE:
        return [(key, dims, Gauge(point.value))]
    if isinstance(point, (Gauge, Counter, Aggregate)):
        return [(key, dims, point)]
    lines = [(suffixed + "_count", dims, Gauge(as_read(point.count))), (suffixed + "_sum", dims, Gauge(point.sum))]
    if isinstance(point, Histogram):
        return lines + [(suffixed + "_bucket", dynatrace_dimensions(sink, metric, ("le", limit)), Gauge(as_read(count)))
                        for limit, count in point.cumulative_buckets()]
    return lines + [(suffixed, dynatrace_dimensions(sink, metric, ("quantile", q.quantile)), Gauge(q.value))
                    for q in point.quantiles]


def dynatrace_metadata(sink, metric: Metric) -> tuple | None:
    """(key, payload format, unit, description) of the metric's metadata line, as read back."""
    if not sink.metadata or not (metric.unit or metric.description) or isinstance(metric.point, (Histogram, Summary)):
        return None
    kind = "count" if isinstance(metric.point, Counter) and metric.point.temporality == "delta" else "gauge"
    unit, description = (unescape(dynatrace_sink.escaped(text, quoted=True)[0]) if text else None
                         for text in (metric.unit, metric.description))
    return sink._key(metric.name), kind, unit, description


def dynatrace_refusal(sink, metric: Metric) -> bool:
    key = sink._key(metric.name, suffixed=isinstance(metric.point, (Histogram, Summary)))
    age = NOW_NS // 1_000_000 - metric.time_ns // 1_000_000
    return key is None or key.startswith("dt.") or not -10 * 60_000 <= age <= 3600_000


def _numbers_as_meant(read: dict, meant: dict) -> dict:
    """Read dimensions with ``le`` or ``quantile`` as numbers where the sink meant a number."""
    return {k: float(v) if isinstance(meant.get(k), float) else v for k, v in read.items()}


def without_line_breakers(text: str) -> str:
    """Each run of characters no line can hold (category C, U+2028, U+2029) as one ``_``."""
    runs = groupby(text, key=lambda c: unicodedata.category(c)[0] == "C" or c in "\u2028\u2029")
    return "".join("_" if unsafe else "".join(run) for unsafe, run in runs)


@SETTINGS
@given(text=hostile(1, 1024))
def test_dynatrace_values_read_back_as_written_less_line_breakers(text):
    """A dimension value and a description, written by the sink and read by the input: the
    text with its line breakers replaced, cut no shorter than half of 250 characters."""
    metric = Metric("escaping.test", Gauge(1), NOW_NS, (("tag", text),), description=text)
    [request] = dynatrace_sink.DynatraceSink("http://dt.local", Secret("dt0c01.TEST")).encode([metric], NOW_NS).requests
    [item] = dynatrace_format.decode(request.body, request.headers["Content-Type"], {}, 10**6).items
    meant = without_line_breakers(text[:250])
    for read in (item["tags"]["tag"], item["description"]):
        assert meant.startswith(read) and len(read) >= min(len(meant), 125)


dynatrace_sinks = st.builds(
    lambda prefix, defaults, metadata: dynatrace_sink.DynatraceSink("http://dt.local", Secret("dt0c01.TEST"), prefix,
                                                                    defaults, metadata),
    st.one_of(st.just(""), hostile(1, 20)), st.dictionaries(tag_keys, hostile(0, 40), max_size=3), st.booleans())


@SETTINGS
@given(metrics=metric_lists(), sink=dynatrace_sinks)
def test_dynatrace_lines_read_back_as_the_points_sent(metrics, sink):
    encoded = sink.encode(metrics, NOW_NS)
    carried = carried_or_refused(encoded, metrics, split=True)  # a metric's lines may fill several requests
    assert carried == {i for i, metric in enumerate(metrics) if not dynatrace_refusal(sink, metric)}
    by_metric: dict[int, list] = {}
    for request in encoded.requests:
        text = request.body.decode("utf-8")
        assert len(text.splitlines()) == len(text.split("\n")) == len(request.lines) <= 1000  # no other line break
        assert len(request.body) <= 1_000_000
        decoded = dynatrace_format.decode(request.body, request.headers["Content-Type"], {}, 10**7)
        read = normalized(decoded)
        assert len(read) == sum(owner is not None for owner in request.lines)
        # metadata: a line per distinct unit and description in the request; the first of a key and kind applies
        expected_metadata = [dynatrace_metadata(sink, metrics[i]) for i in request.items]
        expected_metadata = list(dict.fromkeys(m for m in expected_metadata if m is not None))
        assert decoded.skipped.get("metadata lines", 0) == len(expected_metadata)
        described = {}
        for key, kind, unit, description in expected_metadata:
            described.setdefault((key, kind), (unit, description))
        for metric, line in zip(read, decoded.origins, strict=True):
            by_metric.setdefault(request.lines[line - 1], []).append(metric)
            kind = "count" if isinstance(metric.point, Counter) else "gauge"
            assert (metric.unit, metric.description) == described.get((metric.name, kind), (None, None))
    assert set(by_metric) == carried
    for index, lines in by_metric.items():
        sent = metrics[index]
        meant = dynatrace_lines(sink, sent)
        assert len(lines) == len(meant)
        assert [(m.name, _numbers_as_meant(m.tag_dict(), dims), m.point)
                for m, (_, dims, _) in zip(lines, meant)] == meant
        assert {m.time_ns for m in lines} == {sent.time_ns // 1_000_000 * 1_000_000}


# --- Prometheus remote-write ----------------------------------------------------------------


def prometheus_series(metric: Metric) -> list[tuple[tuple, float, int]]:
    """(sorted labels, value, timestamp ms) of each series the metric should become; ``le`` and
    ``quantile`` written as Python floats (``0.5``, ``1.0``, ``+Inf``), as documented."""
    name = prometheus_sink.metric_name(metric.name)
    labels: dict = {}
    for key, value in metric.tags:
        key = prometheus_sink.label_name(key)
        if key is not None and key not in labels and value != "":
            labels[key] = value
    point, ms = metric.point, metric.time_ns // 1_000_000

    def one(suffix: str, value, extra: tuple | None = None):
        pairs = {**labels, "__name__": name + suffix}
        if extra is not None:
            pairs[extra[0]] = "+Inf" if extra[1] == math.inf else repr(float(extra[1]))
        return tuple(sorted(pairs.items())), float(value), ms

    if isinstance(point, Gauge) or (isinstance(point, Counter) and point.temporality == CUMULATIVE):
        return [one("", point.value)]
    if isinstance(point, Counter):
        return [one("_delta", point.value)]
    if isinstance(point, Aggregate):
        return [one("_min", point.min), one("_max", point.max), one("_sum", point.sum), one("_count", point.count)]
    reserved = "le" if isinstance(point, Histogram) else "quantile"
    labels.pop(reserved, None)
    if isinstance(point, Histogram):
        parts = [one("_bucket", n, ("le", le)) for le, n in point.cumulative_buckets()]
    else:
        parts = [one("", q.value, ("quantile", q.quantile)) for q in point.quantiles]
    return [*parts, one("_sum", point.sum), one("_count", point.count)]


@SETTINGS
@given(metrics=metric_lists(), max_samples=st.sampled_from([2000, 3, 1]))
def test_prometheus_write_requests_read_back_as_the_series_sent(metrics, max_samples):
    sink = prometheus_sink.PrometheusSink("http://127.0.0.1:9090/api/v1/write", None, max_samples)
    encoded = sink.encode(metrics, NOW_NS)
    carried_or_refused(encoded, metrics)
    last_ms: dict = {}
    for request in encoded.requests:
        # the input reads every series (names, no label twice or empty, finite values); the
        # canonical schema's 255-character names are not Prometheus's concern, so not checked
        assert remote_write.decode(request.body, request.headers["Content-Type"], {}, 10**8).refused == []
        written = remote_write.decode_write_request(request.body)["timeseries"]
        read = Tally()
        for series in written:
            labels = tuple(sorted(series["labels"].items()))
            [sample] = series["samples"]
            read[labels, sample["value"], sample["timestamp"]] += 1
            assert sample["timestamp"] >= last_ms.get(labels, 0)  # a series' samples ascend across requests
            last_ms[labels] = sample["timestamp"]
        meant = Tally(s for i in request.items for s in prometheus_series(metrics[i]))
        assert read == meant
        assert len(written) <= max(max_samples, max(len(prometheus_series(metrics[i])) for i in request.items))


# --- Azure Monitor custom metrics -----------------------------------------------------------

RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Web/sites/app"


def azure_observation(point) -> tuple[float, int] | None:
    """(sum, count) the point stands for, None when it has no observation."""
    if isinstance(point, (Gauge, Counter)):
        return point.value, 1
    if point.count == 0:
        return None
    return point.sum, point.count


def azure_dimensions(metric: Metric) -> dict:
    kept = {key: value[:256] for key, value in metric.tags if key and value}
    return {key: kept[key] for key in sorted(kept)[:10]}


@SETTINGS
@given(metrics=metric_lists())
def test_azure_monitor_documents_read_back_as_the_series_sent(metrics):
    sink = AzureMonitorSink(RESOURCE, "westeurope", None)
    encoded = sink.encode(metrics, NOW_NS)
    carried = carried_or_refused(encoded, metrics)
    window = range(NOW_NS - 20 * 60 * NS, NOW_NS + 4 * 60 * NS + 1)
    unsendable = {i for i, m in enumerate(metrics) if m.time_ns not in window or azure_observation(m.point) is None}
    overflowed = {r.index for r in encoded.rejected  # merged beyond a float or a 64-bit count: see the sink
                  if "too large for a number" in r.reason or "beyond a 64-bit integer" in r.reason}
    assert set(range(len(metrics))) - carried == unsendable | overflowed
    for request in encoded.requests:
        body = gzip.decompress(request.body)
        assert len(body) <= 4_000_000
        for line in body.decode("utf-8").split("\n")[:-1]:
            strict_json(line)
        params = {"resourceId": urlsplit(request.url).path.lstrip("/")}
        read = normalized(azure_format.decode(body, request.headers["Content-Type"], params, 10**8))
        series = {(m.azure.resource_id, m.namespace, m.name, m.tags, m.time_ns): m.point for m in read}
        assert len(series) == len(read)  # each series once a minute
        meant: dict = {}
        for i in sorted(request.items):
            metric = metrics[i]
            target = metric.azure.resource_id if metric.azure else RESOURCE
            key = (target, metric.namespace or "Bridge", azure_name(metric.name),
                   tuple(sorted(azure_dimensions(metric).items())), metric.time_ns // (60 * NS) * 60 * NS)
            total, count = azure_observation(metric.point)
            before = meant.get(key, (0, 0))
            meant[key] = (before[0] + total, before[1] + count)
        assert {key: (point.sum, point.count) for key, point in series.items()} == {
            key: (as_read(total), count) for key, (total, count) in meant.items()}


# --- Unleash --------------------------------------------------------------------------------


def unleash_series(metric: Metric, mode: str) -> list[tuple[str, tuple, str]]:
    """(name, sorted labels, kind as read back) of each series the metric should become."""
    impact = mode == unleash_sink.IMPACT
    point = metric.point
    name = unleash_sink.impact_name(metric.name) if impact else unleash_sink.custom_name(metric.name)
    reserved = {"origin", "metric_type"} if impact else set()
    if isinstance(point, Histogram) or (impact and isinstance(point, Aggregate)):
        reserved.add("le")
    if isinstance(point, Summary):
        reserved.add("quantile")
    labels: dict = {}
    for key, value in metric.tags:
        key = unleash_sink.label_name(key)
        if value and key not in reserved and key not in labels:
            labels[key] = value

    def one(suffix: str, kind: str, extra: tuple | None = None):
        pairs = dict(labels)
        if extra is not None:
            pairs[extra[0]] = extra[1]
        return name + suffix, tuple(sorted(pairs.items())), kind

    if not impact:  # every custom series reads back as a gauge or, named *_total, a counter
        kind = "gauge"
        if isinstance(point, (Gauge, Counter)):
            return [one("", kind)]
        if isinstance(point, Aggregate):
            return [one(suffix, kind) for suffix in ("_min", "_max", "_sum", "_count")]
        if isinstance(point, Histogram):
            return [one("_count", kind), one("_sum", kind)] + [
                one("_bucket", kind, ("le", unleash_sink.bound_text(le))) for le, _ in point.cumulative_buckets()]
        return [one("_count", kind), one("_sum", kind)] + [
            one("", kind, ("quantile", unleash_sink.bound_text(q.quantile))) for q in point.quantiles]
    if isinstance(point, Gauge) or (isinstance(point, Counter) and point.temporality == CUMULATIVE):
        return [one("", "gauge")]
    if isinstance(point, Counter):
        return [one("", "counter")]
    if isinstance(point, Histogram):
        return [one("", "histogram")]
    if isinstance(point, Aggregate):
        return [one("", "histogram"), one("_min", "gauge"), one("_max", "gauge")]
    return [one("", "gauge", ("quantile", unleash_sink.bound_text(q.quantile))) for q in point.quantiles] + [
        one("_count", "gauge"), one("_sum", "gauge")]


def unleash_kind(item: dict) -> str:
    """gauge, counter (delta) or histogram: what an Unleash series reads back as."""
    if "counter" in item:
        return "counter" if item["counter"].get("temporality") == "delta" else "gauge"  # custom *_total
    return "histogram" if "histogram" in item else "gauge"


@SETTINGS
@given(metrics=metric_lists(), mode=st.sampled_from([unleash_sink.CUSTOM, unleash_sink.IMPACT]),
       limit=st.sampled_from([unleash_sink.MAX_BODY_BYTES, 3000]))
def test_unleash_bodies_read_back_as_the_series_sent(metrics, mode, limit):
    sink = unleash_sink.UnleashSink("http://unleash.local", Secret("default:development.token"), mode,
                                    instance_id="bridge-1", max_body_bytes=limit)
    encoded = sink.encode(metrics, NOW_NS)
    carried_or_refused(encoded, metrics)
    reader = unleash_format.CUSTOM if mode == unleash_sink.CUSTOM else unleash_format.CLIENT
    for request in encoded.requests:
        assert len(request.body) <= limit
        strict_json(request.body)
        decoded = reader.decode(request.body, request.headers["Content-Type"], {}, 10**6)
        assert decoded.refused == []
        # Unleash's names and label sets (Prometheus's) are not bound by the canonical schema's
        # limits (255-character names, 64 tags); everything else must read back valid
        errors = NORMALIZER.normalize(decoded.items, NOW_NS).errors
        assert [e for e in errors if not e.pointer.endswith(("/name", "/tags"))] == []
        got = Tally((item["name"], tuple(sorted(item.get("tags", {}).items())), unleash_kind(item))
                    for item in decoded.items)
        assert got == Tally(set(s for i in request.items for s in unleash_series(metrics[i], mode)))  # each once


# --- Better Stack ---------------------------------------------------------------------------


def betterstack_point(point):
    """The point Better Stack is sent (delta counters as gauges, aggregates as summaries)."""
    if isinstance(point, Counter) and point.temporality != CUMULATIVE:
        return Gauge(point.value)
    if isinstance(point, Aggregate):
        return Summary(point.count, point.sum, (Quantile(0, point.min), Quantile(1, point.max)))
    return point


def betterstack_sendable(metric: Metric, body_format: str) -> bool:
    """Within 15 minutes past and 5 ahead; in MessagePack, counts within its integers."""
    in_window = NOW_NS - 15 * 60 * NS <= metric.time_ns <= NOW_NS + 5 * 60 * NS
    return in_window and not (body_format == "msgpack" and getattr(metric.point, "count", 0) >= 2**64)


@SETTINGS
@given(metrics=metric_lists(), body_format=st.sampled_from(["msgpack", "json", "ndjson"]),
       limit=st.sampled_from([20 * 1024 * 1024, 3000]))
def test_betterstack_bodies_read_back_as_the_metrics_sent(metrics, body_format, limit):
    sink = BetterStackSink("http://127.0.0.1", Secret("bs-roundtrip-source-token"), body_format, max_body_bytes=limit)
    encoded = sink.encode(metrics, NOW_NS)
    carried = carried_or_refused(encoded, metrics)
    refused_as_too_large = {r.index for r in encoded.rejected if "request limit on its own" in r.reason}
    assert carried | refused_as_too_large == {i for i, m in enumerate(metrics) if betterstack_sendable(m, body_format)}
    for request in encoded.requests:
        assert len(request.body) <= limit
        if body_format == "json":
            strict_json(request.body)
        elif body_format == "ndjson":
            assert request.body.endswith(b"\n")
            for line in request.body.split(b"\n")[:-1]:
                assert isinstance(strict_json(line), dict)
        read = normalized(canonical.decode(request.body, request.headers["Content-Type"]))
        sent = [metrics[i] for i in request.items]
        assert read == [Metric(m.name, betterstack_point(m.point), m.time_ns, m.tags) for m in sent]
