"""Better Stack metrics: canonical metrics -> ``POST <ingesting host>/metrics``.

Wire contract (CONTRACTS.md §4): ``Authorization: Bearer <source token>``; a MessagePack or
JSON array of metric objects, or NDJSON; at most 20 MiB per request; points at most 15
minutes old. Each metric object is ``name``, one of ``gauge``/``counter``/``histogram``/
``summary``, ``tags`` (omitted when empty) and ``dt``.

How canonical metrics are said (each lossy conversion is counted in ``Encoded.conversions``):

- gauge, histogram (per-bucket counts, Better Stack's form too) and summary: natively.
- cumulative counter: natively (Better Stack counters are running totals).
- delta counter: sent as a **gauge** of the same name whose value is the increase reported.
  Sending the increase as a counter would be read as a running total that keeps falling back
  (a "reset" each time), and keeping a running total would need state a pure encoder does not
  have. The gauge keeps every number exact; dashboards sum it instead of taking its rate.
  Counted as "delta counter -> gauge".
- aggregate (min/max/sum/count): sent as a **summary** with ``count``, ``sum`` and two
  quantiles, 0 (= min) and 1 (= max), so all four numbers survive in one object. Unlike a
  Prometheus summary's, that count and sum are those of the aggregation window, not running
  totals. Counted as "aggregate -> summary (min as quantile 0, max as quantile 1)".
- namespace, unit and description: Better Stack has no field for them; they are not sent
  and counted ("<field> not sent"). The Azure target is routing for the Azure sink, not data.
- ``dt``: MessagePack's timestamp extension (exact to the nanosecond) in msgpack bodies, RFC
  3339 UTC text with up to nine fraction digits in JSON and NDJSON bodies.

In msgpack bodies, a metric with a count of 2^64 or more (MessagePack's integers end there) is
refused locally. Points older than 15 minutes or more than 5 minutes ahead of ``now_ns`` are
refused locally (both bounds inclusive): Better Stack documents points up to 15 minutes old,
and what it does with older ones (or ones from the future) is not documented.
Requests are packed greedily in order, which for an ordered split gives the fewest requests;
sizes are measured on the real encoded bytes.
"""
from __future__ import annotations

import json
import logging
from collections import Counter as Tally
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridges.delivery.sinks.base import (
    Delivered,
    Drop,
    Encoded,
    Limits,
    Misconfigured,
    Outcome,
    Rejection,
    Reply,
    Request,
    Sink,
    outcomes_with,
)
from bridges.model import CUMULATIVE, Metric
from bridges.timestamps import NS_PER_SECOND, format_rfc3339

if TYPE_CHECKING:
    from bridges.masking import Secret

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 20 * 1024 * 1024
MAX_AGE_SECONDS = 15 * 60
MAX_FUTURE_SECONDS = 5 * 60
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json", "ndjson": "application/x-ndjson"}

def metrics_url(url: str) -> str:
    """The configured URL, with ``/metrics`` appended when it names only a host."""
    url = url.strip().rstrip("/")
    return url if urlsplit(url).path not in ("", "/") else url + "/metrics"


class BetterStackSink(Sink):
    name = "betterstack"
    title = "Better Stack"

    def __init__(self, url: str, token: Secret, body_format: str = "msgpack",
                 max_requests_per_minute: int = 500, max_body_bytes: int = MAX_BODY_BYTES):
        """``max_body_bytes`` is lowered only by tests, to split small bodies."""
        if body_format not in CONTENT_TYPES:
            raise ValueError(f"body_format must be one of {', '.join(CONTENT_TYPES)}, got {body_format!r}")
        self.url = metrics_url(url)
        self.body_format = body_format
        self._token = token
        self.limits = Limits(
            max_body_bytes=max_body_bytes,
            max_age_seconds=MAX_AGE_SECONDS,
            max_future_seconds=MAX_FUTURE_SECONDS,
            max_requests_per_minute=max_requests_per_minute,
        )

    @classmethod
    def from_settings(cls, settings) -> BetterStackSink:
        if not settings.betterstack_url:
            raise ValueError("BETTERSTACK_URL is not set")
        if settings.betterstack_source_token is None:
            raise ValueError("BETTERSTACK_SOURCE_TOKEN is not set")
        return cls(settings.betterstack_url, settings.betterstack_source_token, settings.betterstack_format,
                   settings.betterstack_max_requests_per_minute)

    def __repr__(self) -> str:
        return f"BetterStackSink(url={self.url!r}, body_format={self.body_format!r})"

    def status(self) -> dict:
        return {"configured": True, "endpoint": urlsplit(self.url).netloc, "format": self.body_format}

    # ---- encode -------------------------------------------------------------------------

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        """Requests of at most ``max_body_bytes`` each, fewest possible, metrics in order."""
        encoded = Encoded()
        oldest = now_ns - MAX_AGE_SECONDS * NS_PER_SECOND
        newest = now_ns + MAX_FUTURE_SECONDS * NS_PER_SECOND
        pack_one, frame = _CODECS[self.body_format]
        limit = self.limits.max_body_bytes
        batch: list[tuple[int, bytes]] = []
        batch_bytes = 0  # sum of the items' encoded sizes in ``batch``

        for index, metric in enumerate(metrics):
            if metric.time_ns < oldest:
                encoded.rejected.append(Rejection(index, "older than 15 minutes: Better Stack takes points up to "
                                                         "15 minutes old"))
                continue
            if metric.time_ns > newest:
                encoded.rejected.append(Rejection(index, "more than 5 minutes in the future: check the sender's clock"))
                continue
            try:
                data = pack_one(_metric_object(metric, encoded.conversions, self.body_format))
            except OverflowError:  # MessagePack's integers end at 2**64 - 1; the schema bounds no count
                encoded.rejected.append(Rejection(index, "a count too large for MessagePack (at most 2^64 - 1)"))
                continue
            if _framed_size(frame, 1, len(data)) > limit:
                encoded.rejected.append(Rejection(index, f"{len(data)} bytes encoded: over the {limit}-byte "
                                                         "request limit on its own"))
                continue
            if batch and _framed_size(frame, len(batch) + 1, batch_bytes + len(data)) > limit:
                encoded.requests.append(self._request(frame, batch))
                batch, batch_bytes = [], 0
            batch.append((index, data))
            batch_bytes += len(data)
        if batch:
            encoded.requests.append(self._request(frame, batch))
        return encoded

    def _request(self, frame: Callable, batch: list[tuple[int, bytes]]) -> Request:
        body = frame([data for _, data in batch])
        assert len(body) <= self.limits.max_body_bytes  # the size arithmetic and the bytes agree
        headers = {
            "Authorization": f"Bearer {self._token.reveal()}",
            "Content-Type": CONTENT_TYPES[self.body_format],
        }
        return Request("POST", self.url, headers, body, tuple(index for index, _ in batch))

    # ---- classify -----------------------------------------------------------------------

    def _unparsable(self, request: Request, reply: Reply) -> Outcome:
        said = self.said(reply.body)
        log.error(
            "betterstack answered HTTP 406%s to a %s request of %d metrics (%d bytes): the bridge sent a body "
            "Better Stack cannot parse. This is a bug in the bridge's Better Stack encoder; please report it.",
            f": {said}" if said else "", self.body_format, len(request.items), len(request.body),
        )
        return Drop(f"Better Stack answered 406: it could not parse the body (a bridge bug){': ' + said if said else ''}")

    # Where Better Stack's answers differ from plain HTTP; classify() reads it and a test walks it.
    status_outcomes = outcomes_with({
        202: Delivered,  # the documented success
        403: Misconfigured("Better Stack refused the source token, or the source does not take metrics "
                           "(check BETTERSTACK_SOURCE_TOKEN and that the source is a metrics source)"),
        406: _unparsable,  # Better Stack could not parse what we sent: a bug in this encoder
        "3xx": Misconfigured("redirected: set BETTERSTACK_URL to the source's ingesting host"),
    })


def _metric_object(metric: Metric, conversions: Tally, body_format: str) -> dict:
    """Better Stack's object for one canonical metric, counting what it could not say."""
    point: Any = metric.point  # the kind says which type it is
    kind = point.kind
    if kind == "counter" and point.temporality != CUMULATIVE:
        conversions["delta counter -> gauge"] += 1
        kind, value = "gauge", {"value": point.value}
    elif kind == "counter":
        value = {"value": point.value}
    elif kind == "aggregate":
        conversions["aggregate -> summary (min as quantile 0, max as quantile 1)"] += 1
        kind, value = "summary", {
            "count": point.count,
            "sum": point.sum,
            "quantiles": [{"quantile": 0, "value": point.min}, {"quantile": 1, "value": point.max}],
        }
    else:  # gauge, histogram, summary: the canonical form is Better Stack's
        value = point.to_json()
    for field in ("namespace", "unit", "description"):
        if getattr(metric, field) is not None:
            conversions[f"{field} not sent"] += 1
    obj = {"name": metric.name, kind: value}
    if metric.tags:
        obj["tags"] = dict(metric.tags)
    obj["dt"] = _msgpack_time(metric.time_ns) if body_format == "msgpack" else format_rfc3339(metric.time_ns)
    return obj


def _msgpack_time(time_ns: int):
    import msgpack

    return msgpack.Timestamp.from_unix_nano(time_ns)


# ---- body framing: one item's bytes, and the container around n of them ----------------

def _pack_msgpack(obj: dict) -> bytes:
    import msgpack

    return msgpack.packb(obj, use_bin_type=True)


def _msgpack_array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 2**16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _frame_msgpack(items: list[bytes]) -> bytes:
    return _msgpack_array_header(len(items)) + b"".join(items)


def _pack_json(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _frame_json(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _frame_ndjson(items: list[bytes]) -> bytes:
    return b"".join(item + b"\n" for item in items)


def _framed_size(frame: Callable, count: int, items_bytes: int) -> int:
    """The body size of ``count`` items totalling ``items_bytes``, without building it."""
    if frame is _frame_msgpack:
        return len(_msgpack_array_header(count)) + items_bytes
    if frame is _frame_json:
        return 2 + (count - 1) + items_bytes
    return count + items_bytes


_CODECS = {
    "msgpack": (_pack_msgpack, _frame_msgpack),
    "json": (_pack_json, _frame_json),
    "ndjson": (_pack_json, _frame_ndjson),
}
