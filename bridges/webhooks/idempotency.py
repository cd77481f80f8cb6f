"""Webhook delivery ids already seen, so a redelivered webhook is answered without sending twice.

A sender that retries (or sends the same event twice at once) must not double the metrics. The
HTTP trigger asks the store before fanning out:

    claim(source, id)    -> NEW          nobody has it: process it, then complete() or release()
                         -> DUPLICATE    completed within the TTL: answer as already accepted
                         -> IN_PROGRESS  someone is processing it right now (within its lease)
    complete(source, id) the delivery was accepted and handed on: duplicates for `ttl_seconds`
    release(source, id)  processing failed: a retry of the same delivery may claim it again

A claim writes an in-progress record atomically, so of concurrent duplicates exactly one gets
NEW. A record is free to claim again when it is a completed one older than the TTL, or an
in-progress one older than its lease (the process that claimed it died without complete or
release). ``release`` deletes only an in-progress record: a completed delivery stays a duplicate
even if a late failure path releases it. Times come from the injected clock (Unix seconds).

Two stores with those semantics:
- ``TableStore``: an Azure Storage table (or Azurite), from the same ``AzureWebJobsStorage``
  settings the host and our retry queue read (bridges.queues). PartitionKey is the source, RowKey
  the SHA-256 hex of the delivery id (any text becomes a valid key); the first 200 characters of
  the id are kept for people reading the table. Claim = create_entity (a conflict means a record
  exists: read it); taking over an expired record = update_entity with its ETag and If-Match, so
  of two takers one wins and the other re-reads. Azure Tables has no TTL: old rows stay until
  deleted (they are small, and claim treats them as free).
- ``SqliteStore``: one SQLite file for the local runner, safe across threads and processes: a
  connection and one BEGIN IMMEDIATE transaction per call, a busy timeout, WAL. Each claim also
  drops the records that are free to claim again, so the file stays small.

Failures talking to storage raise ``IdempotencyError``; its message names the operation and the
service's status / error code, never the connection string, key or SAS token (the SDK's own
exception is not chained for that reason).

This module never imports azure.functions; the Azure SDKs are imported only when used.
"""
from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from bridges.queues import SETTING, SqliteConnection, storage_client, storage_configured, storage_setting

NEW, DUPLICATE, IN_PROGRESS = "new", "duplicate", "in_progress"
COMPLETED = "completed"  # the state of a record after complete()

LOCAL_FILE = "idempotency.sqlite3"
ID_PREVIEW = 200  # characters of the delivery id kept in a Table record for people
TAKEOVER_ATTEMPTS = 10  # lost races in a row before answering IN_PROGRESS


class IdempotencyError(Exception):
    """The store could not be read or written; the delivery's fate is unknown. No secrets inside."""


class IdempotencyStore(Protocol):
    def claim(self, source: str, delivery_id: str) -> str: ...
    def complete(self, source: str, delivery_id: str) -> None: ...
    def release(self, source: str, delivery_id: str) -> None: ...


def _verdict(state: str, since: float, now: float, ttl: float, lease: float) -> str | None:
    """What a claim answers for an existing record, or None when the record is free to take."""
    if state == COMPLETED:
        return DUPLICATE if now - since < ttl else None
    return IN_PROGRESS if now - since < lease else None


def _check_seconds(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return value


# --------------------------------------------------------------------------- SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    source TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    state TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (source, delivery_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_since ON deliveries (state, since);
"""


class SqliteStore:
    """Delivery ids in one SQLite file (the local runner's state folder)."""

    BUSY_TIMEOUT = 30.0

    def __init__(self, path: str | Path, ttl_seconds: float, lease_seconds: float = 300,
                 clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.ttl = _check_seconds("ttl_seconds", ttl_seconds)
        self.lease = _check_seconds("lease_seconds", lease_seconds)
        self.clock = clock
        with self._errors("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            finally:
                db.close()

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, ttl_seconds={self.ttl}, lease_seconds={self.lease})"

    def _errors(self, operation: str) -> _Translate:
        return _Translate(f"idempotency store {self.path}: {operation}", (sqlite3.Error, OSError))

    def claim(self, source: str, delivery_id: str) -> str:
        now = float(self.clock())
        with self._errors("claim"), SqliteConnection(self.path, self.BUSY_TIMEOUT) as db:
            db.execute(  # forget what anyone may take anyway
                "DELETE FROM deliveries WHERE (state = ? AND since <= ?) OR (state = ? AND since <= ?)",
                (COMPLETED, now - self.ttl, IN_PROGRESS, now - self.lease),
            )
            row = db.execute(
                "SELECT state, since FROM deliveries WHERE source = ? AND delivery_id = ?", (source, delivery_id)
            ).fetchone()
            verdict = row and _verdict(row[0], row[1], now, self.ttl, self.lease)
            if verdict:
                return verdict
            db.execute(
                "INSERT OR REPLACE INTO deliveries (source, delivery_id, state, since) VALUES (?, ?, ?, ?)",
                (source, delivery_id, IN_PROGRESS, now),
            )
            return NEW

    def complete(self, source: str, delivery_id: str) -> None:
        now = float(self.clock())
        with self._errors("complete"), SqliteConnection(self.path, self.BUSY_TIMEOUT) as db:
            db.execute(
                "INSERT OR REPLACE INTO deliveries (source, delivery_id, state, since) VALUES (?, ?, ?, ?)",
                (source, delivery_id, COMPLETED, now),
            )

    def release(self, source: str, delivery_id: str) -> None:
        with self._errors("release"), SqliteConnection(self.path, self.BUSY_TIMEOUT) as db:
            db.execute(
                "DELETE FROM deliveries WHERE source = ? AND delivery_id = ? AND state = ?",
                (source, delivery_id, IN_PROGRESS),
            )


# --------------------------------------------------------------------------- Azure Table storage


def row_key(delivery_id: str) -> str:
    """The Table RowKey for a delivery id: SHA-256 hex, so '/', '#', '?' or 2 KB ids are all fine."""
    return hashlib.sha256(delivery_id.encode("utf-8")).hexdigest()


class TableStore:
    """Delivery ids in an Azure Storage table (or Azurite), through azure-data-tables."""

    def __init__(self, table_client: Any, ttl_seconds: float, lease_seconds: float = 300,
                 clock: Callable[[], float] = time.time):
        self.client = table_client
        self.ttl = _check_seconds("ttl_seconds", ttl_seconds)
        self.lease = _check_seconds("lease_seconds", lease_seconds)
        self.clock = clock
        self._created = False

    def __repr__(self) -> str:  # the account and table only: a client's url may carry a SAS token
        return f"TableStore({self.client.account_name!r}, {self.client.table_name!r}, ttl_seconds={self.ttl})"

    @classmethod
    def from_settings(cls, table_name: str, environ: Mapping[str, str], **kwargs: Any) -> TableStore:
        """A store on table `table_name` from the AzureWebJobsStorage settings; kwargs go to TableStore."""
        try:
            client = table_client(table_name, environ)
        except ValueError as exc:  # a missing setting or a malformed string: the messages quote no key
            raise IdempotencyError(f"idempotency store {table_name}: {exc}") from None
        return cls(client, **kwargs)

    def _errors(self, operation: str) -> _Translate:
        from azure.core.exceptions import AzureError

        return _Translate(f"idempotency store {self.client.account_name}/{self.client.table_name}: {operation}",
                          (AzureError,))

    def _ensure(self) -> None:
        """Create the table on first use, not at construction, so building a store costs no call."""
        if self._created:
            return
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_table()
        except ResourceExistsError:
            pass
        self._created = True

    def _entity(self, source: str, delivery_id: str, state: str, now: float) -> dict[str, Any]:
        return {
            "PartitionKey": source,
            "RowKey": row_key(delivery_id),
            "DeliveryId": delivery_id[:ID_PREVIEW],
            "State": state,
            "Since": now,
        }

    def claim(self, source: str, delivery_id: str) -> str:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        now = float(self.clock())
        entity = self._entity(source, delivery_id, IN_PROGRESS, now)
        with self._errors("claim"):
            self._ensure()
            for _ in range(TAKEOVER_ATTEMPTS):
                try:
                    self.client.create_entity(entity)
                    return NEW
                except ResourceExistsError:
                    pass
                try:
                    current = self.client.get_entity(source, entity["RowKey"])
                except ResourceNotFoundError:
                    continue  # released in between: try to create it again
                verdict = _verdict(current.get("State", ""), float(current.get("Since", 0.0)), now,
                                   self.ttl, self.lease)
                if verdict:
                    return verdict
                try:
                    self.client.update_entity(entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"],
                                              match_condition=MatchConditions.IfNotModified)
                    return NEW
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue  # someone else changed it first: read again
        return IN_PROGRESS  # it keeps changing under us: someone is working on it

    def complete(self, source: str, delivery_id: str) -> None:
        from azure.data.tables import UpdateMode

        with self._errors("complete"):
            self._ensure()
            self.client.upsert_entity(self._entity(source, delivery_id, COMPLETED, float(self.clock())),
                                      mode=UpdateMode.REPLACE)

    def release(self, source: str, delivery_id: str) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        key = row_key(delivery_id)
        with self._errors("release"):
            self._ensure()
            try:
                current = self.client.get_entity(source, key)
            except ResourceNotFoundError:
                return
            if current.get("State") != IN_PROGRESS:
                return
            try:  # only the record we read: a completion in between stays
                self.client.delete_entity(source, key, etag=current.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                pass


def table_client(name: str, environ: Mapping[str, str], **kwargs: Any) -> Any:
    """A TableClient for table `name`, from the AzureWebJobsStorage settings the host reads.

    A connection string in ``AzureWebJobsStorage`` wins. Otherwise identity-based settings:
    ``__tableServiceUri`` (or ``__serviceUri``, or ``__accountName`` -> the public-cloud table
    endpoint), with the credential bridges.queues picks for the queue (``__credential``,
    ``__clientId``). azure-data-tables 12.7 speaks API version 2019-02-02, which Azurite 3.35
    accepts as it is (no api_version override needed, unlike azure-storage-queue).
    """
    from azure.data.tables import TableClient

    return storage_client(TableClient, "table", name, environ, **kwargs)


# --------------------------------------------------------------------------- shared


class _Translate:
    """Turn a storage failure into IdempotencyError: operation, type and codes, never the text.

    The SDK's message can quote the request URL (with a SAS token) or the response; ours does not.
    """

    def __init__(self, prefix: str, kinds: tuple[type[BaseException], ...]):
        self.prefix = prefix
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc is None or not isinstance(exc, self.kinds):
            return False
        details = [type(exc).__name__]
        status = getattr(exc, "status_code", None)
        if status:
            details.append(f"HTTP {status}")
        code = getattr(exc, "error_code", None)
        code = getattr(code, "value", code)  # the SDK gives a TableErrorCode enum
        if code:
            details.append(str(code))
        if isinstance(exc, sqlite3.Error):
            details.append(str(exc))  # sqlite's own words ("database is locked"): no secrets in a file path
        raise IdempotencyError(f"{self.prefix} failed ({', '.join(details)})") from None


def open_store(table_name: str, ttl_seconds: float, environ: Mapping[str, str], local_dir: Path) -> IdempotencyStore:
    """Azure Table `table_name` when AzureWebJobsStorage is configured, else <local_dir>/idempotency.sqlite3.

    Locally one file holds every table name's records (sources keep them apart).
    """
    if storage_configured(environ) or storage_setting(environ, f"{SETTING}__tableServiceUri"):
        return TableStore.from_settings(table_name, environ, ttl_seconds=ttl_seconds)
    return SqliteStore(Path(local_dir) / LOCAL_FILE, ttl_seconds)
