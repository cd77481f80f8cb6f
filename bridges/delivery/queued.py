"""The queued delivery path: answer the sender at once, deliver from the queue in batches.

An HTTP function validates, keeps the accepted metrics on the delivery queue
(``BRIDGE_DELIVERY_QUEUE``) as envelopes for every sink (sink ``*``, attempt 0, split at the
64 KiB message limit: ``schemas/retry-envelope.schema.json``) and answers; a backend that hangs
never delays an answer. The delivery function is triggered by one message (the Functions host
hands a Python queue function one message per invocation), takes up to
``BRIDGE_DELIVERY_BATCH - 1`` more from the same queue, waiting up to
``BRIDGE_DELIVERY_LINGER_SECONDS`` for them, merges their metrics and delivers them once to every
sink: a thousand small webhooks become a few requests per backend, and Azure Monitor's one-minute
pre-aggregation works across them. With routes declared (BRIDGE_ROUTES, ``bridges.routing``) the
metrics are routed and processed before they are kept, and each sink's share is kept as
envelopes named for it (attempt 0): the delivery function gives each sink its own share. host.json runs one invocation per queue and instance
(``batchSize`` 1, ``newBatchThreshold`` 0), so batches are not split between rival invocations;
the platform adds instances as the queue grows.

Per-sink isolation: what a sink cannot take now goes to the retry queue as that sink's own
envelope, so a sink that delivered is never sent the metrics again because another failed. The
invocation fails only when that hand-off fails (or on a bug): the messages it took are released
for another try, and its own is retried by the host, which parks it in ``<queue>-poison`` after
``maxDequeueCount`` tries; a taken message tried that often goes there too. Delivery is
at-least-once: a crash after some sink took the metrics sends them to that sink again.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridges.delivery import selfmetrics
from bridges.delivery.deliver import Delivery, DeliveryError, SinkReport
from bridges.model import Metric
from bridges.queues import Message, Queue, StaleReceipt
from bridges.retry.envelopes import EVERY_SINK, Envelope, EnvelopeError, MetricTooLarge, envelopes_for, metrics_of

if TYPE_CHECKING:
    from bridges.routing import Routed

log = logging.getLogger(__name__)
MAX_DEQUEUE_COUNT = 5  # host.json extensions.queues.maxDequeueCount (a test keeps them equal)
MAX_RECEIVE = 32  # Azure Storage's most messages per receive
FIRST_PAUSE, MAX_PAUSE = 0.05, 0.4  # seconds between receives while lingering on an empty queue


def enqueue(queue: Queue, metrics: Sequence[Metric], now_ns: int, shares: Routed | None = None) -> int:
    """Keep accepted metrics on the delivery queue (``shares``: each sink's, routed, instead);
    returns how many messages that took.

    Raises DeliveryError when the queue cannot be written (the sender must send again; a part
    already kept is then delivered twice, never lost) and ``MetricTooLarge`` when one metric
    cannot fit a queue message even alone (nothing is kept then; its index is in ``metrics``)."""
    envelopes = []
    for sink, share in ({EVERY_SINK: metrics} if shares is None else shares.per_sink).items():
        try:
            envelopes += envelopes_for(sink, share, "", now_ns, attempt=0)
        except MetricTooLarge as exc:
            if shares is not None:
                exc.index = shares.indexes[sink][exc.index]
            raise
    try:
        for envelope in envelopes:
            queue.send(envelope.to_text())
    except Exception as exc:  # the storage SDK's or SQLite's errors; never their text (it names the account)
        log.error("the delivery queue %s could not be written: %s", queue.name, type(exc).__name__)
        raise DeliveryError("delivery queue", f"{queue.name} could not be written ({type(exc).__name__})") from exc
    return len(envelopes)


def read(text: str | bytes) -> tuple[str, list[Metric]]:
    """The sink ('*': every sink) and metrics of a delivery-queue message; EnvelopeError naming
    the field when unreadable."""
    envelope = Envelope.from_text(text)
    if envelope.attempt != 0:
        raise EnvelopeError(f"retry envelope field 'attempt': {envelope.attempt} is a retry envelope's "
                            f"(sink {envelope.sink!r}), not the delivery queue's")
    return envelope.sink, metrics_of(envelope)


@dataclass
class Batch:
    """What one invocation delivered: how many messages, how many metrics, each sink's report
    (its indexes point into ``merged``, the metrics of every message for every sink in order,
    or with routes declared into that sink's share in ``shares``)."""

    messages: int
    reports: dict[str, SinkReport]
    merged: list[Metric]
    shares: dict[str, list[Metric]] | None = None

    @property
    def metrics(self) -> int:
        return len(self.merged) + sum(map(len, (self.shares or {}).values()))


class DeliveryWorker:
    """Runs the delivery function: one triggering message plus what it takes from the queue."""

    def __init__(self, delivery: Delivery, queue: Queue, poison: Queue, *, batch: int, lease_seconds: float,
                 linger_seconds: float = 0.0, clock: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 observe: Callable[[dict[str, SinkReport], int, str], None] | None = None):
        """``lease_seconds``: how long taken messages stay hidden, longer than one delivery can
        take; ``linger_seconds``: how long to wait for a batch to fill; ``observe(reports,
        accepted, source)`` logs (and sends) the bridge's own metrics."""
        self.delivery = delivery
        self.queue = queue
        self.poison = poison
        self.batch = batch
        self.lease_seconds = lease_seconds
        self.linger_seconds = linger_seconds
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.observe = observe

    def process(self, text: str | bytes) -> Batch:
        """Raises on an unreadable triggering message or a retry queue that cannot be written:
        the host then retries the message (and, in the end, parks it in the poison queue)."""
        sink, metrics = read(text)
        shares: dict[str, list[Metric]] = {}
        if sink != EVERY_SINK:
            shares[sink], metrics = metrics, []
        taken = []
        for message in self._take():
            try:
                sink, more = read(message.text)
            except EnvelopeError as exc:
                self._park(message, str(exc))
                continue
            (metrics if sink == EVERY_SINK else shares.setdefault(sink, [])).extend(more)
            taken.append(message)
        try:
            if shares:  # routed shares, and any message for every sink (kept before routes were declared)
                enabled = self.delivery.sink_names
                for name in sorted(set(shares) - set(enabled)):
                    self._not_enabled(name, shares[name])
                per_sink = {name: metrics + shares.get(name, []) for name in enabled}
                reports = self.delivery.deliver((), self.clock(), per_sink=per_sink)
            else:
                reports = self.delivery.deliver(metrics, self.clock())
        except BaseException:
            for message in taken:
                self._settle(self.queue.release, message)
            raise
        for message in taken:
            self._settle(self.queue.delete, message)
        batch = Batch(1 + len(taken), reports, metrics, shares or None)
        if self.observe is not None:
            self.observe(reports, batch.metrics, f"delivery of {batch.messages} queued messages")
        selfmetrics.log_queue(queue_status(self.queue, self.poison, self.clock()))
        return batch

    def _not_enabled(self, sink: str, metrics: list[Metric]) -> None:
        """A share routed to a sink that is no longer enabled (its settings went while it waited):
        handed to the retry queue, whose function dead-letters it with that reason, to be
        replayed once the sink is back. Raises when the retry queue cannot be written."""
        reason = f"sink {sink} is not enabled"
        log.error("delivery queue %s: %d metrics routed to %s, which is not enabled: handed to the retry queue",
                  self.queue.name, len(metrics), sink)
        if self.delivery.handoff is None:  # a stage without a retry queue (tests): nothing can keep them
            raise DeliveryError(sink, f"{reason} and there is no retry queue to keep its metrics")
        self.delivery.handoff.hand_off(sink, metrics, reason, None, self.clock())

    def _take(self) -> list[Message]:
        """Up to ``batch - 1`` more messages, waiting at most ``linger_seconds`` for them to
        arrive; those tried too often go to the poison queue instead."""
        wanted = self.batch - 1
        taken: list[Message] = []
        deadline = self.monotonic() + self.linger_seconds
        pause = FIRST_PAUSE
        while len(taken) < wanted:
            try:
                messages = self.queue.receive(min(wanted - len(taken), MAX_RECEIVE), self.lease_seconds)
            except Exception as exc:  # the messages already in hand are still delivered
                log.warning("delivery queue %s: could not take more messages (%s)", self.queue.name,
                            type(exc).__name__)
                break
            for message in messages:
                if message.dequeue_count > MAX_DEQUEUE_COUNT:
                    self._park(message, f"tried {message.dequeue_count - 1} times")
                else:
                    taken.append(message)
            left = deadline - self.monotonic()
            if left <= 0:
                break
            if not messages:
                self.sleep(min(pause, left))
                pause = min(2 * pause, MAX_PAUSE)
        return taken

    def _park(self, message: Message, why: str) -> None:
        """Move a message to the poison queue as the host would (sent first: a crash in between
        duplicates it, never loses it)."""
        log.error("delivery queue %s: message %s moved to %s: %s", self.queue.name, message.id, self.poison.name, why)
        self.poison.send(message.text)
        self._settle(self.queue.delete, message)

    def _settle(self, action, message: Message) -> None:
        try:
            action(message)
        except StaleReceipt as exc:  # its lease ran out: another invocation may deliver it again
            log.warning("delivery queue %s: %s", self.queue.name, exc)
        except Exception as exc:  # it reappears after its lease and is delivered again: never lost
            log.warning("delivery queue %s: message %s not settled (%s)", self.queue.name, message.id,
                        type(exc).__name__)


def queue_status(queue: Queue, poison: Queue, now_ns: int) -> dict:
    """For health: the delivery queue's depth, the age of its oldest waiting message, and its
    poison queue's depth; never raises (a queue that cannot be read says so)."""
    from bridges.retry.deadletters import depth_status, short_reason

    status = depth_status(queue)
    if status.get("depth"):
        try:
            oldest = queue.peek(1)
        except Exception as exc:  # noqa: BLE001 - health must answer whatever the queue does
            status = {"queue": queue.name, "error": short_reason(exc)}
        else:
            if oldest:
                status["oldest_seconds"] = round(max(0.0, now_ns / 1e9 - oldest[0].inserted_at), 3)
    status["poison"] = depth_status(poison)
    return status


def worker_for(bridge) -> DeliveryWorker:
    """The worker of a Bridge: its delivery stage (shared rate limits and health), its queue,
    and a lease of twice the longest one delivery can take (the sinks' deadline plus one
    request's timeout, all sinks at once)."""
    from bridges.queues import open_queue, poison_name
    from bridges.settings import environment

    settings = bridge.settings
    poison = open_queue(poison_name(settings.delivery_queue), environment(), settings.state_dir)
    lease = 2 * (settings.delivery_deadline_seconds + settings.http_timeout_seconds)
    return DeliveryWorker(bridge.delivery, bridge.delivery_queue, poison, batch=settings.delivery_batch,
                          lease_seconds=lease + settings.delivery_linger_seconds,
                          linger_seconds=settings.delivery_linger_seconds, clock=bridge.clock, observe=bridge.observe)
