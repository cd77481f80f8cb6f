"""Polled sources: JSON APIs fetched on a schedule and mapped into metrics by mapping rules.

Declared in ``schemas/sources.schema.json`` form (BRIDGE_SOURCES_FILE or BRIDGE_SOURCES). One
timer function runs on SOURCES_SCHEDULE and polls, each run, the sources whose own schedule
fired since the function's previous run. One function rather than one per schedule, because
the host reads schedules when it indexes the app: a function per source would need a new
deployment for every source added, while the sources file is only a setting.

The response's JSON goes through the source's rules (``mapping`` names a rule file, or holds
the rules) as a webhook's body would, the response headers as its headers. Each poll also
yields ``poll_up`` (1 or 0, reason tag when 0: timeout, dns, connect, tls, status, json,
mapping: the rules refused everything, or no rule matched; parse: a ``format: prometheus``
body that is not an exposition) and ``poll_duration_seconds``, tagged source and location, so a
source that stopped answering is seen.

``format: prometheus``: the body is a Prometheus text exposition (0.0.4), or OpenMetrics 1.0 when
the response says ``application/openmetrics-text``, read with ``prometheus_client``'s parsers
(imported at the first scrape, so cold start does not pay for them). Counters (cumulative, named
by their sample: ``x_total``), gauges, unknown/info/stateset as gauges, histograms (per-bucket
counts from the cumulative ``le`` buckets) and summaries (NaN quantiles left out); HELP is the
description, UNIT the unit, labels the tags, a sample's own timestamp its time (else the poll's).
``keep``/``drop``: fnmatch patterns on family names (a counter's also matches as ``x_total``).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bridges.formats import Decoded, Refused
from bridges.masking import scrub
from bridges.model import Bucket, Counter, Gauge, Histogram, Metric, Point, Quantile, Summary
from bridges.scheduled.declared import load_declared, request_body, resolve_headers, reveal_headers, tls_options
from bridges.scheduled.probe import Fetched, FetchError, TlsOptions, fetch
from bridges.scheduled.schedules import Schedule, ScheduleError
from bridges.settings import Settings, SettingsError
from bridges.webhooks.rules import NO_RULE_MATCHED, SourceRules

DEFAULT_TIMEOUT_SECONDS = 10.0
EARLY_RUN_TOLERANCE = timedelta(milliseconds=500)
# What Prometheus itself sends to a scrape target (OpenMetrics first, 0.0.4 text otherwise).
SCRAPE_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    rules: SourceRules | None  # None for format prometheus
    method: str = "GET"
    headers: Mapping[str, object] = field(default_factory=dict)  # values: text or Secret
    body: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    tls: TlsOptions = TlsOptions()
    schedule: Schedule | None = None  # None: every run of the polling function
    format: str = "json"  # or "prometheus"
    keep: tuple[str, ...] = ()  # fnmatch patterns on family names (prometheus); empty: every family
    drop: tuple[str, ...] = ()


@dataclass
class Poll:
    """One poll: the decoded items (for the Normalizer and delivery) or why there are none."""

    source: Source
    decoded: Decoded | None
    reason: str | None  # None when the response was read through the rules
    message: str
    duration: float
    status: int | None = None

    @property
    def up(self) -> bool:
        return self.reason is None


def load_sources(settings: Settings, environ: Mapping[str, str], rule_files: Callable[[], dict]) -> list[Source]:
    """The declared sources; ``rule_files()`` gives the loaded rule files by source name (only
    called when a source names one). SettingsError names the setting, file and field."""
    declared, where = load_declared("BRIDGE_SOURCES_FILE", settings.sources_file, "BRIDGE_SOURCES",
                                    settings.sources, "sources.schema.json", "sources")
    rule_files = functools.cache(rule_files)  # read once, however many sources name one
    return [_source(entry, environ, f"{where}: at /sources/{index}", rule_files) for index, entry in enumerate(declared)]


def _source(entry: dict, environ: Mapping[str, str], where: str, rule_files: Callable[[], dict]) -> Source:
    from bridges.webhooks.rule_files import check_document

    mapping = entry.get("mapping")
    rules: SourceRules | None = None
    if mapping is None:  # format prometheus (the schema asks the others for a mapping)
        pass
    elif isinstance(mapping, str):
        from bridges.webhooks.rule_files import MappingError

        try:
            known = rule_files()
        except MappingError as exc:
            raise SettingsError(f"{where}/mapping: the rule files cannot be loaded: {exc}") from None
        if mapping not in known:
            raise SettingsError(f"{where}/mapping: no rule file for source {mapping!r}; known: {', '.join(sorted(known))}")
        rules = known[mapping]
    else:
        rules, errors = check_document({"source": entry["name"], **mapping}, f"{where}/mapping")
        if errors:
            raise SettingsError(str(errors[0]))
    schedule = None
    if "schedule" in entry:
        try:
            schedule = Schedule(entry["schedule"])
        except ScheduleError as exc:
            raise SettingsError(f"{where}/schedule: {exc}") from None
        if schedule.interval is not None:  # it has no firings of its own to fall in a run's window
            raise SettingsError(f"{where}/schedule: {entry['schedule']!r}: a source's schedule is NCRONTAB (six fields, "
                                "seconds first, e.g. '0 */5 * * * *'), not a TimeSpan")
    headers = resolve_headers(entry.get("headers", {}), environ, where)
    return Source(
        name=entry["name"], url=entry["url"], rules=rules, method=entry.get("method", "GET"), headers=headers,
        body=request_body(entry.get("body"), headers), timeout=float(entry.get("timeout", DEFAULT_TIMEOUT_SECONDS)),
        tls=tls_options(entry.get("tls", {}), where), schedule=schedule, format=entry.get("format", "json"),
        keep=tuple(entry.get("keep", ())), drop=tuple(entry.get("drop", ())),
    )


def due(sources: Sequence[Source], timer: Schedule, now: datetime) -> list[Source]:
    """The sources whose schedule fired within the run's window: after the polling function's
    firing before this run, up to this run's firing (so each firing is polled once). A run up to
    EARLY_RUN_TOLERANCE before a firing (clocks differ) counts as that firing's."""
    previous, tick = timer.window(now + EARLY_RUN_TOLERANCE)
    return [s for s in sources if s.schedule is None or s.schedule.next_after(previous) <= tick]


def poll(source: Source, now_ns: int, fetcher: Callable[..., Fetched] = fetch) -> Poll:
    """Fetch the source and read its JSON through its rules (or its exposition, format prometheus)."""
    headers = reveal_headers(source.headers)
    if source.format == "prometheus" and not any(name.lower() == "accept" for name in headers):
        headers["Accept"] = SCRAPE_ACCEPT
    try:
        response = fetcher(source.url, method=source.method, headers=headers,
                           body=source.body, timeout=source.timeout, redirects=5, tls=source.tls)
    except FetchError as exc:
        return Poll(source, None, exc.reason, exc.message, exc.duration)
    except Exception as exc:  # a fault here must not cost the run's other sources their poll
        log.error("poll %s: unexpected failure: %s", source.name, scrub(f"{type(exc).__name__}: {exc}"))
        return Poll(source, None, "connect", f"unexpected failure: {type(exc).__name__}", 0.0)
    if not 200 <= response.status <= 299:
        return Poll(source, None, "status", f"status {response.status}, expected 200-299", response.duration,
                    response.status)
    if response.size > len(response.body):
        return Poll(source, None, "parse" if source.format == "prometheus" else "json",
                    f"the response is over {len(response.body)} bytes", response.duration, response.status)
    if source.format == "prometheus":
        try:
            decoded = scraped(source, response.body, response.headers.get("content-type", ""), now_ns)
        except Exception as exc:  # the parsers raise ValueError mostly, but not only
            return Poll(source, None, "parse", f"the response is not a Prometheus exposition: {exc}",
                        response.duration, response.status)
        return Poll(source, decoded, None, f"{len(decoded.items)} metrics", response.duration, response.status)
    assert source.rules is not None
    try:
        document = json.loads(response.body)
    except ValueError as exc:
        return Poll(source, None, "json", f"the response is not JSON: {exc}", response.duration, response.status)
    decoded = source.rules.apply(document, response.headers, now_ns)
    if not decoded.items and decoded.refused:
        first = decoded.refused[0]
        return Poll(source, decoded, "mapping", f"{first.origin}: {first.message}", response.duration, response.status)
    if NO_RULE_MATCHED in decoded.skipped:  # the response changed shape, or the rules never fit it
        return Poll(source, decoded, "mapping", "no rule matched the response", response.duration, response.status)
    return Poll(source, decoded, None, f"{len(decoded.items)} metrics", response.duration, response.status)


def scraped(source: Source, body: bytes, content_type: str, now_ns: int) -> Decoded:
    """The exposition's samples as canonical items (ValueError when it cannot be parsed)."""
    text = body.decode("utf-8")
    if content_type.split(";")[0].strip().lower() == "application/openmetrics-text":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    families = list(text_string_to_metric_families(text))  # the whole body parses, or nothing is kept
    items: list[dict] = []
    origins: list[str] = []
    decoded = Decoded(items, origins=origins)
    for family in families:
        if not _wanted(source, family.name, family.type):
            decoded.skipped["dropped"] = decoded.skipped.get("dropped", 0) + 1
            continue
        description = family.documentation[:1024] or None
        unit = family.unit[:64] or None
        for name, point, labels, time_ns in _points(family, now_ns, decoded):
            tags = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
            items.append(Metric(name, point, time_ns, tags, unit=unit, description=description).to_json())
            origins.append(f"{name}{{{','.join(f'{k}={v!r}' for k, v in tags)}}}")
    return decoded


def _wanted(source: Source, family: str, kind: str) -> bool:
    names = (family, f"{family}_total") if kind == "counter" else (family,)

    def matches(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    return (not source.keep or matches(source.keep)) and not matches(source.drop)


def _time_ns(timestamp: object, now_ns: int) -> int:
    if timestamp is None:
        return now_ns
    if hasattr(timestamp, "sec"):  # OpenMetrics: Timestamp(sec, nsec)
        return int(timestamp.sec) * 1_000_000_000 + int(timestamp.nsec)  # type: ignore[attr-defined]
    return round(float(timestamp) * 1_000_000_000)  # type: ignore[arg-type]


def _points(family, now_ns: int, decoded: Decoded) -> list[tuple[str, Point, dict, int]]:
    """(name, point, labels, time) for each series of the family; non-finite values and
    incomplete histograms or summaries are skipped and counted."""
    def skip(why: str) -> None:
        decoded.skipped[why] = decoded.skipped.get(why, 0) + 1

    points: list[tuple[str, Point, dict, int]] = []
    if family.type in ("histogram", "gaugehistogram", "summary"):
        extra = "quantile" if family.type == "summary" else "le"
        groups: dict[tuple, dict] = {}
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != extra}
            group = groups.setdefault(tuple(sorted(labels.items())), {"labels": labels, "parts": [], "time": None})
            suffix = sample.name[len(family.name):]
            if suffix in ("_sum", "_gsum"):
                group["sum"] = sample.value
            elif suffix in ("_count", "_gcount"):
                group["count"] = sample.value
            elif (suffix == "_bucket" and extra == "le") or (suffix == "" and extra == "quantile"):
                group["parts"].append((float(sample.labels[extra]), sample.value))
            else:
                continue  # _created, exemplars' kin
            group["time"] = group["time"] if group["time"] is not None else sample.timestamp
        for group in groups.values():
            parts = sorted(group["parts"])
            count = group.get("count")
            if count is None and extra == "le" and parts and parts[-1][0] == math.inf:
                count = parts[-1][1]
            total = group.get("sum")
            if count is None or total is None or not math.isfinite(total) or not math.isfinite(count):
                skip(f"{family.type} without _sum or _count")
                continue
            point: Point
            if extra == "quantile":
                point = Summary(int(count), float(total), tuple(Quantile(q, float(v)) for q, v in parts if not math.isnan(v)))
            else:
                buckets, previous = [], 0.0
                for le, cumulative in parts:
                    if le == math.inf:
                        break
                    buckets.append(Bucket(le, int(cumulative - previous)))
                    previous = cumulative
                point = Histogram(int(count), float(total), tuple(buckets))
            points.append((family.name, point, group["labels"], _time_ns(group["time"], now_ns)))
        return points
    for sample in family.samples:
        if sample.name.endswith("_created") and family.type == "counter":
            continue
        if not math.isfinite(sample.value):
            skip("not a finite value")
            continue
        point = Counter(float(sample.value)) if family.type == "counter" else Gauge(sample.value)
        points.append((sample.name, point, dict(sample.labels), _time_ns(sample.timestamp, now_ns)))
    return points


def poll_all(sources: Sequence[Source], now_ns: int, fetcher: Callable[..., Fetched] = fetch) -> list[Poll]:
    """Every source at once, each under its own timeout; each outcome logged."""
    from bridges.scheduled.checks import run_together

    polls = run_together(
        [functools.partial(poll, s, now_ns, fetcher) for s in sources], [s.timeout for s in sources],
        [functools.partial(Poll, s, None, "timeout", f"no answer within {s.timeout:g} s", s.timeout) for s in sources],
    )
    for result in polls:
        log.info("poll %s: %s", result.source.name, result.message if result.up else f"{result.reason}: {result.message}")
    return polls


def decoded_of(polls: Sequence[Poll], location: str, now_ns: int) -> Decoded:
    """What the polls' rules yielded and their poll_up/poll_duration_seconds, as one batch of
    items for the Normalizer, each origin naming its source."""
    origins: list[str] = []
    merged = Decoded([], origins=origins)
    for result in polls:
        if result.decoded is not None:
            name = result.source.name
            merged.items.extend(result.decoded.items)
            origins.extend(f"{name} {result.decoded.origin(i)}" for i in range(len(result.decoded.items)))
            merged.refused.extend(Refused(f"{name} {r.origin}", r.message) for r in result.decoded.refused)
    for metric in metrics_of(polls, location, now_ns):
        merged.items.append(metric.to_json())
        origins.append(f"{metric.tag_dict()['source']} {metric.name}")
    return merged


def metrics_of(polls: Sequence[Poll], location: str, now_ns: int) -> list[Metric]:
    """poll_up and poll_duration_seconds for each poll."""
    metrics = []
    for result in polls:
        tags = {"source": result.source.name, "location": location}
        up_tags = tags if result.reason is None else {**tags, "reason": result.reason}  # up: no reason
        metrics.append(Metric("poll_up", Gauge(1 if result.up else 0), now_ns, tuple(sorted(up_tags.items()))))
        metrics.append(Metric("poll_duration_seconds", Gauge(round(result.duration, 6)), now_ns,
                              tuple(sorted(tags.items())), unit="s"))
    return metrics
