"""Unleash: custom metrics (Unleash 7.0 to 8.0) or impact metrics (8.1 and later).

Wire contract (CONTRACTS.md sections 5, 9 and 10): the client or backend token goes raw in
``Authorization`` (no "Bearer"); bodies are JSON; Unleash's API takes at most 100 kB a body
(express.json's default: larger ones get 413), so requests hold at most 100,000 bytes and
1,000 series. ``UNLEASH_URL`` is the server's base URL; a trailing ``/api`` (the URL SDKs are
given) is taken off.

``UNLEASH_API`` picks the endpoint:
- ``custom``: ``POST /api/client/metrics/custom``, ``{"metrics": [{"name", "value", "labels"}]}``.
- ``impact``: ``POST /api/client/metrics`` with ``impactMetrics`` (counter, gauge, histogram)
  beside ``appName`` (``UNLEASH_APP_NAME``), ``instanceId`` (host-pid) and an empty ``bucket``.
- ``auto`` (default): custom until the custom endpoint answers 404 (it is gone from 8.1), then
  impact for the life of the process; the same metrics are re-encoded and sent at once.

Custom form. The server keeps, in memory, only the LAST value per name + labels + minute of
receipt (not of the point), and shows every value as a counter. So each series appears once a
request, merged from every point of the request that feeds it:
- gauge and cumulative counter: the value of the latest point (earlier points superseded).
- delta counter: the sum of the increases in the request (counted: Unleash reads it as a
  total, and a second request in the same minute replaces it rather than adding to it).
- aggregate: series ``_min``, ``_max``, ``_sum`` and ``_count``, merged exactly (counted).
- histogram: ``_count``, ``_sum`` and cumulative ``_bucket`` series with label ``le`` (the last
  ``+Inf``); points of one series are summed, as a histogram reports the observations of its
  interval (counted).
- summary: ``_count``, ``_sum`` and ``<name>{quantile=...}`` of the latest point (counted).
Unit, description and namespace have no field there and are not sent (counted).

Impact form. Counters ADD what they receive, gauges keep the last value, histograms ADD count,
sum and bucket counts:
- gauge: gauge (latest point per series). delta counter: counter of the summed increases.
- cumulative counter: an increment needs the previous total, which a stateless bridge does not
  have: sent as a gauge of the running total (counted).
- histogram: histogram with cumulative buckets ending ``"+Inf"``, per-interval amounts summed
  per series (buckets must match per metric name within a request, or the later is refused).
- summary: gauges ``<name>{quantile=...}``, ``<name>_count``, ``<name>_sum`` (latest; counted).
- aggregate: a histogram with only the ``+Inf`` bucket, so count and sum accumulate exactly
  (their rates give the mean), plus gauges ``<name>_min`` and ``<name>_max`` (counted).
``help`` is the description (or the metric's name), with the unit in brackets.
Limitation: Unleash recreates an impact metric, losing its series, when a later report adds a
label name or changes a histogram's bucket bounds. Keep a metric's tag names and bounds stable;
within a request all of a name's samples go in one entry (label keys sorted).

Names are normalized to what Prometheus (and /internal-backstage/prometheus) accepts:
``[a-zA-Z_:][a-zA-Z0-9_:]*`` for custom names, ``[a-zA-Z_][a-zA-Z0-9_]*`` for impact names and
all label names (other characters become ``_``, a leading digit gets a ``_`` before it).
Labels with empty values (Unleash refuses the whole body for one), duplicates after
normalization, and names the encoding uses itself (``le``, ``quantile``; ``origin`` and
``metric_type`` for impact) are dropped and counted. Anything still unsendable (a non-finite or
negative number where Unleash needs otherwise, a name already used in the request for another
kind or other bucket bounds) is refused locally: Unleash answers 202 to impact metrics it
drops, and drops the whole batch for one bad metric.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bridges.delivery.sinks.base import (
    MAX_SAID_CHARS,
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
from bridges.model import CUMULATIVE, MAX_COUNT, Aggregate, Counter, Gauge, Histogram, Metric, Summary
from bridges.timestamps import format_rfc3339

if TYPE_CHECKING:
    from bridges.masking import Secret

log = logging.getLogger(__name__)

CUSTOM, IMPACT, AUTO = "custom", "impact", "auto"
CUSTOM_PATH = "/api/client/metrics/custom"
IMPACT_PATH = "/api/client/metrics"
MAX_BODY_BYTES = 100_000  # express.json()'s limit is 100 kB (102,400 bytes)
MAX_SERIES = 1000
INF = float("inf")
_INF_TEXT = '"+Inf"'  # an infinite bucket bound, as a JSON string

_CUSTOM_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_IMPACT_RESERVED = frozenset({"origin", "metric_type"})  # labels Unleash adds to impact metrics


@lru_cache(maxsize=4096)
def custom_name(name: str) -> str:
    """A Prometheus metric name: ``[a-zA-Z_:][a-zA-Z0-9_:]*``."""
    name = _CUSTOM_NAME_INVALID.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


@lru_cache(maxsize=4096)
def impact_name(name: str) -> str:
    """A name Unleash keeps for impact metrics, also a label name: ``[a-zA-Z_][a-zA-Z0-9_]*``."""
    name = _NAME_INVALID.sub("_", name)
    return "_" + name if name[:1].isdigit() else name


label_name = impact_name


@lru_cache(maxsize=4096)
def _with_label(labels: tuple, extra: tuple[str, str]) -> tuple:
    """Labels with one more (le, quantile), sorted; the same sets recur point after point."""
    return tuple(sorted(labels + (extra,)))


@lru_cache(maxsize=4096)
def bound_text(value: float) -> str:
    """A bucket bound or quantile as a label value, the same for 1 and 1.0: ``1.0``, ``+Inf``."""
    return "+Inf" if value == INF else repr(float(value))


@dataclass(slots=True)
class _Series:
    """One series of one request, merged from every point that feeds it.

    ``kind`` says how points merge: custom ``sum``/``last``/``min``/``max``; impact
    ``counter`` (sum), ``gauge`` (last), ``histogram`` (count, sum, buckets summed).
    ``merge`` overrides how (impact _min/_max gauges of aggregates merge as min and max).
    ``shape`` is what must agree across a name in a request (the kind and any bucket bounds)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    kind: str
    value: Any  # a number, or (count, sum, ((bound, cumulative count), ...)) for histograms
    time_ns: int
    help: str = ""
    shape: tuple = ()
    merge: str = ""


@dataclass
class _Group:
    """The series of one metric identity (name + tags) and the metrics that fed them. A group is
    never split between requests, so every metric is carried by exactly one request."""

    items: list[int] = field(default_factory=list)
    series: dict[tuple, _Series] = field(default_factory=dict)
    times: list[int] = field(default_factory=list)  # of the points, for the impact bucket


def _merged(old: _Series, value, time_ns: int) -> tuple[Any, int]:
    """The merged value and time of a series and one more point of it."""
    how = old.merge or old.kind
    if how in ("last", "gauge"):
        return (value, time_ns) if time_ns >= old.time_ns else (old.value, old.time_ns)
    latest = max(old.time_ns, time_ns)
    if how in ("sum", "counter"):
        return old.value + value, latest
    if how == "min":
        return min(old.value, value), latest
    if how == "max":
        return max(old.value, value), latest
    (count, total, buckets), (count2, total2, buckets2) = old.value, value  # histogram
    summed = tuple((bound, a + b) for (bound, a), (_, b) in zip(buckets, buckets2, strict=True))
    return (count + count2, total + total2, summed), latest


def _problem(series: _Series, value: Any = None) -> str | None:
    """Why Unleash could not take this series' value (or the given merged one), or None."""
    value = series.value if value is None else value
    if series.kind == "histogram":
        count, total, buckets = value
        counts = [c for _, c in buckets]
        if not (math.isfinite(count) and math.isfinite(total) and all(map(math.isfinite, counts))):
            return f"{series.name}: histogram numbers must be finite"
        if count < 0 or (counts and min(counts) < 0):
            return f"{series.name}: histogram counts cannot be negative"
        if count > MAX_COUNT:
            return f"{series.name}: the histogram count of the request is beyond a 64-bit integer"
        return None
    if not math.isfinite(value):
        return f"{series.name}: the value is not a finite number"
    if series.kind == "counter" and value < 0:
        return f"{series.name}: an impact counter takes increments, which cannot be negative"
    return None


@dataclass(slots=True)
class _Layout:
    """The series every point of one name, point type and shape, unit, description and namespace
    feeds, whatever its tags: worked out once per request, as points repeat these."""

    refusal: str | None  # why no such point can be sent
    name: str = ""  # normalized
    specs: list[tuple] = field(default_factory=list)  # (suffix, kind, extra label, bounds, merge) each
    help: str = ""
    conversion: str | None = None
    fields_not_sent: tuple[str, ...] = ()
    values: Callable[[object], list] | None = None  # a point's values, in the order of specs


@dataclass(slots=True)
class _Template:
    """How every point of one identity (layout + tags) is sent. After its first point is merged,
    the series it feeds exist in the request for good (updated in place, never replaced or
    removed), so later points only read their values and merge them into those series."""

    layout: _Layout
    labels: tuple
    conversions: tuple[tuple[str, int], ...]  # counted for each point sent
    group: _Group | None = None
    accumulators: list[_Series] | None = None  # once bound: the series a point feeds, in order

    def new_series(self, values: list, time_ns: int) -> list[_Series]:
        """A point's series, for when they may be new to the request."""
        layout, labels = self.layout, self.labels
        return [_Series(layout.name + suffix, _with_label(labels, extra) if extra else labels, kind, value, time_ns,
                        layout.help, (kind, *bounds), merge)
                for (suffix, kind, extra, bounds, merge), value in zip(layout.specs, values, strict=True)]

    def bind(self, group: _Group, series: list[_Series]) -> None:
        """After a point's series were merged: later points merge into the same ones directly."""
        self.group = group
        self.accumulators = [group.series[(s.name, s.labels)] for s in series]

    def merge(self, index: int, values: list, time_ns: int) -> str | None:
        """Merge a later point into the series it feeds, or say why it cannot be sent (then
        nothing changes)."""
        assert self.accumulators is not None and self.group is not None  # bound before any merge
        results = []
        for old, value in zip(self.accumulators, values, strict=True):
            merged = _merged(old, value, time_ns)
            problem = _problem(old, merged[0])
            if problem:
                return problem
            results.append(merged)
        for old, (value, latest) in zip(self.accumulators, results, strict=True):
            old.value, old.time_ns = value, latest
        self.group.items.append(index)
        self.group.times.append(time_ns)
        return None


class _Batch:
    """The groups of one request being filled, with the exact size of the body they make.

    The body is put together from JSON pieces measured as they are added, so the size test
    and the bytes sent agree. Impact bodies hold one entry per metric name."""

    def __init__(self, mode: str, envelope: tuple[str, str]):
        self.head, self.tail = envelope
        self.entry_tail = "" if mode == CUSTOM else "]}"  # custom series have no entry around them
        self.items: list[int] = []
        self.entries: dict[str, tuple[str, list[str]]] = {}  # name -> (entry head, samples)
        self.series = 0
        self.size = len(self.head) + len(self.tail)
        self.times: list[int] = []

    def cost(self, pieces: list[tuple[str, str, str]]) -> int:
        """Bytes that adding these (entry name, entry head, piece) would add."""
        size, entry_count = 0, len(self.entries)
        samples: dict[str, int] = {}  # entry name -> its samples so far, for the entries these pieces go in
        for name, head, piece in pieces:
            if name not in samples:
                entry = self.entries.get(name)
                if entry is None:
                    size += len(head) + len(self.entry_tail) + (1 if entry_count else 0)  # comma between entries
                    entry_count += 1
                samples[name] = len(entry[1]) if entry else 0
            size += len(piece) + (1 if samples[name] else 0)
            samples[name] += 1
        return size

    def add(self, items: list[int], pieces: list[tuple[str, str, str]], times: list[int], cost: int) -> None:
        """Add a group's pieces; ``cost`` is what ``cost(pieces)`` said for them."""
        self.size += cost
        for name, head, piece in pieces:
            self.entries.setdefault(name, (head, []))[1].append(piece)
        self.items += items
        self.series += len(pieces)
        self.times += times

    def body(self) -> str:
        entries = ",".join(head + ",".join(samples) + self.entry_tail for head, samples in self.entries.values())
        return self.head + entries + self.tail


class UnleashSink(Sink):
    name = "unleash"
    title = "Unleash"
    limits = Limits(max_body_bytes=MAX_BODY_BYTES, max_items=MAX_SERIES)

    def __init__(self, url: str, token: Secret, api: str = AUTO, app_name: str = "metrics-bridge",
                 instance_id: str | None = None, max_body_bytes: int = MAX_BODY_BYTES):
        """``max_body_bytes`` is lowered only by tests, to split small bodies."""
        if api not in (AUTO, CUSTOM, IMPACT):
            raise ValueError(f"api must be auto, custom or impact, got {api!r}")
        self.base_url = base_url(url)
        self.api = api
        self.app_name = app_name or "metrics-bridge"
        self.instance_id = instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_body_bytes = max_body_bytes
        self._token = token
        self._mode = IMPACT if api == IMPACT else CUSTOM
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> UnleashSink:
        if not settings.unleash_url:
            raise ValueError("UNLEASH_URL is not set")
        if settings.unleash_api_token is None:
            raise ValueError("UNLEASH_API_TOKEN is not set")
        return cls(settings.unleash_url, settings.unleash_api_token, settings.unleash_api, settings.unleash_app_name)

    def __repr__(self) -> str:
        return f"UnleashSink(url={self.base_url!r}, api={self.api!r}, mode={self._mode!r})"

    @property
    def mode(self) -> str:
        """How metrics are encoded now: custom or impact (auto starts as custom)."""
        return self._mode

    def status(self) -> dict:
        return {"configured": True, "endpoint": urlsplit(self.base_url).netloc, "api": self.api, "mode": self._mode}

    # --- encoding -------------------------------------------------------------------------

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        """Requests for the current mode, each series once, fewest requests within the limits."""
        mode = self._mode
        encoded = Encoded()
        conversions = encoded.conversions
        groups: dict[tuple, _Group] = {}
        owners: dict[tuple, tuple] = {}  # series (name, labels) -> the group that owns it
        shapes: dict[str, tuple] = {}  # series name -> shape, to keep one kind per name
        layouts: dict[tuple, _Layout] = {}
        templates: dict[tuple, _Template] = {}
        label_cache: dict[tuple, tuple] = {}
        for index, metric in enumerate(metrics):
            point = metric.point
            identity = (metric.name, type(point), _shape_key(point), metric.namespace, metric.unit,
                        metric.description, metric.tags)
            template = templates.get(identity)
            if template is None:
                layout = layouts.get(identity[:-1])  # all but the tags
                if layout is None:
                    layout = layouts[identity[:-1]] = _layout(metric, mode)
                if layout.refusal:
                    encoded.rejected.append(Rejection(index, layout.refusal))
                    continue
                template = templates[identity] = self._template(metric, mode, layout, label_cache)
            assert template.layout.values is not None  # a layout without a refusal has them
            values = template.layout.values(point)
            if template.accumulators is not None:  # the common case: a later point of this identity
                problem = template.merge(index, values, metric.time_ns)
            else:
                series = template.new_series(values, metric.time_ns)
                group_key = (template.layout.name, template.labels)
                problem = self._add(groups, owners, shapes, group_key, index, metric.time_ns, series)
                if not problem:
                    template.bind(groups[group_key], series)
            if problem:
                encoded.rejected.append(Rejection(index, problem))
                continue
            for conversion, count in template.conversions:
                conversions[conversion] += count
        requests, too_large = self._pack(list(groups.values()), mode)
        encoded.requests = requests
        encoded.rejected += too_large
        encoded.rejected.sort(key=lambda r: r.index)
        return encoded

    def _template(self, metric: Metric, mode: str, layout: _Layout, label_cache: dict) -> _Template:
        """The template of this metric's identity (see ``_Template``)."""
        label_key = (metric.tags, type(metric.point))
        if label_key not in label_cache:  # tags repeat across point types
            label_cache[label_key] = self._labels(metric, mode)
        labels, dropped = label_cache[label_key]
        counted = [(layout.conversion, 1)] if layout.conversion else []
        if dropped:
            counted.append(("labels dropped (empty value, reserved or duplicate name)", dropped))
        counted += [(f"{field_name} not sent", 1) for field_name in layout.fields_not_sent]
        return _Template(layout, labels, tuple(counted))

    @staticmethod
    def _labels(metric: Metric, mode: str) -> tuple[tuple[tuple[str, str], ...], int]:
        """Sorted, normalized labels, and how many tags had to be dropped."""
        reserved = set(_IMPACT_RESERVED) if mode == IMPACT else set()
        if isinstance(metric.point, Histogram) or (mode == IMPACT and isinstance(metric.point, Aggregate)):
            reserved.add("le")
        if isinstance(metric.point, Summary):
            reserved.add("quantile")
        labels: dict[str, str] = {}
        for key, value in metric.tags:
            key = label_name(key)
            if not value or key in reserved or key in labels:
                continue
            labels[key] = value
        return tuple(sorted(labels.items())), len(metric.tags) - len(labels)

    @staticmethod
    def _add(groups, owners, shapes, group_key, index: int, time_ns: int, series: list[_Series]) -> str | None:
        """Merge one metric's series into its group, or say why it cannot be sent (then nothing changes).
        A series already in the group is updated in place, so templates bound to it stay valid."""
        group = groups.get(group_key)
        if group is not None:  # a later point of series this group already sends
            olds = [group.series.get((new.name, new.labels)) for new in series]
            if all(old is not None and old.shape == new.shape for old, new in zip(olds, series, strict=True)):
                results = [_merged(old, new.value, new.time_ns) for old, new in zip(olds, series, strict=True)]
                for old, (value, _) in zip(olds, results, strict=True):
                    problem = _problem(old, value)
                    if problem:
                        return problem
                for old, (value, latest) in zip(olds, results, strict=True):
                    old.value, old.time_ns = value, latest
                group.items.append(index)
                group.times.append(time_ns)
                return None
        group = group or _Group()
        merged: list[tuple[tuple, _Series, tuple | None]] = []
        for new in series:
            key = (new.name, new.labels)
            old = group.series.get(key)
            if old is None or old.shape != new.shape:  # a series new to this request: may it join?
                shape = shapes.get(new.name)
                if shape is not None and shape != new.shape:
                    return (f"{new.name} is already in this request as {_shape_text(shape)}; "
                            f"it cannot also be {_shape_text(new.shape)}")
                if owners.get(key, group_key) != group_key:
                    return f"{new.name} with these labels is already sent for another metric in this request"
                problem = _problem(new)
                merged.append((key, new, None))
            else:  # a later point of a series this group already sends
                value, latest = _merged(old, new.value, new.time_ns)
                problem = _problem(new, value)
                merged.append((key, new, (old, value, latest)))
            if problem:
                return problem
        for key, new, update in merged:
            if update is None:
                group.series[key] = new
            else:
                old, value, latest = update
                old.value, old.time_ns, old.merge = value, latest, new.merge
            owners[key] = group_key
            shapes[new.name] = new.shape
        group.items.append(index)
        group.times.append(time_ns)
        groups[group_key] = group
        return None

    def _pack(self, groups: list[_Group], mode: str) -> tuple[list[Request], list[Rejection]]:
        """Greedy in order: the fewest requests within the byte and series limits."""
        requests: list[Request] = []
        refused: list[Rejection] = []
        envelope = self._envelope(mode, 0, 0)
        batch = _Batch(mode, envelope)
        piece = _custom_piece if mode == CUSTOM else _impact_piece
        for group in groups:
            pieces = [piece(s) for s in group.series.values()]
            cost = batch.cost(pieces)
            if batch.items and (batch.size + cost > self.max_body_bytes or batch.series + len(pieces) > MAX_SERIES):
                requests.append(self._request(batch, mode))
                batch = _Batch(mode, envelope)
                cost = batch.cost(pieces)
            alone = batch.size + cost
            if alone > self.max_body_bytes or len(pieces) > MAX_SERIES:
                refused += [Rejection(i, f"its {len(pieces)} series encode to {alone} bytes, over Unleash's "
                                         f"{self.max_body_bytes}-byte body limit") for i in group.items]
                continue
            batch.add(group.items, pieces, group.times, cost)
        if batch.items:
            requests.append(self._request(batch, mode))
        return requests, refused

    def _envelope(self, mode: str, start_ns: int, stop_ns: int) -> tuple[str, str]:
        """The body around the series. Bucket times are fixed-length, so the size never changes."""
        if mode == CUSTOM:
            return '{"metrics":[', "]}"
        document = {"appName": self.app_name, "instanceId": self.instance_id, "environment": "default",
                    "bucket": {"start": _iso_ms(start_ns), "stop": _iso_ms(stop_ns), "toggles": {}}}
        return _json(document)[:-1] + ',"impactMetrics":[', "]}"

    def _request(self, batch: _Batch, mode: str) -> Request:
        if mode == IMPACT:  # the bucket spans the points sent
            batch.head, batch.tail = self._envelope(mode, min(batch.times), max(batch.times))
        body = batch.body().encode("ascii")
        assert len(body) == batch.size  # the size arithmetic and the bytes agree
        url = self.base_url + (CUSTOM_PATH if mode == CUSTOM else IMPACT_PATH)
        headers = {"Authorization": self._token.reveal(), "Content-Type": "application/json"}
        return Request("POST", url, headers, body, tuple(sorted(batch.items)))

    # --- classification -------------------------------------------------------------------

    def said(self, body: bytes) -> str:
        """Unleash's JSON message (and its first detail), else the text."""
        try:
            answer = json.loads(body)
            text = str(answer["message"])
            details = answer.get("details") or []
            if details and isinstance(details[0], dict) and details[0].get("message") not in (None, text):
                text += f" ({details[0]['message']})"
        except (ValueError, KeyError, TypeError, AttributeError):
            text = " ".join(body.decode("utf-8", "replace").split())
        return text[:MAX_SAID_CHARS]

    def _not_found(self, request: Request, reply: Reply) -> Outcome:
        """Auto mode on Unleash 8.1+: the custom endpoint is gone, so switch to impact metrics;
        otherwise UNLEASH_URL or UNLEASH_API is wrong."""
        if request.url.endswith(CUSTOM_PATH) and self.api == AUTO:
            self._switch_to_impact()
            return Resend("Unleash has no custom metrics endpoint (8.1 or later): sent as impact metrics instead",
                          split=False)
        hint = ("no custom metrics endpoint (Unleash 8.1 or later: set UNLEASH_API to impact or auto)"
                if request.url.endswith(CUSTOM_PATH) else "no client metrics endpoint (check UNLEASH_URL)")
        said = self.said(reply.body)
        return Drop(f"Unleash answered 404: {hint}{': ' + said if said else ''}", misconfigured=True, hint=hint)

    def _not_json(self, request: Request, reply: Reply) -> Outcome:
        said = self.said(reply.body)
        also = f": {said}" if said else ""
        log.error("unleash answered 415 to a JSON body of %d bytes: a bug in the bridge's Unleash encoder%s",
                  len(request.body), also)
        return Drop(f"Unleash answered 415: the body was not taken as JSON (a bridge bug){also}")

    # Where Unleash's answers differ from plain HTTP; classify() reads it and a test walks it.
    status_outcomes = outcomes_with({
        401: Misconfigured("the token is missing or unknown (check UNLEASH_API_TOKEN)"),
        403: Misconfigured("the token is not a client or backend token (check UNLEASH_API_TOKEN)"),
        404: _not_found,
        415: _not_json,  # the body was not sent as JSON: a bridge bug, logged as an error
        "3xx": Misconfigured("redirected: set UNLEASH_URL to the server's own URL"),
    })
    retry_after_headers = ("Retry-After", "RateLimit-Reset")

    def _switch_to_impact(self) -> None:
        """Auto mode, custom endpoint gone: impact metrics from now on (said once per process)."""
        with self._lock:
            if self._mode == IMPACT:
                return
            self._mode = IMPACT
        log.warning("unleash at %s has no custom metrics endpoint (404; Unleash 8.1 or later): "
                    "sending impact metrics to %s from now on", urlsplit(self.base_url).netloc, IMPACT_PATH)


def _layout(metric: Metric, mode: str) -> _Layout:
    """The layout of this metric's name, point type and shape, unit, description and namespace."""
    name = custom_name(metric.name) if mode == CUSTOM else impact_name(metric.name)
    if not name:
        return _Layout("Unleash needs a metric name")
    if mode == CUSTOM:
        help_text = ""
        specs, conversion, values = _custom_layout(metric.point)
    else:
        help_text = metric.description or metric.name
        if metric.unit:
            help_text += f" [{metric.unit}]"
        specs, conversion, values = _impact_layout(metric.point)
    fields_not_sent = tuple(f for f in (("namespace", "unit", "description") if mode == CUSTOM else ("namespace",))
                            if getattr(metric, f))
    return _Layout(None, name, specs, help_text, conversion, fields_not_sent, values)


def _shape_key(point) -> object:
    """What decides a point's series besides its name, type and tags (see the layouts): a counter's
    temporality, a histogram's bucket bounds or a summary's quantiles."""
    if isinstance(point, (Gauge, Aggregate)):
        return None
    if isinstance(point, Counter):
        return point.temporality
    if isinstance(point, Histogram):
        return tuple(b.upper_limit for b in point.buckets)
    return tuple(q.quantile for q in point.quantiles)  # a summary, as the layouts take any other point


def _spec(suffix: str, kind: str, extra: tuple[str, str] | None = None, bounds: tuple = (), merge: str = "") -> tuple:
    """One series of a layout: name suffix, kind, extra label (le, quantile), bucket bounds, merge rule."""
    return suffix, kind, extra, bounds, merge


def _value(point) -> list:
    """The values of a gauge or counter: its one series."""
    return [point.value]


def _custom_layout(point) -> tuple[list[tuple], str | None, Callable[[object], list]]:
    """The custom endpoint's series for a point (``_spec`` each), the conversion to count (if any),
    and how to read a point's values, in the order of the series."""
    if isinstance(point, Gauge):
        return [_spec("", "last")], None, _value
    if isinstance(point, Counter) and point.temporality == CUMULATIVE:
        return [_spec("", "last")], None, _value
    if isinstance(point, Counter):
        return [_spec("", "sum")], "delta counter sent as the summed increase of the request", _value
    if isinstance(point, Aggregate):
        return ([_spec("_min", "min"), _spec("_max", "max"), _spec("_sum", "sum"), _spec("_count", "sum")],
                "aggregate sent as _min, _max, _sum and _count series",
                lambda p: [p.min, p.max, p.sum, p.count])
    if isinstance(point, Histogram):
        bounds = tuple(b for b, _ in point.cumulative_buckets())
        return ([_spec("_count", "sum"), _spec("_sum", "sum")]
                + [_spec("_bucket", "sum", ("le", bound_text(bound)), bounds) for bound in bounds],
                "histogram sent as _count, _sum and cumulative _bucket series",
                lambda p: [p.count, p.sum, *(count for _, count in p.cumulative_buckets())])
    return ([_spec("_count", "last"), _spec("_sum", "last")]
            + [_spec("", "last", ("quantile", bound_text(q.quantile))) for q in point.quantiles],
            "summary sent as _count, _sum and quantile series",
            lambda p: [p.count, p.sum, *(q.value for q in p.quantiles)])


def _impact_layout(point) -> tuple[list[tuple], str | None, Callable[[object], list]]:
    """The impact metrics for a point (``_spec`` each), the conversion to count (if any), and how
    to read a point's values, in the order of the series."""
    if isinstance(point, Gauge):
        return [_spec("", "gauge")], None, _value
    if isinstance(point, Counter) and point.temporality == CUMULATIVE:
        return [_spec("", "gauge")], "cumulative counter sent as a gauge (impact counters take increments)", _value
    if isinstance(point, Counter):
        return [_spec("", "counter")], None, _value
    if isinstance(point, Histogram):
        bounds = tuple(b for b, _ in point.cumulative_buckets())
        return [_spec("", "histogram", bounds=bounds)], None, lambda p: [(p.count, p.sum, p.cumulative_buckets())]
    if isinstance(point, Aggregate):
        return ([_spec("", "histogram", bounds=(INF,)), _spec("_min", "gauge", merge="min"),
                 _spec("_max", "gauge", merge="max")],
                "aggregate sent as a histogram of only +Inf (count, sum) and _min/_max gauges",
                lambda p: [(p.count, p.sum, ((INF, p.count),)), p.min, p.max])
    return ([_spec("", "gauge", ("quantile", bound_text(q.quantile))) for q in point.quantiles]
            + [_spec("_count", "gauge"), _spec("_sum", "gauge")],
            "summary sent as gauges (quantiles, _count, _sum)",
            lambda p: [*(q.value for q in p.quantiles), p.count, p.sum])


def base_url(url: str) -> str:
    """The server's base URL; the ``/api`` that SDK configurations end with is taken off."""
    url = url.strip().rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


_KIND_TEXT = {"last": "a last-value series", "sum": "a summed series", "min": "a minimum series",
              "max": "a maximum series", "gauge": "a gauge", "counter": "a counter", "histogram": "a histogram"}


def _shape_text(shape: tuple) -> str:
    kind, *bounds = shape
    text = _KIND_TEXT[kind]
    return f"{text} with bucket bounds {', '.join(bound_text(b) for b in bounds)}" if bounds else text


_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode  # json.dumps, built once


def _json(document) -> str:
    return _encode(document)


def _number(value) -> str:
    """A value as json.dumps writes it; ints and finite floats directly (their repr), as they are
    nearly every value and dumps costs far more than the text."""
    if value.__class__ is float and math.isfinite(value):
        return float.__repr__(value)
    if value.__class__ is int:
        return int.__repr__(value)
    return _encode(value)


@lru_cache(maxsize=4096)
def _labels_json(labels: tuple) -> str:
    """A label set as JSON; the same sets recur series after series and request after request."""
    return _encode(dict(labels))


@lru_cache(maxsize=4096)
def _impact_head(name: str, help_text: str, kind: str) -> str:
    """The start of an impact entry, up to its samples."""
    return _encode({"name": name, "help": help_text, "type": kind})[:-1] + ',"samples":['


def _custom_piece(series: _Series) -> tuple[str, str, str]:
    """(entry name, entry head, JSON text) of a custom series, an entry of its own: what
    ``_json({"name": ..., "value": ..., "labels": dict(labels)})`` writes, from cached parts."""
    name, value, labels = _encode(series.name), _number(series.value), _labels_json(series.labels)
    return "", "", f'{{"name":{name},"value":{value},"labels":{labels}}}'


def _impact_piece(series: _Series) -> tuple[str, str, str]:
    """(entry name, entry head, JSON sample) of an impact series, written as ``_json`` would."""
    labels = _labels_json(series.labels)
    if series.kind == "histogram":
        count, total, buckets = series.value
        bucket_texts = ",".join(f'{{"le":{_INF_TEXT if b == INF else _number(b)},"count":{_number(c)}}}'
                                for b, c in buckets)
        sample = f'{{"count":{_number(count)},"sum":{_number(total)},"labels":{labels},"buckets":[{bucket_texts}]}}'
    else:
        sample = f'{{"value":{_number(series.value)},"labels":{labels}}}'
    return series.name, _impact_head(series.name, series.help, series.kind), sample


def _iso_ms(time_ns: int) -> str:
    """RFC 3339 UTC with exactly three fraction digits (JavaScript's Date reads milliseconds)."""
    seconds = format_rfc3339(time_ns // 1_000_000_000 * 1_000_000_000)
    return f"{seconds[:-1]}.{time_ns // 1_000_000 % 1000:03d}Z"
