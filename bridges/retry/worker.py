"""The retry path's I/O: the hand-off that queues retryable failures, and the worker that the
queue-triggered function runs for each envelope.

Delivery is at-least-once. A metric a sink could not take now is written to the retry queue
(``BRIDGE_RETRY_QUEUE``) as an envelope made invisible for its backoff; if that write fails the
HTTP answer is 503 and the sender tries again. The worker delivers an envelope's metrics to
its one sink afresh (re-encoded, so the sink's time window and limits apply again), then
queues what is still retryable as the next attempt and dead-letters (``BRIDGE_DEADLETTER_QUEUE``)
what never can be, each with its reason: nothing is retried forever, nothing is dropped silently.
The worker completes normally after queueing; only a crash (or a queue it cannot write) fails the
invocation, so the host retries the message and, after ``maxDequeueCount``, parks it in
``<queue>-poison``.
"""
from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bridges.delivery import selfmetrics
from bridges.delivery.deliver import Delivery
from bridges.delivery.sinks.base import LocalSink, Sink
from bridges.model import Metric
from bridges.retry.decision import AttemptReport, Decision, Policy, decide, next_delay
from bridges.retry.envelopes import Envelope, EnvelopeError, MetricTooLarge, envelopes_for, metrics_of
from bridges.settings import Settings, environment
from bridges.timestamps import NS_PER_SECOND

if TYPE_CHECKING:
    from bridges.queues import Queue

log = logging.getLogger(__name__)


def policy_for(settings: Settings, sink: Sink | LocalSink) -> Policy:
    """The settings' backoff, and the sink's own time window when it has one (the outbox has none)."""
    window = sink.limits.max_age_seconds if isinstance(sink, Sink) else None
    return Policy(settings.retry_base_seconds, settings.retry_cap_seconds, settings.retry_max_attempts,
                  settings.retry_max_age_seconds, window)


def open_queues(settings: Settings, environ=None) -> tuple[Queue, Queue]:
    """(retry queue, dead-letter queue) on AzureWebJobsStorage, or the embedded SQLite queue."""
    from bridges.queues import open_queue

    environ = environment() if environ is None else environ
    return (open_queue(settings.retry_queue, environ, settings.state_dir),
            open_queue(settings.deadletter_queue, environ, settings.state_dir))


class QueueHandoff:
    """The delivery stage's hand-off: retryable failures become first-attempt envelopes."""

    def __init__(self, settings: Settings, queue=None, rng: random.Random | None = None):
        self.settings = settings
        self._queue = queue
        self.rng = rng or random.Random()

    @property
    def queue(self):
        if self._queue is None:  # opened on first failure: a healthy bridge never touches it
            self._queue = open_queues(self.settings)[0]
        return self._queue

    def hand_off(self, sink: str, metrics: Sequence[Metric], reason: str, after: float | None, now_ns: int) -> None:
        delay = next_delay(1, self.settings.retry_base_seconds, self.settings.retry_cap_seconds, self.rng, after)
        try:
            envelopes = envelopes_for(sink, metrics, reason, now_ns, not_before_ns=now_ns + round(delay * NS_PER_SECOND))
            for envelope in envelopes:
                self.queue.send(envelope.to_text(), visibility_timeout=delay)
        except MetricTooLarge as exc:
            raise OSError(errno.EMSGSIZE, f"a metric does not fit a queue message: {exc}") from exc
        except OSError:
            raise
        except Exception as exc:  # the storage SDK's errors: the sender must try again
            raise OSError(errno.EIO, f"the retry queue could not be written ({type(exc).__name__})") from exc


class _Kept:
    """A hand-off that only remembers, so the worker decides what becomes of pending metrics."""

    def __init__(self) -> None:
        self.pending: dict[int, str] = {}
        self.after: float | None = None
        self._ids: dict[int, int] = {}

    def index(self, metrics: Sequence[Metric]) -> None:
        self._ids = {id(m): i for i, m in enumerate(metrics)}

    def hand_off(self, sink: str, metrics: Sequence[Metric], reason: str, after: float | None, now_ns: int) -> None:
        for metric in metrics:
            self.pending[self._ids[id(metric)]] = reason
        if after is not None:
            self.after = max(after, self.after or 0.0)


class RetryWorker:
    """Runs one envelope: deliver to its sink, then queue the next attempt or dead-letter."""

    def __init__(self, settings: Settings, sinks: dict, retry_queue, deadletter_queue,
                 clock: Callable[[], int] = time.time_ns, rng: random.Random | None = None,
                 delivery: Delivery | None = None):
        """``delivery``: the stage the HTTP path uses, so rate limits and health are shared."""
        self.settings = settings
        self.sinks = sinks
        self.delivery = delivery or Delivery(list(sinks.values()), None, timeout_seconds=settings.http_timeout_seconds,
                                             deadline_seconds=settings.delivery_deadline_seconds)
        self.retry_queue = retry_queue
        self.deadletter_queue = deadletter_queue
        self.clock = clock
        self.rng = rng or random.Random()

    def process(self, text: str | bytes) -> Decision:
        """Raises on an unreadable envelope or an unwritable queue: the host retries, then poisons."""
        envelope = Envelope.from_text(text)
        if envelope.attempt == 0:
            raise EnvelopeError(f"retry envelope field 'attempt': 0 is the delivery queue's, not the retry queue's "
                                f"(sink {envelope.sink!r})")
        metrics = metrics_of(envelope)
        now_ns = self.clock()
        sink = self.sinks.get(envelope.sink)
        if sink is None:
            report = AttemptReport(dropped=dict.fromkeys(range(len(metrics)), f"sink {envelope.sink} is not enabled"))
            policy = Policy(1, 1, 1, 1)
        else:
            report = self._attempt(sink, metrics, now_ns)
            policy = policy_for(self.settings, sink)
        decision = decide(envelope, report, now_ns, policy, metrics=metrics, rng=self.rng)
        for following in decision.retry:
            delay = max(0.0, (following.not_before_ns - now_ns) / NS_PER_SECOND)
            self.retry_queue.send(following.to_text(), visibility_timeout=delay)
        for record in decision.dead_letters:
            self.deadletter_queue.send(record.to_text())
        observed = selfmetrics.observation(
            envelope.sink, delivered=decision.delivered, rejected=len(decision.rejected),
            retried=sum(e.count for e in decision.retry),
            dead_lettered=sum(d.envelope.count for d in decision.dead_letters),
        )
        selfmetrics.log_observations([observed], f"retry attempt {envelope.attempt} of envelope {envelope.id}")
        if self.settings.self_metrics and sink is not None:
            selfmetrics.send(self.delivery, [observed], now_ns, only=sink.name)
        return decision

    def _attempt(self, sink, metrics: list[Metric], now_ns: int) -> AttemptReport:
        kept = _Kept()
        kept.index(metrics)
        report = self.delivery.deliver(metrics, now_ns, handoff=kept, only=sink.name)[sink.name]
        refused = {r.index: r.reason for r in report.rejected}
        done = set(refused) | set(kept.pending)
        # Every refusal on a retry is dead-lettered (with its reason) so it can be replayed once fixed.
        return AttemptReport(delivered=[i for i in range(len(metrics)) if i not in done], dropped=refused,
                             pending=kept.pending, retry_after=kept.after)

