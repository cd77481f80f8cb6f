"""Retry envelopes: the queue messages that carry metrics between attempts, and their schema.

A retry envelope carries the metrics ONE sink could not take yet (schema:
``schemas/retry-envelope.schema.json``): canonical NDJSON, gzip, base64, in compact ASCII JSON
of at most ``MAX_TEXT`` bytes, so that the Functions host's base64 of it still fits a 64 KiB
storage queue message. Metrics travel in canonical form, not as the sink's wire body, so the
sink re-encodes them at every attempt and its time window applies afresh.

What becomes of an envelope after an attempt is ``bridges.retry.decision``'s; this module only
packs, reads and validates envelopes (and holds the validation helpers the decision shares).
"""
from __future__ import annotations

import base64
import binascii
import gzip
import json
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from bridges.delivery.sinks import SINK_NAMES
from bridges.formats import BodyError
from bridges.formats.canonical import decode as decode_canonical
from bridges.formats.canonical import encode_ndjson
from bridges.ingest.normalize import Normalizer
from bridges.model import Metric
from bridges.timestamps import TimestampError, format_rfc3339, parse_timestamp

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "retry-envelope.schema.json"
QUEUE_MESSAGE_BYTES = 65_536
MAX_TEXT = QUEUE_MESSAGE_BYTES // 4 * 3  # 49,152: its base64 is exactly 64 KiB
MAX_ERROR_CHARS = 2048  # the schema's maxLength for last_error; reasons are cut to it
ENCODING = "canonical-ndjson+gzip+base64"
SINKS = SINK_NAMES
EVERY_SINK = "*"  # a delivery-queue envelope (attempt 0): for every enabled sink
# A delivery-queue envelope named for one sink (attempt 0) is that sink's share when routes are declared.
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
    elif attempt < 0:
        raise ValueError("attempt starts at 1 (0: a routed share on the delivery queue)")
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


# -- helpers ---------------------------------------------------------------------------------


@cache
def _envelope_validator():
    from bridges.ingest.jsonschemas import explaining_validator

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    schema["properties"]["sink"]["enum"] = [EVERY_SINK, *SINKS]  # the registry's sinks, not a copy of them
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
