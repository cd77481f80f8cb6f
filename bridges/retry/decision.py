"""The pure retry decision: backoff, and what becomes of an envelope's metrics after an attempt.

The retry function (``bridges.retry.worker.RetryWorker``) does the I/O around this module:

    metrics = metrics_of(envelope)                      # decode what the queue gave
    report = ... deliver metrics to envelope.sink ...   # -> AttemptReport (by metric index)
    decision = decide(envelope, report, now_ns, policy, metrics=metrics, rng=rng)
    enqueue decision.retry (visible at not_before), store decision.dead_letters

Nothing here reads a clock, a setting or a file (``now_ns`` is passed in, ``rng`` is
injected), and nothing retries forever: ``decide`` dead-letters past ``max_attempts``, past
``max_age`` and, per metric, once a point has fallen out of its sink's time window. The
envelopes themselves (``Envelope``, ``envelopes_for``, ``metrics_of``) are
``bridges.retry.envelopes``'s.
"""
from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridges.delivery.sinks.base import Delivered, Drop, Outcome, Partial, Retry
from bridges.model import Metric
from bridges.retry.envelopes import (
    MAX_TEXT,
    Envelope,
    EnvelopeError,
    _cut,
    _load,
    _time,
    envelopes_for,
    metrics_of,
)
from bridges.timestamps import NS_PER_SECOND, format_rfc3339

# -- backoff ---------------------------------------------------------------------------------


def next_delay(attempt: int, base: float, cap: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry ``attempt``: uniform in [0, min(cap, base * 2**(attempt-1))]
    ("full jitter", which spreads a crowd of failed senders best), but never less than the
    backend's Retry-After."""
    if attempt < 1 or base < 0 or cap < 0:
        raise ValueError("attempt starts at 1; base and cap are not negative")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 64))  # the exponent bound avoids float overflow
    delay = rng.uniform(0, ceiling)
    return delay if retry_after is None else max(delay, retry_after)


# -- the retry decision ----------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """``base``/``cap``: backoff seconds; ``max_attempts``: retries before giving up;
    ``max_age``: seconds from the first failure after which nothing is retried;
    ``max_point_age``: the sink's accepted point age in seconds (its
    ``limits.max_age_seconds``; None where the sink has no window)."""

    base: float
    cap: float
    max_attempts: int
    max_age: float
    max_point_age: float | None = None


@dataclass(frozen=True)
class AttemptReport:
    """What one attempt came to, by index into ``metrics_of(envelope)``.

    ``rejected``: refused for good (invalid line, local refusal), with reasons: final.
    ``dropped``: a Drop outcome (bad token, misconfiguration), with reasons: dead-lettered so
    they can be replayed once fixed. ``pending``: retryable, with reasons. An index in more
    than one place counts once, in that order (rejected, dropped, pending, delivered), as the
    delivery stage counts a metric split over several requests; an index reported nowhere is
    pending (resending may duplicate, never lose).
    """

    delivered: Collection[int] = ()
    rejected: Mapping[int, str] = field(default_factory=dict)
    dropped: Mapping[int, str] = field(default_factory=dict)
    pending: Mapping[int, str] = field(default_factory=dict)
    retry_after: float | None = None

    @classmethod
    def from_outcome(cls, outcome: Outcome, count: int) -> AttemptReport:
        """The report for one outcome that covered all ``count`` metrics (one request)."""
        every = range(count)
        if isinstance(outcome, Delivered):
            return cls(delivered=every)
        if isinstance(outcome, Partial):
            return cls(delivered=every, rejected={r.index: r.reason for r in outcome.rejected})
        if isinstance(outcome, Retry):
            return cls(pending=dict.fromkeys(every, outcome.reason), retry_after=outcome.after)
        if isinstance(outcome, Drop):
            return cls(dropped=dict.fromkeys(every, outcome.reason))
        raise ValueError(f"{type(outcome).__name__} is resolved by the delivery stage, not by a retry decision")


@dataclass(frozen=True)
class DeadLetter:
    """An envelope given up on, why, and when; what ``deadletter list|show|replay`` reads."""

    envelope: Envelope
    reason: str
    at_ns: int

    def to_text(self) -> str:
        doc = {"reason": self.reason, "dead_lettered_at": format_rfc3339(self.at_ns), "envelope": self.envelope.to_json()}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str | bytes) -> DeadLetter:
        where = "dead-letter record"
        doc = _load(text, where)
        if not isinstance(doc, dict):
            raise EnvelopeError(f"{where}: expected a JSON object")
        unknown = set(doc) - {"reason", "dead_lettered_at", "envelope"}
        if unknown:
            raise EnvelopeError(f"{where}: unexpected field {sorted(unknown)[0]!r}")
        for name in ("reason", "dead_lettered_at"):
            if not isinstance(doc.get(name), str):
                raise EnvelopeError(f"{where} field {name!r}: a string is required")
        at_ns = _time(doc, "dead_lettered_at", where)
        return cls(Envelope.from_json(doc.get("envelope"), f"{where} field 'envelope'"), doc["reason"], at_ns)

    def replayed(self, now_ns: int, new_id: Callable[[], uuid.UUID] = uuid.uuid4) -> Envelope:
        """The envelope to enqueue again: a fresh start (attempt 1, age 0; a delivery-queue
        envelope stays attempt 0), same metrics."""
        attempt = 0 if self.envelope.attempt == 0 else 1
        return replace(self.envelope, id=str(new_id()), attempt=attempt, first_failure_ns=now_ns, not_before_ns=now_ns)


@dataclass(frozen=True)
class Decision:
    """``retry``: envelopes to enqueue (visible at their ``not_before``); ``dead_letters``: records
    to keep; ``rejected``: final refusals to report. Both lists may be non-empty at once (stale
    metrics dead-lettered while fresh ones retry); ``kind`` says the most hopeful of them."""

    retry: list[Envelope] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    delivered: int = 0
    rejected: dict[int, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "retry" if self.retry else "dead_letter" if self.dead_letters else "done"


def decide(
    envelope: Envelope,
    report: AttemptReport,
    now_ns: int,
    policy: Policy,
    *,
    metrics: Sequence[Metric] | None = None,
    rng: random.Random | None = None,
    max_text: int = MAX_TEXT,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> Decision:
    """What becomes of an envelope's metrics after an attempt: done, retried, or dead-lettered.

    ``metrics`` are the envelope's decoded metrics when the caller has them (saves decoding
    twice). Pending metrics are dead-lettered when the envelope has had ``max_attempts``, when
    the next attempt would come past ``max_age`` after the first failure, and, one by one, when
    a point would be older than the sink accepts by the next attempt; the rest retry.
    """
    metrics = list(metrics_of(envelope) if metrics is None else metrics)
    rng = rng or random.Random()
    state = _states(report, len(metrics))
    lost: dict[str, list[int]] = {}  # dead-letter reason -> metric indexes
    for index, reason in state["dropped"].items():
        lost.setdefault(f"dropped on retry: {reason}", []).append(index)
    pending = state["pending"]
    retry: list[int] = []
    next_ns = now_ns
    if pending:
        last_error = "; ".join(dict.fromkeys(pending.values()))
        delay = next_delay(envelope.attempt + 1, policy.base, policy.cap, rng, report.retry_after)
        next_ns = now_ns + round(delay * NS_PER_SECOND)
        if envelope.attempt >= policy.max_attempts:
            lost.setdefault(f"gave up after {envelope.attempt} attempts: {last_error}", []).extend(pending)
        elif next_ns - envelope.first_failure_ns > policy.max_age * NS_PER_SECOND:
            lost.setdefault(f"older than the maximum age of {policy.max_age:g} s: {last_error}", []).extend(pending)
        else:
            retry = list(pending)
            if policy.max_point_age is not None:
                oldest_ns = next_ns - round(policy.max_point_age * NS_PER_SECOND)
                stale = (f"fallen out of {envelope.sink}'s accepted time window (points at most "
                         f"{policy.max_point_age:g} s old) while waiting to retry: {last_error}")
                lost_now = [i for i in retry if metrics[i].time_ns < oldest_ns]
                if lost_now:
                    lost.setdefault(stale, []).extend(lost_now)
                    retry = [i for i in retry if metrics[i].time_ns >= oldest_ns]
    common: dict[str, Any] = dict(now_ns=now_ns, first_failure_ns=envelope.first_failure_ns, new_id=new_id)
    retry_envelopes = []
    if retry:
        retry_envelopes = envelopes_for(
            envelope.sink, [metrics[i] for i in retry], "; ".join(dict.fromkeys(pending[i] for i in retry)),
            attempt=envelope.attempt + 1, not_before_ns=next_ns, max_text=max_text, **common,
        )
    dead = []
    for reason, indexes in lost.items():
        reason = _cut(reason)
        # A record embeds its envelope's JSON as is, so the wrapper's size is exact.
        overhead = len(DeadLetter(envelope, reason, now_ns).to_text()) - len(envelope.to_text())
        for part in envelopes_for(
            envelope.sink, [metrics[i] for i in sorted(indexes)], reason, attempt=envelope.attempt,
            not_before_ns=envelope.not_before_ns, max_text=max_text - overhead, **common,
        ):
            dead.append(DeadLetter(part, reason, now_ns))
    return Decision(retry_envelopes, dead, len(state["delivered"]), state["rejected"])


def _states(report: AttemptReport, count: int) -> dict[str, dict[int, str]]:
    """Each metric index in exactly one state, by the precedence AttemptReport documents."""
    states: dict[str, dict[int, str]] = {"rejected": {}, "dropped": {}, "pending": {}, "delivered": {}}
    seen: set[int] = set()
    for name, given in (("rejected", report.rejected), ("dropped", report.dropped), ("pending", report.pending),
                        ("delivered", dict.fromkeys(report.delivered, ""))):
        for index, reason in given.items():
            if not 0 <= index < count:
                raise ValueError(f"{name} index {index} is outside the envelope's {count} metrics")
            if index not in seen:
                seen.add(index)
                states[name][index] = reason
    for index in range(count):
        if index not in seen:
            states["pending"][index] = "no outcome was reported for this metric"
    states["pending"] = dict(sorted(states["pending"].items()))  # keep the envelope's order
    return states
