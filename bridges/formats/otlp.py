"""OTLP/HTTP metrics in (``POST /api/v1/metrics``): an ``ExportMetricsServiceRequest`` as
binary protobuf (``application/x-protobuf``) or proto3 JSON (``application/json``), as an
OpenTelemetry SDK or Collector sends it (CONTRACTS 12.11; opentelemetry-proto
``docs/specification.md``). gzip is undone by the shared path before ``decode``.

The messages are ``opentelemetry-proto``'s generated ones, imported at first use (cold start).
JSON is read by protobuf's ``json_format`` with unknown fields ignored: lowerCamelCase (or
original) names, enums as integers, int64 as strings or numbers.

Mapping, per data point (origin ``resourceMetrics[r].scopeMetrics[s].metrics[m].dataPoints[p]``):
- Gauge -> gauge. Sum: monotonic with CUMULATIVE or DELTA temporality -> counter with that
  temporality (UNSPECIFIED is refused); non-monotonic -> gauge (its temporality is not carried).
- Histogram (explicit buckets) -> histogram: per-bucket counts (OTLP's are per bucket too) for
  each explicit bound, the last (+Inf) bucket being count minus the others, sum and count. The
  canonical histogram has no min, max or temporality: they are not carried. A point without sum
  is refused (the canonical histogram needs one).
- ExponentialHistogram -> histogram with explicit buckets: positive bucket i of scale s covers
  (base^i, base^(i+1)] with base = 2^(2^-s), so its upper limit is base^(i+1); negative bucket i
  has upper limit -base^i; the zero bucket's is zero_threshold. Empty buckets are left out
  (the next bucket then starts at the previous upper limit, which is exact for per-bucket counts);
  when more than 256 buckets remain, the scale is lowered (adjacent buckets merged) until they fit.
  Bucket edges are inclusive on the other side than OTLP's, hence lossy: each such point is
  counted in ``skipped`` under SKIPPED_EXPONENTIAL.
- Summary -> summary (quantiles, sum, count); NaN quantiles are left out and counted.
- Data point attributes -> tags (strings as they are; bool, int and double as text; arrays,
  maps and bytes as compact JSON / base64); resource attributes named by
  BRIDGE_OTLP_RESOURCE_ATTRIBUTES -> tags too (a data point attribute of the same name wins).
  The instrumentation scope is ignored (name and version would add a tag to every series).
- unit and description are carried (description cut to 1024 characters); time_unix_nano is the
  point's time (0: the time of receipt); exemplars are dropped and counted (SKIPPED_EXEMPLARS).
- A point flagged FLAG_NO_RECORDED_VALUE (OTLP's staleness marker) is skipped and counted; NaN
  or infinite values are refused (the canonical model holds finite numbers), as remote-write does.

Answers (OTLP/HTTP spec): 200 with an ``ExportMetricsServiceResponse`` when anything was
readable; when points were refused, ``partialSuccess`` with ``rejectedDataPoints`` and an
``errorMessage`` naming the first reasons. For a protobuf request the full-success answer is
the empty message (zero bytes, ``application/x-protobuf``); replies carry JSON only, so a
partial success and an error are sent in their proto3 JSON encoding (``application/json``)
whatever the request's encoding (clients read the status code; the Collector reads a JSON
partial success by its Content-Type). Errors are a ``google.rpc.Status`` (``code``,
``message``): 400 unreadable body, 413 too large, 415 a Content-Type other than the two.

One ``Otlp`` instance per request: ``decode`` notes the request's encoding for ``answer``.
"""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.timestamps import format_rfc3339

NAME = "otlp"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_RESOURCE_ATTRIBUTES = ("service.name", "service.namespace", "deployment.environment")
SKIPPED_NO_VALUE = "points flagged no recorded value"
SKIPPED_EXEMPLARS = "exemplars dropped"
SKIPPED_EXPONENTIAL = "exponential histogram points converted to explicit buckets"
SKIPPED_NAN_QUANTILE = "NaN quantiles of summaries"
MAX_SHOWN_REASONS = 3
MAX_DESCRIPTION_CHARS = 1024
MAX_BUCKETS = 256
FLAG_NO_RECORDED_VALUE = 1
_CUMULATIVE, _DELTA = 2, 1
_MIN_NS_AS_INTEGER = 10**17  # parse_timestamp reads smaller integers as seconds, ms or µs: send text
_STATUS_CODES = {400: 3, 413: 8, 415: 3, 429: 8, 503: 14}  # HTTP -> google.rpc.Code


@cache
def _request_class():
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    return ExportMetricsServiceRequest


class Otlp:
    """The OTLP/HTTP metrics input format, with the resource attributes to keep as tags."""

    NAME = NAME

    def __init__(self, resource_attributes: Sequence[str] = DEFAULT_RESOURCE_ATTRIBUTES) -> None:
        self.resource_attributes = tuple(resource_attributes)
        self.json = False  # the request's encoding, noted by decode

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
        kind = media_type(content_type)
        if kind not in (PROTOBUF, JSON):
            raise BodyError(415, f"unsupported Content-Type {kind!r}: OTLP/HTTP sends {PROTOBUF} or {JSON}")
        self.json = kind == JSON
        request = parse(body, self.json)
        return _decoded(request, self.resource_attributes)

    def answer(self, outcome: Outcome) -> Answer:
        if not outcome.rejected:
            if self.json:
                return 200, {}, {}
            return 200, None, {"Content-Type": PROTOBUF}
        shown = outcome.problems[:MAX_SHOWN_REASONS]
        reasons = "; ".join(f"{problem.origin}: {problem.message}" for problem in shown)
        more = outcome.rejected - len(shown)
        noun = "data point" if outcome.rejected == 1 else "data points"
        text = f"{outcome.rejected} {noun} refused: {reasons}" + (f" (and {more} more)" if more > 0 else "")
        return 200, {"partialSuccess": {"rejectedDataPoints": str(outcome.rejected), "errorMessage": text}}, {}

    def refuse(self, error: BodyError) -> Answer:
        return error.status, {"code": _STATUS_CODES.get(error.status, 2), "message": error.message}, {}


def parse(body: bytes, as_json: bool):
    """The ExportMetricsServiceRequest of a body; BodyError 400 when it is not one."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    request = _request_class()()
    if as_json:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(400, f"the JSON body is not UTF-8: {exc}", position=exc.start) from None
        try:
            json_format.Parse(text, request, ignore_unknown_fields=True)
        except (json_format.ParseError, RecursionError, ValueError) as exc:
            raise BodyError(400, f"not an OTLP ExportMetricsServiceRequest in JSON: {exc}") from None
        return request
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise BodyError(400, f"not an OTLP ExportMetricsServiceRequest: {exc}") from None
    return request


def _count(decoded: Decoded, reason: str, number: int = 1) -> None:
    if number:
        decoded.skipped[reason] = decoded.skipped.get(reason, 0) + number


def _decoded(request, resource_attributes: tuple[str, ...]) -> Decoded:
    decoded = Decoded([], origins=[])
    assert decoded.origins is not None
    wanted = set(resource_attributes)
    for r, resource_metrics in enumerate(request.resource_metrics):
        resource_tags = {kv.key: text for kv in resource_metrics.resource.attributes
                         if kv.key in wanted and (text := _text(kv.value)) is not None}
        for s, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for m, metric in enumerate(scope_metrics.metrics):
                where = f"resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]"
                for p, point, item in _points(metric, where, decoded):
                    origin = f"{where}.dataPoints[{p}]"
                    _count(decoded, SKIPPED_EXEMPLARS, len(getattr(point, "exemplars", ())))  # summaries have none
                    if point.flags & FLAG_NO_RECORDED_VALUE:
                        _count(decoded, SKIPPED_NO_VALUE)
                        continue
                    if isinstance(item, str):
                        decoded.refused.append(Refused(origin, item))
                        continue
                    tags = {**resource_tags}
                    tags.update((kv.key, text) for kv in point.attributes if (text := _text(kv.value)) is not None)
                    full: dict = {"name": metric.name, **item}
                    if tags:
                        full["tags"] = tags
                    if point.time_unix_nano:
                        ns = point.time_unix_nano
                        full["dt"] = ns if ns >= _MIN_NS_AS_INTEGER else format_rfc3339(ns)
                    if metric.unit:
                        full["unit"] = metric.unit
                    if metric.description:
                        full["description"] = metric.description[:MAX_DESCRIPTION_CHARS]
                    decoded.items.append(full)
                    decoded.origins.append(origin)
    return decoded


def _points(metric, where: str, decoded: Decoded):
    """(index, point, canonical point dict or the reason it is refused) for each data point."""
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        for p, point in enumerate(metric.gauge.data_points):
            yield p, point, _number(point, "gauge")
    elif kind == "sum":
        sum_ = metric.sum
        temporality = {_CUMULATIVE: "cumulative", _DELTA: "delta"}.get(sum_.aggregation_temporality)
        for p, point in enumerate(sum_.data_points):
            if not sum_.is_monotonic:
                yield p, point, _number(point, "gauge")
            elif temporality is None:
                yield p, point, "a monotonic sum with an unspecified aggregation temporality cannot be carried"
            else:
                item = _number(point, "counter")
                if isinstance(item, dict):
                    item["counter"]["temporality"] = temporality
                yield p, point, item
    elif kind == "histogram":
        for p, point in enumerate(metric.histogram.data_points):
            yield p, point, _histogram(point)
    elif kind == "exponential_histogram":
        for p, point in enumerate(metric.exponential_histogram.data_points):
            item = _exponential(point)
            if isinstance(item, dict) and not point.flags & FLAG_NO_RECORDED_VALUE:
                _count(decoded, SKIPPED_EXPONENTIAL)
            yield p, point, item
    elif kind == "summary":
        for p, point in enumerate(metric.summary.data_points):
            yield p, point, _summary(point, decoded)
    else:
        decoded.refused.append(Refused(where, "the metric has no data (gauge, sum, histogram, exponential histogram "
                                              "or summary)"))


def _shown(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _finite(value: float, what: str) -> str | None:
    if math.isfinite(value):
        return None
    return f"the {what} {_shown(value)} cannot be carried: metrics hold finite numbers only"


def _number(point, kind: str) -> dict | str:
    which = point.WhichOneof("value")
    if which is None:
        return "the data point has no value (asDouble or asInt)"
    value = point.as_double if which == "as_double" else point.as_int
    problem = _finite(value, "value")
    return problem or {kind: {"value": value}}


def _histogram(point) -> dict | str:
    if not point.HasField("sum"):
        return "a histogram point without sum cannot be carried"
    if problem := _finite(point.sum, "sum"):
        return problem
    bounds, counts = list(point.explicit_bounds), list(point.bucket_counts)
    if counts and len(counts) != len(bounds) + 1:
        return f"{len(counts)} bucket counts for {len(bounds)} explicit bounds (expected {len(bounds) + 1})"
    buckets = [{"upper_limit": bound, "count": count} for bound, count in zip(bounds, counts, strict=False)]
    return {"histogram": {"count": point.count, "sum": point.sum, "buckets": buckets}}


def _exponential(point) -> dict | str:
    if not point.HasField("sum"):
        return "an exponential histogram point without sum cannot be carried"
    if problem := _finite(point.sum, "sum"):
        return problem
    scale = point.scale
    positive = {point.positive.offset + i: c for i, c in enumerate(point.positive.bucket_counts) if c}
    negative = {point.negative.offset + i: c for i, c in enumerate(point.negative.bucket_counts) if c}
    room = MAX_BUCKETS - (1 if point.zero_count else 0)
    while len(positive) + len(negative) > room:
        scale -= 1
        positive, negative = _halved(positive), _halved(negative)
    try:
        buckets = [{"upper_limit": -_power(scale, i), "count": c} for i, c in sorted(negative.items(), reverse=True)]
        if point.zero_count:
            buckets.append({"upper_limit": point.zero_threshold, "count": point.zero_count})
        buckets += [{"upper_limit": _power(scale, i + 1), "count": c} for i, c in sorted(positive.items())]
    except OverflowError:
        return "an exponential histogram bucket lies beyond the range of a double"
    if any(not math.isfinite(bucket["upper_limit"]) for bucket in buckets):
        return "an exponential histogram bucket lies beyond the range of a double"
    return {"histogram": {"count": point.count, "sum": point.sum, "buckets": buckets}}


def _halved(counts: dict[int, int]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for index, count in counts.items():
        merged[index >> 1] = merged.get(index >> 1, 0) + count
    return merged


def _power(scale: int, index: int) -> float:
    """base^index with base = 2^(2^-scale): exact powers of two at scale <= 0."""
    if scale <= 0:
        return math.ldexp(1.0, index << -scale)
    return 2.0 ** (index / (1 << scale))


def _summary(point, decoded: Decoded) -> dict | str:
    if problem := _finite(point.sum, "sum"):
        return problem
    quantiles = []
    for entry in sorted(point.quantile_values, key=lambda q: q.quantile):
        if math.isnan(entry.value):
            _count(decoded, SKIPPED_NAN_QUANTILE)
            continue
        if problem := _finite(entry.value, "quantile value"):
            return problem
        quantiles.append({"quantile": entry.quantile, "value": entry.value})
    return {"summary": {"count": point.count, "sum": point.sum, "quantiles": quantiles}}


def _text(value) -> str | None:
    """An attribute's AnyValue as a tag value; None when it holds nothing."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "int_value":
        return str(value.int_value)
    if which == "double_value":
        return repr(value.double_value)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)


def _plain(value):
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None if which is None else getattr(value, which)
