"""Conservation under chaos: every accepted point ends, at every sink, as exactly one of
delivered, rejected (with its reason, in the HTTP answer) or dead-lettered (with its reason).

1. ``test_conservation_under_chaos``: 10,000 points through ``POST /api/metrics`` (the HTTP
   function called with ``func.HttpRequest``) while the fakes of all five backends fail at
   random; the retry function is run as the host would run it until the retry queue is empty;
   on the SQLite queue (with a clock we advance) and on Azurite (real, whole-second delays).
   The outbox, enabled beside the five, never fails: it must hold every point exactly once.
2. ``test_conservation_across_a_crash``: the local runner is SIGKILLed in the middle of
   retries, restarted, the fakes heal, the queues drain: nothing lost (1,000 points).
3. ``test_expiry_dead_letters_and_replay``: a point that falls out of Azure Monitor's window
   while waiting is dead-lettered with that reason; dead letters replayed after the sink heals
   are delivered once.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from argparse import Namespace
from collections import Counter
from contextlib import ExitStack
from io import StringIO
from pathlib import Path

import azure.functions as func
import pytest
import requests
from chaos import (
    RESOURCE,
    SINKS,
    Ledger,
    OffsetClock,
    Rates,
    account,
    batch,
    dead_by_sink,
    dead_letters,
    drain,
    make_fakes,
    sink_settings,
)
from runner import wait_until
from support import ROOT

from bridges import runtime
from bridges.core import Bridge
from bridges.delivery.deliver import Delivery
from bridges.delivery.queued import worker_for
from bridges.delivery.sinks import build_sinks
from bridges.queues import LOCAL_FILE, SqliteQueue, open_queue, poison_name
from bridges.retry.deadletter_command import run_deadletter
from bridges.retry.envelopes import Envelope, metrics_of
from bridges.retry.worker import QueueHandoff, RetryWorker
from bridges.settings import binding_defaults, load_settings
from bridges.triggers.http import ingest_metrics

POINTS = 10_000
BATCH = 200
HTTP_TIMEOUT = 1.0  # generous: on a loaded 2-core machine a healthy answer can take 0.2 s, and a
# client that timed out on an answer the fake counted as delivered would send it again (at-least-once)
SLOW = 1.3  # a "timeout" answer comes this late: past the client's timeout
MAX_ATTEMPTS = 12
SEED = 20261122
# Prometheus refuses these for good (400, a Drop): rejected at ingest or dead-lettered on retry.
REFUSED_BY_PROMETHEUS = frozenset(range(7, POINTS, 1499))
# Unleash answers 503 to any request holding these: their batches run out of attempts.
STALLED_AT_UNLEASH = frozenset({2345, 7890})


def post(points: list[dict]) -> tuple[int, dict]:
    request = func.HttpRequest("POST", "http://localhost/api/metrics", headers={"Content-Type": "application/json"},
                               body=json.dumps(points).encode())
    response = ingest_metrics(request)
    return response.status_code, json.loads(response.get_body())


class Recorded:
    """The delivery worker, each batch's per-sink reports written into the ledger."""

    def __init__(self, worker, ledger: Ledger):
        self.worker = worker
        self.ledger = ledger
        self.messages_taken = 0

    def process(self, text: str):
        batch = self.worker.process(text)
        self.ledger.record_batch(batch)
        self.messages_taken += batch.messages - 1
        return batch


def outbox_seqs(directory: Path) -> Counter:
    seen: Counter = Counter()
    for path in sorted(directory.glob("metrics-*.ndjson")):
        for line in path.read_text().splitlines():
            seen[int(json.loads(line)["tags"]["seq"])] += 1
    return seen


def report(title: str, verdicts, extra: str = "") -> None:
    print(f"\n== {title}")
    for verdict in verdicts:
        print("  " + verdict.line())
    if extra:
        print("  " + extra)


# ------------------------------------------------------------------------------------- 1


# Routes for the third run: even seqs to Dynatrace and Better Stack, odd ones to Unleash and Azure
# Monitor (renamed there), and every point to Prometheus and the outbox (``continue``).
ROUTES = {
    "routes": [
        {"name": "everything", "sinks": ["outbox", "prometheus"], "continue": True},
        {"name": "even", "match": {"tags": {"seq": {"regex": "[0-9]*[02468]"}}}, "sinks": ["dynatrace", "betterstack"]},
        {"name": "odd", "sinks": ["unleash", "azure_monitor"]},
    ],
    "sinks": {"azure_monitor": {"rename": {"prefix": "routed."}}, "dynatrace": {"add_tags": {"team": "chaos"}}},
}


def routed_to(sink: str, seqs: set[int]) -> set[int]:
    """The seqs ROUTES sends to a sink."""
    if sink in ("outbox", "prometheus"):
        return seqs
    return {seq for seq in seqs if (seq % 2 == 0) == (sink in ("dynatrace", "betterstack"))}


@pytest.mark.parametrize("backend, routes", [("sqlite", None), ("azurite", None), ("sqlite", ROUTES)],
                         ids=["sqlite", "azurite", "sqlite-routed"])
@pytest.mark.parametrize("path", ["queued", "inline"])
def test_conservation_under_chaos(path, backend, routes, identity, tmp_path, monkeypatch, request):
    """With routes declared, the same holds per sink for what was routed to it: each point routed
    to a sink is delivered, rejected or dead-lettered there exactly once, and no other point is."""
    started = time.monotonic()
    clock = OffsetClock()
    suffix = uuid.uuid4().hex[:8]
    names = {"BRIDGE_RETRY_QUEUE": f"chaos-retry-{suffix}", "BRIDGE_DEADLETTER_QUEUE": f"chaos-dead-{suffix}",
             "BRIDGE_DELIVERY_QUEUE": f"chaos-deliver-{suffix}"}
    if backend == "azurite":
        monkeypatch.setenv("AzureWebJobsStorage", request.getfixturevalue("azurite").connection_string)
        retry_q, dead_q, deliver_q = (open_queue(names[k], os.environ, tmp_path / ".bridge") for k in names)
        assert type(retry_q).__name__ == "StorageQueue"

        def wait() -> None:
            time.sleep(0.2)  # Azure Storage delays are whole seconds
    else:
        monkeypatch.delenv("AzureWebJobsStorage", raising=False)
        database = tmp_path / ".bridge" / LOCAL_FILE
        retry_q, dead_q, deliver_q = (SqliteQueue(database, names[k], clock=clock) for k in names)

        def wait() -> None:
            clock.advance(1.1)  # past any backoff here (cap 0.05 s, Retry-After 1 s)

    with ExitStack() as stack:
        fakes = {name: stack.enter_context(fake) for name, fake in make_fakes().items()}
        for number, (name, fake) in enumerate(fakes.items()):
            fake.setup_chaos(SEED + number, Rates(partial=0.05 if name == "dynatrace" else 0.0), SLOW,
                             refuse_seqs=REFUSED_BY_PROMETHEUS if name == "prometheus" else frozenset(),
                             stall_seqs=STALLED_AT_UNLEASH if name == "unleash" else frozenset())
        settings = load_settings({
            **sink_settings(fakes), **names,
            "BRIDGE_DELIVERY": path,
            "BRIDGE_SINKS": "outbox," + ",".join(SINKS),
            "BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"),
            "BRIDGE_HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
            "BRIDGE_RETRY_BASE_SECONDS": "0.01",
            "BRIDGE_RETRY_CAP_SECONDS": "0.05",
            "BRIDGE_RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            **({"BRIDGE_ROUTES": json.dumps(routes)} if routes else {}),
        })
        sinks = build_sinks(settings)
        bridge = Bridge(settings, delivery=Delivery(
            sinks, QueueHandoff(settings, queue=retry_q, rng=random.Random(SEED)),
            timeout_seconds=settings.http_timeout_seconds, deadline_seconds=settings.delivery_deadline_seconds),
            delivery_queue=deliver_q)
        runtime.use(bridge)

        ledger = Ledger()
        for first in range(0, POINTS, BATCH):
            points = batch(first, BATCH)
            ledger.record(points, *post(points))
        assert len(ledger.accepted) == POINTS
        delivery_stats = None
        if path == "queued":
            # As the host runs the delivery function: one message per invocation (batchSize 1),
            # each taking up to BRIDGE_DELIVERY_BATCH - 1 more from the queue.
            assert ledger.queued == POINTS and not any(f.delivered for f in fakes.values())
            recorder = Recorded(worker_for(bridge), ledger)
            delivery_stats = drain(deliver_q, recorder, wait, batch_size=1)
            assert deliver_q.depth() == 0
        ingested = time.monotonic()

        worker = RetryWorker(settings, {s.name: s for s in sinks}, retry_q, dead_q, rng=random.Random(SEED + 1))
        stats = drain(retry_q, worker, wait)
        drained = time.monotonic()

        records = dead_letters(dead_q)
        dead = dead_by_sink(records)
        expected = {name: routed_to(name, ledger.accepted) if routes else ledger.accepted for name in fakes}
        verdicts = [account(name, expected[name], fake.delivered, fake.ghosts, ledger.rejected.get(name, {}),
                            dead.get(name, {})) for name, fake in fakes.items()]
        if routes and path == "inline":  # the answers said what each sink was sent
            assert dict(ledger.routed) == {"outbox": POINTS, **{name: len(expected[name]) for name in fakes}}
        outbox = outbox_seqs(settings.outbox_dir)
        reasons = Counter(r.reason.split(":")[0] for r in records)
        queued = "" if delivery_stats is None else (
            f"; {delivery_stats.invocations} delivery invocations took {recorder.messages_taken} more messages")
        report(f"conservation {path} on {backend}: {POINTS} points in {POINTS // BATCH} posts; ingest "
               f"{ingested - started:.1f} s{queued}, retries {drained - ingested:.1f} s", verdicts,
               f"retry invocations {stats.invocations} (by attempt {dict(sorted(stats.attempts.items()))}), "
               f"worker failures {stats.failures}, empty polls {stats.waits}; pending at ingest {dict(ledger.pending)}\n"
               f"  dead-letter records {len(records)}: {dict(reasons)}\n"
               f"  chaos decisions: " + "; ".join(f"{n} {dict(f.decisions)}" for n, f in fakes.items()))

    # the healthy sink: every point exactly once, whatever the others went through
    assert set(outbox) == ledger.accepted
    assert [s for s, n in outbox.items() if n != 1] == []
    assert stats.failures == 0 and stats.poisoned == []
    assert retry_q.depth() == 0
    if delivery_stats is not None:
        assert delivery_stats.failures == 0 and delivery_stats.poisoned == []
        assert delivery_stats.invocations < POINTS // BATCH  # messages were merged into batches
    for verdict in verdicts:
        assert verdict.lost == [], f"{verdict.sink}: {len(verdict.lost)} points lost, e.g. {verdict.lost[:10]}"
        assert verdict.twice == [], f"{verdict.sink}: counted twice (seq, delivered, rejected, dead): {verdict.twice[:10]}"
    # every outcome was exercised
    by_sink = {v.sink: v for v in verdicts}
    assert by_sink["dynatrace"].rejected + by_sink["dynatrace"].dead > 0  # partial 400s
    # Prometheus's refusals are rejected or dead-lettered, each with the receiver's reason; any
    # other point it lost was given up on after MAX_ATTEMPTS (chaos can outlast the attempts).
    refused_by_prometheus = {**ledger.rejected.get("prometheus", {}),
                             **{seq: reasons[0] for seq, reasons in dead.get("prometheus", {}).items()}}
    assert REFUSED_BY_PROMETHEUS <= set(refused_by_prometheus)
    assert all("refused for good" in refused_by_prometheus[seq] for seq in REFUSED_BY_PROMETHEUS)
    assert all(reason.startswith("gave up after") for seq, reason in refused_by_prometheus.items()
               if seq not in REFUSED_BY_PROMETHEUS)
    assert by_sink["unleash"].dead >= len(STALLED_AT_UNLEASH)
    assert any(r.reason.startswith("gave up after") for r in records)
    assert sum(stats.attempts.values()) > 0 and max(stats.attempts) >= MAX_ATTEMPTS


# ------------------------------------------------------------------------------------- 2

CRASH_POINTS = 1_000
CRASH_BATCH = 100
CRASH_HOST_JSON = {
    "version": "2.0",
    # A received message stays hidden for functionTimeout while the retry function runs: after
    # SIGKILL, what was in flight reappears this long after it was received.
    "functionTimeout": "00:00:03",
    "extensions": {"queues": {"maxPollingInterval": "00:00:00.2", "visibilityTimeout": "00:00:00",
                              "batchSize": 8, "maxDequeueCount": 5}},
}


class Runner:
    """``python -m bridges serve --port 0`` in a project folder, output collected."""

    def __init__(self, project: Path, env: dict[str, str]):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridges", "serve", "--port", "0"], cwd=project, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.base = None
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("Listening on "):
                    self.base = line.split()[2]
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        ready.wait(60)
        assert self.base, "the runner did not start:\n" + "\n".join(self.lines)

    def processed(self) -> int:
        return sum("retry_deliveries (" in line and " message " in line for line in list(self.lines))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)
        self.reader.join(timeout=5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=30)
        self.reader.join(timeout=5)
        assert self.process.returncode == 0, "\n".join(self.lines[-50:])


def crash_env(project: Path, fakes: dict, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "AzureWebJobsStorage"))}
    env.update(sink_settings(fakes), **binding_defaults(), PYTHONPATH=str(ROOT), **{
        "BRIDGE_SINKS": "outbox," + ",".join(SINKS),
        "BRIDGE_OUTBOX_DIR": str(project / "outbox"),
        "BRIDGE_HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
        # Taken delivery messages stay hidden 2 x (deadline + timeout) = 6 s after a crash.
        "BRIDGE_DELIVERY_DEADLINE_SECONDS": "2",
        "BRIDGE_RETRY_BASE_SECONDS": "0.05",
        "BRIDGE_RETRY_CAP_SECONDS": "0.3",
        "BRIDGE_RETRY_MAX_ATTEMPTS": "40",
    }, **extra)
    return env


def crash_project(tmp_path: Path) -> tuple[Path, Path]:
    project = tmp_path / "project"
    project.mkdir()
    (project / "host.json").write_text(json.dumps(CRASH_HOST_JSON))
    return project, project / ".bridge" / LOCAL_FILE


def post_all(runner: Runner, ledger: Ledger) -> None:
    """CRASH_POINTS points in posts of CRASH_BATCH, each answer in the ledger."""
    for first in range(0, CRASH_POINTS, CRASH_BATCH):
        points = batch(first, CRASH_BATCH)
        answer = requests.post(f"{runner.base}/api/metrics", json=points, timeout=30)
        ledger.record(points, answer.status_code, answer.json())


def in_flight(database: Path, queue: str) -> list[str]:
    """Texts received and not settled: what the runner held when it was killed."""
    now = time.time()
    return [text for _, count, visible_at, text in _all_rows(database, queue) if count > 0 and visible_at > now]


def test_nothing_queued_is_lost_when_the_runner_dies_before_delivering(identity, tmp_path):
    """SIGKILL after every answer and before any delivery (the delivery function disabled, as
    AzureWebJobs.<function>.Disabled does on the host): after a restart all of it arrives, once."""
    project, database = crash_project(tmp_path)
    with ExitStack() as stack:
        fakes = {name: stack.enter_context(fake) for name, fake in make_fakes().items()}
        for number, fake in enumerate(fakes.values()):
            fake.setup_chaos(SEED + 30 + number, Rates(0, 0, 0, 0), SLOW)
        env = crash_env(project, fakes)
        ledger = Ledger()
        runner = Runner(project, {**env, "AzureWebJobs.deliver_accepted.Disabled": "true"})
        try:
            assert any("deliver_accepted: disabled" in line for line in runner.lines), runner.lines
            post_all(runner, ledger)
        finally:
            runner.kill()
        delivery_q = SqliteQueue(database, "bridge-deliver")
        assert ledger.queued == CRASH_POINTS and delivery_q.depth() == CRASH_POINTS // CRASH_BATCH
        assert not any(fake.delivered for fake in fakes.values()) and not (project / "outbox").exists()
        runner = Runner(project, env)
        try:
            wait_until(lambda: delivery_q.depth() == 0 and SqliteQueue(database, "bridge-retry").depth() == 0,
                       90, "the delivery and retry queues drained")
        finally:
            runner.stop()
        verdicts = [account(name, ledger.accepted, fake.delivered, fake.ghosts, {}, {}) for name, fake in fakes.items()]
        report(f"SIGKILL before delivery: {CRASH_POINTS} points kept in {CRASH_POINTS // CRASH_BATCH} messages", verdicts)
    assert outbox_seqs(project / "outbox") == Counter(ledger.accepted)
    for verdict in verdicts:
        assert verdict.lost == [] and verdict.twice == [], (verdict.sink, verdict.lost[:10], verdict.twice[:10])
        assert verdict.delivered == CRASH_POINTS


@pytest.mark.parametrize("path", ["queued", "inline"])
def test_conservation_across_a_crash(path, identity, tmp_path):
    """SIGKILL while deliveries are under way: queued, while the delivery function holds messages
    (and retries run); inline, in the middle of retries. Nothing accepted is lost; only what was in
    flight at the kill may reach a sink twice."""
    project, database = crash_project(tmp_path)
    started = time.monotonic()
    with ExitStack() as stack:
        fakes = {name: stack.enter_context(fake) for name, fake in make_fakes().items()}
        for number, (name, fake) in enumerate(fakes.items()):
            # failing most of the time while the runner works, so deliveries are in flight when it
            # dies; queued, the delivery function's refusals are not in any answer: no partials then
            partial = 0.05 if name == "dynatrace" and path == "inline" else 0.0
            fake.setup_chaos(SEED + 10 + number, Rates(error500=0.35, throttle429=0.1, slow=0.3 if path == "queued"
                                                        else 0.05, reset=0.1, partial=partial), SLOW)
        env = crash_env(project, fakes, BRIDGE_DELIVERY=path)
        ledger = Ledger()
        runner = Runner(project, env)
        try:
            assert any("retry_deliveries: queue bridge-retry (SQLite)" in line for line in runner.lines), runner.lines
            post_all(runner, ledger)
            if path == "queued":
                wait_until(lambda: in_flight(database, "bridge-deliver"), 60, "the delivery function at work")
            else:
                wait_until(lambda: runner.processed() >= 20, 60, "retries under way")
        finally:
            runner.kill()
        held = {queue: in_flight(database, queue) for queue in ("bridge-deliver", "bridge-retry")}
        in_flight_seqs: dict[str, set[int]] = {}
        for text in held["bridge-retry"]:
            envelope = Envelope.from_text(text)
            in_flight_seqs.setdefault(envelope.sink, set()).update(int(dict(m.tags)["seq"]) for m in metrics_of(envelope))
        for text in held["bridge-deliver"]:  # held for every sink
            for sink in ("outbox", *SINKS):
                in_flight_seqs.setdefault(sink, set()).update(int(dict(m.tags)["seq"]) for m in metrics_of(Envelope.from_text(text)))
        depths = {queue: SqliteQueue(database, queue).depth() for queue in held}
        time.sleep(0.5)  # the fakes stay bad for a little while after the restart
        runner = Runner(project, env)
        try:
            time.sleep(1.0)
            for fake in fakes.values():
                fake.healthy = True
            wait_until(lambda: all(SqliteQueue(database, queue).depth() == 0 for queue in held), 90,
                       "the delivery and retry queues drained")
        finally:
            runner.stop()
        records = dead_letters(SqliteQueue(database, "bridge-deadletter"))
        poisoned = sum(SqliteQueue(database, poison_name(queue)).depth() for queue in held)
        dead = dead_by_sink(records)
        verdicts = [account(name, ledger.accepted, fake.delivered, fake.ghosts, ledger.rejected.get(name, {}),
                            dead.get(name, {})) for name, fake in fakes.items()]
        outbox = outbox_seqs(project / "outbox")
        report(f"crash ({path}): {CRASH_POINTS} points; SIGKILL with queued {depths}, in flight "
               f"{ {q: len(t) for q, t in held.items()} }; {time.monotonic() - started:.1f} s in all", verdicts,
               f"dead-letter records {len(records)}, poison {poisoned}; duplicates from the crash or timeouts: "
               + ", ".join(f"{v.sink} {len(v.twice)}" for v in verdicts))
    assert set(outbox) == ledger.accepted
    assert [s for s, n in outbox.items() if n != 1 and s not in in_flight_seqs.get("outbox", set())] == []
    assert poisoned == 0
    for verdict in verdicts:
        assert verdict.lost == [], f"{verdict.sink}: {len(verdict.lost)} points lost, e.g. {verdict.lost[:10]}"
        # A crash between delivering and deleting the message delivers again: at-least-once, so
        # here points may be counted twice as delivered, never as delivered and refused.
        mixed = [t for t in verdict.twice if t[2] or t[3]]
        assert mixed == [], f"{verdict.sink}: delivered and also refused or dead-lettered: {mixed[:10]}"
        unexplained = [t[0] for t in verdict.twice if t[0] not in in_flight_seqs.get(verdict.sink, set())]
        assert unexplained == [], f"{verdict.sink}: delivered twice though not in flight at the kill: {unexplained[:10]}"


def _all_rows(database: Path, queue: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(database) as db:
        return db.execute("SELECT id, dequeue_count, visible_at, text FROM messages WHERE queue = ?", (queue,)).fetchall()


# ------------------------------------------------------------------------------------- 3


def test_expiry_dead_letters_and_replay(identity, tmp_path):
    clock = OffsetClock()
    database = tmp_path / ".bridge" / LOCAL_FILE
    retry_q, dead_q = SqliteQueue(database, "bridge-retry", clock), SqliteQueue(database, "bridge-deadletter", clock)
    with ExitStack() as stack:
        fakes = {name: stack.enter_context(fake) for name, fake in make_fakes().items() if name in ("azure_monitor", "prometheus")}
        for number, fake in enumerate(fakes.values()):
            fake.setup_chaos(SEED + 20 + number, Rates(0, 0, 0, 0), SLOW, retry_after="120")
            fake.down = (503, {"Retry-After": "120"})
        settings = load_settings({
            "AZURE_MONITOR_RESOURCE_ID": RESOURCE, "AZURE_MONITOR_ENDPOINT": fakes["azure_monitor"].url,
            "PROMETHEUS_REMOTE_WRITE_URL": fakes["prometheus"].write_url,
            "BRIDGE_SINKS": "azure_monitor,prometheus", "BRIDGE_HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
            "BRIDGE_DELIVERY": "inline",  # the answer says what went pending
            "BRIDGE_RETRY_BASE_SECONDS": "0.01", "BRIDGE_RETRY_CAP_SECONDS": "0.05", "BRIDGE_RETRY_MAX_ATTEMPTS": "2",
        })
        sinks = build_sinks(settings)
        bridge = Bridge(settings, delivery=Delivery(sinks, QueueHandoff(settings, queue=retry_q),
                                                    timeout_seconds=HTTP_TIMEOUT))
        runtime.use(bridge)
        # 19 minutes old: inside Azure Monitor's 20-minute window now, outside it by the next attempt
        points = batch(0, 50, dt=time.time() - 19 * 60)
        ledger = Ledger()
        ledger.record(points, *post(points))
        assert dict(ledger.pending) == {"azure_monitor": 50, "prometheus": 50}
        worker = RetryWorker(settings, {s.name: s for s in sinks}, retry_q, dead_q)
        stats = drain(retry_q, worker, lambda: clock.advance(121))

        records = dead_letters(dead_q)
        dead = dead_by_sink(records)
        assert set(dead["azure_monitor"]) == set(range(50))
        assert all(len(r) == 1 and r[0].startswith("fallen out of azure_monitor's accepted time window (points at "
                                                    "most 1200 s old) while waiting to retry")
                   for r in dead["azure_monitor"].values()), dead["azure_monitor"][0]
        assert all(r[0].startswith("gave up after 2 attempts") for r in dead["prometheus"].values())
        assert set(dead["prometheus"]) == set(range(50))
        assert not any(f.delivered for f in fakes.values())

        # The sinks heal; replay every dead letter (deadletter replay --all).
        for fake in fakes.values():
            fake.down = None
            fake.healthy = True
        out, err = StringIO(), StringIO()
        assert run_deadletter(Namespace(deadletter_command="replay", all=True, sink=None, older_than=None,
                                        newer_than=None, poison=False),
                              {"retry": retry_q, "deadletter": dead_q, "poison": SqliteQueue(database, "bridge-retry-poison")},
                              time.time_ns(), out, err) == 0, err.getvalue()
        replay_stats = drain(retry_q, worker, lambda: clock.advance(121))
        after = dead_by_sink(dead_letters(dead_q))
        print(f"\n== expiry and replay: {stats.invocations} retry invocations, dead letters "
              f"{ {k: len(v) for k, v in dead.items()} }; replay: {err.getvalue().strip()}; "
              f"{replay_stats.invocations} invocations; dead letters after replay { {k: len(v) for k, v in after.items()} }; "
              f"reasons {sorted({r[0][:90] for v in after.values() for r in v.values()})}")
    # Every replayed point is delivered once (Azure Monitor's are still a few seconds short of
    # 20 minutes old in real time: the worker's clock is real, only the queue's was advanced).
    for fake in fakes.values():
        assert fake.delivered == Counter(range(50)) and fake.ghosts == Counter()
    assert after == {} and dead_q.depth() == 0
    assert retry_q.depth() == 0
