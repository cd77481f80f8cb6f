"""Dead letters and poison messages: what health reports and ``python -m bridges deadletter`` does.

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

Replay sends ``replayed(now)`` (a fresh attempt-1 envelope, same metrics) to the retry queue and
only then deletes the record: a crash in between duplicates a replay, it never loses one. A
replay holds every record of its queue while it picks the matching ones (the others are released
at once); a replay that crashes leaves what it held hidden for at most ``REPLAY_HIDE_SECONDS``.
"""
from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bridges.queues import Message, Queue, StaleReceipt, open_queue, poison_name
from bridges.retry.envelopes import SINKS, DeadLetter, Envelope, EnvelopeError, metrics_of
from bridges.timestamps import NS_PER_SECOND, format_rfc3339

PEEK_LIMIT = 32  # Azure's most messages per peek (and per receive)
LIST_HIDE_SECONDS = 30  # how long a listing hides what it pages through before releasing it
REPLAY_HIDE_SECONDS = 600  # how long a replay holds its records: long enough to send and delete them
POISON_REASON = "poison: its function failed on it maxDequeueCount times"
REASON_WIDTH = 60


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


def _pick(queues: Any, name: str) -> Queue | None:
    """``queues`` may be a RetryQueues, any object with those attributes, or a dict (None for a
    queue it does not have)."""
    return queues.get(name) if isinstance(queues, Mapping) else getattr(queues, name, None)


def _queue_errors() -> tuple[type[BaseException], ...]:
    """What a queue operation raises when the queue cannot be used (not a bug of ours)."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    try:
        from azure.core.exceptions import AzureError
    except ImportError:  # pragma: no cover - azure-core is a dependency
        return errors
    return errors + (AzureError,)


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


# -- durations -------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'30s', '15m', '2h', '1d' (or plain seconds) -> seconds; argparse-friendly errors."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30s, 15m, 2h or 1d")
    return float(match[1]) * _UNITS[match[2] or "s"]


def format_duration(seconds: float) -> str:
    """The largest whole unit: 45s, 15m, 2h, 3d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- the command -----------------------------------------------------------------------------


def add_deadletter_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``deadletter list|show|replay`` to the CLI's subparsers (``add_subparsers()`` result)."""
    parser = commands.add_parser("deadletter", help="list, show or replay dead letters and poison messages")
    actions = parser.add_subparsers(dest="deadletter_command", required=True)
    listing = actions.add_parser("list", help="one line per dead letter; changes nothing")
    _filter_arguments(listing)
    show = actions.add_parser("show", help="one dead letter (or poison message) in full, with its metrics")
    show.add_argument("id", help="the ID that list shows (or the envelope id)")
    replay = actions.add_parser("replay", help="send matching dead letters back to the retry queue as attempt 1")
    _filter_arguments(replay)
    replay.add_argument("--all", action="store_true", help="replay everything (required when no filter is given)")
    return parser


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sink", choices=SINKS, help="only this sink's")
    parser.add_argument("--older-than", type=parse_duration, metavar="D", help="only those dead-lettered at least D ago (30s, 15m, 2h, 1d)")
    parser.add_argument("--newer-than", type=parse_duration, metavar="D", help="only those dead-lettered less than D ago")
    parser.add_argument("--poison", action="store_true", help="the retry queue's poison queue instead of the dead-letter queue")
    parser.add_argument("--delivery-poison", action="store_true",
                        help="the delivery queue's poison queue instead (replayed to the delivery queue)")


def deadletter_main(args: argparse.Namespace) -> int:
    """What ``python -m bridges deadletter ...`` runs: the configured queues, the real clock."""
    from bridges.settings import environment, load_settings

    try:
        queues = open_retry_queues(load_settings(), environment())
    except ValueError as exc:  # our own messages: no secrets
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return run_deadletter(args, queues, time.time_ns(), sys.stdout, sys.stderr)


def run_deadletter(args: argparse.Namespace, queues: Any, now_ns: int, out: TextIO, err: TextIO) -> int:
    """Run ``deadletter list|show|replay``; 0 done, 1 something failed, 2 bad usage."""
    try:
        older = _duration_arg(getattr(args, "older_than", None))
        newer = _duration_arg(getattr(args, "newer_than", None))
    except argparse.ArgumentTypeError as exc:
        print(f"usage error: {exc}", file=err)
        return 2
    sink = getattr(args, "sink", None)
    if sink is not None and sink not in SINKS:
        print(f"usage error: unknown sink {sink!r}: one of {', '.join(SINKS)}", file=err)
        return 2
    delivery_poison = bool(getattr(args, "delivery_poison", False))
    poison = delivery_poison or bool(getattr(args, "poison", False))
    source = _pick(queues, "delivery_poison" if delivery_poison else "poison" if poison else "deadletter")
    target = _pick(queues, "delivery" if delivery_poison else "retry")

    def wanted(record: Record) -> bool:
        age = record.age_seconds(now_ns)
        return ((sink is None or record.sink == sink) and (older is None or age >= older)
                and (newer is None or age < newer))

    command = args.deadletter_command
    try:
        if command == "list":
            assert source is not None  # every queues object has the dead-letter and poison queues
            return _list(source, poison, wanted, now_ns, out, err)
        if command == "show":
            return _show(args.id, queues, now_ns, out, err)
        if command == "replay":
            if not (getattr(args, "all", False) or sink or older is not None or newer is not None):
                print("usage error: refusing to replay everything without a filter: give --sink, --older-than, "
                      "--newer-than, or --all", file=err)
                return 2
            assert source is not None and target is not None  # as above, and the retry/delivery queue
            return _replay(source, target, poison, wanted, now_ns, err)
    except _queue_errors() as exc:
        print(f"error: queue unusable: {short_reason(exc)}", file=err)
        return 1
    print(f"usage error: unknown deadletter command {command!r}: list, show or replay", file=err)
    return 2


def _duration_arg(value: Any) -> float | None:
    """argparse gives seconds (float); another caller may pass the text."""
    return None if value is None else value if isinstance(value, (int, float)) else parse_duration(value)


def _list(source: Queue, poison: bool, wanted, now_ns: int, out: TextIO, err: TextIO) -> int:
    records = [r for r in (read_record(m, poison) for m in read_all(source)) if wanted(r)]
    rows = [("ID", "SINK", "METRICS", "ATTEMPT", "AGE", "REASON")]
    for r in records:
        env = r.envelope
        rows.append((r.message.id, r.sink, str(env.count) if env else "?", str(env.attempt) if env else "?",
                     format_duration(r.age_seconds(now_ns)), _shorten(r.reason)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    if records:
        for row in rows:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5], file=out)
    print(f"{len(records)} {'poison messages' if poison else 'dead letters'} in {source.name}", file=err)
    return 0


def _shorten(text: str, width: int = REASON_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show(wanted_id: str, queues: Any, now_ns: int, out: TextIO, err: TextIO) -> int:
    """Looks in the dead-letter queue, then the poison queues, by message id or envelope id."""
    for name, poison in (("deadletter", False), ("poison", True), ("delivery_poison", True)):
        queue = _pick(queues, name)
        if queue is None:
            continue
        for message in read_all(queue):
            record = read_record(message, poison)
            if wanted_id in (message.id, record.envelope.id if record.envelope else None):
                return _print_record(record, queue, now_ns, out, err)
    print(f"no dead letter or poison message with id {wanted_id}", file=err)
    return 1


def _print_record(record: Record, queue: Queue, now_ns: int, out: TextIO, err: TextIO) -> int:
    from bridges.formats.canonical import encode_ndjson

    env = record.envelope
    lines = [("id", record.message.id), ("queue", queue.name), ("reason", record.reason),
             ("dead-lettered", f"{format_rfc3339(record.at_ns)} ({format_duration(record.age_seconds(now_ns))} ago)")]
    if env is not None:
        lines += [("envelope", env.id), ("sink", env.sink), ("attempt", str(env.attempt)), ("metrics", str(env.count)),
                  ("first failure", format_rfc3339(env.first_failure_ns)),
                  ("not before", format_rfc3339(env.not_before_ns)), ("last error", env.last_error)]
    for name, value in lines:
        print(f"{name}: {value}", file=out)
    if env is None:
        return 1
    try:
        ndjson = encode_ndjson(metrics_of(env)).decode("utf-8")
    except EnvelopeError as exc:
        print(f"error: {exc}", file=err)
        return 1
    print("", file=out)
    out.write(ndjson)
    return 0


def _replay(source: Queue, retry: Queue, poison: bool, wanted, now_ns: int, err: TextIO) -> int:
    """Hold every record, let the others go at once, then send each match to the retry queue
    and delete it, in that order (a crash in between duplicates, never loses)."""
    held = [read_record(m, poison) for m in _receive_all(source, REPLAY_HIDE_SECONDS).values()]
    chosen = [r for r in held if wanted(r)]
    for record in held:
        if not wanted(record):
            _release(source, record.message)
    progress = Progress(err, len(chosen))
    failed: list[tuple[Record, str]] = []
    for done, record in enumerate(chosen, start=1):
        failure = _replay_one(record, source, retry, now_ns)
        if failure:
            failed.append((record, failure))
        progress.update(done)
    progress.finish()
    kind = "poison messages" if poison else "dead letters"
    print(f"replayed {len(chosen) - len(failed)} of {len(chosen)} {kind} from {source.name} to {retry.name}", file=err)
    for record, failure in failed:
        print(f"not replayed: {record.message.id} ({record.sink}): {failure}", file=err)
    return 1 if failed else 0


def _replay_one(record: Record, source: Queue, retry: Queue, now_ns: int) -> str | None:
    """None when replayed, else why not (the record then stays where it was)."""
    if record.envelope is None:
        _release(source, record.message)
        return record.reason
    try:
        retry.send(record.replayed(now_ns).to_text())
    except _queue_errors() as exc:
        _release(source, record.message)
        return f"could not be sent to {retry.name}: {short_reason(exc)}"
    try:
        source.delete(record.message)
    except StaleReceipt:
        return f"sent to {retry.name} but held too long to delete from {source.name}: it may be replayed twice"
    except _queue_errors() as exc:
        return f"sent to {retry.name} but not deleted from {source.name} ({short_reason(exc)}): it may be replayed twice"
    return None


class Progress:
    """``[#####.....] 5/10`` on stderr: redrawn in place on a terminal, one final line otherwise
    (so logs and CI output stay readable)."""

    WIDTH = 20

    def __init__(self, stream: TextIO, total: int):
        self.stream = stream
        self.total = total
        self.done = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def bar(self) -> str:
        filled = self.WIDTH if self.total == 0 else self.WIDTH * self.done // self.total
        return f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.total}"

    def update(self, done: int) -> None:
        self.done = done
        if self.tty:
            self.stream.write("\r" + self.bar())
            self.stream.flush()

    def finish(self) -> None:
        self.stream.write(("\r" if self.tty else "") + self.bar() + "\n")
        self.stream.flush()
