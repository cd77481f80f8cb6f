"""Polled sources: JSON APIs fetched on a schedule and mapped into metrics by mapping rules.

Declared in ``schemas/sources.schema.json`` form (BRIDGE_SOURCES_FILE or BRIDGE_SOURCES). One
timer function runs on SOURCES_SCHEDULE and polls, each run, the sources whose own schedule
fired since the function's previous run. One function rather than one per schedule, because
the host reads schedules when it indexes the app: a function per source would need a new
deployment for every source added, while the sources file is only a setting.

The response's JSON goes through the source's rules (``mapping`` names a rule file, or holds
the rules) as a webhook's body would, the response headers as its headers. Each poll also
yields ``poll_up`` (1 or 0, reason tag when 0: timeout, dns, connect, tls, status, json,
mapping: the rules refused everything, or no rule matched) and ``poll_duration_seconds``, tagged source and location, so a source that stopped
answering is seen.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bridges.formats import Decoded, Refused
from bridges.masking import scrub
from bridges.model import Gauge, Metric
from bridges.scheduled.declared import load_declared, request_body, resolve_headers, reveal_headers, tls_options
from bridges.scheduled.probe import Fetched, FetchError, TlsOptions, fetch
from bridges.scheduled.schedules import Schedule, ScheduleError
from bridges.settings import Settings, SettingsError
from bridges.webhooks.rules import NO_RULE_MATCHED, SourceRules

DEFAULT_TIMEOUT_SECONDS = 10.0
EARLY_RUN_TOLERANCE = timedelta(milliseconds=500)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    rules: SourceRules
    method: str = "GET"
    headers: Mapping[str, object] = field(default_factory=dict)  # values: text or Secret
    body: bytes | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    tls: TlsOptions = TlsOptions()
    schedule: Schedule | None = None  # None: every run of the polling function


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

    mapping = entry["mapping"]
    if isinstance(mapping, str):
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
        tls=tls_options(entry.get("tls", {}), where), schedule=schedule,
    )


def due(sources: Sequence[Source], timer: Schedule, now: datetime) -> list[Source]:
    """The sources whose schedule fired within the run's window: after the polling function's
    firing before this run, up to this run's firing (so each firing is polled once). A run up to
    EARLY_RUN_TOLERANCE before a firing (clocks differ) counts as that firing's."""
    previous, tick = timer.window(now + EARLY_RUN_TOLERANCE)
    return [s for s in sources if s.schedule is None or s.schedule.next_after(previous) <= tick]


def poll(source: Source, now_ns: int, fetcher: Callable[..., Fetched] = fetch) -> Poll:
    """Fetch the source and read its JSON through its rules."""
    try:
        response = fetcher(source.url, method=source.method, headers=reveal_headers(source.headers),
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
        return Poll(source, None, "json", f"the response is over {len(response.body)} bytes", response.duration,
                    response.status)
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
