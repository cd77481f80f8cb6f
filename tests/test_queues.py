"""One contract suite for every queue backend (bridges/queues.py): SQLite and Azurite.

Time: SQLite runs on a clock the test moves; Azurite on real time with 1 s visibility
timeouts, polled in bounded loops (nothing asserts how long anything took).
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bridges import queues
from bridges.queues import MAX_MESSAGE_TEXT, Message, SqliteQueue, StaleReceipt, StorageQueue, open_queue

ROOT = Path(__file__).resolve().parent.parent
SHORT = 1  # seconds: a visibility timeout the test waits out
LONG = 60  # seconds: a visibility timeout that does not pass during a test
POLL_LIMIT = 15.0  # seconds an Azurite poll may take before the test gives up


class FakeClock:
    def __init__(self, now: float = 1_795_341_600.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Harness:
    """A backend plus how time passes on it."""

    def __init__(self, queue, clock: FakeClock | None = None):
        self.queue = queue
        self.clock = clock

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass: moves the fake clock; on Azurite, `poll` does the waiting."""
        if self.clock is not None:
            self.clock.now += seconds + 0.001

    def poll(self, fetch):
        """fetch() until it returns something (once on a fake clock, bounded on Azurite)."""
        if self.clock is not None:
            return fetch()
        deadline = time.monotonic() + POLL_LIMIT
        while True:
            got = fetch()
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


def _queue_name() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["sqlite", "azurite"])
def h(request, tmp_path) -> Harness:
    if request.param == "sqlite":
        clock = FakeClock()
        return Harness(SqliteQueue(tmp_path / "q.sqlite3", _queue_name(), clock=clock), clock)
    peer = request.getfixturevalue("azurite")
    return Harness(StorageQueue.from_settings(_queue_name(), {"AzureWebJobsStorage": peer.connection_string}))


# ----------------------------------------------------------------------------- contract


def test_send_receive_delete(h):
    q = h.queue
    q.send("hello")
    [m] = q.receive(10, LONG)
    assert isinstance(m, Message)
    assert (m.text, m.dequeue_count) == ("hello", 1)
    assert m.pop_receipt and m.id
    assert m.next_visible_at is not None and m.next_visible_at > m.inserted_at
    q.delete(m)
    assert q.depth() == 0
    assert q.receive(10, LONG) == []


def test_text_round_trips_unicode_and_markup(h):
    text = 'grüße <&> "🙂"\n{"a": 1}'
    h.queue.send(text)
    [m] = h.queue.receive(1, LONG)
    assert m.text == text


def test_received_message_is_invisible_until_its_timeout_passes(h):
    q = h.queue
    q.send("work")
    [first] = q.receive(1, SHORT)
    if h.clock is not None:  # only a fake clock can stop just short of the timeout
        h.clock.now += SHORT / 2
        assert q.receive(1, LONG) == []
    h.wait(SHORT)
    again = h.poll(lambda: q.receive(1, LONG))
    assert [m.id for m in again] == [first.id]
    assert again[0].dequeue_count == 2
    assert again[0].pop_receipt != first.pop_receipt


def test_hidden_message_is_not_received_twice(h):
    q = h.queue
    q.send("one")
    assert len(q.receive(5, LONG)) == 1
    assert q.receive(5, LONG) == []
    assert q.peek(5) == []


def test_dequeue_count_increments_on_each_receive(h):
    q = h.queue
    q.send("again")
    counts = []
    for _ in range(3):
        [m] = h.poll(lambda: q.receive(1, LONG))
        counts.append(m.dequeue_count)
        q.release(m)
    assert counts == [1, 2, 3]


def test_release_makes_it_visible_again(h):
    q = h.queue
    q.send("retry me")
    [m] = q.receive(1, LONG)
    q.release(m)
    [back] = h.poll(lambda: q.receive(1, LONG))
    assert (back.id, back.text, back.dequeue_count) == (m.id, "retry me", 2)


def test_release_with_delay_keeps_it_hidden_until_then(h):
    q = h.queue
    q.send("backoff")
    [m] = q.receive(1, LONG)
    q.release(m, visibility_timeout=LONG)
    assert q.receive(1, LONG) == []
    assert q.depth() == 1


def test_stale_receipt_cannot_delete_or_release(h):
    q = h.queue
    q.send("contended")
    [old] = q.receive(1, SHORT)
    h.wait(SHORT)
    [new] = h.poll(lambda: q.receive(1, LONG))  # someone else now owns it
    with pytest.raises(StaleReceipt):
        q.delete(old)
    with pytest.raises(StaleReceipt):
        q.release(old)
    assert q.depth() == 1
    q.delete(new)
    assert q.depth() == 0
    with pytest.raises(StaleReceipt):
        q.delete(new)  # already gone


def test_released_receipt_is_stale(h):
    q = h.queue
    q.send("x")
    [m] = q.receive(1, LONG)
    q.release(m, visibility_timeout=LONG)
    with pytest.raises(StaleReceipt):
        q.delete(m)


def test_send_with_visibility_timeout_delays(h):
    q = h.queue
    q.send("later", visibility_timeout=SHORT)
    assert q.receive(1, LONG) == []
    assert q.depth() == 1
    h.wait(SHORT)
    [m] = h.poll(lambda: q.receive(1, LONG))
    assert (m.text, m.dequeue_count) == ("later", 1)


def test_peek_changes_nothing(h):
    q = h.queue
    for text in ("a", "b"):
        q.send(text)
    for _ in range(2):
        peeked = q.peek(10)
        assert sorted(m.text for m in peeked) == ["a", "b"]
        assert all(m.dequeue_count == 0 and m.pop_receipt is None for m in peeked)
    got = q.receive(10, LONG)
    assert sorted((m.text, m.dequeue_count) for m in got) == [("a", 1), ("b", 1)]


def test_depth_counts_hidden_messages_until_deleted(h):
    q = h.queue
    assert q.depth() == 0
    for i in range(3):
        q.send(f"m{i}")
    assert q.depth() == 3
    [m] = q.receive(1, LONG)
    assert q.depth() == 3
    q.delete(m)
    assert q.depth() == 2


def test_receive_respects_max_messages(h):
    q = h.queue
    for i in range(5):
        q.send(f"m{i}")
    assert len(q.receive(2, LONG)) == 2
    assert len(q.receive(10, LONG)) == 3


def test_largest_text_fits_and_bigger_is_refused(h):
    q = h.queue
    q.send("x" * MAX_MESSAGE_TEXT)
    [m] = q.receive(1, LONG)
    assert len(m.text) == MAX_MESSAGE_TEXT
    with pytest.raises(ValueError, match="split it"):
        q.send("x" * (MAX_MESSAGE_TEXT + 1))
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        q.send("é" * (MAX_MESSAGE_TEXT // 2 + 1))  # fewer characters than the limit, more bytes
    assert q.depth() == 1


def test_max_message_text_is_64_kib_after_base64():
    assert MAX_MESSAGE_TEXT == 49_152
    assert len(base64.b64encode(b"x" * MAX_MESSAGE_TEXT)) == 64 * 1024


def test_poison_name():
    assert queues.poison_name("sink-retry") == "sink-retry-poison"


# ----------------------------------------------------------------------------- Azurite only


def test_wire_form_is_base64(azurite):
    """The Functions host decodes queue messages as base64 by default (messageEncoding)."""
    from azure.storage.queue import QueueClient

    name = _queue_name()
    text = 'grüße {"x": 1} <&>'
    StorageQueue.from_settings(name, {"AzureWebJobsStorage": azurite.connection_string}).send(text)
    raw = QueueClient.from_connection_string(azurite.connection_string, name)  # no decode policy
    [m] = raw.peek_messages(max_messages=1)
    assert m.content != text
    assert base64.b64decode(m.content, validate=True).decode("utf-8") == text


def test_queue_is_created_when_missing(azurite):
    name = _queue_name()
    env = {"AzureWebJobsStorage": azurite.connection_string}
    assert StorageQueue.from_settings(name, env).depth() == 0
    StorageQueue.from_settings(name, env).send("x")  # exists now: still fine
    assert StorageQueue.from_settings(name, env).depth() == 1


# ----------------------------------------------------------------------------- open_queue


def test_open_queue_without_storage_settings_is_sqlite(tmp_path):
    q = open_queue("sink-retry", {"AzureWebJobsStorage": "  "}, tmp_path / ".bridge")
    assert isinstance(q, SqliteQueue)
    assert q.path == tmp_path / ".bridge" / "queues.sqlite3"
    q.send("local")
    assert open_queue("sink-retry", {}, tmp_path / ".bridge").depth() == 1
    assert open_queue("other", {}, tmp_path / ".bridge").depth() == 0  # one file, many queues


def test_open_queue_with_connection_string(azurite, tmp_path):
    q = open_queue("sink-retry", {"AzureWebJobsStorage": azurite.connection_string}, tmp_path)
    assert isinstance(q, StorageQueue)
    assert q.client.url == f"{azurite.queue_endpoint}/sink-retry"
    assert not (tmp_path / "queues.sqlite3").exists()


def test_open_queue_with_development_storage(tmp_path):
    from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy

    q = open_queue("sink-retry", {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, tmp_path)
    assert isinstance(q, StorageQueue)
    assert q.client.url == "http://127.0.0.1:10001/devstoreaccount1/sink-retry"
    assert isinstance(q.client._message_encode_policy, TextBase64EncodePolicy)
    assert isinstance(q.client._message_decode_policy, TextBase64DecodePolicy)


@pytest.fixture
def managed_identity(monkeypatch):
    """Records how ManagedIdentityCredential was built; never asks for a token."""
    import azure.identity

    built = []

    class Recording(azure.identity.ManagedIdentityCredential):
        def __init__(self, **kwargs):
            built.append(kwargs)
            super().__init__(**kwargs)

        def get_token(self, *scopes, **kwargs):  # pragma: no cover - must not be called
            raise AssertionError("the credential was used while only building the queue")

    monkeypatch.setattr(azure.identity, "ManagedIdentityCredential", Recording)
    return built


def test_open_queue_identity_with_account_name(managed_identity, tmp_path):
    import azure.identity

    env = {
        "AzureWebJobsStorage__accountName": "bridgestore",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-0000000000aa",
    }
    q = open_queue("sink-retry", env, tmp_path)
    assert isinstance(q, StorageQueue)
    assert q.client.url == "https://bridgestore.queue.core.windows.net/sink-retry"
    assert isinstance(q.client.credential, azure.identity.ManagedIdentityCredential)
    assert managed_identity == [{"client_id": "00000000-0000-0000-0000-0000000000aa"}]


def test_open_queue_identity_with_service_uri_and_system_identity(managed_identity, tmp_path):
    env = {
        "AzureWebJobsStorage__queueServiceUri": "https://custom.queue.example.net/",
        "AzureWebJobsStorage__credential": "managedidentity",
    }
    q = open_queue("sink-retry", env, tmp_path)
    assert q.client.url == "https://custom.queue.example.net/sink-retry"
    assert managed_identity == [{}]  # system-assigned: no client id


def test_connection_string_wins_over_identity_settings(tmp_path):
    env = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "AzureWebJobsStorage__accountName": "ignored",
    }
    assert open_queue("q", env, tmp_path).client.url.startswith("http://127.0.0.1:10001/")


def test_unresolved_key_vault_reference_fails_loudly(tmp_path):
    env = {"AzureWebJobsStorage": "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/s/)"}
    with pytest.raises(ValueError, match="Key Vault"):
        open_queue("q", env, tmp_path)


# ----------------------------------------------------------------------------- SQLite only


RECEIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from bridges.queues import SqliteQueue

    path, name, done = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    q = SqliteQueue(path, name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        finished = done.exists()  # read before receiving: nothing is sent after it appears
        batch = q.receive(7, 60)
        for m in batch:
            print(json.dumps(m.text), flush=True)
            q.delete(m)
        if not batch and finished:
            break
    """
)


def test_sqlite_two_processes_lose_and_duplicate_nothing(tmp_path):
    path, name, done = tmp_path / "shared.sqlite3", "sink-retry", tmp_path / "done"
    q = SqliteQueue(path, name)
    receivers = [
        subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(path), name, str(done)],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    sent = [f"msg-{i}" for i in range(300)]
    for text in sent:
        q.send(text)
    done.touch()
    received = []
    for proc in receivers:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        received += [json.loads(line) for line in out.splitlines()]
    assert sorted(received) == sorted(sent)  # nothing lost, nothing twice
    assert q.depth() == 0


def test_sqlite_is_safe_across_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    q = SqliteQueue(tmp_path / "q.sqlite3", "threads")
    for i in range(200):
        q.send(str(i))

    def drain(_):
        got = []
        while batch := q.receive(3, LONG):
            for m in batch:
                q.delete(m)
                got.append(m.text)
        return got

    with ThreadPoolExecutor(4) as pool:
        results = [t for part in pool.map(drain, range(4)) for t in part]
    assert sorted(results, key=int) == [str(i) for i in range(200)]


def test_sqlite_rejects_negative_timeouts(tmp_path):
    q = SqliteQueue(tmp_path / "q.sqlite3", "q")
    with pytest.raises(ValueError):
        q.send("x", visibility_timeout=-1)
