"""Queued delivery as a sender and an operator see it: the answer never waits for a backend,
the delivery function merges what many requests accepted into few requests per sink, each sink
fails alone, and nothing on the delivery queue is lost when something breaks.
"""
from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from fakes.azure_monitor import FakeAzureMonitor
from fakes.betterstack import FakeBetterStack
from fakes.dynatrace import FakeDynatrace
from fakes.server import Scripted
from support import ROOT, drain, outbox_lines

from bridges.core import Bridge
from bridges.delivery import queued
from bridges.queues import LOCAL_FILE, SqliteQueue, poison_name
from bridges.retry.envelopes import MAX_TEXT, Envelope, metrics_of
from bridges.retry.worker import RetryWorker
from bridges.settings import load_settings

DT_TOKEN = "dt0c01.QUEUEDTOKEN"
BS_TOKEN = "bs-queued-token"
RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-bridge/providers/Microsoft.Web/sites/func-bridge"


def points(count: int, start: int = 0, name: str = "queued.gauge", **extra) -> list[dict]:
    return [{"name": name, "gauge": {"value": n}, "tags": {"seq": str(n)}, **extra} for n in range(start, start + count)]


def ingest(bridge: Bridge, items: list) -> tuple[int, dict, dict]:
    reply = bridge.ingest(json.dumps(items).encode(), "application/json")
    return reply.status, reply.body, reply.headers


def make_bridge(tmp_path: Path, clock=time.time_ns, **settings: str) -> Bridge:
    return Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), **settings}), clock=clock)


def delivery_queue(tmp_path: Path) -> SqliteQueue:
    return SqliteQueue(tmp_path / ".bridge" / LOCAL_FILE, "bridge-deliver")


def seqs_of(metrics) -> list[int]:
    return [int(dict(m.tags)["seq"]) for m in metrics]


# ------------------------------------------------------------------ the answer and the queue


def test_the_answer_says_queued_and_nothing_reaches_a_sink_before_the_delivery_function(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as fake:
        bridge = make_bridge(tmp_path, DYNATRACE_URL=fake.url, DYNATRACE_API_TOKEN=DT_TOKEN)
        status, answer, _ = ingest(bridge, points(3) + [{"name": "bad"}])
        assert status == 202
        assert answer["accepted"] == 3 and answer["rejected"] == 1 and answer["delivery"] == {"queued": 3}
        assert fake.received == [] and delivery_queue(tmp_path).depth() == 1
        [batch] = drain(bridge)
    assert batch.messages == 1 and batch.reports["dynatrace"].delivered == 3
    assert len(fake.received) == 1 and delivery_queue(tmp_path).depth() == 0


def test_a_large_request_is_split_at_the_queue_message_limit_and_read_back_whole(tmp_path):
    bridge = make_bridge(tmp_path)
    rng = random.Random(7)
    items = [{"name": "queued.big", "gauge": {"value": n}, "tags": {"seq": str(n), "noise": "%030x" % rng.getrandbits(120)}}
             for n in range(20_000)]
    status, answer, _ = ingest(bridge, items)
    assert status == 202 and answer["delivery"] == {"queued": 20_000}
    texts = [m.text for m in delivery_queue(tmp_path).peek(32)]
    assert len(texts) > 1 and all(len(text.encode()) <= MAX_TEXT for text in texts)
    assert sorted(seq for text in texts for seq in seqs_of(queued.read(text)[1])) == list(range(20_000))
    drain(bridge)
    assert sorted(int(line["tags"]["seq"]) for line in outbox_lines(bridge)) == list(range(20_000))


def test_a_metric_too_large_for_a_queue_message_is_413_and_nothing_is_kept(tmp_path):
    bridge = make_bridge(tmp_path)
    rng = random.Random(3)
    huge = {"name": "queued.huge", "gauge": {"value": 1},
            "tags": {f"k{n}": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1000))
                     for n in range(60)}}
    status, answer, _ = ingest(bridge, points(2) + [huge])
    assert status == 413 and "the metric at /2 is too large" in answer["error"]
    assert delivery_queue(tmp_path).depth() == 0


class Unwritable:
    name = "bridge-deliver"

    def send(self, text, visibility_timeout=0):
        raise sqlite3.OperationalError("database is locked")


def test_a_delivery_queue_that_cannot_be_written_is_503_in_the_vendors_shape(tmp_path):
    from bridges.formats import dynatrace

    bridge = Bridge(load_settings({}), delivery_queue=Unwritable())
    reply = bridge.receive(dynatrace, b"queued.line 1\n", "text/plain")
    assert reply.status == 503 and reply.headers["Retry-After"] == "30"
    assert "could not be written" in json.dumps(reply.body) and "locked" not in json.dumps(reply.body)


# ------------------------------------------------------------------ the delivery function


def test_many_messages_become_one_request_per_sink(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, DYNATRACE_URL=dynatrace.url, DYNATRACE_API_TOKEN=DT_TOKEN,
                             BETTERSTACK_URL=betterstack.url, BETTERSTACK_SOURCE_TOKEN=BS_TOKEN)
        for n in range(20):  # 20 small webhooks' worth
            assert ingest(bridge, points(1, start=n))[0] == 202
        batches = drain(bridge)
    assert [b.messages for b in batches] == [20]
    assert len(dynatrace.received) == 1 and len(betterstack.received) == 1
    assert batches[0].reports["dynatrace"].delivered == 20 and batches[0].reports["betterstack"].delivered == 20


def test_no_more_than_the_batch_setting_is_merged(tmp_path):
    bridge = make_bridge(tmp_path, BRIDGE_DELIVERY_BATCH="4")
    for n in range(10):
        ingest(bridge, points(1, start=n))
    assert [b.messages for b in drain(bridge)] == [4, 4, 2]
    assert sorted(int(line["tags"]["seq"]) for line in outbox_lines(bridge)) == list(range(10))


def test_azure_monitor_pre_aggregates_across_messages(tmp_path, identity):
    with FakeAzureMonitor() as fake:
        bridge = make_bridge(tmp_path, AZURE_MONITOR_RESOURCE_ID=RESOURCE, AZURE_MONITOR_ENDPOINT=fake.url)
        now = time.time()
        minute = now - now % 60 - 60  # one whole past minute, inside the accepted window
        for n, value in enumerate((1.0, 5.0, 3.0)):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(minute + 10 * n)) + "Z"
            ingest(bridge, [{"name": "queued.latency", "gauge": {"value": value}, "dt": stamp}])
        [batch] = drain(bridge)
    assert batch.messages == 3 and len(fake.received) == 1
    [document] = fake.documents
    [series] = document["data"]["baseData"]["series"]
    assert (series["min"], series["max"], series["sum"], series["count"]) == (1.0, 5.0, 9.0, 3)


def test_a_failing_sink_retries_alone_and_the_healthy_one_never_gets_the_metrics_again(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, DYNATRACE_URL=dynatrace.url, DYNATRACE_API_TOKEN=DT_TOKEN,
                             BETTERSTACK_URL=betterstack.url, BETTERSTACK_SOURCE_TOKEN=BS_TOKEN)
        for n in range(3):
            ingest(bridge, points(2, start=2 * n))
        dynatrace.script(Scripted(500))
        [batch] = drain(bridge)
        assert batch.reports["dynatrace"].pending == 6 and batch.reports["betterstack"].delivered == 6
        later = SqliteQueue(tmp_path / ".bridge" / LOCAL_FILE, "bridge-retry", clock=lambda: time.time() + 700)
        [message] = later.receive(32, 60)  # visible once its backoff has passed
        envelope = Envelope.from_text(message.text)
        assert envelope.sink == "dynatrace" and envelope.attempt == 1 and sorted(seqs_of(metrics_of(envelope))) == list(range(6))
        sinks = {sink.name: sink for sink in bridge.delivery.sinks}
        worker = RetryWorker(bridge.settings, sinks, later, SqliteQueue(later.path, "bridge-deadletter"),
                             delivery=bridge.delivery)
        assert worker.process(message.text).delivered == 6
    assert len(betterstack.received) == 1  # once, from the delivery function
    assert len(dynatrace.received) == 2  # the 500, then the retry


class RetryQueueDown:
    name = "bridge-retry"

    def send(self, text, visibility_timeout=0):
        raise sqlite3.OperationalError("disk I/O error")


def test_when_the_retry_queue_cannot_be_written_the_taken_messages_are_released_not_lost(tmp_path):
    from bridges.retry.worker import QueueHandoff

    with FakeDynatrace(token=DT_TOKEN) as dynatrace:
        bridge = make_bridge(tmp_path, DYNATRACE_URL=dynatrace.url, DYNATRACE_API_TOKEN=DT_TOKEN)
        bridge.delivery.handoff = QueueHandoff(bridge.settings, RetryQueueDown())
        for n in range(3):
            ingest(bridge, points(1, start=n))
        dynatrace.script(Scripted(500))
        queue = delivery_queue(tmp_path)
        [own] = queue.receive(1, 60)
        worker = queued.worker_for(bridge)
        with pytest.raises(Exception, match="could not keep"):
            worker.process(own.text)
        # the host releases its own message; the two the worker took are visible again at once
        assert queue.depth() == 3 and len(queue.peek(32)) == 2
        queue.release(own)
        bridge.delivery.handoff = QueueHandoff(bridge.settings, SqliteQueue(queue.path, "bridge-retry"))
        [batch] = drain(bridge)
    assert batch.messages == 3 and batch.reports["dynatrace"].delivered == 3


def test_an_unreadable_or_too_often_tried_message_goes_to_the_poison_queue_and_the_rest_is_delivered(tmp_path):
    bridge = make_bridge(tmp_path)
    queue = delivery_queue(tmp_path)
    ingest(bridge, points(1, start=0))
    queue.send('{"not": "an envelope"}')
    ingest(bridge, points(1, start=1))
    tired = queue.peek(32)[-1]  # seq 1's message: it failed in every invocation that took it
    assert seqs_of(queued.read(tired.text)[1]) == [1]
    for _ in range(queued.MAX_DEQUEUE_COUNT):
        assert tired.id in [m.id for m in queue.receive(32, 0)]
    ingest(bridge, points(1, start=2))
    batches = drain(bridge)
    poison = SqliteQueue(queue.path, poison_name("bridge-deliver"))
    parked = [m.text for m in poison.peek(32)]
    assert '{"not": "an envelope"}' in parked and len(parked) == 2
    assert sorted(int(line["tags"]["seq"]) for line in outbox_lines(bridge)) == [0, 2]
    assert sum(b.metrics for b in batches) == 2 and queue.depth() == 0
    problems = bridge.health().body["problems"]
    assert any("2 messages in bridge-deliver-poison" in p for p in problems), problems


def test_the_function_waits_for_a_batch_to_fill_but_no_longer_than_the_linger(tmp_path):
    bridge = make_bridge(tmp_path, BRIDGE_DELIVERY_BATCH="3", BRIDGE_DELIVERY_LINGER_SECONDS="5")
    queue = delivery_queue(tmp_path)
    ingest(bridge, points(1, start=0))
    [own] = queue.receive(1, 60)
    now = [0.0]
    arrivals = iter([1, 2])

    def sleep(seconds: float) -> None:  # while the function waits, another webhook arrives
        now[0] += seconds
        ingest(bridge, points(1, start=next(arrivals, 99)))

    worker = queued.worker_for(bridge)
    worker.monotonic, worker.sleep = (lambda: now[0]), sleep
    assert worker.process(own.text).messages == 3  # full: delivered without waiting out the linger
    assert now[0] < 5
    queue.delete(own)
    ingest(bridge, points(1, start=3))
    [own] = queue.receive(1, 60)
    worker.sleep = lambda seconds: now.__setitem__(0, now[0] + seconds)  # nothing more arrives
    started = now[0]
    assert worker.process(own.text).messages == 1
    assert now[0] - started == pytest.approx(5)


def test_the_worker_gives_up_no_more_than_the_hosts_max_dequeue_count():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == queued.MAX_DEQUEUE_COUNT


# ------------------------------------------------------------------ health and modes


def test_health_shows_the_queue_depth_and_the_age_of_its_oldest_message(tmp_path):
    now = [time.time_ns()]
    bridge = make_bridge(tmp_path, clock=lambda: now[0])
    assert bridge.health().body["delivery"] == {"mode": "queued", "queue": "bridge-deliver", "depth": 0,
                                                "poison": {"queue": "bridge-deliver-poison", "depth": 0}}
    ingest(bridge, points(2))
    ingest(bridge, points(2))
    now[0] += 42 * 10**9
    health = bridge.health().body
    assert health["delivery"]["depth"] == 2 and 41 <= health["delivery"]["oldest_seconds"] <= 44
    assert health["status"] == "ok"
    now[0] += 600 * 10**9  # the delivery function has not run for ten minutes
    health = bridge.health().body
    assert health["status"] == "degraded"
    assert any("oldest message has waited" in p and "delivery function" in p for p in health["problems"])


def test_inline_mode_answers_with_each_sinks_report_and_queues_nothing(tmp_path):
    bridge = make_bridge(tmp_path, BRIDGE_DELIVERY="inline")
    status, answer, _ = ingest(bridge, points(2))
    assert status == 202 and answer["delivery"] == {"outbox": {"delivered": 2, "rejected": 0, "pending": 0}}
    assert bridge.health().body["delivery"] == {"mode": "inline"}
    assert not (tmp_path / ".bridge" / LOCAL_FILE).exists() or delivery_queue(tmp_path).depth() == 0


def test_the_checks_timer_queues_its_metrics_too(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as target:  # any local HTTP server will do as a checked site
        checks = json.dumps({"checks": [{"name": "local", "url": target.url + "/"}]})
        bridge = make_bridge(tmp_path, BRIDGE_CHECKS=checks)
        results, metrics = bridge.run_checks()
    assert len(results) == 1 and metrics
    assert delivery_queue(tmp_path).depth() == 1 and not outbox_lines(bridge)
    drain(bridge)
    assert len(outbox_lines(bridge)) == len(metrics)


def test_a_poisoned_delivery_message_can_be_listed_and_replayed_to_the_delivery_queue(tmp_path, capsys):
    from bridges.__main__ import main

    bridge = make_bridge(tmp_path)
    ingest(bridge, points(3))
    queue = delivery_queue(tmp_path)
    [message] = queue.receive(1, 0)
    poison = SqliteQueue(queue.path, poison_name("bridge-deliver"))
    poison.send(message.text)  # as the host does after maxDequeueCount failures
    queue.delete(message)
    assert main(["deadletter", "list", "--delivery-poison"]) == 0
    listed = capsys.readouterr()
    assert "*" in listed.out and "1 poison messages in bridge-deliver-poison" in listed.err
    assert main(["deadletter", "replay", "--delivery-poison", "--all"]) == 0
    assert "to bridge-deliver" in capsys.readouterr().err
    assert poison.depth() == 0 and queue.depth() == 1
    drain(bridge)
    assert sorted(int(line["tags"]["seq"]) for line in outbox_lines(bridge)) == [0, 1, 2]
