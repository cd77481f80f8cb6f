"""The retry function's work, envelope by envelope: deliver again, queue the next attempt with
backoff, or dead-letter with the reason; and the bridge's own metrics."""
from __future__ import annotations

import json
import logging
import time

import azure.functions as func
import pytest
from fakes.dynatrace import FakeDynatrace
from fakes.server import Scripted
from support import drain, use_bridge

from bridges import runtime
from bridges.delivery.sinks.dynatrace.sink import DynatraceSink
from bridges.masking import Secret
from bridges.model import Gauge, Metric
from bridges.queues import SqliteQueue
from bridges.retry.decision import DeadLetter
from bridges.retry.envelopes import Envelope, EnvelopeError, envelopes_for, metrics_of
from bridges.retry.worker import RetryWorker
from bridges.settings import load_settings

TOKEN = "dt0c01.RETRY"


@pytest.fixture
def queues(tmp_path):
    clock = [time.time()]
    database = tmp_path / "queues.sqlite3"
    retry = SqliteQueue(database, "bridge-retry", clock=lambda: clock[0])
    dead = SqliteQueue(database, "bridge-deadletter", clock=lambda: clock[0])
    return retry, dead, clock


def envelope(names, attempt=1, age_seconds=0.0) -> str:
    now = time.time_ns()
    metrics = [Metric(name, Gauge(1), now - int(age_seconds * 1e9)) for name in names]
    [built] = envelopes_for("dynatrace", metrics, "Dynatrace answered 503", now, attempt=attempt,
                            first_failure_ns=now - int(age_seconds * 1e9))
    return built.to_text()


def worker(fake_url, queues, **settings) -> RetryWorker:
    retry, dead, _ = queues
    values = {"BRIDGE_RETRY_BASE_SECONDS": "1", "BRIDGE_RETRY_CAP_SECONDS": "4", **settings}
    return RetryWorker(load_settings(values), {"dynatrace": DynatraceSink(fake_url, Secret(TOKEN))}, retry, dead)


def dead_letters(dead) -> list[DeadLetter]:
    return [DeadLetter.from_text(m.text) for m in dead.peek(32)]


def test_a_retry_that_succeeds_is_done(queues):
    with FakeDynatrace(token=TOKEN) as fake:
        decision = worker(fake.url, queues).process(envelope(["bridge.a", "bridge.b"]))
    assert (decision.kind, decision.delivered) == ("done", 2)
    assert [line.split(" ")[0] for line in fake.accepted_lines] == ["bridge.a", "bridge.b"]
    assert queues[0].depth() == 0 and queues[1].depth() == 0


def test_a_retryable_failure_queues_the_next_attempt_after_its_backoff(queues):
    retry, _, clock = queues
    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(429, {"Retry-After": "20"}))
        decision = worker(fake.url, queues).process(envelope(["bridge.a"]))
    assert decision.kind == "retry"
    assert retry.receive(1, 60) == []  # invisible: Retry-After (20 s) is the least it waits
    clock[0] += 21
    [message] = retry.receive(1, 60)
    following = Envelope.from_text(message.text)
    assert (following.attempt, following.last_error) == (2, "Dynatrace answered 429")
    assert [m.name for m in metrics_of(following)] == ["bridge.a"]


def test_a_refusal_on_retry_is_dead_lettered_with_its_reason(queues):
    with FakeDynatrace(token="dt0c01.OTHER") as fake:
        worker(fake.url, queues).process(envelope(["bridge.a"]))
    [record] = dead_letters(queues[1])
    assert record.reason == ("dropped on retry: Dynatrace answered 401: the token is wrong (misconfigured): "
                             "Missing authorization parameter.")
    assert [m.name for m in metrics_of(record.envelope)] == ["bridge.a"]


def test_points_that_fell_out_of_the_sinks_window_are_dead_lettered(queues):
    with FakeDynatrace(token=TOKEN) as fake:
        decision = worker(fake.url, queues).process(envelope(["bridge.old"], age_seconds=2 * 3600))
    assert decision.kind == "dead_letter" and fake.accepted_lines == []
    [record] = dead_letters(queues[1])
    assert "outside Dynatrace's window" in record.reason


def test_nothing_retries_forever(queues):
    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(503))
        worker(fake.url, queues, BRIDGE_RETRY_MAX_ATTEMPTS="3").process(envelope(["bridge.a"], attempt=3))
    [record] = dead_letters(queues[1])
    assert record.reason.startswith("gave up after 3 attempts: Dynatrace answered 503")
    assert queues[0].depth() == 0


def test_too_old_envelopes_are_dead_lettered(queues):
    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(503))
        worker(fake.url, queues, BRIDGE_RETRY_MAX_AGE_SECONDS="60").process(envelope(["bridge.a"], age_seconds=120))
    [record] = dead_letters(queues[1])
    assert record.reason.startswith("older than the maximum age of 60 s: Dynatrace answered 503")


def test_an_envelope_for_a_sink_no_longer_enabled_is_dead_lettered(queues):
    retry, dead, _ = queues
    RetryWorker(load_settings({}), {}, retry, dead).process(envelope(["bridge.a"]))
    [record] = dead_letters(dead)
    assert record.reason == "dropped on retry: sink dynatrace is not enabled"


def test_an_unreadable_envelope_fails_the_invocation_so_the_host_retries_then_poisons(queues):
    retry, dead, _ = queues
    with pytest.raises(EnvelopeError):
        RetryWorker(load_settings({}), {}, retry, dead).process('{"id": "not an envelope"}')


def test_the_queue_triggered_function_runs_the_worker(tmp_path):
    from bridges.triggers.queue import retry_deliveries

    with FakeDynatrace(token=TOKEN) as fake:
        use_bridge({"BRIDGE_STATE_DIR": str(tmp_path), "DYNATRACE_URL": fake.url, "DYNATRACE_API_TOKEN": TOKEN},
                   now_ns=time.time_ns())
        retry_deliveries(func.QueueMessage(body=envelope(["bridge.from.queue"]).encode()))
    assert [line.split(" ")[0] for line in fake.accepted_lines] == ["bridge.from.queue"]
    runtime.use(None)


def test_every_delivery_is_logged_as_a_structured_record(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bridges.delivery.selfmetrics")
    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(500))
        bridge = use_bridge({"BRIDGE_STATE_DIR": str(tmp_path), "DYNATRACE_URL": fake.url,
                             "DYNATRACE_API_TOKEN": TOKEN}, now_ns=time.time_ns())
        bridge.ingest(json.dumps([{"name": "bridge.a", "gauge": {"value": 1}}]).encode(), "application/json")
        drain(bridge)
    [record] = [r for r in caplog.records if r.name == "bridges.delivery.selfmetrics" and "sink" in r.custom_dimensions]
    dimensions = record.custom_dimensions
    assert {k: dimensions[k] for k in ("source", "sink", "accepted", "delivered", "retried")} == {
        "source": "delivery of 1 queued messages", "sink": "dynatrace", "accepted": 1, "delivered": 0, "retried": 1}
    assert dimensions["delivery_seconds"] >= 0


def test_self_metrics_go_to_the_sinks_when_enabled(tmp_path):
    with FakeDynatrace(token=TOKEN) as fake:
        bridge = use_bridge({"BRIDGE_STATE_DIR": str(tmp_path), "DYNATRACE_URL": fake.url, "DYNATRACE_API_TOKEN": TOKEN,
                             "BRIDGE_SELF_METRICS": "true"}, now_ns=time.time_ns())
        bridge.ingest(json.dumps([{"name": "bridge.a", "gauge": {"value": 1}}]).encode(), "application/json")
        assert fake.accepted_lines == []  # queued: the delivery function sends both
        drain(bridge)
    keys = [line.split(" ")[0] for line in fake.accepted_lines]
    assert keys[0] == "bridge.a"
    assert "bridge_accepted_total,sink=dynatrace" in keys and "bridge_delivered_total,sink=dynatrace" in keys
    assert "bridge_delivery_seconds,sink=dynatrace" in keys
