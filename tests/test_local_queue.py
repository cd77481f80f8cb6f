"""The local runner hosting queue triggers: a subprocess in a temporary project folder (its own
host.json, SQLite queues in its .bridge/), fed through one of its own HTTP functions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from runner import running_bridge, wait_for_line, wait_until

from bridges.queues import LOCAL_FILE, SqliteQueue

HOST_JSON = {
    "version": "2.0",
    "functionTimeout": "00:05:00",
    "extensions": {"queues": {
        "maxPollingInterval": "00:00:00.2", "visibilityTimeout": "00:00:00", "batchSize": 4, "maxDequeueCount": 3,
    }},
}


def running(project: Path, env: dict[str, str]):
    """The runner with ``project`` as its project folder, hosting the sample queue app."""
    return running_bridge("--app", "tests.apps.queue_app", env=env, cwd=project)


def tries(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


@pytest.fixture
def project(tmp_path):
    (tmp_path / "host.json").write_text(json.dumps(HOST_JSON))
    return tmp_path


def test_messages_are_processed_deleted_and_failures_end_in_poison(project):
    record = project / "tries.ndjson"
    env = {"SAMPLE_QUEUE": "sample-jobs", "SAMPLE_QUEUE_FILE": str(record)}
    with running(project, env) as (base, lines):
        text = "\n".join(lines)
        assert "work: queue sample-jobs (SQLite)" in text
        assert "retry: queue bridge-retry (SQLite)" in text  # unset BRIDGE_RETRY_QUEUE: the declared default

        for body in ("hello", "héllo wörld", "fail: keep me"):
            answer = requests.post(f"{base}/api/enqueue/sample-jobs", data=body.encode(), timeout=10)
            assert answer.status_code == 202
        failures = lambda: [t for t in tries(record) if t["text"] == "fail: keep me"]
        wait_until(lambda: len(failures()) >= 3)
        wait_for_line(lines, "failed; moved to sample-jobs-poison")

        done = {t["text"]: t["dequeue_count"] for t in tries(record) if not t["text"].startswith("fail")}
        assert done == {"hello": 1, "héllo wörld": 1}
        assert [t["dequeue_count"] for t in failures()] == [1, 2, 3]
        database = project / ".bridge" / LOCAL_FILE
        assert wait_until(lambda: SqliteQueue(database, "sample-jobs").depth() == 0)
        poisoned = SqliteQueue(database, "sample-jobs-poison").peek(10)
        assert [m.text for m in poisoned] == ["fail: keep me"]
        wait_for_line(lines, "queue work (sample-jobs) message")
        assert wait_for_line(lines, "try 1 succeeded")
        assert wait_for_line(lines, "try 2 failed; will retry")
        assert wait_for_line(lines, "RuntimeError: asked to fail: fail: keep me")

        requests.post(f"{base}/api/enqueue/bridge-retry", data=b"retry me", timeout=10)
        wait_until(lambda: any(t["function"] == "retry" for t in tries(record)))


def test_messages_left_in_the_queue_are_taken_on_the_next_start(project):
    record = project / "tries.ndjson"
    SqliteQueue(project / ".bridge" / LOCAL_FILE, "waiting").send("queued while stopped")
    with running(project, {"SAMPLE_QUEUE": "waiting", "SAMPLE_QUEUE_FILE": str(record)}):
        wait_until(lambda: tries(record))
    assert tries(record)[0]["text"] == "queued while stopped"


def test_ctrl_c_lets_the_message_in_flight_finish(project):
    record = project / "tries.ndjson"
    database = project / ".bridge" / LOCAL_FILE
    with running(project, {"SAMPLE_QUEUE": "slow-jobs", "SAMPLE_QUEUE_FILE": str(record)}) as (base, lines):
        requests.post(f"{base}/api/enqueue/slow-jobs", data=b"slow one", timeout=10)
        wait_until(lambda: tries(record))  # it has started and sleeps for a second
    assert any("slow-jobs" in line and "try 1 succeeded" in line for line in lines)
    assert SqliteQueue(database, "slow-jobs").depth() == 0


def test_a_queue_function_whose_setting_is_unset_is_not_hosted_and_said_so(project):
    """As on the host: no fallback, the function is not run; the others are."""
    with running(project, {"SAMPLE_QUEUE": ""}) as (_, lines):
        line = wait_for_line(lines, "work: not hosted")
        assert "SAMPLE_QUEUE" in line and "not set" in line
        assert not any(l.startswith("  work: queue") for l in lines)