"""Azure Monitor custom metrics: one-minute min/max/sum/count per series, posted per resource.

``POST https://{region}.monitoring.azure.com{resourceId}/metrics`` (or
``{AZURE_MONITOR_ENDPOINT}{resourceId}/metrics`` for sovereign clouds) with an Entra token for
the audience ``https://monitoring.azure.com/`` from the process's identity, which needs the
Monitoring Metrics Publisher role on each resource. Bodies are NDJSON, one document per line,
gzip-compressed (``Content-Encoding: gzip``), at most 4,000,000 bytes before compression (the
limit Telegraf uses; Microsoft documents none), in the fewest requests. ``encode`` stays pure:
``authorize`` adds the token just before sending, and tokens are reused until near expiry.

Target: a metric's own ``azure`` target (resource id, region) wins over the defaults; a target
without a region uses the default region. With the endpoint override, a metric naming another
region goes to the same cloud's host for that region when the override is a regional host
(``https://usgovarizona.monitoring.azure.us`` -> ``https://usgovvirginia...``), else to the
override as is. Requests are grouped per target URL: one request reaches one resource.

Azure Monitor stores only one-minute aggregates of observations, so each point becomes
observations merged per (resource, namespace, metric, dimension names, minute) into one
document, and points with different dimension values become that document's ``series``:
- gauge: one observation of its value.
- aggregate: its min, max, sum and count merged exactly (count 0 is refused: nothing to send).
- delta counter: one observation of the increase: Sum is the total increase in the minute,
  Count the number of reports, Min/Max the smallest and largest increment.
- cumulative counter: a per-minute increase needs the previous total, which a stateless
  bridge does not have: sent as an observation of the running total (chart Max or Average,
  not Sum). Counted.
- histogram: count and sum are kept exactly (so Sum, Count and Average are right); the
  buckets are lost and min and max, which a histogram does not know, are set to the mean.
  Counted. A histogram with count 0 has no observation to send and is refused locally.
- summary: count and sum kept exactly; min is the 0 quantile and max the 1 quantile when the
  summary has them, else the mean; the other quantiles are lost. Counted; count 0 is refused.
Units and descriptions cannot be sent (the API has no field for them).

Names: metric names keep only ``[A-Za-z0-9_]`` (others become ``_``), as Telegraf does: the
service's documentation both forbids spaces and shows a name with spaces. A metric name or
namespace longer than 256 characters is refused (truncating could merge different metrics).
Dimensions: at most 10, chosen by ``dimension_priority`` first, then the rest in key order;
the others are dropped and counted. Empty values are dropped (counted); dimension names over
256 characters are dropped and values over 256 characters truncated (both counted).
Time: only points inside [now - 20 min, now + 4 min] are sent (the documented 20 minutes past
intersected with the 4 minutes ahead the service enforces); others are refused locally.
``time`` is the start of the point's minute, RFC 3339 UTC with ``Z``. A point that would make
its series' sum for the minute overflow to infinity, which JSON cannot carry, or its count past
a 64-bit integer, is refused locally.
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import re
import time
from collections import Counter as TallyCounter
from collections.abc import Sequence
from functools import lru_cache
from urllib.parse import urlsplit

from bridges.delivery.auth import TokenSource, custom_metrics_scope, process_credential
from bridges.delivery.sinks.base import (
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
from bridges.model import MAX_COUNT, Aggregate, Counter, Gauge, Histogram, Metric
from bridges.timestamps import NS_PER_SECOND, format_rfc3339

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4_000_000
MAX_DIMENSIONS = 10
MAX_NAME_CHARS = 256
NS_PER_MINUTE = 60 * NS_PER_SECOND
PAST_WINDOW_NS = 20 * NS_PER_MINUTE
FUTURE_WINDOW_NS = 4 * NS_PER_MINUTE
GZIP_LEVEL = 6  # level 9 costs about twice the time for a few percent fewer bytes
ROLE_HINT = ("the app's identity needs the Monitoring Metrics Publisher role on the resource "
             "(a new role assignment can take up to 30 minutes to apply)")

_NAME_INVALID = re.compile(r"[^A-Za-z0-9_]")
_REGIONAL_HOST = re.compile(r"[a-z0-9]+(\.monitoring\.azure\.(?:com|us|cn))(:\d+)?")

@lru_cache(maxsize=4096)
def metric_name(name: str) -> str:
    """The name with every character outside ``[A-Za-z0-9_]`` replaced by ``_``."""
    return _NAME_INVALID.sub("_", name)


class AzureMonitorSink(Sink):
    name = "azure_monitor"
    title = "Azure Monitor"
    limits = Limits(
        max_body_bytes=MAX_BODY_BYTES, max_dimensions=MAX_DIMENSIONS,
        max_age_seconds=PAST_WINDOW_NS / NS_PER_SECOND, max_future_seconds=FUTURE_WINDOW_NS / NS_PER_SECOND,
    )

    def __init__(self, resource_id: str, region: str | None, credential, endpoint: str | None = None,
                 namespace: str = "Bridge", dimension_priority: tuple[str, ...] = (), clock=time.time):
        self.resource_id = resource_id.rstrip("/")
        self.region = region
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.namespace = namespace
        self.dimension_priority = tuple(dimension_priority)
        # without a default region every metric must name its own; the public cloud is assumed
        self.base_url = self.endpoint or f"https://{region + '.' if region else ''}monitoring.azure.com"
        self._tokens = TokenSource(credential, custom_metrics_scope(self.base_url), clock)
        self._urls: dict = {}  # (resource id, region) -> URL or the reason there is none
        self._dimensions: dict = {}  # tags -> (names, values, conversions)

    @classmethod
    def from_settings(cls, settings) -> AzureMonitorSink:
        return cls(settings.azure_monitor_resource_id, settings.azure_monitor_region, process_credential(settings),
                   settings.azure_monitor_endpoint, settings.azure_monitor_namespace,
                   tuple(settings.azure_monitor_dimension_priority))

    def status(self) -> dict:
        return {"configured": True, "endpoint": urlsplit(self.base_url).netloc, "resource_id": self.resource_id,
                "audience": self._tokens.scope.removesuffix("/.default")}

    def authorize(self, request: Request) -> Request:
        """A copy with a fresh bearer token; ``TokenError`` propagates to the delivery stage."""
        return self._tokens.authorize(request)

    # --- encoding -------------------------------------------------------------------------

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        encoded = Encoded()
        # (url, namespace, name, dimension names, minute) -> {dimension values: [min, max, sum, count, items]}
        documents: dict[tuple, dict[tuple, list]] = {}
        for index, metric in enumerate(metrics):
            problem, url, name, namespace, observed = self._check(metric, now_ns, encoded)
            if problem is not None:
                encoded.rejected.append(Rejection(index, problem))
                continue
            names, values, lost = self._dimensions.get(metric.tags) or self._choose_dimensions(metric.tags)
            if lost:
                encoded.conversions.update(lost)
            key = (url, namespace, name, names, metric.time_ns // NS_PER_MINUTE)
            series = documents.setdefault(key, {})
            low, high, total, count = observed
            current = series.get(values)
            if current is None:
                series[values] = [low, high, total, count, [index]]
            elif not math.isfinite(current[2] + total):  # JSON has no infinity: Azure would refuse the body
                encoded.rejected.append(Rejection(index, "its sum with the other points of its series in this "
                                                         "minute is too large for a number"))
            elif current[3] + count > MAX_COUNT:  # Azure counts in 64 bits
                encoded.rejected.append(Rejection(index, "its count with the other points of its series in this "
                                                         "minute is beyond a 64-bit integer"))
            else:
                current[0] = min(current[0], low)
                current[1] = max(current[1], high)
                current[2] += total
                current[3] += count
                current[4].append(index)
        encoded.requests = self._pack(documents)
        return encoded

    def _check(self, metric: Metric, now_ns: int, encoded: Encoded):
        """(refusal, url, name, namespace, (min, max, sum, count)) for one metric."""
        refused = (None,) * 4
        if not now_ns - PAST_WINDOW_NS <= metric.time_ns <= now_ns + FUTURE_WINDOW_NS:
            return ("outside Azure Monitor's window of 20 minutes in the past to 4 minutes in the future", *refused)
        url = self._url(metric.azure)
        if not url.startswith("http"):
            return (url, *refused)
        namespace = metric.namespace or self.namespace
        if len(metric.name) > MAX_NAME_CHARS or len(namespace) > MAX_NAME_CHARS:
            return (f"metric name or namespace longer than {MAX_NAME_CHARS} characters", *refused)
        observed = _observation(metric, encoded)
        if isinstance(observed, str):
            return (observed, *refused)
        return None, url, metric_name(metric.name), namespace, observed

    def _url(self, target) -> str:
        """The metrics URL for a metric's target (cached), or why there is none."""
        key = (target.resource_id, target.region) if target is not None else (self.resource_id, None)
        if key not in self._urls:
            resource_id, region = key
            resource_id = resource_id.rstrip("/")
            if self.endpoint:
                self._urls[key] = f"{_regional(self.endpoint, region)}{resource_id}/metrics"
            elif region or self.region:
                self._urls[key] = f"https://{region or self.region}.monitoring.azure.com{resource_id}/metrics"
            else:
                self._urls[key] = "no Azure region for the resource (set AZURE_MONITOR_REGION or the metric's azure.region)"
        return self._urls[key]

    def _choose_dimensions(self, tags) -> tuple[tuple, tuple, TallyCounter]:
        """Dimension names and values for these tags (cached: tags repeat across points), and
        what was lost choosing them."""
        lost: TallyCounter = TallyCounter()
        kept = {}
        for key, value in tags:
            if value == "" or key == "":
                lost["dimensions with an empty name or value dropped"] += 1
            elif len(key) > MAX_NAME_CHARS:
                lost[f"dimension names over {MAX_NAME_CHARS} characters dropped"] += 1
            else:
                if len(value) > MAX_NAME_CHARS:
                    lost[f"dimension values truncated to {MAX_NAME_CHARS} characters"] += 1
                    value = value[:MAX_NAME_CHARS]
                kept[key] = value
        order = [name for name in self.dimension_priority if name in kept]
        order += [name for name in sorted(kept) if name not in order]
        if len(order) > MAX_DIMENSIONS:
            lost[f"dimensions over {MAX_DIMENSIONS} dropped"] = len(order) - MAX_DIMENSIONS
            order = order[:MAX_DIMENSIONS]
        chosen = (tuple(order), tuple(kept[name] for name in order), lost)
        if len(self._dimensions) < 16384:
            self._dimensions[tags] = chosen
        return chosen

    def _pack(self, documents: dict[tuple, dict[tuple, list]]) -> list[Request]:
        """Per target URL, the documents as NDJSON lines in the fewest requests of at most
        4,000,000 bytes before compression."""
        lines: dict[str, list[tuple[bytes, list[int]]]] = {}
        stamps: dict[int, str] = {}
        for (url, namespace, name, names, minute), series in documents.items():
            if minute not in stamps:
                stamps[minute] = format_rfc3339(minute * NS_PER_MINUTE)
            entries = [
                ({"dimValues": list(values), "min": low, "max": high, "sum": total, "count": count}, items)
                for values, (low, high, total, count, items) in series.items()
            ]
            head = {"time": stamps[minute], "metric": name, "namespace": namespace, "dimNames": list(names)}
            lines.setdefault(url, []).extend(_document_lines(head, entries))
        requests = []
        for url, url_lines in lines.items():
            body: list[bytes] = []
            items: list[int] = []
            size = 0
            for line, line_items in url_lines:
                if body and size + len(line) > MAX_BODY_BYTES:
                    requests.append(_request(url, body, items))
                    body, items, size = [], [], 0
                body.append(line)
                items += line_items
                size += len(line)
            if body:
                requests.append(_request(url, body, items))
        return requests

    # --- classification -------------------------------------------------------------------

    def said(self, body: bytes) -> str:
        return _error(body)[1] if body.strip() else ""

    def _bad_request(self, request: Request, reply: Reply) -> Outcome:
        code, message = _error(reply.body)
        if code == "RegionMismatch":
            return Drop(f"Azure Monitor answered 400 RegionMismatch: {message}", misconfigured=True,
                        hint="the resource is in another region: set AZURE_MONITOR_REGION (or the metric's "
                             "azure.region) to the resource's region")
        return Drop(f"Azure Monitor answered 400: {message}")

    def _refused(self, request: Request, reply: Reply) -> Outcome:
        """The error code says which permission is missing: kept in the reason with the role hint."""
        code, message = _error(reply.body)
        return Drop(f"Azure Monitor answered {reply.status} ({code or 'no code'}: {message}); {ROLE_HINT}",
                    misconfigured=True, hint=ROLE_HINT)

    # Where Azure Monitor's answers differ from plain HTTP; classify() reads it and a test walks it.
    status_outcomes = outcomes_with({
        400: _bad_request,  # the service's message; RegionMismatch also marks the sink misconfigured
        401: _refused,
        403: _refused,
        404: Misconfigured("no such resource or endpoint: check AZURE_MONITOR_RESOURCE_ID and AZURE_MONITOR_ENDPOINT"),
        "3xx": Misconfigured("redirected: check AZURE_MONITOR_REGION and AZURE_MONITOR_ENDPOINT"),
    })


def _observation(metric: Metric, encoded: Encoded):
    """(min, max, sum, count) a point stands for, or why it has none."""
    point = metric.point
    if isinstance(point, Gauge):
        observed = (point.value, point.value, point.value, 1)
    elif isinstance(point, Aggregate):
        observed = (point.min, point.max, point.sum, point.count)
    elif isinstance(point, Counter):
        if point.temporality != "delta":
            encoded.conversions["cumulative counter sent as an observation of the running total"] += 1
        observed = (point.value, point.value, point.value, 1)
    else:
        if point.count <= 0:
            return f"a {point.kind} with count 0 holds no observation Azure Monitor could store"
        mean = point.sum / point.count
        low = high = mean
        if isinstance(point, Histogram):
            encoded.conversions["histogram sent as count, sum and mean (buckets dropped)"] += 1
        else:
            encoded.conversions["summary sent as count, sum, 0 and 1 quantiles or mean (other quantiles dropped)"] += 1
            for quantile in point.quantiles:
                if quantile.quantile == 0:
                    low = min(quantile.value, mean)
                elif quantile.quantile == 1:
                    high = max(quantile.value, mean)
        observed = (low, high, point.sum, point.count)
    if observed[3] <= 0:
        return f"an {point.kind} with count 0 holds no observation Azure Monitor could store"
    if not all(math.isfinite(v) for v in observed):
        return "not a finite number (Azure Monitor takes JSON numbers only)"
    return observed


def _document_lines(head: dict, entries: list[tuple[dict, list[int]]]) -> list[tuple[bytes, list[int]]]:
    """NDJSON lines for one document, its series split over several documents when one line
    would pass the request limit."""
    document = {"time": head["time"], "data": {"baseData": {
        "metric": head["metric"], "namespace": head["namespace"], "dimNames": head["dimNames"],
        "series": [series for series, _ in entries]}}}
    line = (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if len(line) <= MAX_BODY_BYTES or len(entries) == 1:
        return [(line, [i for _, items in entries for i in items])]
    half = len(entries) // 2
    return _document_lines(head, entries[:half]) + _document_lines(head, entries[half:])


def _request(url: str, body: list[bytes], items: list[int]) -> Request:
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    return Request("POST", url, headers, gzip.compress(b"".join(body), GZIP_LEVEL, mtime=0), tuple(items))


def _regional(endpoint: str, region: str | None) -> str:
    """The override for another region of the same cloud, when it is a regional host."""
    parts = urlsplit(endpoint)
    match = _REGIONAL_HOST.fullmatch(parts.netloc)
    if region is None or match is None:
        return endpoint
    return f"{parts.scheme}://{region}{match.group(1)}{match.group(2) or ''}{parts.path}"


def _error(body: bytes) -> tuple[str | None, str]:
    """(code, message) of an Azure error body ``{"error": {"code", "message"}}``."""
    try:
        error = json.loads(body)["error"]
        return error.get("code"), str(error.get("message", "")).strip()[:300] or "no details"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, body[:300].decode("utf-8", "replace").strip() or "no details"
