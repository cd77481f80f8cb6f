"""OTLP/HTTP metrics in (``POST /api/v1/metrics``): an ``ExportMetricsServiceRequest`` as
binary protobuf (``application/x-protobuf``) or proto3 JSON (``application/json``), as an
OpenTelemetry SDK or Collector sends it (CONTRACTS 12.11; opentelemetry-proto
``docs/specification.md``). gzip is undone by the shared path before ``decode``.

Protobuf is parsed into ``opentelemetry-proto``'s generated messages (imported at first use).
JSON is read with ``json.loads`` into plain dicts, never through ``json_format`` (25 times
slower): lowerCamelCase and original snake_case names, enums as integers or names, 64-bit
integers as strings or numbers, doubles also as "NaN"/"Infinity"/"-Infinity", bytes as base64,
unknown fields (exemplar contents included) ignored. A value of the wrong kind is a 400 naming
its place (``resourceMetrics[0]...dataPoints[2].asDouble``). One walker holds every mapping rule
below; it reads either encoding through a reader (``_Messages``, ``_Json``) that only turns
fields into plain Python values, so both encodings of one request give the same metrics.

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
  counted in ``skipped`` under SKIPPED_EXPONENTIAL. A scale outside OTLP's -10..20 is refused.
- Summary -> summary (quantiles, sum, count); NaN quantiles are left out and counted.
- Data point attributes -> tags (strings as they are; bool, int and double as text; arrays,
  maps and bytes as compact JSON / base64); resource attributes named by
  BRIDGE_OTLP_RESOURCE_ATTRIBUTES -> tags too (a data point attribute of the same name wins).
  The instrumentation scope is ignored (name and version would add a tag to every series).
- unit and description are carried (description cut to 1024 characters); time_unix_nano is the
  point's time (0: the time of receipt); exemplars are dropped and counted (SKIPPED_EXEMPLARS).
- A point flagged FLAG_NO_RECORDED_VALUE (OTLP's staleness marker) is skipped and counted; NaN
  or infinite values are refused (the canonical model holds finite numbers), as remote-write does.

Answers (OTLP/HTTP spec), in the request's encoding: 200 with an ``ExportMetricsServiceResponse``
when anything was readable; when points were refused, ``partial_success`` with
``rejected_data_points`` and an ``error_message`` naming the first reasons. Errors are a
``google.rpc.Status`` (code, message): 400 unreadable body, 413 too large, 415 a Content-Type
other than the two, 503 with Retry-After when accepted points could not be kept or an app
setting is bad. A protobuf request gets binary protobuf (``application/x-protobuf``; the full
success is zero bytes), any other request proto3 JSON. googleapis-common-protos is not a runtime
dependency, so Status is built from its field numbers in a private descriptor pool.

One ``Otlp`` instance per request: it knows the request's Content-Type (given, or noted by
``decode``) so that ``answer`` and ``refuse`` use its encoding, also for a refusal before decoding.
"""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache, partial

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.formats.canonical import may_hold_surrogates
from bridges.ingest.normalize import collection_paused
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
MIN_SCALE, MAX_SCALE = -10, 20  # OTLP's exponential histogram scales
FLAG_NO_RECORDED_VALUE = 1
_TEMPORALITIES = {2: "cumulative", 1: "delta"}
_TEMPORALITY_NAMES = {"AGGREGATION_TEMPORALITY_UNSPECIFIED": 0, "AGGREGATION_TEMPORALITY_DELTA": 1,
                      "AGGREGATION_TEMPORALITY_CUMULATIVE": 2}
_MIN_NS_AS_INTEGER = 10**17  # parse_timestamp reads smaller integers as seconds, ms or µs: send text
_STATUS_CODES = {400: 3, 413: 8, 415: 3, 429: 8, 503: 14}  # HTTP -> google.rpc.Code
# What the readers give the walker for one data point of each kind (besides flags, time, attributes).
HistogramPoint = tuple[int, float | None, Sequence[float], Sequence[int]]  # count, sum, bounds, counts
# count, sum, scale, zero count, zero threshold, positive offset and counts, negative offset and counts
ExponentialPoint = tuple[int, float | None, int, int, float, int, Sequence[int], int, Sequence[int]]
SummaryPoint = tuple[int, float, list[tuple[float, float]]]  # count, sum, (quantile, value)s
_NO_DATA = "the metric has no data (gauge, sum, histogram, exponential histogram or summary)"
_UNSPECIFIED = "a monotonic sum with an unspecified aggregation temporality cannot be carried"


@cache
def _request_class():
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    return ExportMetricsServiceRequest


@cache
def _response_class():
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

    return ExportMetricsServiceResponse


@cache
def _status_class():
    """google.rpc.Status (code = 1, message = 2, repeated Any details = 3), built in a private
    pool: googleapis-common-protos is not deployed, and a private pool never clashes with it."""
    from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    any_file = descriptor_pb2.FileDescriptorProto()
    any_pb2.DESCRIPTOR.CopyToProto(any_file)
    pool.Add(any_file)
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="google/rpc/status.proto", package="google.rpc", syntax="proto3",
                                              dependency=[any_file.name])
    status = file.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                     type_name=".google.protobuf.Any")
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


def _is_protobuf(content_type: str | None) -> bool:
    try:
        return media_type(content_type) == PROTOBUF
    except BodyError:  # not a media type: answered in JSON
        return False


class Otlp:
    """The OTLP/HTTP metrics input format, with the resource attributes to keep as tags."""

    NAME = NAME

    def __init__(self, resource_attributes: Sequence[str] = DEFAULT_RESOURCE_ATTRIBUTES,
                 content_type: str | None = None) -> None:
        self.resource_attributes = tuple(resource_attributes)
        self.protobuf = _is_protobuf(content_type)  # the request's encoding, that of every answer

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
        kind = media_type(content_type)
        if kind not in (PROTOBUF, JSON):
            raise BodyError(415, f"unsupported Content-Type {kind!r}: OTLP/HTTP sends {PROTOBUF} or {JSON}")
        self.protobuf = kind == PROTOBUF
        if self.protobuf:
            return _decoded(parse(body), _Messages, self.resource_attributes)
        with collection_paused():
            decoded = _decoded(load(body), _Json, self.resource_attributes)
        decoded.may_hold_surrogates = may_hold_surrogates(body)  # JSON escapes can spell lone surrogates
        return decoded

    def answer(self, outcome: Outcome) -> Answer:
        if not outcome.rejected:
            return 200, *self._encoded({}, _response_class())
        shown = outcome.problems[:MAX_SHOWN_REASONS]
        reasons = "; ".join(f"{problem.origin}: {problem.message}" for problem in shown)
        more = outcome.rejected - len(shown)
        noun = "data point" if outcome.rejected == 1 else "data points"
        text = f"{outcome.rejected} {noun} refused: {reasons}" + (f" (and {more} more)" if more > 0 else "")
        partial = {"partialSuccess": {"rejectedDataPoints": str(outcome.rejected), "errorMessage": text}}
        return 200, *self._encoded(partial, _response_class())

    def refuse(self, error: BodyError) -> Answer:
        status = {"code": _STATUS_CODES.get(error.status, 2), "message": error.message}
        return error.status, *self._encoded(status, _status_class())

    def _encoded(self, body: dict, message_class) -> tuple[dict | bytes, dict]:
        """The answer in proto3 JSON (a dict) or, for a protobuf request, in binary protobuf."""
        if not self.protobuf:
            return body, {}
        from google.protobuf import json_format

        return json_format.ParseDict(body, message_class()).SerializeToString(), {"Content-Type": PROTOBUF}


def parse(body: bytes):
    """The ExportMetricsServiceRequest of a binary protobuf body; BodyError 400 when it is not one."""
    from google.protobuf.message import DecodeError

    request = _request_class()()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise BodyError(400, f"not an OTLP ExportMetricsServiceRequest: {exc}") from None
    return request


def load(body: bytes) -> object:
    """The JSON document of a body; BodyError 400 when it is not UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"the JSON body is not UTF-8: {exc}", position=exc.start) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"malformed JSON: {exc}", position=exc.pos) from None
    except RecursionError:
        raise BodyError(400, "the JSON is nested too deeply") from None
    except ValueError as exc:  # Python's limit on the digits of an integer
        raise BodyError(400, f"a number in the JSON is too long: {str(exc).split(';')[0]}") from None




def _count(decoded: Decoded, reason: str, number: int = 1) -> None:
    if number:
        decoded.skipped[reason] = decoded.skipped.get(reason, 0) + number


# ---------------------------------------------------------------- the walker: every mapping rule

def _decoded(request, read, resource_attributes: tuple[str, ...]) -> Decoded:
    """The canonical items of a request, read through ``read`` (either encoding's reader).

    A gauge or sum point in the usual form (no flags or exemplars, a non-zero double, string
    attributes) is read in one call (``read.plain``), which says None for any other point: that
    one is read field by field. Both give the same item; the shortcut only saves calls."""
    decoded = Decoded([], origins=[])
    items, origins, refused = decoded.items, decoded.origins, decoded.refused
    assert origins is not None
    wanted = set(resource_attributes)
    read_metric, data_points, read_plain, read_point, read_number, read_tags = (  # the hot ones, looked up once
        read.metric, read.data_points, read.plain, read.point, read.number, read.tags)
    at = ""  # where the reader is, for a JSON value of the wrong kind
    try:
        for r, resource_metrics in enumerate(read.resource_metrics(request)):
            at = f"resourceMetrics[{r}]"
            resource = read.resource(resource_metrics)
            at += ".resource"
            resource_tags: dict[str, str] = {}
            read.tags(resource, resource_tags)
            resource_tags = {key: text for key, text in resource_tags.items() if key in wanted}
            for s, scope_metrics in enumerate(read.scope_metrics(resource_metrics)):
                at = scope_at = f"resourceMetrics[{r}].scopeMetrics[{s}]"
                for m, metric in enumerate(read.metrics(scope_metrics)):
                    at = where = f"{scope_at}.metrics[{m}]"
                    name, unit, description, kind, data = read_metric(metric)
                    number = _number_item(read, name, kind, data)  # gauges and sums: a point's value -> its item
                    convert = None if number else _converter(read, name, kind, decoded)
                    if number is None and convert is None:
                        refused.append(Refused(where, _NO_DATA))
                        continue
                    description = description[:MAX_DESCRIPTION_CHARS]
                    exemplars = kind != "summary"  # summaries have none
                    for p, point in enumerate(data_points(data)):
                        at = origin = f"{where}.dataPoints[{p}]"
                        tags = resource_tags.copy()
                        plain = read_plain(point, tags) if number else None
                        if plain is not None:  # the usual gauge or sum point, read in one call
                            time_ns, value = plain
                            item = number(value)
                        else:  # field by field: flags first, attributes only of a point kept
                            tags = resource_tags.copy()  # plain may have added some
                            flags, time_ns, exemplar_count = read_point(point, exemplars)
                            if exemplar_count:
                                _count(decoded, SKIPPED_EXEMPLARS, exemplar_count)
                            if flags & FLAG_NO_RECORDED_VALUE:
                                _count(decoded, SKIPPED_NO_VALUE)
                                continue
                            item = number(read_number(point)) if number else convert(point)  # type: ignore[misc]
                            if item.__class__ is not str:
                                read_tags(point, tags)
                        if item.__class__ is str:
                            refused.append(Refused(origin, item))
                            continue
                        if tags:
                            item["tags"] = tags
                        if time_ns:
                            item["dt"] = time_ns if time_ns >= _MIN_NS_AS_INTEGER else format_rfc3339(time_ns)
                        if unit:
                            item["unit"] = unit
                        if description:
                            item["description"] = description
                        items.append(item)
                        origins.append(origin)
    except _Shape as exc:
        place = ".".join(part for part in (at, exc.field) if part) or "the body"
        raise BodyError(400, f"not an OTLP ExportMetricsServiceRequest in JSON: {place}: expected {exc.expected}, "
                             f"got {_shown_value(exc.value)}") from None
    except RecursionError:  # attribute values nested past Python's stack (JSON only: protobuf stops at 100)
        raise BodyError(400, f"not an OTLP ExportMetricsServiceRequest: attribute values nested too deeply at {at}") from None
    return decoded


def _number_item(read, name: str, kind: str | None, data):
    """For a gauge or sum that can be carried: the function making a point's value its item
    (the value checked, ``{"name": name, kind: point}``); else None."""
    if kind == "gauge":
        return partial(_number, name, "gauge", None)
    if kind == "sum":
        monotonic, temporality = read.sum(data)
        if not monotonic:
            return partial(_number, name, "gauge", None)
        chosen = _TEMPORALITIES.get(temporality)
        return None if chosen is None else partial(_number, name, "counter", chosen)
    return None


def _converter(read, name: str, kind: str | None, decoded: Decoded):
    """For any other metric, the function making one data point a canonical item ({"name": name,
    kind: point}, the rest added by the walker) or the reason it is refused; None for a metric
    without data."""
    if kind == "sum":  # monotonic, its temporality unspecified
        return lambda point: _UNSPECIFIED
    if kind == "histogram":
        return lambda point: _named(name, _histogram(*read.histogram(point)))
    if kind == "exponential_histogram":
        return lambda point: _named(name, _exponential(read.exponential(point), decoded))
    if kind == "summary":
        return lambda point: _named(name, _summary(read.summary(point), decoded))
    return None


def _named(name: str, point: dict | str) -> dict | str:
    """The item of a converted point, its name first as in the canonical form; or the reason."""
    return point if point.__class__ is str else {"name": name, **point}  # type: ignore[dict-item]


def _shown(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _finite(value: float, what: str) -> str | None:
    if math.isfinite(value):
        return None
    return f"the {what} {_shown(value)} cannot be carried: metrics hold finite numbers only"


def _number(name: str, kind: str, temporality: str | None, value: float | None) -> dict | str:
    """The item of a gauge or sum point (most points are), built in one go."""
    if value is None:
        return "the data point has no value (asDouble or asInt)"
    if not math.isfinite(value):
        return f"the value {_shown(value)} cannot be carried: metrics hold finite numbers only"
    return {"name": name, kind: {"value": value, "temporality": temporality} if temporality else {"value": value}}


def _histogram(count: int, sum_: float | None, bounds: Sequence[float], counts: Sequence[int]) -> dict | str:
    if sum_ is None:
        return "a histogram point without sum cannot be carried"
    if problem := _finite(sum_, "sum"):
        return problem
    bounds, counts = list(bounds), list(counts)
    if counts and len(counts) != len(bounds) + 1:
        return f"{len(counts)} bucket counts for {len(bounds)} explicit bounds (expected {len(bounds) + 1})"
    buckets = [{"upper_limit": bound, "count": n} for bound, n in zip(bounds, counts, strict=False)]
    return {"histogram": {"count": count, "sum": sum_, "buckets": buckets}}


def _exponential(point: ExponentialPoint, decoded: Decoded) -> dict | str:
    count, sum_, scale, zero_count, zero_threshold, positive_offset, positive_counts, negative_offset, negative_counts = point
    if sum_ is None:
        return "an exponential histogram point without sum cannot be carried"
    if problem := _finite(sum_, "sum"):
        return problem
    if not MIN_SCALE <= scale <= MAX_SCALE:
        return f"the exponential histogram scale {scale} is outside OTLP's {MIN_SCALE} to {MAX_SCALE}"
    positive = {positive_offset + i: n for i, n in enumerate(positive_counts) if n}
    negative = {negative_offset + i: n for i, n in enumerate(negative_counts) if n}
    room = MAX_BUCKETS - (1 if zero_count else 0)
    while len(positive) + len(negative) > room:
        scale -= 1
        positive, negative = _halved(positive), _halved(negative)
    try:
        buckets = [{"upper_limit": -_power(scale, i), "count": n} for i, n in sorted(negative.items(), reverse=True)]
        if zero_count:
            buckets.append({"upper_limit": zero_threshold, "count": zero_count})
        buckets += [{"upper_limit": _power(scale, i + 1), "count": n} for i, n in sorted(positive.items())]
    except OverflowError:
        return "an exponential histogram bucket lies beyond the range of a double"
    if any(not math.isfinite(bucket["upper_limit"]) for bucket in buckets):
        return "an exponential histogram bucket lies beyond the range of a double"
    _count(decoded, SKIPPED_EXPONENTIAL)
    return {"histogram": {"count": count, "sum": sum_, "buckets": buckets}}


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


def _summary(point: SummaryPoint, decoded: Decoded) -> dict | str:
    count, sum_, quantiles = point
    if problem := _finite(sum_, "sum"):
        return problem
    kept = []
    for quantile, value in sorted(quantiles, key=lambda entry: entry[0]):
        if math.isnan(value):
            _count(decoded, SKIPPED_NAN_QUANTILE)
            continue
        if problem := _finite(value, "quantile value"):
            return problem
        kept.append({"quantile": quantile, "value": value})
    return {"summary": {"count": count, "sum": sum_, "quantiles": kept}}


def _text(value: object) -> str | None:
    """An attribute's value (as a reader gives it) as a tag value; None when it holds nothing."""
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)


def _plain(value: object) -> object:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


# ---------------------------------------------------------------- readers: fields to plain values
# Both give the walker the same plain values: ints, floats, str, bool, sequences; an AnyValue as
# str/bool/int/float/bytes, a list (arrayValue), a dict (kvlistValue) or None (empty); ``tags``
# adds a point's or resource's attributes as their tag text (``_text``).

def _any_message(value) -> object:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which is None:
        return None
    if which == "array_value":
        return [_any_message(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_message(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


class _Messages:
    """The generated messages of a binary protobuf request."""

    @staticmethod
    def resource_metrics(request):
        return request.resource_metrics

    @staticmethod
    def resource(resource_metrics):
        return resource_metrics.resource

    @staticmethod
    def scope_metrics(resource_metrics):
        return resource_metrics.scope_metrics

    @staticmethod
    def metrics(scope_metrics):
        return scope_metrics.metrics

    @staticmethod
    def metric(metric) -> tuple:
        kind = metric.WhichOneof("data")
        return metric.name, metric.unit, metric.description, kind, kind and getattr(metric, kind)

    @staticmethod
    def sum(data) -> tuple[bool, int]:
        return data.is_monotonic, data.aggregation_temporality

    @staticmethod
    def data_points(data):
        return data.data_points

    @staticmethod
    def plain(point, tags: dict[str, str]) -> tuple[int, float] | None:
        """(time, value) of a number point with a non-zero double, no flags, no exemplars and
        non-empty string attributes (added to ``tags``); None for any other."""
        value = point.as_double
        if not value or point.flags or point.exemplars:
            return None
        for kv in point.attributes:
            if not (text := kv.value.string_value):
                return None
            tags[kv.key] = text
        return point.time_unix_nano, value

    @staticmethod
    def point(point, exemplars: bool) -> tuple[int, int, int]:
        return point.flags, point.time_unix_nano, len(point.exemplars) if exemplars else 0

    @staticmethod
    def tags(owner, tags: dict[str, str]) -> None:
        for kv in owner.attributes:
            value = kv.value
            if text := value.string_value:  # not empty: the oneof holds it, no WhichOneof needed
                tags[kv.key] = text
            elif value.WhichOneof("value") == "string_value":
                tags[kv.key] = ""
            elif (text := _text(_any_message(value))) is not None:
                tags[kv.key] = text

    @staticmethod
    def number(point) -> float | None:
        which = point.WhichOneof("value")
        return None if which is None else getattr(point, which)

    @staticmethod
    def histogram(point) -> HistogramPoint:
        return point.count, point.sum if point.HasField("sum") else None, point.explicit_bounds, point.bucket_counts

    @staticmethod
    def exponential(point) -> ExponentialPoint:
        positive, negative = point.positive, point.negative
        return (point.count, point.sum if point.HasField("sum") else None, point.scale, point.zero_count,
                point.zero_threshold, positive.offset, positive.bucket_counts, negative.offset, negative.bucket_counts)

    @staticmethod
    def summary(point) -> SummaryPoint:
        return point.count, point.sum, [(entry.quantile, entry.value) for entry in point.quantile_values]


class _Shape(Exception):
    """A JSON value of the wrong kind: its field (under the walker's place) and what was expected."""

    def __init__(self, field: str, expected: str, value: object):
        super().__init__(field)
        self.field, self.expected, self.value = field, expected, value

    def under(self, parent: str) -> _Shape:
        return _Shape(f"{parent}.{self.field}" if self.field else parent, self.expected, self.value)


def _shown_value(value: object) -> str:
    if isinstance(value, (dict, list)):  # never written out: it may be long or deep
        return "an object" if isinstance(value, dict) else "an array"
    shown = json.dumps(value)  # ASCII: a lone surrogate shows as its escape
    return shown if len(shown) <= 60 else shown[:60] + "…"


_I32 = (-(2**31), 2**31 - 1)
_U32 = (0, 2**32 - 1)
_I64 = (-(2**63), 2**63 - 1)
_U64 = (0, 2**64 - 1)


def _get(fields: dict, camel: str, snake: str):
    """A field by its JSON name or, failing that, its proto name (proto3 JSON accepts both)."""
    value = fields.get(camel)
    return fields.get(snake) if value is None else value


def _object(value, field: str) -> dict:
    if value.__class__ is dict:
        return value
    if value is None:
        return {}
    raise _Shape(field, "an object", value)


def _element(value) -> dict:
    """One element of a repeated message field: an object (null is not one)."""
    if value.__class__ is dict:
        return value
    raise _Shape("", "an object", value)


def _array(value, field: str) -> list:
    if value.__class__ is list:
        return value
    if value is None:
        return []
    raise _Shape(field, "an array", value)


def _string(value, field: str) -> str:
    if value.__class__ is str:
        return value
    if value is None:
        return ""
    raise _Shape(field, "a string", value)


def _boolean(value, field: str) -> bool:
    if value is True or value is False:
        return value
    if value is None:
        return False
    raise _Shape(field, "true or false", value)


def _integer(value, field: str, bounds: tuple[int, int]) -> int:
    """An integer given as a number or as text (64-bit integers are strings in proto3 JSON)."""
    kind = value.__class__
    if kind is int:
        number = value
    elif value is None:
        return 0
    elif kind is str or kind is float:
        whole = _whole(value)
        if whole is None:
            raise _Shape(field, "an integer", value)
        number = whole
    else:
        raise _Shape(field, "an integer", value)
    if bounds[0] <= number <= bounds[1]:
        return number
    raise _Shape(field, f"an integer from {bounds[0]} to {bounds[1]}", value)


def _whole(value: str | float) -> int | None:
    """"12", "1e3" or 12.0 as an integer, as json_format reads them; None for anything else."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    return int(value) if value.is_integer() else None


def _double(value, field: str) -> float:
    """A double given as a number or as text ("NaN", "Infinity", "-Infinity", "1.5")."""
    kind = value.__class__
    if kind is float:
        return value
    if kind is int or kind is str:
        try:
            return float(value)
        except (ValueError, OverflowError):
            raise _Shape(field, "a number", value) from None
    if value is None:
        return 0.0
    raise _Shape(field, "a number", value)


def _bytes(value, field: str) -> bytes:
    """Base64, standard or URL-safe, padding optional (as protobuf's json_format reads it)."""
    if value.__class__ is str:
        try:
            encoded = value.encode("ascii")
            return base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
        except ValueError:
            pass
    raise _Shape(field, "base64 text", value)


def _any_json(value, field: str) -> object:
    """An AnyValue: its one kind as a plain value, None when it has none."""
    value = _object(value, field)
    text = value.get("stringValue")
    if text.__class__ is str:
        return text
    for camel, snake, read in _ANY_KINDS:
        inner = _get(value, camel, snake)
        if inner is not None:
            return read(inner, f"{field}.{camel}")
    return None


def _array_value(value, field: str) -> list:
    values = _array(_object(value, field).get("values"), f"{field}.values")
    return [_any_json(v, f"{field}.values[{i}]") for i, v in enumerate(values)]


def _kvlist_value(value, field: str) -> dict:
    return dict(_key_values(_object(value, field).get("values"), f"{field}.values"))


def _key_value(kv) -> tuple[str, object]:
    kv = _element(kv)
    return _string(kv.get("key"), "key"), _any_json(kv.get("value"), "value")


def _key_values(values, field: str) -> list[tuple[str, object]]:
    pairs = []
    for i, kv in enumerate(_array(values, field)):
        try:
            pairs.append(_key_value(kv))
        except _Shape as exc:
            raise exc.under(f"{field}[{i}]") from None
    return pairs


_ANY_KINDS = (
    ("stringValue", "string_value", _string),
    ("boolValue", "bool_value", _boolean),
    ("intValue", "int_value", lambda value, field: _integer(value, field, _I64)),
    ("doubleValue", "double_value", _double),
    ("arrayValue", "array_value", _array_value),
    ("kvlistValue", "kvlist_value", _kvlist_value),
    ("bytesValue", "bytes_value", _bytes),
)
_DATA_KINDS = {"gauge": "gauge", "sum": "sum", "histogram": "histogram", "exponentialHistogram": "exponential_histogram",
               "exponential_histogram": "exponential_histogram", "summary": "summary"}  # the oneof, by either name


def _buckets(value, field: str) -> tuple[int, list[int]]:
    """An exponential histogram's positive or negative buckets: (offset, per-bucket counts)."""
    value = _object(value, field)
    counts = _array(_get(value, "bucketCounts", "bucket_counts"), f"{field}.bucketCounts")
    return (_integer(value.get("offset"), f"{field}.offset", _I32),
            [_integer(n, f"{field}.bucketCounts", _U64) for n in counts])


class _Json:
    """The plain dicts of a proto3 JSON request (``json.loads``), checked as they are read."""

    @staticmethod
    def resource_metrics(request) -> list:
        if request.__class__ is not dict:
            raise _Shape("", "an object", request)
        return _array(_get(request, "resourceMetrics", "resource_metrics"), "resourceMetrics")

    @staticmethod
    def resource(resource_metrics) -> dict:
        return _object(_element(resource_metrics).get("resource"), "resource")

    @staticmethod
    def scope_metrics(resource_metrics) -> list:
        return _array(_get(_element(resource_metrics), "scopeMetrics", "scope_metrics"), "scopeMetrics")

    @staticmethod
    def metrics(scope_metrics) -> list:
        return _array(_element(scope_metrics).get("metrics"), "metrics")

    @staticmethod
    def metric(metric) -> tuple:
        kind = data = None
        for key, found in _element(metric).items():
            if key in _DATA_KINDS and found is not None:
                kind, data = _DATA_KINDS[key], found if found.__class__ is dict else _object(found, key)
                break
        name, unit, description = metric.get("name"), metric.get("unit"), metric.get("description")
        if name.__class__ is not str or unit is not None or description is not None:  # else all read
            name, unit, description = (_string(name, "name"), _string(unit, "unit"),
                                       _string(description, "description"))
        return name, unit or "", description or "", kind, data

    @staticmethod
    def sum(data: dict) -> tuple[bool, int]:
        monotonic, temporality = data.get("isMonotonic"), data.get("aggregationTemporality")
        if (monotonic is True or monotonic is False) and temporality.__class__ is str and temporality in _TEMPORALITY_NAMES:
            return monotonic, _TEMPORALITY_NAMES[temporality]
        monotonic = _boolean(_get(data, "isMonotonic", "is_monotonic"), "sum.isMonotonic")
        temporality = _get(data, "aggregationTemporality", "aggregation_temporality")
        if temporality.__class__ is str and not temporality.lstrip("-").isdigit():
            return monotonic, _TEMPORALITY_NAMES.get(temporality, 0)  # an unknown name is ignored, as json_format does
        return monotonic, _integer(temporality, "sum.aggregationTemporality", _I32)

    @staticmethod
    def data_points(data: dict) -> list:
        points = data.get("dataPoints")
        return points if points.__class__ is list else _array(_get(data, "dataPoints", "data_points"), "dataPoints")

    @staticmethod
    def plain(point, tags: dict[str, str]) -> tuple[int, float] | None:
        """(time, value) of a number point as SDKs write it: an object with timeUnixNano in
        digits, asDouble a number, attributes with string values (added to ``tags``), no flags
        or exemplars; None for any other spelling or content. Never raises."""
        if point.__class__ is not dict:
            return None
        time_ns, value, attributes = point.get("timeUnixNano"), point.get("asDouble"), point.get("attributes")
        if time_ns.__class__ is not str or value.__class__ is not float or "flags" in point or "exemplars" in point:
            return None
        if attributes.__class__ is not list:
            if attributes is not None:
                return None
            attributes = []
        for kv in attributes:
            if kv.__class__ is not dict:
                return None
            key, text = kv.get("key"), kv.get("value")
            text = text.get("stringValue") if text.__class__ is dict else None
            if key.__class__ is not str or text.__class__ is not str:
                return None
            tags[key] = text
        try:
            number = int(time_ns)
        except ValueError:
            return None
        return (number, value) if 0 <= number <= _U64[1] else None

    @staticmethod
    def point(point, exemplars: bool) -> tuple[int, int, int]:
        flags, time_ns = _element(point).get("flags"), _get(point, "timeUnixNano", "time_unix_nano")
        return (0 if flags is None else _integer(flags, "flags", _U32),
                0 if time_ns is None else _integer(time_ns, "timeUnixNano", _U64),
                len(_array(point.get("exemplars"), "exemplars")) if exemplars else 0)

    @staticmethod
    def tags(owner: dict, tags: dict[str, str]) -> None:
        for i, kv in enumerate(_array(owner.get("attributes"), "attributes")):
            if kv.__class__ is dict:  # the common case, a string value, read right here
                key, value = kv.get("key"), kv.get("value")
                text = value.get("stringValue") if value.__class__ is dict else None
                if key.__class__ is str and text.__class__ is str:
                    tags[key] = text
                    continue
            try:
                key, plain = _key_value(kv)
            except _Shape as exc:
                raise exc.under(f"attributes[{i}]") from None
            if (text := _text(plain)) is not None:
                tags[key] = text

    @staticmethod
    def number(point: dict) -> float | None:
        value = _get(point, "asDouble", "as_double")
        if value is not None:
            return _double(value, "asDouble")
        value = _get(point, "asInt", "as_int")
        return None if value is None else _integer(value, "asInt", _I64)

    @staticmethod
    def histogram(point: dict) -> HistogramPoint:
        bounds = _array(_get(point, "explicitBounds", "explicit_bounds"), "explicitBounds")
        counts = _array(_get(point, "bucketCounts", "bucket_counts"), "bucketCounts")
        sum_ = point.get("sum")
        return (_integer(point.get("count"), "count", _U64), None if sum_ is None else _double(sum_, "sum"),
                [_double(bound, "explicitBounds") for bound in bounds],
                [_integer(n, "bucketCounts", _U64) for n in counts])

    @staticmethod
    def exponential(point: dict) -> ExponentialPoint:
        sum_ = point.get("sum")
        positive = _buckets(point.get("positive"), "positive")
        negative = _buckets(point.get("negative"), "negative")
        return (_integer(point.get("count"), "count", _U64), None if sum_ is None else _double(sum_, "sum"),
                _integer(point.get("scale"), "scale", _I32),
                _integer(_get(point, "zeroCount", "zero_count"), "zeroCount", _U64),
                _double(_get(point, "zeroThreshold", "zero_threshold"), "zeroThreshold"), *positive, *negative)

    @staticmethod
    def summary(point: dict) -> SummaryPoint:
        quantiles = []
        for i, entry in enumerate(_array(_get(point, "quantileValues", "quantile_values"), "quantileValues")):
            try:
                entry = _element(entry)
                quantiles.append((_double(entry.get("quantile"), "quantile"), _double(entry.get("value"), "value")))
            except _Shape as exc:
                raise exc.under(f"quantileValues[{i}]") from None
        return _integer(point.get("count"), "count", _U64), _double(point.get("sum"), "sum"), quantiles

