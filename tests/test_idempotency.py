"""The idempotency store: a webhook delivery seen again is a duplicate, concurrent ones resolve to one.

Both stores run the same contract tests: the embedded SQLite file and a real Azurite table service
(the `azurite_table` fixture; skipped, saying why, when Azurite is not installed; a failure under CI).
"""
from __future__ import annotations

import multiprocessing
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from peers import free_port
from peers.azurite import ACCOUNT, ACCOUNT_KEY

from bridges.webhooks.idempotency import (
    DUPLICATE,
    IN_PROGRESS,
    NEW,
    IdempotencyError,
    SqliteStore,
    TableStore,
    open_store,
    row_key,
    table_client,
)

TTL = 3600.0
LEASE = 300.0
T0 = 1_795_341_600.0  # 2026-11-22T10:00:00Z
THREADS = 12
PROCESSES = 6


class FakeClock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    make: object  # () -> a fresh store on the same storage (another "instance" of the app)
    clock: FakeClock

    @property
    def store(self):
        return self.make()


def _table_name() -> str:
    return f"idem{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["sqlite", "azurite"])
def h(request, tmp_path) -> Harness:
    clock = FakeClock()
    if request.param == "sqlite":
        path = tmp_path / "idempotency.sqlite3"
        return Harness(lambda: SqliteStore(path, TTL, lease_seconds=LEASE, clock=clock), clock)
    env = {"AzureWebJobsStorage": request.getfixturevalue("azurite_table").connection_string}
    name = _table_name()
    return Harness(lambda: TableStore.from_settings(name, env, ttl_seconds=TTL, lease_seconds=LEASE, clock=clock),
                   clock)


# ----------------------------------------------------------------------------- contract


def test_first_claim_is_new_then_in_progress_then_duplicate(h):
    s = h.store
    assert s.claim("stripe", "evt_1") == NEW
    assert s.claim("stripe", "evt_1") == IN_PROGRESS
    s.complete("stripe", "evt_1")
    assert s.claim("stripe", "evt_1") == DUPLICATE
    assert h.store.claim("stripe", "evt_1") == DUPLICATE  # another instance sees it too


def test_sources_and_ids_are_kept_apart(h):
    s = h.store
    assert s.claim("stripe", "evt_1") == NEW
    assert s.claim("github", "evt_1") == NEW
    assert s.claim("stripe", "evt_2") == NEW


def test_duplicate_until_the_ttl_is_over(h):
    s = h.store
    assert s.claim("stripe", "evt_1") == NEW
    h.clock.advance(50)
    s.complete("stripe", "evt_1")
    h.clock.advance(TTL - 1)  # counted from completion, not from the claim
    assert s.claim("stripe", "evt_1") == DUPLICATE
    h.clock.advance(1)
    assert s.claim("stripe", "evt_1") == NEW
    assert s.claim("stripe", "evt_1") == IN_PROGRESS


def test_an_expired_lease_is_taken_over(h):
    """The process that claimed the delivery died without complete or release."""
    assert h.store.claim("stripe", "evt_1") == NEW
    h.clock.advance(LEASE - 1)
    assert h.store.claim("stripe", "evt_1") == IN_PROGRESS
    h.clock.advance(1)
    assert h.store.claim("stripe", "evt_1") == NEW
    assert h.store.claim("stripe", "evt_1") == IN_PROGRESS  # the new lease starts now
    h.clock.advance(LEASE - 1)
    assert h.store.claim("stripe", "evt_1") == IN_PROGRESS


def test_release_lets_a_retry_claim_again(h):
    s = h.store
    assert s.claim("stripe", "evt_1") == NEW
    s.release("stripe", "evt_1")
    assert s.claim("stripe", "evt_1") == NEW
    s.complete("stripe", "evt_1")
    assert s.claim("stripe", "evt_1") == DUPLICATE


def test_release_never_forgets_a_completed_delivery(h):
    s = h.store
    assert s.claim("stripe", "evt_1") == NEW
    s.complete("stripe", "evt_1")
    s.release("stripe", "evt_1")  # a late failure path
    assert s.claim("stripe", "evt_1") == DUPLICATE
    s.release("stripe", "never-claimed")  # nothing there: nothing to do


@pytest.mark.parametrize("delivery_id", [
    "a/b#c?d\\e", "x" * 3000, "ünïcödé \u2603 \t\n", "", " ",
])
def test_any_text_is_a_delivery_id(h, delivery_id):
    s = h.store
    assert s.claim("stripe", delivery_id) == NEW
    s.complete("stripe", delivery_id)
    assert s.claim("stripe", delivery_id) == DUPLICATE
    assert s.claim("stripe", delivery_id + "-other") == NEW


def _claim_at_once(store) -> list[str]:
    """THREADS claims of the same delivery id, released together by a barrier."""
    barrier = threading.Barrier(THREADS)

    def claim(_):
        barrier.wait(timeout=30)
        return store.claim("stripe", "evt_same")

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(claim, range(THREADS)))


def test_concurrent_duplicates_resolve_to_one_delivery(h):
    """N instances receive the same delivery at once: exactly one processes it."""
    answers = _claim_at_once(h.store)
    assert sorted(answers) == sorted([NEW] + [IN_PROGRESS] * (THREADS - 1))


def test_concurrent_takeover_of_an_expired_lease_has_one_winner(h):
    assert h.store.claim("stripe", "evt_same") == NEW
    h.clock.advance(LEASE + 1)
    answers = _claim_at_once(h.store)
    assert answers.count(NEW) == 1
    assert answers.count(IN_PROGRESS) == THREADS - 1


def test_ttl_and_lease_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="ttl_seconds"):
        SqliteStore(tmp_path / "x.sqlite3", 0)
    with pytest.raises(ValueError, match="lease_seconds"):
        TableStore(object(), 60, lease_seconds=-1)


# ----------------------------------------------------------------------------- SQLite across processes


def _claim_in_process(path, barrier, results) -> None:
    store = SqliteStore(path, TTL)
    barrier.wait(timeout=60)
    results.put(store.claim("stripe", "evt_same"))


def test_sqlite_across_processes_exactly_one_new(tmp_path):
    path = tmp_path / "state" / "idempotency.sqlite3"
    SqliteStore(path, TTL)  # the file exists before they race
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(path, barrier, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    answers = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sorted(answers) == sorted([NEW] + [IN_PROGRESS] * (PROCESSES - 1))
    assert SqliteStore(path, TTL).claim("stripe", "evt_same") == IN_PROGRESS


def test_sqlite_file_keeps_only_what_is_still_remembered(tmp_path):
    import sqlite3

    clock = FakeClock()
    path = tmp_path / "idempotency.sqlite3"
    s = SqliteStore(path, TTL, lease_seconds=LEASE, clock=clock)
    for i in range(5):
        s.claim("stripe", f"old-{i}")
        s.complete("stripe", f"old-{i}")
    s.claim("stripe", "abandoned")
    clock.advance(TTL)
    s.claim("stripe", "fresh")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT delivery_id FROM deliveries").fetchall() == [("fresh",)]


def test_sqlite_failure_is_an_idempotency_error(tmp_path):
    path = tmp_path / "idempotency.sqlite3"
    s = SqliteStore(path, TTL)
    path.unlink()
    path.mkdir()  # a folder where the file was
    with pytest.raises(IdempotencyError, match="claim"):
        s.claim("stripe", "evt_1")


# ----------------------------------------------------------------------------- Azure Table specifics


def test_table_record_is_readable_by_people(azurite_table):
    name = _table_name()
    env = {"AzureWebJobsStorage": azurite_table.connection_string}
    store = TableStore.from_settings(name, env, ttl_seconds=TTL, clock=FakeClock())
    long_id = "evt/" + "9" * 500
    assert store.claim("stripe", long_id) == NEW
    [entity] = list(table_client(name, env).list_entities())
    assert entity["PartitionKey"] == "stripe"
    assert entity["RowKey"] == row_key(long_id) and len(entity["RowKey"]) == 64
    assert entity["DeliveryId"] == long_id[:200]
    assert entity["State"] == IN_PROGRESS and entity["Since"] == T0


def test_table_store_without_api_version_override(azurite_table):
    client = table_client(_table_name(), {"AzureWebJobsStorage": azurite_table.connection_string})
    assert client.api_version == "2019-02-02"  # what Azurite 3.35 accepts as it is


def test_table_client_from_identity_settings():
    client = table_client("bridgeidempotency", {
        "AzureWebJobsStorage__accountName": "acct",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
    })
    assert client.url.startswith("https://acct.table.core.windows.net")
    assert type(client.credential).__name__ == "ManagedIdentityCredential"
    client = table_client("t1", {"AzureWebJobsStorage__tableServiceUri": "https://other.example.net/"})
    assert client.url.startswith("https://other.example.net")
    assert client.table_name == "t1"


def test_no_storage_settings_is_a_clear_error():
    with pytest.raises(IdempotencyError, match="AzureWebJobsStorage__tableServiceUri"):
        TableStore.from_settings("t1", {}, ttl_seconds=TTL)
    with pytest.raises(IdempotencyError, match="Key Vault"):
        TableStore.from_settings("t1", {"AzureWebJobsStorage": "@Microsoft.KeyVault(SecretUri=https://v/s)"},
                                 ttl_seconds=TTL)


def _conn(endpoint: str, key: str) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};TableEndpoint={endpoint};"


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = f"{exc} {exc!r}"
    cause = exc.__cause__
    for secret in secrets:
        assert secret not in text
        assert cause is None or secret not in f"{cause} {cause!r}"


def test_wrong_key_error_does_not_show_the_key(azurite_table):
    wrong_key = "V3JvbmdLZXk" + "A" * 77 + "=="
    conn = _conn(azurite_table.table_endpoint, wrong_key)
    store = TableStore.from_settings(_table_name(), {"AzureWebJobsStorage": conn}, ttl_seconds=TTL)
    with pytest.raises(IdempotencyError) as caught:
        store.claim("stripe", "evt_1")
    assert "403" in str(caught.value)
    _assert_no_secret(caught.value, wrong_key, conn)
    assert wrong_key not in repr(store)


def test_unreachable_storage_error_does_not_show_the_key():
    conn = _conn(f"http://127.0.0.1:{free_port()}/{ACCOUNT}", ACCOUNT_KEY)  # nothing listens there
    store = TableStore(table_client("t1", {"AzureWebJobsStorage": conn}, retry_total=0), TTL)
    for call in (store.claim, store.complete, store.release):
        with pytest.raises(IdempotencyError, match="ServiceRequestError") as caught:
            call("stripe", "evt_1")
        _assert_no_secret(caught.value, ACCOUNT_KEY, conn)


# ----------------------------------------------------------------------------- open_store


def test_open_store_is_sqlite_without_storage_settings(tmp_path):
    store = open_store("bridgeidempotency", TTL, {}, tmp_path / "state")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "state" / "idempotency.sqlite3"
    assert store.ttl == TTL
    assert store.claim("stripe", "evt_1") == NEW
    assert open_store("bridgeidempotency", TTL, {}, tmp_path / "state").claim("stripe", "evt_1") == IN_PROGRESS


def test_open_store_is_the_table_with_a_connection_string(azurite_table, tmp_path):
    env = {"AzureWebJobsStorage": azurite_table.connection_string}
    name = _table_name()
    store = open_store(name, TTL, env, tmp_path)
    assert isinstance(store, TableStore)
    assert store.client.table_name == name
    assert store.claim("stripe", "evt_1") == NEW
    store.complete("stripe", "evt_1")
    assert open_store(name, TTL, env, tmp_path).claim("stripe", "evt_1") == DUPLICATE
    assert not (tmp_path / "idempotency.sqlite3").exists()


def test_open_store_is_the_table_with_identity_settings(tmp_path):
    store = open_store("t1", TTL, {"AzureWebJobsStorage__tableServiceUri": "https://acct.table.core.windows.net"},
                       tmp_path)
    assert isinstance(store, TableStore)
    store = open_store("t1", TTL, {"AzureWebJobsStorage__accountName": "acct"}, tmp_path)
    assert isinstance(store, TableStore)
    assert store.client.url.startswith("https://acct.table.core.windows.net")
