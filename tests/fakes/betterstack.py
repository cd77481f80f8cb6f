"""A fake Better Stack metrics endpoint that enforces CONTRACTS.md §4.

In order: ``POST /metrics`` (else 404/405); ``Authorization: Bearer <token>`` (else 403
``Unauthorized``); the body size (over the limit: 413 ``payload reached size limit``); the
Content-Type (JSON, MessagePack or NDJSON) and a body that parses as that type into metric
objects of the documented shape (else 406 ``Couldn't parse JSON content.``); then 202, empty.

It is stricter than Better Stack on purpose, to catch encoder bugs: unknown fields in a metric
object, non-string tags and non-finite numbers are 406 here. Where Better Stack accepts and
quietly does something else (a ``dt`` it cannot read is kept as text and the point filed at
the time of receipt; a point older than 15 minutes), the fake accepts too and notes it in
``warnings``, which tests expect to stay empty.
"""
from __future__ import annotations

import json
import math

import msgpack

from bridges.timestamps import NS_PER_SECOND, TimestampError, format_rfc3339, parse_timestamp

from .server import Answer, FakeReceiver, Received

MAX_BODY_BYTES = 20 * 1024 * 1024
UNAUTHORIZED = Answer(403, {"Content-Type": "text/plain"}, b"Unauthorized")
UNPARSABLE = Answer(406, {"Content-Type": "text/plain"}, b"Couldn't parse JSON content.")
TOO_LARGE = Answer(413, {"Content-Type": "text/plain"}, b"payload reached size limit")
KINDS = {
    "gauge": {"value": "number"},
    "counter": {"value": "number"},
    "histogram": {"count": "number", "sum": "number", "buckets": ("upper_limit", "count")},
    "summary": {"count": "number", "sum": "number", "quantiles": ("quantile", "value")},
}
TOP_LEVEL = {"name", "tags", "dt", *KINDS}


class Invalid(ValueError):
    pass


class FakeBetterStack(FakeReceiver):
    def __init__(self, token: str, max_body_bytes: int = MAX_BODY_BYTES, now_ns: int | None = None):
        """``now_ns``, when given, is the receipt time the 15-minute window is checked against."""
        super().__init__()
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.now_ns = now_ns
        self.metrics: list[dict] = []  # every accepted metric object, as decoded
        self.batches: list[list[dict]] = []  # the accepted metrics, request by request
        self.warnings: list[str] = []

    def answer(self, request: Received) -> Answer:
        if request.path != "/metrics":
            return Answer(404, {}, b"Not Found")
        if request.method != "POST":
            return Answer(405, {}, b"Method Not Allowed")
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return UNAUTHORIZED
        if len(request.body) > self.max_body_bytes:
            return TOO_LARGE
        try:
            metrics = decode_body(request.body, request.headers.get("content-type", ""))
            for metric in metrics:
                self._check(metric)
        except Invalid:
            return UNPARSABLE
        with self._lock:
            self.metrics.extend(metrics)
            self.batches.append(metrics)
        return Answer(202)

    def _check(self, metric: object) -> None:
        if not isinstance(metric, dict) or set(metric) - TOP_LEVEL:
            raise Invalid("a metric is an object of name, tags, dt and one kind")
        if not isinstance(metric.get("name"), str) or not metric["name"]:
            raise Invalid("name")
        kinds = [kind for kind in KINDS if kind in metric]
        if len(kinds) != 1:
            raise Invalid("exactly one of gauge, counter, histogram, summary")
        kind = kinds[0]
        _check_point(metric[kind], KINDS[kind])
        tags = metric.get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise Invalid("tags are strings to strings")
        if "dt" not in metric:
            if kind in ("histogram", "summary"):
                raise Invalid("dt is required for histograms and summaries")
            return
        try:
            time_ns = _time_ns(metric["dt"])
        except TimestampError:
            self.warnings.append(f"{metric['name']}: dt {metric['dt']!r} unreadable; filed at receipt time")
            return
        if self.now_ns is not None and time_ns < self.now_ns - 15 * 60 * NS_PER_SECOND:
            self.warnings.append(f"{metric['name']}: dt {format_rfc3339(time_ns)} is more than 15 minutes old")


def decode_body(body: bytes, content_type: str) -> list:
    """The metric objects in a body, by Content-Type; Invalid when it does not parse."""
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            document = json.loads(body)
        elif kind == "application/x-ndjson":
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        elif kind == "application/msgpack":
            document = msgpack.unpackb(body, raw=False, timestamp=0, strict_map_key=False)
        else:
            raise Invalid(f"Content-Type {kind!r}")
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise Invalid(str(exc)) from None
    return document if isinstance(document, list) else [document]


def _time_ns(dt: object) -> int:
    if isinstance(dt, msgpack.Timestamp):
        return dt.to_unix_nano()
    return parse_timestamp(dt)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_point(point: object, fields: dict) -> None:
    if not isinstance(point, dict) or set(point) != set(fields):
        raise Invalid(f"fields {sorted(fields)}")
    for name, rule in fields.items():
        if rule == "number":
            if not _is_number(point[name]):
                raise Invalid(name)
            continue
        entries = point[name]
        if not isinstance(entries, list):
            raise Invalid(name)
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != set(rule) or not all(_is_number(entry[f]) for f in rule):
                raise Invalid(name)
