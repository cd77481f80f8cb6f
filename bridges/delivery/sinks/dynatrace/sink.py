"""Dynatrace Metrics API v2: the metric ingestion line protocol over HTTP.

One line per data point: ``key,dim=value,... payload timestamp``, sent as
``text/plain; charset=utf-8`` with ``Authorization: Api-Token <token>`` (no header for the
OneAgent local endpoint). Requests hold at most 1,000 lines and 1,000,000 bytes.

What each canonical type becomes:
- gauge: ``gauge,<value>``; aggregate: ``gauge,min=,max=,sum=,count=``.
- delta counter: ``count,delta=<value>``.
- cumulative counter: Dynatrace takes only deltas, and a delta needs the previous total, which
  a stateless bridge does not have: it is sent as a gauge of the running total (counted as a
  conversion).
- histogram: gauges ``<key>_count``, ``<key>_sum`` and one ``<key>_bucket`` per bucket with
  dimension ``le`` (cumulative counts, the last ``le=+Inf``), as Prometheus names them.
- summary: gauges ``<key>_count``, ``<key>_sum`` and ``<key>`` with dimension ``quantile``.
Every conversion that loses a type is counted in the report.

Normalization follows the protocol (and Dynatrace's own metric-utils libraries): keys made of
``[A-Za-z0-9_-]`` sections, sections not starting with a digit (the server refuses them, though
the libraries allow it), 3 to 255 characters (names cut to 250 first, as the libraries do; for
histograms and summaries to 248, so that ``<key>_bucket`` fits), ``dt.`` reserved; dimension
keys lower-case ``[a-z0-9_:-]`` sections of at most 100 characters; values at most 250
characters with ``= , space \\ "`` escaped. At most 50 dimensions a line: the metric's own tags in key order,
then the default dimensions; the rest are dropped and counted. Points outside
[now - 1 h, now + 10 min] are refused locally.

No text of a metric can add or break a line. Keys and dimension keys keep only the characters
above (the prefix too, as part of the key). A line break cannot be escaped in the protocol, so
in dimension values (default dimensions included), the unit and the description every run of
characters of Unicode category C (``\\n``, ``\\r`` and every other control, format, private-use or
unassigned character) or a line or paragraph separator (U+2028, U+2029, on which other line
readers break) becomes one ``_``, counted as "<field> control characters replaced" for each
point (not for default dimensions, which are configuration). Metadata values go quoted
(``dt.meta.unit="ms",dt.meta.description="..."``, only ``"`` and ``\\`` escaped, as the protocol
asks: an unquoted unit ending in an escaped space would end its line in a backslash once a
reader trims the line). Values and the description are cut to 250 characters, and a cut never
leaves a dangling backslash that would escape the closing quote or the next separator.
"""
from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter as TallyCounter
from collections.abc import Sequence
from functools import lru_cache
from itertools import groupby
from urllib.parse import urlsplit

from bridges.delivery.sinks.base import (
    MAX_SAID_CHARS,
    Delivered,
    Drop,
    Encoded,
    Limits,
    Misconfigured,
    Partial,
    Rejection,
    Reply,
    Request,
    Sink,
    outcomes_with,
)
from bridges.formats.dynatrace import MAX_DIMENSIONS, MAX_LINE_CHARS  # the protocol's limits, one place
from bridges.model import Aggregate, Counter, Gauge, Histogram, Metric, Summary

log = logging.getLogger(__name__)
NS_PER_MS = 1_000_000
MAX_LINES = 1000
MAX_VALUE_CHARS = 250  # dimension values and the description
MAX_KEY_CHARS = 255
LONGEST_SUFFIX = "_bucket"  # of the keys a histogram or summary becomes
PAST_WINDOW_MS = 60 * 60 * 1000
FUTURE_WINDOW_MS = 10 * 60 * 1000
INGEST_PATH = "/api/v2/metrics/ingest"

_KEY_SECTION_START = re.compile(r"^[^A-Za-z_]+")
_KEY_INVALID = re.compile(r"[^A-Za-z0-9_-]+")
_DIM_SECTION_START = re.compile(r"^[^a-z_]+")
_DIM_INVALID = re.compile(r"[^a-z0-9_:-]+")
_VALUE_ESCAPE = re.compile(r'([= ,\\"])')  # in unquoted values, as Dynatrace's libraries write them
_QUOTED_ESCAPE = re.compile(r'([\\"])')  # in quoted values, as the protocol says
# Characters a line cannot hold, escaped or not: Unicode category C (controls, format,
# surrogates, private use, unassigned; \n and \r among them) and the line and paragraph
# separators, on which str.splitlines and other line readers break a line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
CONTROLS_REPLACED = "{} control characters replaced"

@lru_cache(maxsize=4096)
def metric_key(name: str) -> str | None:
    """A Dynatrace metric key for a name, or None when nothing usable is left."""
    sections = []
    for section in name[:250].split("."):
        section = _KEY_INVALID.sub("_", _KEY_SECTION_START.sub("_", section))
        if section:
            sections.append(section)
    key = ".".join(sections)
    return key if len(key) >= 3 else None


@lru_cache(maxsize=4096)
def dimension_key(key: str) -> str | None:
    sections = []
    for section in key.lower()[:100].split("."):  # lower() may lengthen (İ -> i̇): cut after it
        section = _DIM_INVALID.sub("_", _DIM_SECTION_START.sub("_", section))
        if section:
            sections.append(section)
    return ".".join(sections) or None


def dimension_value(value: str) -> str:
    """A dimension value as written unquoted on a line (see ``escaped``)."""
    return escaped(value)[0]


@lru_cache(maxsize=16384)
def escaped(value: str, quoted: bool = False) -> tuple[str, bool]:
    """(the text of a value on a line, whether characters had to be replaced): cut to 250
    characters, each run of characters no line can hold replaced by one ``_``, ``= , space \\ "``
    escaped (only ``\\ "`` for a quoted value), cut to 250 again without leaving a dangling
    backslash, which would escape what follows."""
    cut = value[:MAX_VALUE_CHARS]
    safe = cut if cut.isprintable() else "".join(
        "_" if unsafe else "".join(run) for unsafe, run in groupby(cut, key=_unsafe))
    text = (_QUOTED_ESCAPE if quoted else _VALUE_ESCAPE).sub(r"\\\1", safe)[:MAX_VALUE_CHARS]
    trailing = len(text) - len(text.rstrip("\\"))
    return (text[:-1] if trailing % 2 else text), safe != cut


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def number(value: float) -> str:
    """Dynatrace's notation: no NaN or infinity; an exponent needs a decimal point (1.0e+16)."""
    if isinstance(value, int):
        return str(value)
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return text


class DynatraceSink(Sink):
    name = "dynatrace"
    title = "Dynatrace"
    limits = Limits(
        max_body_bytes=1_000_000, max_items=MAX_LINES, max_dimensions=MAX_DIMENSIONS,
        max_age_seconds=PAST_WINDOW_MS / 1000, max_future_seconds=FUTURE_WINDOW_MS / 1000,
    )

    def __init__(self, url: str, token=None, prefix: str = "", default_dimensions: dict | None = None,
                 metadata: bool = True):
        self.url = ingest_url(url)
        self._token = token
        self.prefix = prefix.strip(".")
        self.default_dimensions = [
            (key, dimension_value(v)) for k, v in (default_dimensions or {}).items() if (key := dimension_key(k)) and v
        ]
        self.metadata = metadata

    @classmethod
    def from_settings(cls, settings) -> DynatraceSink:
        return cls(settings.dynatrace_url, settings.dynatrace_api_token, settings.dynatrace_metric_prefix,
                   settings.dynatrace_default_dimensions, settings.dynatrace_metadata)

    def status(self) -> dict:
        return {"configured": True, "endpoint": urlsplit(self.url).netloc}

    # --- encoding -------------------------------------------------------------------------

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        encoded = Encoded()
        now_ms = now_ns // NS_PER_MS
        lines: list[tuple[int, str, str | None]] = []  # (metric index, line, its metadata line)
        dimensions: dict = {}  # tags -> (pairs, dimension text, lost): tags repeat across points
        for index, metric in enumerate(metrics):
            key = self._key(metric.name, suffixed=isinstance(metric.point, (Histogram, Summary)))
            problem = _refusal(key, metric.time_ns // NS_PER_MS, now_ms)
            if problem is None:
                assert key is not None  # _refusal refuses a missing key
                if metric.tags not in dimensions:
                    dimensions[metric.tags] = self._dimensions(metric.tags)
                *kept, lost = dimensions[metric.tags]
                encoded.conversions.update(lost)
                metric_lines = self._lines(key, metric, kept, encoded)
                if any(len(line) > MAX_LINE_CHARS for line in metric_lines):
                    problem = f"a line is longer than {MAX_LINE_CHARS} characters"
            if problem is not None:
                encoded.rejected.append(Rejection(index, problem))
                continue
            assert key is not None  # as above
            metadata = self._metadata_line(key, metric, encoded)
            lines += [(index, line, metadata) for line in metric_lines]
        encoded.requests = self._pack(lines)
        return encoded

    def _key(self, name: str, suffixed: bool = False) -> str | None:
        """The key for a name; for ``suffixed`` lines (histograms, summaries) short enough that
        ``_bucket`` still fits in 255 characters."""
        full = f"{self.prefix}.{name}" if self.prefix else name
        key = metric_key(full[:MAX_KEY_CHARS - len(LONGEST_SUFFIX)] if suffixed else full)
        return key if key and len(key) <= MAX_KEY_CHARS else None

    def _dimensions(self, tags) -> tuple[list[tuple[str, str]], str, TallyCounter]:
        """The (key, value) pairs kept for these tags, own tags first then defaults, their text,
        and what was lost on the way (counted for each point with these tags)."""
        pairs: list[tuple[str, str]] = []
        seen: set[str] = set()
        lost: TallyCounter = TallyCounter()
        for raw_key, raw_value in tags:
            key = dimension_key(raw_key)
            if key is None or key in seen or raw_value == "":
                lost["dimensions dropped (empty, duplicate or unusable key)"] += 1
                continue
            seen.add(key)
            value, replaced = escaped(raw_value)
            if replaced:
                lost[CONTROLS_REPLACED.format("dimension value")] += 1
            pairs.append((key, value))
        pairs += [(k, v) for k, v in self.default_dimensions if k not in seen]
        if len(pairs) > MAX_DIMENSIONS:
            lost[f"dimensions over {MAX_DIMENSIONS} dropped"] += len(pairs) - MAX_DIMENSIONS
            pairs = pairs[:MAX_DIMENSIONS]
        return pairs, "".join(f",{k}={v}" for k, v in pairs), lost

    def _lines(self, key: str, metric: Metric, dimensions, encoded: Encoded) -> list[str]:
        pairs, dim_text = dimensions
        stamp = f" {metric.time_ns // NS_PER_MS}"
        point = metric.point
        if isinstance(point, Gauge):
            return [f"{key}{dim_text} gauge,{number(point.value)}{stamp}"]
        if isinstance(point, Aggregate):
            return [(f"{key}{dim_text} gauge,min={number(point.min)},max={number(point.max)},"
                     f"sum={number(point.sum)},count={point.count}{stamp}")]
        if isinstance(point, Counter):
            if point.temporality == "delta":
                return [f"{key}{dim_text} count,delta={number(point.value)}{stamp}"]
            encoded.conversions["cumulative counter sent as a gauge"] += 1
            return [f"{key}{dim_text} gauge,{number(point.value)}{stamp}"]
        lines = [f"{key}_count{dim_text} gauge,{point.count}{stamp}",
                 f"{key}_sum{dim_text} gauge,{number(point.sum)}{stamp}"]
        if isinstance(point, Histogram):
            encoded.conversions["histogram sent as gauges (_count, _sum, _bucket)"] += 1
            for limit, count in point.cumulative_buckets():
                le = "+Inf" if limit == float("inf") else number(limit)
                lines.append(f"{key}_bucket{_with(pairs, 'le', le, encoded)} gauge,{count}{stamp}")
        else:
            encoded.conversions["summary sent as gauges (_count, _sum, quantiles)"] += 1
            for quantile in point.quantiles:
                lines.append(f"{key}{_with(pairs, 'quantile', number(quantile.quantile), encoded)} "
                             f"gauge,{number(quantile.value)}{stamp}")
        return lines

    def _metadata_line(self, key: str, metric: Metric, encoded: Encoded) -> str | None:
        """``#key gauge|count dt.meta.unit=..,dt.meta.description=".."`` for a described metric."""
        if not self.metadata or not (metric.unit or metric.description) or isinstance(metric.point, (Histogram, Summary)):
            return None
        kind = "count" if isinstance(metric.point, Counter) and metric.point.temporality == "delta" else "gauge"
        fields = []
        for name, text in (("unit", metric.unit), ("description", metric.description)):
            if text:
                value, replaced = escaped(text, quoted=True)
                if replaced:
                    encoded.conversions[CONTROLS_REPLACED.format(name)] += 1
                fields.append(f'dt.meta.{name}="{value}"')
        return f"#{key} {kind} {','.join(fields)}"

    def _pack(self, lines: list[tuple[int, str, str | None]]) -> list[Request]:
        """The fewest requests within 1,000 lines and 1,000,000 bytes; a metric's metadata line
        goes before its first line in each request that carries it."""
        requests: list[Request] = []
        body: list[str] = []
        owners: list[int | None] = []
        size = 0
        described: set[str | None] = set()
        for index, line, metadata in lines:
            adding = [line] if metadata is None or metadata in described else [metadata, line]
            added = sum(len(text.encode("utf-8")) + 1 for text in adding)
            if body and (len(body) + len(adding) > MAX_LINES or size + added > self.limits.max_body_bytes):
                requests.append(self._request(body, owners))
                body, owners, size = [], [], 0
                described.clear()
                adding = [line] if metadata is None else [metadata, line]
                added = sum(len(text.encode("utf-8")) + 1 for text in adding)
            if len(adding) == 2:
                described.add(metadata)
                owners.append(None)
            body += adding
            owners.append(index)
            size += added
        if body:
            requests.append(self._request(body, owners))
        return requests

    def _request(self, lines: list[str], owners: list[int | None]) -> Request:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._token is not None:
            headers["Authorization"] = f"Api-Token {self._token.reveal()}"
        items = tuple(dict.fromkeys(i for i in owners if i is not None))
        return Request("POST", self.url, headers, "\n".join(lines).encode("utf-8"), items, tuple(owners))

    # --- classification -------------------------------------------------------------------

    def said(self, body: bytes) -> str:
        try:
            return str(json.loads(body)["error"]["message"])[:MAX_SAID_CHARS]
        except (ValueError, KeyError, TypeError):
            return super().said(body)

    def _partial(self, request: Request, reply: Reply) -> Partial | Drop:
        """Map a 400 ValidationResponse back to metrics: listed lines (1-based) by index, the rest counted."""
        body = reply.body
        try:
            answer = json.loads(body)
            invalid = int(answer.get("linesInvalid") or 0)
            listed = (answer.get("error") or {}).get("invalidLines") or []
        except (ValueError, AttributeError, TypeError):
            return Drop(f"Dynatrace answered 400: {self.said(body) or 'no details'}")
        rejected: dict[int, str] = {}
        for entry in listed:
            line = entry.get("line") if isinstance(entry, dict) else None
            if isinstance(line, int) and 1 <= line <= len(request.lines) and (owner := request.lines[line - 1]) is not None:
                rejected.setdefault(owner, f"Dynatrace refused the line: {entry.get('error', '')}"[:300])
        unidentified = max(0, invalid - len(listed))
        if not rejected and not unidentified:
            return Drop(f"Dynatrace answered 400: {self.said(body) or 'no details'}")
        return Partial(tuple(Rejection(i, reason) for i, reason in rejected.items()), unidentified)

    # Where Dynatrace's answers differ from plain HTTP; classify() reads it and a test walks it.
    status_outcomes = outcomes_with({
        202: Delivered,
        400: _partial,  # invalid lines are refused, the valid ones were taken
        401: Misconfigured("the token is wrong (misconfigured)"),
        403: Misconfigured("the token lacks metrics.ingest (misconfigured)"),
        404: Misconfigured("the ingest URL is wrong (misconfigured)"),
    })


def _refusal(key: str | None, time_ms: int, now_ms: int) -> str | None:
    if key is None:
        return "no usable Dynatrace metric key (3 to 255 characters of [A-Za-z0-9_-] in sections)"
    if key.startswith("dt."):
        return "metric keys starting with 'dt.' are reserved by Dynatrace"
    if not now_ms - PAST_WINDOW_MS <= time_ms <= now_ms + FUTURE_WINDOW_MS:
        return "outside Dynatrace's window of 1 hour in the past to 10 minutes in the future"
    return None


def _with(pairs: list[tuple[str, str]], key: str, value: str, encoded: Encoded) -> str:
    """Dimension text with one more dimension first (le, quantile), still within the limit."""
    kept = [(key, dimension_value(value))] + [p for p in pairs if p[0] != key]
    if len(kept) > MAX_DIMENSIONS:
        encoded.conversions[f"dimensions over {MAX_DIMENSIONS} dropped"] += len(kept) - MAX_DIMENSIONS
    return "".join(f",{k}={v}" for k, v in kept[:MAX_DIMENSIONS])


def ingest_url(url: str) -> str:
    """The full ingest URL for a configured one; a bare environment URL gets the v2 path."""
    url = url.rstrip("/")
    if urlsplit(url).path.endswith("/metrics/ingest"):
        return url
    return url + INGEST_PATH
