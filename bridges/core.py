"""The bridge's request handling as plain functions on plain data.

Triggers turn a host request or a timer tick into a call of ``Bridge``: ``ingest`` (canonical
metrics), ``receive`` (a vendor format), ``webhook``, ``health``, ``run_checks`` and
``poll_sources``; the returned ``Reply`` becomes a host response. Accepted metrics go to the
delivery queue (or, inline, to every sink) through ``process``; nothing here knows the host.
The clock, the delivery stage and the delivery queue are injected so tests control them.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from bridges import __version__
from bridges.delivery import selfmetrics
from bridges.delivery.deliver import Delivery, DeliveryError
from bridges.delivery.sinks import build_sinks
from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, canonical, decompress
from bridges.ingest.normalize import Normalized, Normalizer
from bridges.replies import RETRY_AFTER_SECONDS, Reply
from bridges.retry.envelopes import MetricTooLarge
from bridges.retry.worker import QueueHandoff
from bridges.scheduled.probe import Fetched, fetch
from bridges.settings import Settings, SettingsError

if TYPE_CHECKING:
    from bridges.model import Metric
    from bridges.routing import Routed, Router
    from bridges.scheduled.checks import Check, CheckResult
    from bridges.scheduled.polling import Poll, Source
    from bridges.webhooks.handler import Webhooks

STALE_QUEUE_SECONDS = 300  # health calls the delivery queue stuck when a message waited longer
MAX_REPORTED_PROBLEMS = 100
log = logging.getLogger(__name__)


class InputFormat(Protocol):
    """A vendor wire format in (a module such as ``bridges.formats.dynatrace``): pure functions."""

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded: ...

    def answer(self, outcome: Outcome) -> Answer: ...

    def refuse(self, error: BodyError) -> Answer: ...


def _name(fmt: object) -> str:
    return getattr(fmt, "NAME", None) or getattr(fmt, "__name__", type(fmt).__name__).rsplit(".", 1)[-1]


def _natural(origin: object) -> tuple:
    """Sort key putting 'timeseries[10]' after 'timeseries[9]', and line 10 after line 9."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(origin)))


def _chosen(declared: list, names: Sequence[str], what: str) -> list:
    """The declared entries named (all when none are); SettingsError for an unknown name."""
    if not names:
        return list(declared)
    known = {entry.name: entry for entry in declared}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SettingsError(f"--name: no {what} named {unknown[0]!r}; declared: {', '.join(known) or 'none'}")
    return [known[name] for name in names]


def _unkept(exc: DeliveryError) -> Reply:
    """503: the sender must send again (delivery is at-least-once)."""
    return Reply(503, {"error": f"accepted metrics could be neither delivered nor kept ({exc}); send again"},
                 {"Retry-After": str(RETRY_AFTER_SECONDS)})


def misconfigured(exc: SettingsError) -> Reply:
    """503 for every HTTP function while an app setting is bad, naming it (never its value if it
    is a secret: SettingsError messages never hold one). Shaped as health so probes read it."""
    return Reply(503, {"status": "misconfigured", "version": __version__, "problems": [str(exc)],
                       "error": f"the app's settings are not valid: {exc}; fix the app setting"},
                 {"Retry-After": str(RETRY_AFTER_SECONDS)})


def refused_as(fmt: InputFormat, reply: Reply) -> Reply:
    """A refusal of the bridge's own (503 not kept or misconfigured, 413) in the format's shape,
    its headers (Retry-After) kept: a vendor's client reads its own error bodies."""
    assert isinstance(reply.body, dict)  # such replies carry their error
    status, answer, headers = fmt.refuse(BodyError(reply.status, reply.body["error"]))
    return Reply(status, answer, {**headers, **reply.headers})


def _too_large(exc: MetricTooLarge, where: Callable[[int], str]) -> Reply:
    """413: one metric cannot fit a delivery-queue message even alone; nothing was kept."""
    return Reply(413, {"error": f"{where(exc.index)} is too large to keep for delivery (its tags and texts take "
                                "more than a 64 KiB queue message even compressed); nothing was accepted"})


class Bridge:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], int] = time.time_ns,
        delivery: Delivery | None = None,
        normalizer: Normalizer | None = None,
        fetcher: Callable[..., Fetched] = fetch,
        delivery_queue=None,
    ):
        """``delivery_queue``: where accepted metrics wait when BRIDGE_DELIVERY is queued
        (default: BRIDGE_DELIVERY_QUEUE on AzureWebJobsStorage, or the embedded SQLite queue)."""
        self.settings = settings
        self._delivery_queue = delivery_queue
        self.clock = clock
        self.fetcher = fetcher  # the HTTP client of checks and polled sources
        self.delivery = delivery or Delivery(
            build_sinks(settings), QueueHandoff(settings), timeout_seconds=settings.http_timeout_seconds,
            deadline_seconds=settings.delivery_deadline_seconds,
        )
        self.normalizer = normalizer or Normalizer()

    def parse(self, body: bytes, content_type: str | None, content_encoding: str | None = None) -> Normalized:
        """Decode, validate and normalize a canonical body; raises BodyError for the whole body."""
        decoded = canonical.decode(self.inflate(body, content_encoding), content_type)
        self._check_count(len(decoded.items))
        return self.normalizer.normalize(
            decoded.items, self.clock(), decoded.item_pointer, check_unicode=decoded.may_hold_surrogates
        )

    def inflate(self, body: bytes, content_encoding: str | None, own_encodings: frozenset = frozenset()) -> bytes:
        """The body within BRIDGE_MAX_BODY_BYTES, gzip undone (a format's own encodings are its
        decoder's): the one place every route's body is inflated."""
        limit = self.settings.max_body_bytes
        if len(body) > limit:
            raise BodyError(413, f"the body is over the limit of {limit} bytes (BRIDGE_MAX_BODY_BYTES)")
        if (content_encoding or "").strip().lower() in own_encodings:
            return body
        return decompress(body, content_encoding, limit)

    def _check_count(self, count: int, empty_allowed: bool = False) -> None:
        if count > self.settings.max_items:
            raise BodyError(413, f"{count} metrics is more than the limit of {self.settings.max_items} (BRIDGE_MAX_ITEMS)")
        if count == 0 and not empty_allowed:
            raise BodyError(400, "the body holds no metrics")

    def ingest(self, body: bytes, content_type: str | None, content_encoding: str | None = None) -> Reply:
        """POST /api/metrics: 202 when at least one metric was accepted and handed on."""
        try:
            result = self.parse(body, content_type, content_encoding)
        except BodyError as exc:
            log.info("ingest refused the body: %d %s", exc.status, exc.message)
            return Reply(exc.status, exc.to_json())
        log.info("ingest: %d accepted, %d rejected", len(result.metrics), result.rejected)
        answer = {
            "accepted": len(result.metrics),
            "rejected": result.rejected,
            "errors": [error.to_json() for error in result.errors],
        }
        if result.errors_not_shown:
            answer["errors_not_shown"] = result.errors_not_shown
        if not result.metrics:
            return Reply(400, answer)
        try:
            answer["delivery"] = self._deliver(result.metrics, result.indexes.__getitem__, "ingest")
        except DeliveryError as exc:
            return _unkept(exc)
        except MetricTooLarge as exc:
            return _too_large(exc, lambda i: f"the metric at /{result.indexes[i]}")
        return Reply(202, answer)

    def receive(self, fmt: InputFormat, body: bytes, content_type: str | None, content_encoding: str | None = None,
                params: Mapping[str, str] | None = None) -> Reply:
        """A vendor-format request (Dynatrace lines, remote-write...): the format decodes and
        answers in its vendor's shape; validation and delivery are the same as for /api/metrics."""
        own: frozenset[str] = getattr(fmt, "OWN_ENCODINGS", frozenset())
        try:
            raw = self.inflate(body, content_encoding, own)
            decoded = fmt.decode(raw, content_type, params or {}, self.settings.max_body_bytes)
            # Vendors' clients send requests without points (Prometheus's metadata, an SDK's
            # report with nothing to count): the format answers those as its server does.
            self._check_count(len(decoded.items) + len(decoded.refused), empty_allowed=True)
        except BodyError as exc:
            log.info("%s refused the body: %d %s", _name(fmt), exc.status, exc.message)
            return Reply(*fmt.refuse(exc))
        outcome = self.process(decoded, _name(fmt))
        if isinstance(outcome, Reply):
            return refused_as(fmt, outcome)
        return Reply(*fmt.answer(outcome))

    def process(self, decoded: Decoded, route: str) -> Outcome | Reply:
        """Validate decoded items and deliver the accepted ones; a 503 Reply when they could
        be neither delivered nor kept, 413 when one cannot be kept on the delivery queue."""
        result = self.normalizer.normalize(decoded.items, self.clock(), lambda i: "",
                                           check_unicode=decoded.may_hold_surrogates)
        problems = list(decoded.refused) + [
            Refused(decoded.origin(error.index), f"{error.pointer}: {error.message}" if error.pointer else error.message)
            for error in result.errors
        ]
        problems.sort(key=lambda problem: _natural(problem.origin))
        rejected = len(decoded.refused) + result.rejected
        outcome = Outcome(
            accepted=len(result.metrics), rejected=rejected, problems=problems[:MAX_REPORTED_PROBLEMS],
            units=len(decoded.items) + len(decoded.refused) + sum(decoded.skipped.values()), skipped=dict(decoded.skipped),
        )
        log.info("%s: %d accepted, %d rejected, skipped %s", route, outcome.accepted, rejected, decoded.skipped or "none")
        if result.metrics:
            try:
                outcome.delivery = self._deliver(result.metrics, lambda i: decoded.origin(result.indexes[i]), route)
            except DeliveryError as exc:
                return _unkept(exc)
            except MetricTooLarge as exc:
                return _too_large(exc, lambda i: f"the metric from {decoded.origin(result.indexes[i])}")
        return outcome

    @property
    def delivery_queue(self):
        if self._delivery_queue is None:  # opened on first use: a timer with nothing to send never touches it
            from bridges.queues import open_queue
            from bridges.settings import environment

            self._delivery_queue = open_queue(self.settings.delivery_queue, environment(), self.settings.state_dir)
        return self._delivery_queue

    @cached_property
    def router(self) -> Router:
        """The routing declaration (BRIDGE_ROUTES_FILE or BRIDGE_ROUTES) compiled once, with its
        cardinality guards and counts; without one every sink gets every metric. A bad one raises
        SettingsError (start-up reports it as it does every bad setting)."""
        from bridges.routing import routes_of

        return routes_of(self.settings)

    def _deliver(self, metrics: list, origin_of: Callable[[int], object], route: str) -> dict:
        """Keep the metrics on the delivery queue (``{"queued": N}``), or with BRIDGE_DELIVERY
        inline deliver to every sink: the per-sink reports, each rejection named by its origin.

        With routes declared, each metric is routed (and processed for each sink) once, first:
        each sink's share is kept as envelopes named for it, or delivered to it alone (a report's
        indexes then point into that share), and the answer's ``routing`` says how many each
        sink was sent, how many no route matched and how many a sink's keep/drop removed."""
        now_ns = self.clock()
        routed = self._routed(metrics, origin_of, route, now_ns)
        counted: dict[str, Any] = {} if routed is None else {"routing": {
            "sinks": {name: len(share) for name, share in routed.per_sink.items()},
            "unrouted": routed.unrouted, "dropped": routed.dropped}}
        if self.settings.delivery == "queued":
            from bridges.delivery.queued import enqueue

            messages = enqueue(self.delivery_queue, metrics, now_ns, shares=routed)
            log.info("%s: %d metrics queued for delivery in %d messages%s", route, len(metrics), messages,
                     f" ({counted['routing']})" if counted else "")
            return {"queued": len(metrics), **counted}
        reports = self.delivery.deliver(metrics, now_ns, per_sink=None if routed is None else routed.per_sink)
        self.observe(reports, len(metrics), route)

        def origin_in(sink: str) -> Callable[[int], object]:
            if routed is None:
                return origin_of
            places = routed.indexes[sink]
            return lambda i: origin_of(places[i])

        return {**{name: report.to_json(origin_in(name)) for name, report in reports.items()}, **counted}

    def _routed(self, metrics: list, origin_of: Callable[[int], object], route: str, now_ns: int) -> Routed | None:
        """Each enabled sink's share by the routes declared; None without a declaration."""
        if not self.router.declared:
            return None
        from bridges.routing import Origin

        routed = self.router.route(metrics, Origin.of_each(route, origin_of), self.delivery.sink_names, now_ns)
        if routed.unrouted:
            log.warning("%s: %d metrics matched no route and go to no sink (BRIDGE_ROUTES)", route, routed.unrouted)
        return routed

    def observe(self, reports: dict, accepted: int, route: str) -> None:
        """Log (and, with BRIDGE_SELF_METRICS, send) what each sink made of this request."""
        records = [
            selfmetrics.observation(name, report.seconds, accepted=accepted, delivered=report.delivered,
                                    rejected=report.to_json()["rejected"], retried=report.pending)
            for name, report in reports.items()
        ]
        selfmetrics.log_observations(records, route)
        if self.settings.self_metrics:
            selfmetrics.send(self.delivery, records, self.clock())

    @cached_property
    def checks(self) -> list[Check]:
        """The declared synthetic checks (read once; a bad declaration raises SettingsError)."""
        from bridges.scheduled.checks import load_checks
        from bridges.settings import environment

        return load_checks(self.settings, environment())

    @cached_property
    def polled_sources(self) -> list[Source]:
        """The declared polled sources, their named rule files loaded as the webhooks' are."""
        from bridges.scheduled.polling import load_sources
        from bridges.settings import environment
        from bridges.webhooks.handler import load_sources as load_rule_files

        return load_sources(self.settings, environment(), lambda: load_rule_files(self.settings))

    def run_checks(self, names: Sequence[str] = (), deliver: bool = True) -> tuple[list[CheckResult], list[Metric]]:
        """Run the checks (all, or those named) at once; their metrics go to every sink.
        Raises DeliveryError when the metrics could be neither delivered nor kept."""
        from bridges.scheduled import checks

        chosen = _chosen(self.checks, names, "check")
        if not chosen:  # none declared: the timer still fires, quietly
            return [], []
        now_ns = self.clock()
        results = checks.run_checks(chosen, self.fetcher)
        metrics = checks.metrics_of(results, self.settings.location, now_ns)
        down = [f"{r.check.name} ({r.reason}: {r.message})" for r in results if not r.up]
        log.info("checks: %d run, %d down%s", len(results), len(down), (": " + "; ".join(down)) if down else "")
        if deliver and metrics:
            self._deliver(metrics, lambda i: f"check {metrics[i].tag_dict()['check']}", "checks")
        return results, metrics

    def poll_sources(self, now: datetime | None = None, names: Sequence[str] = (),
                     deliver: bool = True) -> tuple[list[Poll], Normalized]:
        """Poll the sources named, else those due at ``now`` by their schedules, at once; the
        metrics their rules yield and poll_up/poll_duration_seconds go to every sink.
        Raises DeliveryError when the metrics could be neither delivered nor kept."""
        from bridges.scheduled import polling
        from bridges.scheduled.schedules import Schedule

        sources = _chosen(self.polled_sources, names, "source") if names else polling.due(
            self.polled_sources, Schedule(self.settings.sources_schedule), now or datetime.now(UTC))
        now_ns = self.clock()
        polls = polling.poll_all(sources, now_ns, self.fetcher)
        merged = polling.decoded_of(polls, self.settings.location, now_ns)
        normalized = self.normalizer.normalize(merged.items, now_ns, lambda i: "")
        for error in normalized.errors:
            log.warning("poll: %s refused: %s %s", merged.origin(error.index), error.pointer, error.message)
        for refused in merged.refused:
            log.warning("poll: %s refused: %s", refused.origin, refused.message)
        if deliver and normalized.metrics:
            self._deliver(normalized.metrics, lambda i: merged.origin(normalized.indexes[i]), "poll")
        return polls, normalized

    @cached_property
    def webhooks(self) -> Webhooks:
        from bridges.webhooks.handler import Webhooks

        return Webhooks(self)

    def webhook(self, source: str, body: bytes, headers: Mapping[str, str], method: str = "POST",
                params: Mapping[str, str] | None = None) -> Reply:
        """POST /api/webhooks/{source}: any JSON webhook through the source's mapping rules;
        OPTIONS: the CloudEvents webhook validation. ``params`` (the query parameters) reach only
        the signature check (a shared secret in the URL, as Event Grid sends it)."""
        return self.webhooks.handle(source, body, headers, method, params)

    def health(self) -> Reply:
        """GET /api/health: version, sinks and configuration problems; never a secret."""
        from bridges.retry.deadletters import open_retry_queues, retry_status
        from bridges.settings import environment, unset_bindings

        sinks = self.delivery.status()
        problems = list(self.settings.sink_problems) + unset_bindings(environment())
        for name, sink in sinks.items():
            if sink.get("writable") is False:
                problems.append(f"{name}: {sink.get('directory')} is not writable")
            if sink.get("misconfigured"):
                problems.append(f"{name}: {sink['misconfigured']['code']}: {sink['misconfigured']['hint']}")
        try:  # the queues are opened once for both reports
            queues = open_retry_queues(self.settings, environment())
        except ValueError as exc:  # e.g. an unresolved Key Vault reference in AzureWebJobsStorage
            delivery, retry = self._delivery_status(None, problems, str(exc)), {"error": str(exc)}
        else:
            delivery = self._delivery_status(queues.delivery_poison, problems)
            retry = retry_status(queues.retry, queues.deadletter, queues.poison)
        webhooks, routing = self._webhook_status(problems), self._routing_status(problems)  # may add problems
        answer = {"status": "degraded" if problems else "ok", "version": __version__, "sinks": sinks,
                  "problems": problems, "delivery": delivery, "retry": retry, "webhooks": webhooks, "routing": routing}
        return Reply(200, answer)

    def _delivery_status(self, poison, problems: list, unusable: str | None = None) -> dict:
        """The delivery mode and, when queued, the delivery queue's depth and oldest message's
        age; a message waiting longer than STALE_QUEUE_SECONDS is a problem (is the delivery
        function running?), as is anything in its poison queue."""
        from bridges.delivery.queued import queue_status
        from bridges.queues import poison_name

        if self.settings.delivery != "queued":
            return {"mode": self.settings.delivery}
        name = self.settings.delivery_queue
        status: dict[str, Any] = ({"queue": name, "error": unusable} if unusable
                                  else queue_status(self.delivery_queue, poison, self.clock()))
        if "error" in status:
            problems.append(f"delivery queue {name}: {status['error']}")
        elif status.get("oldest_seconds", 0) > STALE_QUEUE_SECONDS:
            problems.append(f"delivery queue {name}: its oldest message has waited {status['oldest_seconds']:.0f} s "
                            "(is the delivery function running?)")
        if status.get("poison", {}).get("depth"):
            problems.append(f"delivery queue {name}: {status['poison']['depth']} messages in {poison_name(name)} "
                            "(python -m bridges deadletter list --delivery-poison)")
        return {"mode": "queued", **status}

    def _routing_status(self, problems: list) -> dict:
        """Whether routes are declared, and since start: metrics no route matched, and per sink
        those its keep/drop removed, renames refused and tag sets folded by its cardinality guard
        (by metric name). Routes to sinks that are not enabled are problems."""
        try:
            router = self.router
        except SettingsError as exc:
            problems.append(str(exc))
            return {"declared": False, "error": str(exc)}
        if not router.declared:
            return {"declared": False}
        problems.extend(router.problems(self.delivery.sink_names))
        return {"declared": True, **router.health()}

    def _webhook_status(self, problems: list) -> dict:
        from bridges.webhooks.rule_files import MappingError

        try:
            return self.webhooks.status()
        except MappingError as exc:
            problems.append(f"webhooks: {exc}")
            return {}

