"""Queue backends behind one small interface, for the retry path.

Two backends with the same semantics (Azure Storage queue peek-lock, CONTRACTS §6.3):

- ``StorageQueue``: an Azure Storage queue (or Azurite), built from the ``AzureWebJobsStorage``
  settings exactly as the Functions host reads them, so the retry function's queue trigger and
  our sender talk to the same queue. Messages are base64 on the wire because the host's default
  ``messageEncoding`` is ``base64`` and azure-storage-queue v12 sends plain text by default.
- ``SqliteQueue``: an embedded queue for the local runner (no emulator needed). Safe across
  threads and processes: a connection per call, WAL, a busy timeout and ``BEGIN IMMEDIATE``.

Semantics both honour:
- ``receive`` hides messages for ``visibility_timeout`` seconds, increments ``dequeue_count``
  and hands out a new ``pop_receipt``; only the newest receipt may ``delete`` or ``release``,
  so a worker that outlived its lease cannot delete a message someone else now owns
  (``StaleReceipt``).
- ``send(text, visibility_timeout=N)`` makes the message visible only after N seconds (backoff).
- ``peek`` changes nothing; ``depth`` counts hidden messages too (approximate on Azure).
- Azure works in whole seconds: timeouts are rounded up (at least 1 s on receive).
- Poison messages: after ``maxDequeueCount`` tries the host moves a message to
  ``poison_name(queue)``; a host of our own (the local runner) should do the same.

This module never imports azure.functions; the Azure SDKs are imported only when used.
"""
from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

# A queue message holds at most 64 KiB as sent; base64 turns 3 bytes into 4 characters.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGE_TEXT = MAX_MESSAGE_BYTES // 4 * 3  # 49,152 bytes of UTF-8 text

SETTING = "AzureWebJobsStorage"
LOCAL_FILE = "queues.sqlite3"


@dataclass(frozen=True)
class Message:
    """One message as received (or peeked: then ``pop_receipt`` and ``next_visible_at`` are None).

    Times are Unix seconds (float), like ``time.time()``.
    """

    id: str
    pop_receipt: str | None
    text: str
    dequeue_count: int
    inserted_at: float
    next_visible_at: float | None


class StaleReceipt(Exception):
    """The message was received again, released or deleted since this receipt was issued."""


class Queue(Protocol):
    name: str

    def send(self, text: str, visibility_timeout: float = 0) -> None: ...
    def receive(self, max_messages: int, visibility_timeout: float) -> list[Message]: ...
    def delete(self, message: Message) -> None: ...
    def release(self, message: Message, visibility_timeout: float = 0) -> None: ...
    def peek(self, max_messages: int) -> list[Message]: ...
    def depth(self) -> int: ...


def poison_name(queue_name: str) -> str:
    """Where the Functions host moves a message after maxDequeueCount failures."""
    return f"{queue_name}-poison"


def check_text(text: str) -> None:
    """Refuse text that would not fit in one queue message after base64 (split it before)."""
    if not isinstance(text, str):
        raise TypeError(f"queue message text must be str, not {type(text).__name__}")
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_TEXT:
        raise ValueError(
            f"queue message text is {size} bytes of UTF-8; at most {MAX_MESSAGE_TEXT} fit in "
            f"one {MAX_MESSAGE_BYTES}-byte message after base64: split it before sending"
        )


def _check_timeout(seconds: float) -> float:
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"visibility_timeout must be >= 0 seconds, got {seconds}")
    return float(seconds)


# --------------------------------------------------------------------------- SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    inserted_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    pop_receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at, seq);
"""


class SqliteQueue:
    """An embedded queue in one SQLite file (many queues per file, told apart by name)."""

    BUSY_TIMEOUT = 30.0

    def __init__(self, path: str | Path, name: str, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.name = name
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
            db.executescript(_SCHEMA)
        finally:
            db.close()

    def __repr__(self) -> str:
        return f"SqliteQueue({str(self.path)!r}, {self.name!r})"

    def _connect(self, write: bool = True) -> SqliteConnection:
        return SqliteConnection(self.path, self.BUSY_TIMEOUT, write)

    def send(self, text: str, visibility_timeout: float = 0) -> None:
        check_text(text)
        now = self.clock()
        with self._connect() as db:
            db.execute(
                "INSERT INTO messages (queue, id, text, inserted_at, visible_at) VALUES (?, ?, ?, ?, ?)",
                (self.name, str(uuid.uuid4()), text, now, now + _check_timeout(visibility_timeout)),
            )

    def receive(self, max_messages: int, visibility_timeout: float) -> list[Message]:
        now = self.clock()
        until = now + _check_timeout(visibility_timeout)
        out = []
        with self._connect() as db:  # the write lock from the start: no two receivers share a row
            rows = db.execute(
                "SELECT seq, id, text, dequeue_count, inserted_at FROM messages "
                "WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (self.name, now, max(0, int(max_messages))),
            ).fetchall()
            for seq, id_, text, count, inserted_at in rows:
                receipt = uuid.uuid4().hex
                db.execute(
                    "UPDATE messages SET visible_at = ?, dequeue_count = ?, pop_receipt = ? WHERE seq = ?",
                    (until, count + 1, receipt, seq),
                )
                out.append(Message(id_, receipt, text, count + 1, inserted_at, until))
        return out

    def delete(self, message: Message) -> None:
        with self._connect() as db:
            cur = db.execute(
                "DELETE FROM messages WHERE queue = ? AND id = ? AND pop_receipt = ?",
                (self.name, message.id, message.pop_receipt),
            )
            if cur.rowcount != 1:
                raise StaleReceipt(f"message {message.id} in {self.name!r}: receipt no longer valid")

    def release(self, message: Message, visibility_timeout: float = 0) -> None:
        until = self.clock() + _check_timeout(visibility_timeout)
        with self._connect() as db:
            # A fresh receipt: the worker that released the message no longer owns it.
            cur = db.execute(
                "UPDATE messages SET visible_at = ?, pop_receipt = ? "
                "WHERE queue = ? AND id = ? AND pop_receipt = ?",
                (until, uuid.uuid4().hex, self.name, message.id, message.pop_receipt),
            )
            if cur.rowcount != 1:
                raise StaleReceipt(f"message {message.id} in {self.name!r}: receipt no longer valid")

    def peek(self, max_messages: int) -> list[Message]:
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT id, text, dequeue_count, inserted_at FROM messages "
                "WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                (self.name, self.clock(), max(0, int(max_messages))),
            ).fetchall()
        return [Message(id_, None, text, count, ins, None) for id_, text, count, ins in rows]

    def depth(self) -> int:
        with self._connect(write=False) as db:
            (count,) = db.execute("SELECT COUNT(*) FROM messages WHERE queue = ?", (self.name,)).fetchone()
        return count


_WRITERS: dict[Path, threading.Lock] = {}
_WRITERS_LOCK = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    """One lock per database path for this process's writers: they wait on it and wake at once,
    instead of in SQLite's busy handler, which sleeps in steps of up to 100 ms (a long tail on
    every HTTP answer while the delivery function writes). Other processes, and a second
    spelling of the same path (keyed as given: no syscall per write), meet ``_begin_write``."""
    with _WRITERS_LOCK:
        return _WRITERS.setdefault(path, threading.Lock())


class SqliteConnection:
    """One short transaction on a fresh connection: nothing shared between threads."""

    def __init__(self, path: Path, busy_timeout: float, write: bool = True):
        self.writer = _writer_lock(path) if write else None
        self.busy_timeout = busy_timeout
        self.db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
        self.begin = "BEGIN IMMEDIATE" if write else "BEGIN"  # IMMEDIATE: take the write lock first

    def __enter__(self) -> sqlite3.Connection:
        if self.writer is not None:
            self.writer.acquire()
        try:
            if self.writer is None:
                self.db.execute(self.begin)
            else:
                self._begin_write()
        except BaseException:  # e.g. still locked after the busy timeout: __exit__ will not run
            self._close()
            raise
        return self.db

    def _begin_write(self) -> None:
        """Take the write lock, retrying every fraction of a millisecond while another process
        holds it: SQLite's own busy handler sleeps 1, 2, 5, 10... up to 100 ms between tries,
        which puts tens of milliseconds on an HTTP answer for a lock held for one."""
        self.db.execute("PRAGMA busy_timeout = 0")
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.0002
        while True:
            try:
                self.db.execute(self.begin)
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 0.002)
        self.db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")  # for the rest

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self.db.close()
        finally:
            if self.writer is not None:
                self.writer.release()


# --------------------------------------------------------------------------- Azure Storage


class StorageQueue:
    """An Azure Storage queue (or Azurite) through azure-storage-queue, base64 on the wire."""

    def __init__(self, client: Any):
        self.client = client  # a QueueClient built with the base64 policies (see queue_client)
        self.name = client.queue_name
        self._created = False

    def __repr__(self) -> str:
        return f"StorageQueue({self.client.url!r})"

    @classmethod
    def from_settings(cls, name: str, environ: Mapping[str, str]) -> StorageQueue:
        return cls(queue_client(name, environ))

    def _ensure(self) -> None:
        """Create the queue on first use, not at construction, so building one costs no call."""
        if self._created:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_queue()
        except ResourceExistsError:
            pass
        self._created = True

    def send(self, text: str, visibility_timeout: float = 0) -> None:
        check_text(text)
        self._ensure()
        self.client.send_message(text, visibility_timeout=_seconds(visibility_timeout))

    def receive(self, max_messages: int, visibility_timeout: float) -> list[Message]:
        if max_messages <= 0:
            return []
        self._ensure()
        pages = self.client.receive_messages(
            max_messages=max_messages,
            messages_per_page=min(max_messages, 32),  # the service's limit per call
            visibility_timeout=max(1, _seconds(visibility_timeout)),
        )
        return [_from_azure(m) for m in pages]

    def delete(self, message: Message) -> None:
        self._ensure()
        with _stale_receipt(message):
            self.client.delete_message(message.id, message.pop_receipt)

    def release(self, message: Message, visibility_timeout: float = 0) -> None:
        self._ensure()
        with _stale_receipt(message):
            self.client.update_message(
                message.id, message.pop_receipt, visibility_timeout=_seconds(visibility_timeout)
            )

    def peek(self, max_messages: int) -> list[Message]:
        if max_messages <= 0:
            return []
        self._ensure()
        return [_from_azure(m) for m in self.client.peek_messages(max_messages=min(max_messages, 32))]

    def depth(self) -> int:
        self._ensure()
        return int(self.client.get_queue_properties().approximate_message_count or 0)


def _seconds(timeout: float) -> int:
    return math.ceil(_check_timeout(timeout))


def _from_azure(m: Any) -> Message:
    return Message(
        id=m.id,
        pop_receipt=m.pop_receipt,
        text=m.content,
        dequeue_count=int(m.dequeue_count or 0),
        inserted_at=m.inserted_on.timestamp() if m.inserted_on else 0.0,
        next_visible_at=m.next_visible_on.timestamp() if m.next_visible_on else None,
    )


class _stale_receipt:
    """Turn the service's 'wrong receipt' / 'no such message' answers into StaleReceipt."""

    CODES: ClassVar[set[str]] = {"PopReceiptMismatch", "MessageNotFound"}

    def __init__(self, message: Message):
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        from azure.core.exceptions import HttpResponseError

        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code)  # the SDK gives a StorageErrorCode enum
        if isinstance(exc, HttpResponseError) and code in self.CODES:
            raise StaleReceipt(f"message {self.message.id}: {code}") from exc
        return False


# --------------------------------------------------------------------------- settings


def storage_setting(environ: Mapping[str, str], key: str) -> str:
    value = (environ.get(key) or "").strip()
    if value.startswith("@Microsoft.KeyVault("):
        raise ValueError(f"app setting {key} is an unresolved Key Vault reference")
    return value


def storage_configured(environ: Mapping[str, str]) -> bool:
    """True when the host would find a storage account: a connection string or identity settings."""
    if storage_setting(environ, SETTING):
        return True
    return any(
        storage_setting(environ, f"{SETTING}__{part}")
        for part in ("queueServiceUri", "serviceUri", "accountName")
    )


def queue_client(name: str, environ: Mapping[str, str], **kwargs: Any) -> Any:
    """A QueueClient for queue `name`, from the AzureWebJobsStorage settings the host reads.

    A connection string in ``AzureWebJobsStorage`` wins (including Azurite's
    ``UseDevelopmentStorage=true``). Otherwise identity-based settings: ``__queueServiceUri``
    (or ``__serviceUri``, or ``__accountName`` -> the public-cloud queue endpoint), with
    ``__credential=managedidentity`` (+ optional ``__clientId``) -> ManagedIdentityCredential,
    anything else -> DefaultAzureCredential (what the host does for local development).
    """
    from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

    kwargs.setdefault("message_encode_policy", TextBase64EncodePolicy())
    kwargs.setdefault("message_decode_policy", TextBase64DecodePolicy())
    return storage_client(QueueClient, "queue", name, environ, **kwargs)


def storage_client(client_class: Any, service: str, name: str, environ: Mapping[str, str], **kwargs: Any) -> Any:
    """A client of the ``service`` ("queue" or "table") resource ``name``, as the host finds the
    account: the connection string, else ``__<service>ServiceUri``, ``__serviceUri`` or
    ``__accountName`` (public cloud) with the identity credential."""
    conn = storage_setting(environ, SETTING)
    if conn:
        return client_class.from_connection_string(conn, name, **kwargs)
    url = storage_setting(environ, f"{SETTING}__{service}ServiceUri") or storage_setting(environ, f"{SETTING}__serviceUri")
    if not url:
        account = storage_setting(environ, f"{SETTING}__accountName")
        if not account:
            raise ValueError(
                f"no storage account: set {SETTING} (a connection string) or "
                f"{SETTING}__{service}ServiceUri / {SETTING}__accountName"
            )
        url = f"https://{account}.{service}.core.windows.net"
    return client_class(url.rstrip("/"), name, credential=storage_credential(environ), **kwargs)


def storage_credential(environ: Mapping[str, str]) -> Any:
    client_id = storage_setting(environ, f"{SETTING}__clientId") or None
    if storage_setting(environ, f"{SETTING}__credential").lower() == "managedidentity":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=client_id)


def open_queue(name: str, environ: Mapping[str, str], local_dir: Path) -> Queue:
    """The queue `name`: on Azure Storage when AzureWebJobsStorage is configured, else local SQLite."""
    if storage_configured(environ):
        return StorageQueue.from_settings(name, environ)
    return SqliteQueue(Path(local_dir) / LOCAL_FILE, name)
