"""The pure core of the retry path: envelopes, backoff, the retry decision, dead letters.

A retry envelope carries the metrics ONE sink could not take yet (schema:
``schemas/retry-envelope.schema.json``): canonical NDJSON, gzip, base64, in compact ASCII JSON
of at most ``MAX_TEXT`` bytes, so that the Functions host's base64 of it still fits a 64 KiB
storage queue message. Metrics travel in canonical form, not as the sink's wire body, so the
sink re-encodes them at every attempt and its time window applies afresh.

The retry function (``bridges.retry.worker.RetryWorker``) does the I/O around this module:

    metrics = metrics_of(envelope)                      # decode what the queue gave
    report = ... deliver metrics to envelope.sink ...   # -> AttemptReport (by metric index)
    decision = decide(envelope, report, now_ns, policy, metrics=metrics, rng=rng)
    enqueue decision.retry (visible at not_before), store decision.dead_letters

Nothing here reads a clock, a setting or a file (``now_ns`` is passed in, ``rng`` is
injected), and nothing retries forever: ``decide`` dead-letters past ``max_attempts``, past
``max_age`` and, per metric, once a point has fallen out of its sink's time window.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import json
import random
import uuid
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from bridges.delivery.sinks.base import Delivered, Drop, Outcome, Partial, Retry
from bridges.formats import BodyError
from bridges.formats.canonical import decode as decode_canonical
from bridges.formats.canonical import encode_ndjson
from bridges.ingest.normalize import Normalizer
from bridges.model import Metric
from bridges.timestamps import NS_PER_SECOND, TimestampError, format_rfc3339, parse_timestamp

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "retry-envelope.schema.json"
QUEUE_MESSAGE_BYTES = 65_536
MAX_TEXT = QUEUE_MESSAGE_BYTES // 4 * 3  # 49,152: its base64 is exactly 64 KiB
MAX_ERROR_CHARS = 2048  # the schema's maxLength for last_error; reasons are cut to it
ENCODING = "canonical-ndjson+gzip+base64"
SINKS = ("outbox", "dynatrace", "betterstack", "unleash", "azure_monitor", "prometheus")
EVERY_SINK = "*"  # a delivery-queue envelope (attempt 0): for every enabled sink
_ID_PLACEHOLDER = str(uuid.UUID(int=0))
_GZIP_LEVEL = 6  # level 9 saves ~3 % here for twice the time
_normalizer = Normalizer()


class EnvelopeError(ValueError):
    """A retry envelope or dead-letter record that cannot be read; the message names the field."""


class MetricTooLarge(ValueError):
    """One metric whose envelope alone exceeds the size limit; ``index`` is its place in the input."""

    def __init__(self, index: int, size: int, max_text: int):
        super().__init__(
            f"metric {index} does not fit a retry envelope even alone ({size} > {max_text} bytes "
            "of envelope text); only metrics with long, high-entropy tags get near this"
        )
        self.index = index


# -- envelopes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """One queue message's worth of metrics for one sink. ``metrics`` is the encoded text
    (base64 of gzip'd canonical NDJSON); ``metrics_of`` decodes it."""

    id: str
    sink: str
    attempt: int
    first_failure_ns: int
    not_before_ns: int
    last_error: str
    count: int
    metrics: str = field(repr=False)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "sink": self.sink,
            "attempt": self.attempt,
            "first_failure": format_rfc3339(self.first_failure_ns),
            "not_before": format_rfc3339(self.not_before_ns),
            "last_error": self.last_error,
            "count": self.count,
            "encoding": ENCODING,
            "metrics": self.metrics,
        }

    def to_text(self) -> str:
        """Compact ASCII JSON: its length in characters is its length in bytes."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, doc: Any, where: str = "retry envelope") -> Envelope:
        _check(_envelope_validator(), doc, where)
        return cls(
            id=doc["id"],
            sink=doc["sink"],
            attempt=doc["attempt"],
            first_failure_ns=_time(doc, "first_failure", where),
            not_before_ns=_time(doc, "not_before", where),
            last_error=doc["last_error"],
            count=doc["count"],
            metrics=doc["metrics"],
        )

    @classmethod
    def from_text(cls, text: str | bytes) -> Envelope:
        return cls.from_json(_load(text, "retry envelope"))


def envelopes_for(
    sink: str,
    metrics: Sequence[Metric],
    reason: str,
    now_ns: int,
    attempt: int = 1,
    first_failure_ns: int | None = None,
    not_before_ns: int | None = None,
    max_text: int = MAX_TEXT,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> list[Envelope]:
    """Pack the metrics, in order, into as few envelopes as fit ``max_text`` bytes each.

    Compressed size is not additive, so each envelope is the longest run of the remaining
    metrics whose real envelope text fits (found by a proportional guess refined by
    bisection, within 1/64 of the longest). Nothing is ever cut: a metric that cannot fit
    alone raises ``MetricTooLarge``.
    """
    if sink == EVERY_SINK:
        if attempt != 0:
            raise ValueError("an envelope for every sink is the delivery queue's: attempt 0")
    elif sink not in SINKS:
        raise ValueError(f"unknown sink {sink!r}: one of {', '.join(SINKS)}")
    elif attempt < 1:
        raise ValueError("attempt starts at 1")
    lines = encode_ndjson(metrics).split(b"\n")[:-1]  # JSON never holds a raw newline
    fixed: dict[str, Any] = dict(
        sink=sink,
        attempt=attempt,
        first_failure_ns=now_ns if first_failure_ns is None else first_failure_ns,
        not_before_ns=now_ns if not_before_ns is None else not_before_ns,
        last_error=_cut(reason),
    )
    envelopes: list[Envelope] = []
    start = 0
    while start < len(lines):
        built: dict[int, Envelope] = {}

        def size(n: int, start: int = start, built: dict = built) -> int:  # this envelope's run
            payload = b"\n".join(lines[start:start + n]) + b"\n"
            packed = base64.b64encode(gzip.compress(payload, _GZIP_LEVEL, mtime=0)).decode("ascii")
            built[n] = Envelope(id=_ID_PLACEHOLDER, count=n, metrics=packed, **fixed)  # same length as a real id
            return len(built[n].to_text())

        # A first guess near the answer: the last envelope's count, or else as many lines as
        # fit uncompressed (a lower bound), so large inputs are never compressed whole.
        guess = envelopes[-1].count if envelopes else _raw_fit(lines, start, max_text)
        n = _longest_fitting(size, len(lines) - start, max_text, guess)
        if n == 0:
            raise MetricTooLarge(start, size(1), max_text)
        envelopes.append(replace(built[n], id=str(new_id())))
        start += n
    return envelopes


def _raw_fit(lines: list[bytes], start: int, limit: int) -> int:
    total = 0
    for n, line in enumerate(lines[start:], start=1):
        total += len(line) + 1
        if total > limit:
            return max(1, n - 1)
    return len(lines) - start


def _longest_fitting(size: Callable[[int], int], available: int, limit: int, guess: int) -> int:
    """The largest n <= available with size(n) <= limit, within 1/64 (size grows about
    linearly with n, so a proportional guess refined by bisection needs few probes);
    0 when not even one fits."""
    fits, too_many = 0, available + 1
    n = max(1, min(guess, available))
    while True:
        measured = size(n)
        if measured <= limit:
            fits = n
        else:
            too_many = n
        if too_many - fits <= max(1, fits // 64):
            return fits
        guess = int(n * limit / measured * 0.99)
        # Out of bounds only near the limit: step just past the tolerance (or bisect).
        n = guess if fits < guess < too_many else min((fits + too_many) // 2, fits + max(1, fits // 64))


def metrics_of(envelope: Envelope) -> list[Metric]:
    """The envelope's canonical metrics, decoded and normalized as any input would be."""
    try:
        ndjson = gzip.decompress(base64.b64decode(envelope.metrics, validate=True))
    except (binascii.Error, OSError, EOFError, zlib.error) as exc:
        raise EnvelopeError(f"retry envelope field 'metrics': not base64 of gzip data ({exc})") from None
    try:
        decoded = decode_canonical(ndjson, "application/x-ndjson")
    except BodyError as exc:
        raise EnvelopeError(f"retry envelope field 'metrics': {exc.message} {exc.where}") from None
    # Every canonical line has its 'dt', so the receipt time given here is never used.
    result = _normalizer.normalize(decoded.items, 0, check_unicode=decoded.may_hold_surrogates)
    if result.errors:
        first = result.errors[0]
        raise EnvelopeError(f"retry envelope field 'metrics': metric {first.index} at {first.pointer}: {first.message}")
    if len(result.metrics) != envelope.count:
        raise EnvelopeError(
            f"retry envelope field 'count': says {envelope.count}, 'metrics' holds {len(result.metrics)}"
        )
    return result.metrics


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
        attempt = 0 if self.envelope.sink == EVERY_SINK else 1
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


# -- helpers ---------------------------------------------------------------------------------


@cache
def _envelope_validator():
    from bridges.ingest.jsonschemas import explaining_validator

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return explaining_validator(schema)


def _check(validator, doc: object, where: str) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is None:
        return
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        field_name = "/".join(map(str, error.absolute_path)) or missing[0]
        raise EnvelopeError(f"{where} field {field_name!r}: required")
    if error.validator == "additionalProperties":
        raise EnvelopeError(f"{where}: {error.message}")
    path = "/".join(map(str, error.absolute_path))
    shown = error.message if len(error.message) <= 200 else error.message[:199] + "…"
    raise EnvelopeError(f"{where} field {path!r}: {shown}" if path else f"{where}: {shown}")


def _time(doc: dict, name: str, where: str) -> int:
    try:
        return parse_timestamp(doc.get(name))
    except TimestampError as exc:
        raise EnvelopeError(f"{where} field {name!r}: {exc}") from None


def _load(text: str | bytes, where: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"{where}: not JSON ({exc})") from None


def _cut(reason: str) -> str:
    return reason if len(reason) <= MAX_ERROR_CHARS else reason[: MAX_ERROR_CHARS - 1] + "…"
