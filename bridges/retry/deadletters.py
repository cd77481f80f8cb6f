"""Dead letters and poison messages: the queues that hold them, their records, their health status.

Two queues hold what the retry path gave up on:

- the dead-letter queue (``BRIDGE_DEADLETTER_QUEUE``): ``DeadLetter`` records, each an envelope
  with the reason it can never be delivered as things stand (bad token, too many attempts...);
- the retry queue's poison queue (``<BRIDGE_RETRY_QUEUE>-poison``): raw envelopes the Functions
  host parked after the retry function crashed on them ``maxDequeueCount`` times;
- the delivery queue's poison queue (``<BRIDGE_DELIVERY_QUEUE>-poison``, ``--delivery-poison``):
  accepted metrics the delivery function failed on as often; replayed to the delivery queue.

Reading without changing anything: ``peek`` changes nothing but shows at most 32 messages on
Azure. When a queue holds more, ``read_all`` receives every message (hidden for a short time, so
none comes twice while we page through) and releases each one at once, untouched. A receive
raises the message's ``dequeue_count``; that is harmless here because no trigger reads the
dead-letter or poison queue (nothing is ever poisoned by it), and the record's own ``attempt``
is what we show. While a listing runs, its messages are briefly invisible to another listing or
replay; a crashed listing leaves them hidden for at most ``LIST_HIDE_SECONDS``.

Health (``retry_status``) and the delivery function read these; ``python -m bridges deadletter``
(list, show, replay) is ``bridges.retry.deadletter_command``'s.
"""
from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.queues import Message, Queue, StaleReceipt, open_queue, poison_name
from bridges.retry.decision import DeadLetter
from bridges.retry.envelopes import Envelope, EnvelopeError
from bridges.timestamps import NS_PER_SECOND

PEEK_LIMIT = 32  # Azure's most messages per peek (and per receive)
LIST_HIDE_SECONDS = 30  # how long a listing hides what it pages through before releasing it
POISON_REASON = "poison: its function failed on it maxDequeueCount times"


# -- queues ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryQueues:
    retry: Queue
    deadletter: Queue
    poison: Queue
    delivery: Queue | None = None
    delivery_poison: Queue | None = None


def open_retry_queues(settings: Any, environ: Mapping[str, str], local_dir: Path | None = None) -> RetryQueues:
    """The retry queue, the dead-letter queue and the retry queue's poison queue, as configured,
    and the delivery queue with its poison queue.

    Raises ValueError (a message without secrets) when AzureWebJobsStorage is unusable."""
    folder = local_dir or settings.state_dir
    return RetryQueues(
        retry=open_queue(settings.retry_queue, environ, folder),
        deadletter=open_queue(settings.deadletter_queue, environ, folder),
        poison=open_queue(poison_name(settings.retry_queue), environ, folder),
        delivery=open_queue(settings.delivery_queue, environ, folder),
        delivery_poison=open_queue(poison_name(settings.delivery_queue), environ, folder),
    )


def short_reason(exc: BaseException) -> str:
    """Why a queue could not be used, from the error's type and status only: SDK messages can
    hold URLs with SAS tokens or account details, so they are never shown."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ClientAuthenticationError", "CredentialUnavailableError"}:
        return "not authorized (check the identity's Storage Queue Data role or the account key)"
    status = getattr(exc, "status_code", None)
    if "HttpResponseError" in names and status:
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code)
        return f"storage answered HTTP {status}" + (f" {code}" if code else "")
    if names & {"ServiceRequestError", "ServiceResponseError"}:
        return "storage account unreachable (connection failed or timed out)"
    if isinstance(exc, sqlite3.Error):
        return f"local queue file unusable ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message of the dead-letter or poison queue, read as far as it can be.

    ``at_ns``: when it was dead-lettered (a poison message: when the host moved it there).
    ``envelope`` is None when the message cannot be read; ``reason`` then says why."""

    message: Message
    envelope: Envelope | None
    reason: str
    at_ns: int

    @property
    def sink(self) -> str:
        return self.envelope.sink if self.envelope else "?"

    def age_seconds(self, now_ns: int) -> float:
        return max(0, now_ns - self.at_ns) / NS_PER_SECOND

    def replayed(self, now_ns: int) -> Envelope:
        assert self.envelope is not None  # only a readable record is replayed
        return DeadLetter(self.envelope, self.reason, self.at_ns).replayed(now_ns)


def read_record(message: Message, poison: bool) -> Record:
    """A poison message is a raw envelope; a dead-letter message a DeadLetter record."""
    inserted_ns = round(message.inserted_at * NS_PER_SECOND)
    try:
        if poison:
            return Record(message, Envelope.from_text(message.text), POISON_REASON, inserted_ns)
        dead = DeadLetter.from_text(message.text)
        return Record(message, dead.envelope, dead.reason, dead.at_ns)
    except EnvelopeError as exc:
        return Record(message, None, f"unreadable: {exc}", inserted_ns)


def read_all(queue: Queue, hide_seconds: float = LIST_HIDE_SECONDS) -> list[Message]:
    """Every visible message, left as it was (see the module docstring for why receive is safe)."""
    peeked = queue.peek(PEEK_LIMIT)
    if len(peeked) < PEEK_LIMIT:
        return peeked
    held = _receive_all(queue, hide_seconds)
    for message in held.values():
        _release(queue, message)
    return list(held.values())


def _receive_all(queue: Queue, hide_seconds: float) -> dict[str, Message]:
    """Receive until nothing new comes: everything visible, hidden for ``hide_seconds``, by id
    (a message whose hiding ran out and came again keeps only its newest receipt)."""
    held: dict[str, Message] = {}
    while True:
        batch = queue.receive(PEEK_LIMIT, hide_seconds)
        fresh = [m for m in batch if m.id not in held]
        held.update((m.id, m) for m in batch)
        if not fresh:
            return held


def _release(queue: Queue, message: Message) -> None:
    try:
        queue.release(message, 0)
    except StaleReceipt:  # someone else received it since: theirs now
        pass


# -- health ----------------------------------------------------------------------------------


def retry_status(retry_queue: Queue, deadletter_queue: Queue, poison_queue: Queue) -> dict:
    """Depths of the three queues and dead letters per sink, for ``GET /api/health``; never raises.

    Per-sink counts come from one peek (at most 32 on Azure): ``sampled`` says they cover only
    part of the queue. A queue that cannot be reached is ``{"queue", "error"}``."""
    status = {"retry": depth_status(retry_queue), "poison": depth_status(poison_queue),
              "deadletter": depth_status(deadletter_queue)}
    dead = status["deadletter"]
    if "depth" in dead:
        try:
            sample = deadletter_queue.peek(PEEK_LIMIT) if dead["depth"] else []
            dead["by_sink"] = dict(sorted(Counter(read_record(m, False).sink for m in sample).items()))
            dead["sampled"] = len(sample) < dead["depth"]
        except Exception as exc:  # noqa: BLE001 - health must answer whatever the queue does
            status["deadletter"] = {"queue": dead["queue"], "error": short_reason(exc)}
    return status


def depth_status(queue: Queue) -> dict:
    try:
        return {"queue": queue.name, "depth": _depth(queue)}
    except Exception as exc:  # noqa: BLE001 - health must answer whatever the queue does
        return {"queue": getattr(queue, "name", "?"), "error": short_reason(exc)}


def _depth(queue: Queue) -> int:
    """A storage queue's depth without creating it (``depth()`` would): a missing queue is empty."""
    client = getattr(queue, "client", None)
    if client is None:
        return queue.depth()
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return int(client.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0
