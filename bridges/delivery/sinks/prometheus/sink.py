"""Azure Monitor workspace (managed Prometheus), or any Prometheus remote-write 1.0 receiver.

``POST`` to the data collection rule's ingestion URL (``PROMETHEUS_REMOTE_WRITE_URL``, used as
given) with ``Content-Encoding: snappy``, ``Content-Type: application/x-protobuf``,
``X-Prometheus-Remote-Write-Version: 0.1.0`` and an Entra token for
``https://monitor.azure.com/`` (``authorize`` adds it just before sending; without a credential,
for a plain receiver such as a local Prometheus, nothing is added). The body is a protobuf
``WriteRequest`` in the snappy block format (``bridges.formats.remote_write``).

What each canonical type becomes (remote-write 1.0 carries no types, so every series is
untyped at the receiver; timestamps are milliseconds):
- gauge and cumulative counter: one series named as given.
- delta counter: a running total needs state the stateless bridge does not have, so it is
  sent as a gauge of the increase named ``<name>_delta`` (counted as a conversion; sum it
  with ``sum_over_time``).
- histogram: ``<name>_bucket{le}`` with cumulative counts ending ``le="+Inf"``, ``<name>_sum``,
  ``<name>_count`` (Prometheus's classic form).
- summary: ``<name>{quantile}``, ``<name>_sum``, ``<name>_count``.
- aggregate: gauges ``<name>_min``, ``_max``, ``_sum``, ``_count`` (counted as a conversion).
``le`` and ``quantile`` are written as Python floats (``0.5``, ``1.0``, ``+Inf``).

Labels follow the spec, since a receiver answers 500 (retried forever by a naive sender) or
400 to what breaks it: the metric name is made to match ``[a-zA-Z_:][a-zA-Z0-9_:]*`` and tag
names ``[a-zA-Z_][a-zA-Z0-9_]*`` (other characters become ``_``, a leading digit gets ``_``
before it, a leading ``__`` becomes ``_`` since it is reserved); tags with an empty value,
or whose name repeats one already kept (first in tag-key order wins; ``le`` and ``quantile``
always win over a tag), are dropped and counted. Labels are sorted in byte order.

Batching: one TimeSeries per sample (as Prometheus itself sends), metrics packed in timestamp
order so a series' samples ascend within and across requests; at most ``max_samples`` samples
(``PROMETHEUS_MAX_SAMPLES_PER_REQUEST``, 2,000 like Prometheus) and 1,000,000 bytes of protobuf
before compression (Azure's per-request cap is undocumented; snappy only shrinks this much
text) a request, in the fewest requests. A metric's series always travel together: a metric
with more samples than ``max_samples`` goes alone, one over the byte cap is refused locally.

A receiver refuses a whole request with 400 for one bad sample (out of order against stored
data, a new value at a stored timestamp, too old), so a 400 splits the request in halves
until the offending metric is alone, and then drops it with the receiver's message.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlsplit

from bridges import __version__
from bridges.delivery.auth import TokenSource, prometheus_scope
from bridges.delivery.sinks.base import (
    Drop,
    Encoded,
    Limits,
    Misconfigured,
    Outcome,
    Rejection,
    Reply,
    Request,
    Resend,
    Sink,
    outcomes_with,
)
from bridges.formats import remote_write
from bridges.model import Aggregate, Counter, Gauge, Histogram, Metric, Summary

NS_PER_MS = 1_000_000
MAX_BODY_BYTES = 1_000_000  # protobuf before snappy
HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "User-Agent": f"webhook-metrics-bridge/{__version__}",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
ROLE_HINT = ("the identity needs Monitoring Metrics Publisher on the data collection rule; "
             "a new role assignment can take up to 30 minutes to apply")

CONVERTED_DELTA = "delta counter sent as a gauge of the increase (<name>_delta)"
CONVERTED_AGGREGATE = "aggregate sent as gauges (_min, _max, _sum, _count)"
DROPPED_LABELS = "labels dropped (empty value, or a name repeated after sanitizing)"
RENAMED = "names changed to fit Prometheus's rules"

_METRIC_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@lru_cache(maxsize=4096)
def metric_name(name: str) -> str | None:
    """A name matching ``[a-zA-Z_:][a-zA-Z0-9_:]*``, or None for an empty one."""
    if not name:
        return None
    name = _METRIC_INVALID.sub("_", name)
    return "_" + name if name[0].isdigit() else name


@lru_cache(maxsize=4096)
def label_name(name: str) -> str | None:
    """A name matching ``[a-zA-Z_][a-zA-Z0-9_]*`` that does not start with the reserved ``__``."""
    if not name:
        return None
    name = _LABEL_INVALID.sub("_", name)
    if name[0].isdigit():
        name = "_" + name
    return "_" + name.lstrip("_") if name.startswith("__") else name


@lru_cache(maxsize=16384)
def tag_labels(tags: tuple[tuple[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], int, int]:
    """(labels kept from these tags, how many were dropped, how many names were changed)."""
    kept: dict[str, str] = {}
    dropped = renamed = 0
    for raw_name, value in tags:
        name = label_name(raw_name)
        if name is None or name in kept or value == "":
            dropped += 1
            continue
        renamed += name != raw_name
        kept[name] = value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    return tuple(kept.items()), dropped, renamed


@lru_cache(maxsize=65536)
def series_labels(name: str, labels: tuple[tuple[str, str], ...], extra: tuple[str, str] | None = None) -> bytes:
    """One series' label set, sorted (``__name__``, the tag labels, ``le``/``quantile``) and
    serialized: label sets repeat across points, so each is built once."""
    pairs = [("__name__", name), *labels, *([extra] if extra else [])]
    return remote_write.label_bytes(tuple(sorted(pairs)))


def bound(value: float) -> str:
    """``le`` and ``quantile`` values: ``0.5``, ``1.0``, ``+Inf``."""
    value = float(value)
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    return repr(value) if value == value else "NaN"


class PrometheusSink(Sink):
    name = "prometheus"
    title = "Prometheus receiver"

    def __init__(self, url: str, credential, max_samples: int = 2000, clock=time.time):
        self.url = url
        self.max_samples = max_samples
        self.limits = Limits(max_body_bytes=MAX_BODY_BYTES, max_items=max_samples)
        self._tokens = TokenSource(credential, prometheus_scope(url), clock) if credential is not None else None

    @classmethod
    def from_settings(cls, settings) -> PrometheusSink:
        from bridges.delivery.auth import process_credential

        return cls(settings.prometheus_remote_write_url, process_credential(settings),
                   settings.prometheus_max_samples_per_request)

    def status(self) -> dict:
        auth = "entra token for " + self._tokens.scope if self._tokens else "none"
        return {"configured": True, "endpoint": urlsplit(self.url).netloc, "auth": auth}

    def authorize(self, request: Request) -> Request:
        """A copy carrying a fresh bearer token (raises TokenError when none can be had)."""
        return request if self._tokens is None else self._tokens.authorize(request)

    # --- encoding -------------------------------------------------------------------------

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        encoded = Encoded()
        fragments: list[tuple[int, int, bytes]] = []  # (metric index, samples, protobuf)
        for index in sorted(range(len(metrics)), key=lambda i: metrics[i].time_ns):
            metric = metrics[index]
            name = metric_name(metric.name)
            if name is None:
                encoded.rejected.append(Rejection(index, "no usable Prometheus metric name"))
                continue
            labels, dropped, renamed = tag_labels(metric.tags)
            if dropped:
                encoded.conversions[DROPPED_LABELS] += dropped
            if renamed + (name != metric.name):
                encoded.conversions[RENAMED] += renamed + (name != metric.name)
            series = self._series(name, labels, metric, encoded)
            ms = metric.time_ns // NS_PER_MS
            body = b"".join(remote_write.timeseries(label_set, value, ms) for label_set, value in series)
            if len(body) > MAX_BODY_BYTES:
                encoded.rejected.append(Rejection(index, f"its series take {len(body)} bytes, over the "
                                                         f"{MAX_BODY_BYTES}-byte request cap"))
                continue
            fragments.append((index, len(series), body))
        encoded.requests = self._pack(fragments)
        return encoded

    def _series(self, name: str, labels, metric: Metric, encoded: Encoded) -> list[tuple[bytes, float]]:
        """(serialized sorted labels, value) for each sample the metric becomes."""
        point = metric.point

        def one(suffix: str, value, extra=None):
            return series_labels(name + suffix, labels, extra), float(value)

        if isinstance(point, Gauge):
            return [one("", point.value)]
        if isinstance(point, Counter):
            if point.temporality == "delta":
                encoded.conversions[CONVERTED_DELTA] += 1
                return [one("_delta", point.value)]
            return [one("", point.value)]
        if isinstance(point, Aggregate):
            encoded.conversions[CONVERTED_AGGREGATE] += 1
            return [one("_min", point.min), one("_max", point.max), one("_sum", point.sum), one("_count", point.count)]
        if not isinstance(point, (Histogram, Summary)):
            raise TypeError(f"unknown point type {type(point).__name__}")
        reserved = "le" if isinstance(point, Histogram) else "quantile"
        if any(n == reserved for n, _ in labels):  # a tag named le or quantile gives way in every series
            encoded.conversions[DROPPED_LABELS] += 1
            labels = tuple(pair for pair in labels if pair[0] != reserved)
        if isinstance(point, Histogram):
            parts = [one("_bucket", n, ("le", bound(le))) for le, n in point.cumulative_buckets()]
        else:
            parts = [one("", q.value, ("quantile", bound(q.quantile))) for q in point.quantiles]
        return [*parts, one("_sum", point.sum), one("_count", point.count)]

    def _pack(self, fragments: list[tuple[int, int, bytes]]) -> list[Request]:
        """The fewest requests within max_samples and MAX_BODY_BYTES, in timestamp order.
        Repeated fields concatenate, so a request body is its metrics' WriteRequests joined."""
        requests: list[Request] = []
        batch: list[tuple[int, bytes]] = []
        samples = size = 0
        for index, count, body in fragments:
            if batch and (samples + count > self.max_samples or size + len(body) > MAX_BODY_BYTES):
                requests.append(self._request(batch))
                batch, samples, size = [], 0, 0
            batch.append((index, body))
            samples += count
            size += len(body)
        if batch:
            requests.append(self._request(batch))
        return requests

    def _request(self, batch: list[tuple[int, bytes]]) -> Request:
        body = remote_write.compress(b"".join(body for _, body in batch))
        return Request("POST", self.url, dict(HEADERS), body, tuple(index for index, _ in batch))

    # --- classification -------------------------------------------------------------------

    def _bad_sample(self, request: Request, reply: Reply) -> Outcome:
        """One bad sample rolls back the whole request: halve it until the bad one is alone."""
        reason = f"Prometheus receiver answered 400: {self.said(reply.body) or 'no details'}"
        return Resend(reason, split=True) if len(request.items) > 1 else Drop(reason)

    # Where the remote-write receiver's answers differ from plain HTTP; classify() reads it and a test walks it.
    status_outcomes = outcomes_with({
        400: _bad_sample,
        401: Misconfigured(f"the token was refused: {ROLE_HINT} (misconfigured)"),
        403: Misconfigured(f"the token was refused: {ROLE_HINT} (misconfigured)"),
        404: Misconfigured("the URL must be the full DCR ingestion URL, not the bare DCE host (misconfigured)"),
        413: Drop,  # the remote-write spec: never retry a 4xx
        "3xx": Misconfigured("redirected: set PROMETHEUS_REMOTE_WRITE_URL to the full DCR ingestion URL"),
    })
