"""The retry path's cost: draining the retry queue, and what the hand-off adds to an HTTP answer.

1. Envelopes per second through the retry function: the retry queue is pre-filled with
   ``ENVELOPES`` first-attempt envelopes of ``METRICS_PER_ENVELOPE`` metrics each for the
   Dynatrace sink (made with ``envelopes_for``, visible at once), the sink points at an
   in-process fake Dynatrace that accepts everything, and a loop drains the queue as the host
   does: receive a batch (host.json's ``batchSize``), ``RetryWorker.process`` each message,
   delete it. Timed on the embedded SQLite queue and on Azurite (started with
   ``tests/peers/azurite.py``; skipped, saying why, when it cannot start).
2. The hand-off's added latency on the HTTP path: p50 and p99 of ``Bridge.ingest`` of a
   100-point JSON body with two sinks (fake Dynatrace and fake Better Stack), both healthy vs
   Dynatrace answering 500 to every request (so each request hands its 100 metrics to the
   SQLite retry queue), the same number of requests each, interleaved so machine noise hits
   both alike.

All state (BRIDGE_STATE_DIR, BRIDGE_OUTBOX_DIR, the SQLite queues) lives in a temporary folder.
The fake Dynatrace is ``tests/fakes/dynatrace.py`` with its per-line contract check skipped
(``AcceptingDynatrace``): that check runs in this process and would otherwise be counted as the
bridge's time (a few ms per request, and only for the requests it accepts); a sample of the
lines it received is checked against the contract afterwards, untimed.
The fakes' server sockets get TCP_NODELAY: they write the headers and the body of an answer
separately, and Nagle's algorithm with the client's delayed ACK would otherwise add ~40 ms to
every request, which no real backend does and which would hide everything measured here.
The bridge's log records are still made, but go nowhere (a NullHandler), as no test prints them.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fake receivers and the Azurite peer

from fakes.betterstack import FakeBetterStack  # noqa: E402
from fakes.dynatrace import FakeDynatrace, line_error  # noqa: E402
from fakes.server import (  # noqa: E402
    Answer,
    Received,
    Scripted,  # noqa: E402
)

from benchmarks.bench_ingest import payload  # noqa: E402
from benchmarks.common import on_azurite, report  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.delivery.sinks import build_sinks  # noqa: E402
from bridges.ingest.normalize import Normalizer  # noqa: E402
from bridges.queues import SqliteQueue, StorageQueue  # noqa: E402
from bridges.retry.envelopes import envelopes_for  # noqa: E402
from bridges.retry.worker import RetryWorker, open_queues  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

ENVELOPES = 1000
METRICS_PER_ENVELOPE = 100
BATCH_SIZE = 16  # host.json extensions.queues.batchSize
LEASE_SECONDS = 300  # how long a received message stays hidden while the function runs
REQUESTS = 500  # per condition, in part 2
WARMUP = 10  # per condition, not counted
POINTS = 100
DT_TOKEN = "dt0c01.BENCH"
BS_TOKEN = "bench-source-token"


def body(points: int = POINTS) -> bytes:
    """A canonical JSON body like a real POST (the ingest benchmark's), stamped now."""
    return payload(points, stamp=int(time.time()))


class AcceptingDynatrace(FakeDynatrace):
    """The fake Dynatrace answering 202 to every authorized ingest request, lines unchecked."""

    def __init__(self) -> None:
        super().__init__(token=DT_TOKEN)
        self.lines = 0

    def answer(self, request: Received) -> Answer:
        if request.headers.get("authorization") != f"Api-Token {self.token}":
            return super().answer(request)
        count = sum(1 for line in request.body.split(b"\n") if line.strip())
        with self._lock:
            self.lines += count
        return Answer(202, {"Content-Type": "application/json;charset=utf-8"},
                      json.dumps({"linesOk": count, "linesInvalid": 0, "error": None, "warnings": None}).encode())

    def check_sample(self, requests: int = 20) -> int:
        """Check the lines of the last ``requests`` requests against the contract; lines checked."""
        now_ms = int(time.time() * 1000)
        checked = 0
        for received in self.received[-requests:]:
            for line in received.body.decode("utf-8").split("\n"):
                if line.strip():
                    problem = line_error(line, now_ms)
                    assert problem is None, (problem, line)
                    checked += 1
        return checked


def fast(fake):
    """TCP_NODELAY on this fake's accepted sockets (see the module docstring)."""
    fake._server.RequestHandlerClass.disable_nagle_algorithm = True
    return fake


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- 1. draining the retry queue -----------------------------------------------------------


def fill(queue, count: int) -> float:
    """Pre-fill with ``count`` first-attempt Dynatrace envelopes, visible at once; seconds taken."""
    now_ns = time.time_ns()
    metrics = Normalizer().normalize(json.loads(body(METRICS_PER_ENVELOPE)), now_ns).metrics
    [envelope] = envelopes_for("dynatrace", metrics, "HTTP 500 (bench)", now_ns)
    assert envelope.count == METRICS_PER_ENVELOPE
    started = time.perf_counter()
    for _ in range(count):
        queue.send(replace(envelope, id=str(uuid.uuid4())).to_text(), visibility_timeout=0)
    return time.perf_counter() - started


def drain(worker: RetryWorker, queue) -> tuple[float, int, int, dict[str, int]]:
    """Receive a batch, process each message, delete it; until the queue is empty.
    Returns (seconds, envelopes, metrics delivered, decisions by kind)."""
    envelopes = delivered = 0
    kinds: dict[str, int] = {}
    started = time.perf_counter()
    while True:
        batch = queue.receive(BATCH_SIZE, LEASE_SECONDS)
        if not batch:
            break
        for message in batch:
            decision = worker.process(message.text)
            queue.delete(message)
            envelopes += 1
            delivered += decision.delivered
            kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
    return time.perf_counter() - started, envelopes, delivered, kinds


def drain_figures(backend: str, tmp: Path, environ: dict[str, str]) -> list[str]:
    with fast(AcceptingDynatrace()) as fake:
        settings = load_settings({
            "BRIDGE_STATE_DIR": str(tmp / "state"), "BRIDGE_OUTBOX_DIR": str(tmp / "outbox"),
            "BRIDGE_SINKS": "dynatrace", "DYNATRACE_URL": f"{fake.url}/api/v2/metrics/ingest",
            "DYNATRACE_API_TOKEN": DT_TOKEN, "BRIDGE_RETRY_QUEUE": f"bench-retry-{uuid.uuid4().hex[:8]}",
            "BRIDGE_DEADLETTER_QUEUE": f"bench-deadletter-{uuid.uuid4().hex[:8]}",
        })
        retry_queue, deadletter_queue = open_queues(settings, environ)
        expected = SqliteQueue if backend == "SQLite" else StorageQueue
        assert isinstance(retry_queue, expected), retry_queue
        worker = RetryWorker(settings, {s.name: s for s in build_sinks(settings)}, retry_queue, deadletter_queue)
        # Warm up (schema compiled, HTTP connection open, queue created), then measure.
        fill(retry_queue, 4)
        drain(worker, retry_queue)
        fill_seconds = fill(retry_queue, ENVELOPES)
        lines_before = fake.lines
        seconds, envelopes, delivered, kinds = drain(worker, retry_queue)
        assert envelopes == ENVELOPES and delivered == ENVELOPES * METRICS_PER_ENVELOPE, (envelopes, delivered, kinds)
        assert kinds == {"done": ENVELOPES}, kinds
        assert retry_queue.depth() == 0 and deadletter_queue.depth() == 0
        lines = fake.lines - lines_before
        checked = fake.check_sample()
    return [
        f"{backend}: {envelopes / seconds:.1f} envelopes/s, {delivered / seconds:,.0f} metrics/s "
        f"({envelopes} envelopes of {METRICS_PER_ENVELOPE} metrics drained in {seconds:.2f} s, "
        f"{seconds / envelopes * 1000:.2f} ms each; {lines} Dynatrace lines sent, {checked} of them checked "
        f"against the contract afterwards; "
        f"pre-filling took {fill_seconds / ENVELOPES * 1000:.2f} ms per send)",
    ]


# -- 2. the hand-off on the HTTP path ------------------------------------------------------


def handoff_figures(tmp: Path) -> list[str]:
    payload = body()
    with fast(AcceptingDynatrace()) as dynatrace, fast(FakeBetterStack(BS_TOKEN)) as betterstack:
        bridge = Bridge(load_settings({
            "BRIDGE_STATE_DIR": str(tmp / "state"), "BRIDGE_OUTBOX_DIR": str(tmp / "outbox"),
            "BRIDGE_SINKS": "dynatrace,betterstack",
            "BRIDGE_DELIVERY": "inline",  # the hand-off inside the answer is what is measured
            "DYNATRACE_URL": f"{dynatrace.url}/api/v2/metrics/ingest", "DYNATRACE_API_TOKEN": DT_TOKEN,
            "BETTERSTACK_URL": betterstack.url, "BETTERSTACK_SOURCE_TOKEN": BS_TOKEN,
            # ~2 x 310 requests in well under a minute: keep the client-side limit out of the way.
            "BETTERSTACK_MAX_REQUESTS_PER_MINUTE": "1000000",
        }))
        samples: dict[bool, list[float]] = {False: [], True: []}

        def one(failing: bool, keep: bool) -> None:
            if failing:
                dynatrace.script(Scripted(500, {"Content-Type": "application/json"},
                                          b'{"error":{"code":500,"message":"bench"}}'))
            started = time.perf_counter()
            reply = bridge.ingest(payload, "application/json")
            elapsed = time.perf_counter() - started
            delivery = reply.body.get("delivery", {})
            assert reply.status == 202, (reply.status, reply.body)
            assert delivery["betterstack"]["delivered"] == POINTS, delivery
            expected = {"delivered": 0, "pending": POINTS} if failing else {"delivered": POINTS, "pending": 0}
            assert {k: delivery["dynatrace"][k] for k in expected} == expected, delivery
            if keep:
                samples[failing].append(elapsed)

        for i in range(WARMUP):  # opens the retry queue, the connections, compiles the schema
            one(i % 2 == 1, keep=False)
        for i in range(REQUESTS):  # interleaved; the order within each pair alternates too
            first = i % 2 == 1
            one(first, keep=True)
            one(not first, keep=True)
        queued = bridge.delivery.handoff.queue.depth()
        assert queued >= REQUESTS + WARMUP // 2, queued  # one envelope (at least) per failing request

    def ms(samples: list[float], q: float) -> float:
        return percentile(samples, q) * 1000

    healthy, failing = samples[False], samples[True]
    return [
        f"body: {POINTS} points, {len(payload)} bytes of JSON; sinks: Dynatrace and Better Stack (fakes); "
        f"{REQUESTS} requests each, interleaved; {dynatrace.check_sample()} Dynatrace lines checked against the contract "
        f"afterwards",
        f"all sinks healthy:       p50 {ms(healthy, 50):.2f} ms, p90 {ms(healthy, 90):.2f} ms, p99 {ms(healthy, 99):.2f} ms "
        f"(mean {statistics.fmean(healthy) * 1000:.2f} ms)",
        f"Dynatrace failing (500): p50 {ms(failing, 50):.2f} ms, p90 {ms(failing, 90):.2f} ms, p99 {ms(failing, 99):.2f} ms "
        f"(mean {statistics.fmean(failing) * 1000:.2f} ms); {queued} envelopes queued on SQLite",
        f"added by the hand-off:   p50 {ms(failing, 50) - ms(healthy, 50):+.2f} ms, "
        f"p90 {ms(failing, 90) - ms(healthy, 90):+.2f} ms, "
        f"p99 {ms(failing, 99) - ms(healthy, 99):+.2f} ms",
    ]


def main() -> None:
    # Nothing from this process's environment may send the retry queue elsewhere: the hand-off
    # opens its queue from the environment (AzureWebJobsStorage wins over SQLite).
    for name in [n for n in os.environ if n.startswith("AzureWebJobsStorage")]:
        del os.environ[name]
    logging.getLogger().addHandler(logging.NullHandler())  # "100 metrics pending" x 300 is not a figure
    with tempfile.TemporaryDirectory(prefix="bench-retry-") as tmp:
        tmp = Path(tmp)
        lines = [f"retry function drain: receive({BATCH_SIZE}) -> RetryWorker.process -> delete, one message at a time (the host runs a batch "
                 f"concurrently); "
                 f"Dynatrace sink on a fake that accepts everything"]
        lines += drain_figures("SQLite", tmp / "sqlite", {})
        lines += on_azurite(lambda storage: drain_figures("Azurite", tmp / "azurite", {"AzureWebJobsStorage": storage}))
        lines.append("hand-off latency on the HTTP path (Bridge.ingest, SQLite retry queue):")
        lines += handoff_figures(tmp / "handoff")
    report("retry", lines)


if __name__ == "__main__":
    main()
