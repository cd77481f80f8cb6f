"""``python -m bridges deadletter list|show|replay``: the command over the dead-letter store.

The queues, their records and how they are read without changing anything are
``bridges.retry.deadletters``'s; this module parses the command line, filters, prints and replays.

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
from collections.abc import Mapping
from typing import Any, TextIO

from bridges.queues import Queue, StaleReceipt
from bridges.retry.deadletters import (
    Record,
    _receive_all,
    _release,
    open_retry_queues,
    read_all,
    read_record,
    short_reason,
)
from bridges.retry.envelopes import SINKS, EnvelopeError, metrics_of
from bridges.timestamps import format_rfc3339

REPLAY_HIDE_SECONDS = 600  # how long a replay holds its records: long enough to send and delete them
REASON_WIDTH = 60


# -- queues ----------------------------------------------------------------------------------


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
