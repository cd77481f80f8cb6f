"""The delivery stage: fan accepted metrics out to every enabled sink, alike for all of them.

Each sink runs in its own worker with the shared HTTP session, so one slow or failing sink
never delays or duplicates another. Per sink: encode (pure), send each request, classify the
answer, and act on the outcome: count deliveries, record rejections with reasons, split and
resend what was too large, and hand what may succeed later to the retry hand-off. Sinks never
sleep, loop or queue: this module does, for all of them.

Nothing accepted is lost silently: a metric ends as delivered, rejected (with the reason, in
the HTTP answer), or pending (handed off durably). If a hand-off itself fails, ``deliver``
raises ``DeliveryError`` and the caller answers 503 so the sender tries again (at-least-once).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol

from bridges.delivery import transport
from bridges.delivery.auth import TokenError
from bridges.delivery.sinks.base import (
    Delivered,
    Drop,
    Encoded,
    LocalSink,
    Partial,
    Rejection,
    Request,
    Resend,
    Retry,
    Sink,
)
from bridges.masking import scrub
from bridges.model import Metric

log = logging.getLogger(__name__)
MAX_REPORTED_REJECTIONS = 100
MAX_RESENDS = 3  # re-encodings of the same metrics without splitting (a sink changing its mode)
QUIET_SECONDS = 30.0  # a sink that left a request unanswered is not tried by new deliveries this long


class DeliveryError(Exception):
    """Accepted metrics could be neither delivered nor kept: the sender must try again."""

    def __init__(self, sink: str, reason: str):
        super().__init__(f"{sink}: {reason}")
        self.sink = sink
        self.reason = reason


class RetryHandoff(Protocol):
    """Where retryable failures go (``bridges.retry.worker.QueueHandoff``: the retry queue). Raises
    OSError when it cannot keep them."""

    def hand_off(self, sink: str, metrics: Sequence[Metric], reason: str, after: float | None, now_ns: int) -> None: ...


@dataclass
class SinkReport:
    delivered: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    rejected_without_detail: int = 0
    pending: int = 0
    pending_reasons: list[str] = field(default_factory=list)
    conversions: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # how long this sink's delivery took

    def to_json(self, original_index: Callable[[int], object] = lambda i: i) -> dict:
        rejected = len({r.index for r in self.rejected}) + self.rejected_without_detail
        report: dict = {"delivered": self.delivered, "rejected": rejected, "pending": self.pending}
        if self.rejected:
            first_reasons: dict[int, str] = {}
            for r in self.rejected:  # a metric refused on several lines is listed once
                first_reasons.setdefault(r.index, r.reason)
            report["rejections"] = [
                {"index": original_index(i), "reason": reason}
                for i, reason in list(first_reasons.items())[:MAX_REPORTED_REJECTIONS]
            ]
        if self.pending_reasons:
            report["pending_reasons"] = sorted(set(self.pending_reasons))
        if self.conversions:
            report["conversions"] = dict(self.conversions)
        return report


class RateLimiter:
    """At most ``per_minute`` requests in any sliding minute, per process."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def wait_needed(self) -> float:
        """0 when a request may go now (and counts it), else the seconds until one may."""
        with self._lock:
            now = self.clock()
            while self._sent and now - self._sent[0] >= 60:
                self._sent.popleft()
            if len(self._sent) < self.per_minute:
                self._sent.append(now)
                return 0.0
            return 60 - (now - self._sent[0])


def _scrubbed(outcome):
    """The outcome with any secret a backend echoed masked out of its reasons."""
    if isinstance(outcome, Partial):
        return replace(outcome, rejected=tuple(Rejection(r.index, scrub(r.reason)) for r in outcome.rejected))
    if isinstance(outcome, (Retry, Drop, Resend)):
        return replace(outcome, reason=scrub(outcome.reason))
    return outcome


class Delivery:
    def __init__(
        self,
        sinks: Sequence[Sink | LocalSink],
        handoff: RetryHandoff | None,  # None: each deliver() call names its own (the retry worker)
        *,
        timeout_seconds: float = 10.0,
        deadline_seconds: float = 60.0,
        session_factory: Callable = transport.shared_session,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sinks = list(sinks)
        self.handoff = handoff
        self.timeout_seconds = timeout_seconds
        self.deadline_seconds = deadline_seconds
        self.clock = clock
        self.session_factory = session_factory
        self.misconfigured: dict[str, dict] = {}  # sink -> {"code", "hint"}: our words only, for health
        self._quiet_until: dict[str, float] = {}  # sink -> clock() before which new deliveries skip it
        self._limiters = {
            s.name: RateLimiter(limit, clock)
            for s in self.sinks
            if isinstance(s, Sink) and (limit := s.limits.max_requests_per_minute)
        }
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sinks)), thread_name_prefix="sink")

    @property
    def sink_names(self) -> list[str]:
        return [sink.name for sink in self.sinks]

    def deliver(self, metrics: Sequence[Metric], now_ns: int, handoff: RetryHandoff | None = None,
                only: str | None = None, per_sink: Mapping[str, Sequence[Metric]] | None = None,
                ) -> dict[str, SinkReport]:
        """Per-sink reports; raises DeliveryError when metrics could be neither delivered nor kept.

        ``handoff`` replaces the stage's own for this call (the retry worker decides itself what
        becomes of pending metrics; the bridge's own metrics are never queued); ``only`` names
        the one sink to deliver to. Rate limits and health state stay shared either way.

        A sink that leaves a request unanswered (timeout, reset, refused connection) gets no
        more requests in this delivery, and none from new deliveries for QUIET_SECONDS: their
        metrics go straight to the retry queue, so one hanging backend costs one timeout, not
        one per request, and never holds up the others' next batches. A delivery to ``only``
        one sink (the retry function's, one envelope bounded by the deadline) tries every
        request: it is how a quiet sink is found answering again.

        ``per_sink``: each sink's own metrics instead (routes declared); a sink with none is
        not called, and its report's indexes point into its own list.
        """
        handoff = handoff or self.handoff
        sinks = [s for s in self.sinks if (only is None or s.name == only) and (per_sink is None or per_sink.get(s.name))]

        def share(sink) -> Sequence[Metric]:
            return metrics if per_sink is None else per_sink[sink.name]

        probe = only is not None
        if len(sinks) == 1:
            outcomes = [self._guarded(sinks[0], share(sinks[0]), now_ns, handoff, probe)]
        else:
            outcomes = list(self._pool.map(lambda s: self._guarded(s, share(s), now_ns, handoff, probe), sinks))
        reports = {}
        for sink, (report, failure) in zip(sinks, outcomes, strict=True):
            if failure is not None:
                raise failure
            reports[sink.name] = report
        return reports

    def _guarded(self, sink, metrics: Sequence[Metric], now_ns: int, handoff,
                 probe: bool) -> tuple[SinkReport, DeliveryError | None]:
        started = time.perf_counter()
        try:
            if isinstance(sink, LocalSink):
                report = SinkReport(delivered=sink.deliver(metrics, now_ns))
            else:
                report = self._deliver_to(sink, metrics, now_ns, handoff, probe)
            report.seconds = time.perf_counter() - started
            return report, None
        except OSError as exc:
            log.error("sink %s could not take the metrics: %s", sink.name, exc.strerror or type(exc).__name__)
            return SinkReport(), DeliveryError(sink.name, exc.strerror or type(exc).__name__)

    def _deliver_to(self, sink: Sink, metrics: Sequence[Metric], now_ns: int, handoff, probe: bool) -> SinkReport:
        report = SinkReport()
        quiet = None if probe or self.clock() >= self._quiet_until.get(sink.name, 0.0) else (
            f"{sink.name} left a request unanswered in the last {QUIET_SECONDS:g} s: not tried now")
        pending: dict[str, tuple[list[int], float | None]] = {}
        delivered: set[int] = set()  # sets: a metric's lines may travel in more than one request

        def wait(items: Sequence[int], reason: str, after: float | None) -> None:
            waiting, latest = pending.setdefault(reason, ([], after))
            waiting.extend(items)
            pending[reason] = (waiting, max(filter(None, (latest, after)), default=None))

        try:
            queue = deque((request, 0) for request in self._encode(sink, metrics, range(len(metrics)), now_ns, report))
            session = self.session_factory()
            deadline = self.clock() + self.deadline_seconds
            while queue:
                request, resends = queue.popleft()
                if quiet:
                    wait(request.items, quiet, None)
                    continue
                if self.clock() >= deadline:
                    wait(request.items, f"delivery deadline of {self.deadline_seconds:g} s reached", None)
                    continue
                delay = self._limiters[sink.name].wait_needed() if sink.name in self._limiters else 0.0
                if delay:
                    wait(request.items, f"client-side rate limit of {sink.limits.max_requests_per_minute} requests a minute", delay)
                    continue
                try:
                    sent = sink.authorize(request)
                except TokenError as exc:  # no identity yet, or no role: keep them and say so in health
                    self._misconfigured(sink.name, "no_token", exc.hint, scrub(exc.reason))
                    wait(request.items, scrub(exc.reason), None)
                    continue
                reply = transport.send(session, sent, self.timeout_seconds)
                outcome = _scrubbed(sink.classify(request, reply))
                if reply.error is not None:  # no answer: spare the next deliveries (and this one) the wait
                    self._quiet_until[sink.name] = self.clock() + QUIET_SECONDS
                    if not probe:
                        quiet = f"{sink.name} left a request unanswered ({type(reply.error).__name__}): not tried again now"
                if isinstance(outcome, (Delivered, Partial)):
                    self.misconfigured.pop(sink.name, None)  # it works (again)
                    self._quiet_until.pop(sink.name, None)
                if isinstance(outcome, Delivered):
                    delivered.update(request.items)
                elif isinstance(outcome, Partial):
                    report.rejected.extend(outcome.rejected)
                    report.rejected_without_detail += outcome.unidentified
                    delivered.update(request.items)
                elif isinstance(outcome, Retry):
                    wait(request.items, outcome.reason, outcome.after)
                elif isinstance(outcome, Drop):
                    report.rejected.extend(Rejection(i, outcome.reason) for i in request.items)
                    if outcome.misconfigured:
                        self._misconfigured(sink.name, f"http_{reply.status}", outcome.hint, outcome.reason)
                elif isinstance(outcome, Resend):
                    queue.extendleft(reversed(self._resend(sink, metrics, request, outcome, resends, now_ns, report)))
        except Exception:  # a bug in a sink must not lose what was accepted
            log.exception("sink %s failed unexpectedly; its undelivered metrics are kept as pending", sink.name)
            done = {r.index for r in report.rejected}
            delivered.clear()  # unknown: re-sending may duplicate, never lose
            wait([i for i in range(len(metrics)) if i not in done], "internal error in the sink (see the log)", None)
        waiting: set[int] = set()
        for reason, (items, after) in pending.items():
            items = [i for i in dict.fromkeys(items) if i not in waiting]
            _hand_off(handoff, sink.name, [metrics[i] for i in items], reason, after, now_ns)
            waiting.update(items)
            report.pending_reasons.append(reason)
        refused = {r.index for r in report.rejected}
        report.pending = len(waiting)
        report.delivered = max(0, len(delivered - refused - waiting) - report.rejected_without_detail)
        if report.rejected:
            log.warning("sink %s rejected %d metrics, e.g. %s", sink.name, len(report.rejected), report.rejected[0].reason)
        return report

    def _encode(self, sink: Sink, metrics: Sequence[Metric], indexes: Sequence[int], now_ns: int, report: SinkReport,
                resend: bool = False) -> list[Request]:
        """Encode a subset of the metrics, mapping the sink's indexes back to ours (conversions are
        counted on the first encoding only, so a resend does not count them twice)."""
        indexes = list(indexes)
        encoded: Encoded = sink.encode([metrics[i] for i in indexes], now_ns)
        report.rejected.extend(Rejection(indexes[r.index], r.reason) for r in encoded.rejected)
        if not resend:
            report.conversions.update(encoded.conversions)
        for request in encoded.requests:
            request.items = tuple(indexes[i] for i in request.items)
            request.lines = tuple(None if i is None else indexes[i] for i in request.lines)
        return encoded.requests

    def _resend(self, sink, metrics, request: Request, outcome: Resend, resends: int, now_ns: int, report) -> list:
        items = list(request.items)
        if outcome.split:
            if len(items) == 1:
                report.rejected.append(Rejection(items[0], f"too large for {sink.name} even alone ({outcome.reason})"))
                return []
            half = len(items) // 2
            parts = [items[:half], items[half:]]
            return [(r, 0) for part in parts for r in self._encode(sink, metrics, part, now_ns, report, resend=True)]
        if resends >= MAX_RESENDS:
            report.rejected.extend(Rejection(i, f"gave up after {MAX_RESENDS} resends: {outcome.reason}") for i in items)
            return []
        return [(r, resends + 1) for r in self._encode(sink, metrics, items, now_ns, report, resend=True)]

    def _misconfigured(self, sink: str, code: str, hint: str, reason: str) -> None:
        """Health gets a reason code and our hint; the detail, which may quote the backend, is logged."""
        if self.misconfigured.get(sink) != {"code": code, "hint": hint}:
            log.warning("sink %s is misconfigured (%s): %s", sink, code, reason)
        self.misconfigured[sink] = {"code": code, "hint": hint}

    def status(self) -> dict[str, dict]:
        statuses = {}
        for sink in self.sinks:
            status = sink.status()
            if sink.name in self.misconfigured:
                status = {**status, "misconfigured": self.misconfigured[sink.name]}
            statuses[sink.name] = status
        return statuses


def _hand_off(handoff: RetryHandoff, sink: str, metrics: Sequence[Metric], reason: str, after: float | None,
              now_ns: int) -> None:
    try:
        handoff.hand_off(sink, metrics, reason, after, now_ns)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        raise OSError(exc.errno, f"could not keep {len(metrics)} pending metrics: {why}") from exc
    log.warning("sink %s: %d metrics pending (%s)", sink, len(metrics), reason)
