"""Queued delivery (BRIDGE_DELIVERY=queued, the default) against inline: answer latency, requests
per backend, and the delivery function's throughput.

1. Answer latency, over real HTTP: two local runners (``python -m bridges serve --port 0``, run as
   ``bridges.__main__.main`` in a subprocess in its own temporary project folder holding a copy of
   host.json, BRIDGE_STATE_DIR and BRIDGE_OUTBOX_DIR inside it, the SQLite delivery queue; queued,
   the default), all five sinks (Dynatrace, Better Stack, Unleash, Azure Monitor, Prometheus
   remote write) on contract fakes. One runner has every sink healthy; in the other,
   DYNATRACE_URL points at a server that takes every request and never answers (a request to it
   ends at BRIDGE_HTTP_TIMEOUT_SECONDS, 10 s by default; then, by the delivery stage's
   QUIET_SECONDS rule, the rest of that delivery and new deliveries for 30 s send Dynatrace's
   metrics straight to the retry queue, and deliver to the other four sinks). Two routes: ``POST
   /api/webhooks/alertmanager`` (one firing alert, from the recorded Alertmanager sample in
   tests/testdata/webhooks, stamped now, a different instance each time) and ``POST /api/metrics``
   (100 canonical points as JSON, the ingest benchmark's body). A series is one route on one
   runner; the four series are interleaved, the order rotating every round, so machine noise hits
   all alike. A figure is the wall time of ``requests.Session.post``, from the actual send to the
   answer. The delivery and retry functions run meanwhile in each runner's queue process (a
   second process at lower CPU priority, as Flex Consumption gives non-HTTP functions their own
   instances); all of it shares this machine's CPUs.
   (a) Open loop, the primary figures: ``OPEN_RATE`` requests a second per series, at fixed times
       (one request every 1 / (4 x OPEN_RATE) s, round robin over the series), ``WARMUP`` untimed
       then ``REQUESTS`` timed per series, from ``OPEN_SENDERS`` threads each with a keep-alive
       session of its own, so a slow answer does not hold up the next send. How late the sends
       started against their schedule is printed too. Targets: the hanging runner within 1.2x of
       the healthy one on p50 and on p99; p99 under 50 ms.
   (b) Saturation, closed loop: ``WARMUP`` untimed then ``SATURATION_REQUESTS`` timed per series
       from one session, each request as soon as the previous answer is in, while the delivery
       function encodes and sends the batches this makes on the same machine. Figures only.
   After each, what the runners' logs and queues show: delivery invocations finished (and how long
   they took), the delivery and retry queue depths, the requests the hanging server received.
   For contrast, a third runner in BRIDGE_DELIVERY=inline with the same hanging Dynatrace and
   BRIDGE_HTTP_TIMEOUT_SECONDS=2 answers ``INLINE_REQUESTS`` requests of each kind, each time
   printed.
2. Requests per sink: ``ALERTS`` single-alert Alertmanager webhooks sent at a steady pace over
   ``PACE_SECONDS`` (one every 20 ms, from ``SENDERS`` threads each with its own session, so a
   slow answer does not slow the pace), first to a queued runner, then to an inline one (fresh
   runners, every sink healthy). The requests each fake received are counted, for the queued
   runner after its delivery queue (the SQLite file in its state folder) is empty and the fakes
   stopped receiving. How many messages each delivery invocation merged is read from the runner's
   log (``bridge delivery of N queued messages <sink>: delivered=...``). Target: at most
   ceil(ALERTS / 32) requests per sink where its limits allow, at least 10x fewer than inline.
   Inline, Better Stack's client-side limit (500 requests in any minute) defers the rest to the
   retry queue, whose envelopes are sent later, one request each; they are counted as deferred,
   not waited for. Azure Monitor pre-aggregates per minute, within each request.
3. Metrics per second through the delivery function, in this process: the delivery queue is
   pre-filled with ``MESSAGES`` calls of ``bridges.delivery.queued.enqueue`` of ``METRICS_PER_MESSAGE``
   metrics each (the ingest benchmark's points, stamped now; the same 500 series in every
   message), then drained as the host runs the function: ``receive(1, lease)``,
   ``worker_for(bridge).process(text)`` (which takes up to 31 more messages; ``linger_seconds``
   0 since everything is queued already), delete; until the queue is empty. The five sinks point
   at in-process fakes that answer 2xx to everything without checking (their checks would run in
   this process and be counted as the bridge's time); the last request each received is checked
   against its vendor contract afterwards, untimed. On the embedded SQLite queue and on Azurite
   (started as tests/peers/azurite.py does; skipped, saying why, when it cannot start).

The contract fakes of parts 1 and 2 (tests/fakes/, with an identity endpoint for the two Azure
sinks) and the hanging server run in a child process, so their parsing does not hold this
process's GIL while a request is being timed. Every fake's server socket gets TCP_NODELAY (the
fakes write headers and body separately; Nagle's algorithm with delayed ACKs would add ~40 ms
to each request); the local runner sets it on its own sockets. The runners log at INFO, as the
host does, to a file each; this process's log records go nowhere (a NullHandler). Everything
lives in a temporary folder.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tests"))  # the fake receivers and the Azurite peer

import requests  # noqa: E402
from chaos import BS_TOKEN, DT_TOKEN, SINKS, UNLEASH_TOKEN, sink_settings  # noqa: E402
from fakes.azure_monitor import FakeAzureMonitor  # noqa: E402
from fakes.betterstack import FakeBetterStack  # noqa: E402
from fakes.dynatrace import FakeDynatrace  # noqa: E402
from fakes.identity import FakeIdentityEndpoint  # noqa: E402
from fakes.prometheus import FakePrometheusWrite  # noqa: E402
from fakes.server import Answer, FakeReceiver, Received  # noqa: E402
from fakes.unleash import FakeUnleash  # noqa: E402

from benchmarks.bench_ingest import payload  # noqa: E402
from benchmarks.bench_retry import fast, percentile  # noqa: E402
from benchmarks.common import on_azurite, report  # noqa: E402
from bridges.queues import LOCAL_FILE, SqliteQueue  # noqa: E402
from bridges.settings import binding_defaults  # noqa: E402

OPEN_RATE = 20.0  # requests a second per series, part 1 (a)
OPEN_SENDERS = 8  # threads sending part 1 (a)
REQUESTS = 400  # timed, per series (2 routes x 2 runners), in part 1 (a)
SATURATION_REQUESTS = 200  # timed, per series, in part 1 (b)
WARMUP = 20  # untimed, per series, before each of (a) and (b)
INLINE_REQUESTS = 3  # per route, inline with the hanging sink
INLINE_TIMEOUT = 2  # BRIDGE_HTTP_TIMEOUT_SECONDS of the inline contrast
POINTS = 100
ALERTS = 1000  # part 2
PACE_SECONDS = 20.0
SENDERS = 4
BATCH = 32  # BRIDGE_DELIVERY_BATCH's default
MESSAGES = 200  # part 3
METRICS_PER_MESSAGE = 500
DELIVERY_QUEUE = "bridge-deliver"
ALERT_SAMPLE = ROOT / "tests" / "testdata" / "webhooks" / "alertmanager" / "firing_and_resolved.json"
ROUTES = {"webhook": ("/api/webhooks/alertmanager", 2), "metrics": ("/api/metrics", POINTS)}  # path, metrics
SINK_LINE = re.compile(r"bridge (?P<route>.+?) (?P<sink>" + "|".join(SINKS) + r"): (?P<fields>\w+=.*)$")
BATCH_LINE = re.compile(r"bridge delivery of (\d+) queued messages dynatrace: ")
INVOCATION_LINE = re.compile(rf"queue deliver_accepted \({DELIVERY_QUEUE}\) message .* \((?P<ms>[\d.]+) ms\)$")


# -- bodies ---------------------------------------------------------------------------------------


def metrics_body() -> bytes:
    return payload(POINTS, stamp=int(time.time()))


_SAMPLE = json.loads(ALERT_SAMPLE.read_text())


def alert_body(number: int) -> bytes:
    """The recorded Alertmanager notification with only its firing alert, on instance
    ``number``, starting now: a single-alert webhook (2 metrics)."""
    document = copy.deepcopy(_SAMPLE)
    alert = document["alerts"][0]
    assert alert["status"] == "firing"
    instance = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}:9100"
    alert["labels"]["instance"] = instance
    alert["annotations"]["summary"] = f"Instance {instance} down"
    alert["startsAt"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    alert["fingerprint"] = f"{number:016x}"
    document["alerts"] = [alert]
    return json.dumps(document).encode()


# -- the fakes, in a child process (parts 1 and 2) ------------------------------------------------


def dynatrace_accepted(request: Received) -> Answer:
    count = sum(1 for line in request.body.split(b"\n") if line.strip() and not line.startswith(b"#"))
    return Answer(202, {"Content-Type": "application/json;charset=utf-8"},
                  json.dumps({"linesOk": count, "linesInvalid": 0, "error": None, "warnings": None}).encode())


# Each sink's contract fake, its arguments, and what it answers when accepting everything unchecked.
CONTRACTS = {
    "dynatrace": (FakeDynatrace, {"token": DT_TOKEN}, dynatrace_accepted),
    "betterstack": (FakeBetterStack, {"token": BS_TOKEN}, lambda request: Answer(202)),
    "unleash": (FakeUnleash, {"version": "7", "token": UNLEASH_TOKEN}, lambda request: Answer(202)),
    "azure_monitor": (FakeAzureMonitor, {}, lambda request: Answer(200)),
    "prometheus": (FakePrometheusWrite, {}, lambda request: Answer(204)),
}


class Counting:
    """Mixin before a contract fake: counts its answers by status. With ``accept`` set, that
    answers instead of the contract (whose check is ``contract.answer``, to run afterwards)."""

    accept: Callable[[Received], Answer] | None = None

    def answer(self, request: Received) -> Answer:
        answer = self.accept(request) if self.accept else super().answer(request)
        with self._lock:
            self.statuses[answer.status] += 1
        return answer


def contract_fakes(accepting: bool = False) -> dict:
    """The five sinks' fakes, by sink name, with TCP_NODELAY: checking each request against its
    vendor's contract, or (``accepting``) answering 2xx to everything unchecked."""
    fakes = {}
    for name, (contract, arguments, accepted) in CONTRACTS.items():
        fake = type(f"Counting{contract.__name__}", (Counting, contract), {})(**arguments)
        fake.contract, fake.statuses = contract, Counter()
        if accepting:
            fake.accept = accepted
        fakes[name] = fast(fake)
    return fakes


class Hanging(FakeReceiver):
    """A backend that hangs: takes every request whole and never answers, until it stops."""

    def __init__(self) -> None:
        super().__init__()
        self._released = threading.Event()

    def answer(self, request: Received) -> Answer:
        self._released.wait()
        return Answer(503)

    def __exit__(self, *exc) -> None:
        self._released.set()
        super().__exit__(*exc)


def serve_fakes(conn) -> None:
    """The child process: start the fakes, send their settings, answer "counts" until "stop"."""
    logging.getLogger().addHandler(logging.NullHandler())
    with ExitStack() as stack:
        fakes = {name: stack.enter_context(fake) for name, fake in contract_fakes().items()}
        identity = stack.enter_context(fast(FakeIdentityEndpoint()))
        hanging = stack.enter_context(Hanging())
        conn.send({"env": {**sink_settings(fakes), "IDENTITY_ENDPOINT": identity.endpoint,
                           "IDENTITY_HEADER": identity.secret},
                   "hanging_dynatrace": hanging.url + "/api/v2/metrics/ingest"})
        while True:
            command = conn.recv()
            if command == "counts":
                conn.send({"requests": {name: len(fake.received) for name, fake in fakes.items()},
                           "statuses": {name: dict(fake.statuses) for name, fake in fakes.items()},
                           "hanging": len(hanging.received)})
            else:
                break


class FakesProcess:
    def __enter__(self):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve_fakes, args=(child,), daemon=True)
        self.process.start()
        if not self.conn.poll(60):
            raise RuntimeError("the fakes did not start")
        started = self.conn.recv()
        self.env, self.hanging_dynatrace = started["env"], started["hanging_dynatrace"]
        return self

    def counts(self) -> dict:
        self.conn.send("counts")
        return self.conn.recv()

    def __exit__(self, *exc) -> None:
        self.conn.send("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


# -- the local runner -----------------------------------------------------------------------------

SERVE = "import sys; from bridges.__main__ import main; sys.exit(main(['serve', '--port', '0']))"


class Runner:
    """``python -m bridges serve --port 0`` in a project folder of its own (a copy of host.json,
    state and outbox inside it), its output in runner.log there."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str]):
        self.name = name
        self.delivery = env.get("BRIDGE_DELIVERY", "queued")
        self.project = tmp / name
        self.project.mkdir(parents=True)
        shutil.copy(ROOT / "host.json", self.project / "host.json")
        self.state = self.project / "state"
        self.log_path = self.project / "runner.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "AzureWebJobs"))}
        environment.update(binding_defaults(), PYTHONPATH=str(ROOT), BRIDGE_STATE_DIR=str(self.state),
                           BRIDGE_OUTBOX_DIR=str(self.project / "outbox"), BRIDGE_SINKS=",".join(SINKS))
        environment.update(env)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-c", SERVE],
                                            cwd=self.project, env=environment, stdout=log, stderr=subprocess.STDOUT)
        self.base = ""

    def wait_ready(self, timeout: float = 60) -> "Runner":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith("Listening on "):
                    self.base = line.split()[2]
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"runner {self.name} did not start:\n" + "\n".join(self.lines()[-30:]))

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def depth(self, queue: str = DELIVERY_QUEUE) -> int:
        return SqliteQueue(self.state / LOCAL_FILE, queue).depth()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def stop_all(runners) -> None:
    for runner in runners:  # all at once: a runner with a hung delivery takes a while to stop
        if runner.process.poll() is None:
            runner.process.send_signal(signal.SIGINT)
    for runner in runners:
        runner.stop()


def sink_records(lines: list[str]) -> list[tuple[str, str, dict[str, float]]]:
    """(route, sink, fields) of every per-sink record the runner logged."""
    out = []
    for line in lines:
        match = SINK_LINE.search(line)
        if match:
            fields = dict(pair.split("=", 1) for pair in match["fields"].split(", "))
            out.append((match["route"], match["sink"], {k: float(v) for k, v in fields.items()}))
    return out


def ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1000


def invocation_times(lines: list[str]) -> list[float]:
    """How long each finished delivery invocation took, in ms, in the order logged."""
    return [float(m["ms"]) for line in lines if (m := INVOCATION_LINE.search(line))]


def post(session: requests.Session, runner: Runner, path: str, body: bytes) -> tuple[float, requests.Response]:
    """POST a JSON body; the wall time of ``post`` and the answer."""
    started = time.perf_counter()
    answer = session.post(runner.base + path, data=body, headers={"Content-Type": "application/json"}, timeout=120)
    return time.perf_counter() - started, answer


def paced(jobs: list[Callable[[requests.Session], None]], interval: float, senders: int) -> tuple[float, list[float]]:
    """Open loop: job i starts at start + i * interval, in whichever of ``senders`` threads is
    free (each with a keep-alive session of its own), so a slow answer does not hold up the next
    send while a thread is free. Returns the span from the start to the last job's end, and how
    late each job started against its schedule (s)."""
    lock = threading.Lock()
    pending = iter(range(len(jobs)))
    lags = [0.0] * len(jobs)
    start = time.monotonic() + 0.1

    def sender() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                due = start + index * interval
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                lags[index] = time.monotonic() - due
                jobs[index](session)

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start, lags


# -- 1. answer latency ----------------------------------------------------------------------------


def latency_figures(tmp: Path, fakes: FakesProcess) -> list[str]:
    healthy = Runner(tmp, "latency-healthy", fakes.env)
    hanging = Runner(tmp, "latency-hanging", {**fakes.env, "DYNATRACE_URL": fakes.hanging_dynatrace})
    inline = Runner(tmp, "latency-inline-hanging", {**fakes.env, "DYNATRACE_URL": fakes.hanging_dynatrace,
                                                     "BRIDGE_DELIVERY": "inline",
                                                     "BRIDGE_HTTP_TIMEOUT_SECONDS": str(INLINE_TIMEOUT)})
    runners = [healthy, hanging, inline]
    series = [(route, runner) for route in ROUTES for runner in (healthy, hanging)]
    metrics = metrics_body()
    numbers = itertools.count(1)  # a different alert each time

    def send(session: requests.Session, route: str, runner: Runner) -> float:
        path, count = ROUTES[route]
        elapsed, answer = post(session, runner, path, alert_body(next(numbers)) if route == "webhook" else metrics)
        assert answer.status_code == 202, (runner.name, route, answer.status_code, answer.text)
        if runner.delivery == "queued":
            assert answer.json()["delivery"] == {"queued": count}, answer.text
        return elapsed

    def rounds(count: int) -> list[tuple[str, Runner]]:
        """``count`` rounds of the four series, the order rotating every round."""
        return [one for i in range(count) for one in series[i % len(series):] + series[:i % len(series)]]

    def state() -> dict:
        """What the runners' logs and queues show now."""
        return {"hanging_requests": fakes.counts()["hanging"], "time": time.monotonic(),
                **{runner.name: {"invocations": invocation_times(runner.lines()), "depth": runner.depth(),
                                 "retry": runner.depth("bridge-retry")} for runner in (healthy, hanging)}}

    open_samples: dict[tuple[str, str], list[float]] = {(route, runner.name): [] for route, runner in series}
    closed_samples: dict[tuple[str, str], list[float]] = {(route, runner.name): [] for route, runner in series}
    try:
        for runner in runners:
            runner.wait_ready()
        before = state()

        # (a) open loop
        def scheduled(index: int, route: str, runner: Runner) -> Callable[[requests.Session], None]:
            def job(session: requests.Session) -> None:
                elapsed = send(session, route, runner)
                if index >= WARMUP * len(series):
                    open_samples[(route, runner.name)].append(elapsed)
            return job

        jobs = [scheduled(index, route, runner) for index, (route, runner) in enumerate(rounds(WARMUP + REQUESTS))]
        open_span, lags = paced(jobs, 1 / (OPEN_RATE * len(series)), OPEN_SENDERS)
        lags = lags[WARMUP * len(series):]
        after_open = state()

        # (b) closed loop
        with requests.Session() as session:
            for index, (route, runner) in enumerate(rounds(WARMUP + SATURATION_REQUESTS)):
                if index == WARMUP * len(series):
                    closed_started = time.monotonic()
                elapsed = send(session, route, runner)
                if index >= WARMUP * len(series):
                    closed_samples[(route, runner.name)].append(elapsed)
            closed_seconds = time.monotonic() - closed_started
            after_closed = state()
            inline_samples = {route: [send(session, route, inline) for _ in range(INLINE_REQUESTS)] for route in ROUTES}
    finally:
        stop_all(runners)

    def figures(values: list[float]) -> str:
        return (f"p50 {ms(values, 50):6.2f} ms  p90 {ms(values, 90):6.2f} ms  p99 {ms(values, 99):6.2f} ms  "
                f"max {max(values) * 1000:6.1f} ms  (mean {statistics.fmean(values) * 1000:.2f} ms)")

    def what(route: str) -> str:
        return f"POST {ROUTES[route][0]} (" + (
            "single-alert Alertmanager webhook)" if route == "webhook" else f"{POINTS} points as JSON)")

    def runners_did(start: dict, end: dict) -> list[str]:
        out = []
        for runner, label in ((healthy, "healthy"), (hanging, "Dynatrace hanging")):
            done = end[runner.name]["invocations"][len(start[runner.name]["invocations"]):]
            took = (f" (took p50 {statistics.median(done):.0f} ms, max {max(done):.0f} ms)" if done else "")
            out.append(f"    {label + ' runner:':26}{len(done)} delivery invocations finished{took}; then "
                       f"delivery queue {end[runner.name]['depth']}, retry queue {end[runner.name]['retry']} messages")
        out.append(f"    the hanging server received {end['hanging_requests'] - start['hanging_requests']} requests")
        return out

    timed = len(series) * REQUESTS
    lines = ["1. answer latency, local runner over HTTP, queued on SQLite, five sinks (contract fakes); two runners, "
             "every sink healthy / Dynatrace hanging (takes requests, never answers); a series is one route on "
             "one runner, the four interleaved; a figure is the wall time of post, from the actual send",
             f" (a) open loop: {OPEN_RATE:g} requests/s per series at fixed times ({OPEN_RATE * len(series):g}/s in "
             f"all, {OPEN_SENDERS} sender threads), {REQUESTS} timed per series after {WARMUP} untimed; "
             f"{timed} timed requests in {open_span - WARMUP / OPEN_RATE:.1f} s; sends started late against "
             f"the schedule by p50 {ms(lags, 50):.2f} ms, p99 {ms(lags, 99):.2f} ms, max {max(lags) * 1000:.1f} ms"]
    for route in ROUTES:
        good, bad = open_samples[(route, healthy.name)], open_samples[(route, hanging.name)]
        p50_ratio, p99_ratio = ms(bad, 50) / ms(good, 50), ms(bad, 99) / ms(good, 99)
        lines += [f"  {what(route)}:",
                  f"    all sinks healthy  {figures(good)}",
                  f"    Dynatrace hanging  {figures(bad)}",
                  f"    hanging / healthy: p50 x{p50_ratio:.2f}, p99 x{p99_ratio:.2f}  [target: within 1.2x on p50 and "
                  f"p99: {'met' if max(p50_ratio, p99_ratio) <= 1.2 else 'NOT met'}]; p99 {ms(good, 99):.1f} / "
                  f"{ms(bad, 99):.1f} ms  [target: under 50 ms: "
                  f"{'met' if max(ms(good, 99), ms(bad, 99)) < 50 else 'NOT met'}]",
                  f"    inline, Dynatrace hanging, BRIDGE_HTTP_TIMEOUT_SECONDS={INLINE_TIMEOUT}: "
                  f"p50 {statistics.median(inline_samples[route]) * 1000:.0f} ms ({INLINE_REQUESTS} requests, after "
                  f"(b): {', '.join(f'{s * 1000:.0f}' for s in inline_samples[route])} ms)"]
    lines.append(f"  during (a) ({after_open['time'] - before['time']:.0f} s):")
    lines += runners_did(before, after_open)
    lines.append(f" (b) saturation, closed loop: as fast as one client sends; the delivery function works at the same "
                 f"time on the same machine; {SATURATION_REQUESTS} timed per series after {WARMUP} untimed, "
                 f"interleaved, one session: {len(series) * SATURATION_REQUESTS} timed requests in "
                 f"{closed_seconds:.1f} s ({len(series) * SATURATION_REQUESTS / closed_seconds:.0f}/s); no targets")
    for route in ROUTES:
        lines += [f"  {what(route)}:",
                  f"    all sinks healthy  {figures(closed_samples[(route, healthy.name)])}",
                  f"    Dynatrace hanging  {figures(closed_samples[(route, hanging.name)])}"]
    lines.append(f"  during (b) ({after_closed['time'] - after_open['time']:.0f} s):")
    lines += runners_did(after_open, after_closed)
    return lines


# -- 2. requests per sink -------------------------------------------------------------------------


def send_paced(runner: Runner, count: int, seconds: float) -> tuple[float, list[float], Counter]:
    """``count`` single-alert webhooks, the i-th at start + i * seconds / count; returns the
    span from the first send to the last answer, the answer times and the statuses."""
    latencies: list[float] = []
    statuses: list[int] = []

    def webhook(number: int) -> Callable[[requests.Session], None]:
        def send(session: requests.Session) -> None:
            elapsed, answer = post(session, runner, ROUTES["webhook"][0], alert_body(number))
            latencies.append(elapsed)
            statuses.append(answer.status_code)
        return send

    span, _ = paced([webhook(number) for number in range(count)], seconds / count, SENDERS)
    return span, latencies, Counter(statuses)


def settle(fakes: FakesProcess, runner: Runner, queued: bool, quiet: float = 3.0, limit: float = 120) -> dict:
    """Wait until the delivery and retry queues are empty (queued) and no fake received anything
    for ``quiet`` seconds (more than host.json's maxPollingInterval); the counts then."""
    deadline = time.monotonic() + limit
    last, since = fakes.counts(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        counts = fakes.counts()
        if counts["requests"] != last["requests"]:
            last, since = counts, time.monotonic()
            continue
        if queued and (runner.depth() or runner.depth("bridge-retry")):
            continue
        if time.monotonic() - since >= quiet:
            return counts
    raise RuntimeError(f"{runner.name}: still delivering after {limit} s (delivery queue {runner.depth()})")


def requests_figures(tmp: Path, fakes: FakesProcess) -> list[str]:
    results = {}
    for mode in ("queued", "inline"):
        runner = Runner(tmp, f"per-sink-{mode}", {**fakes.env, "BRIDGE_DELIVERY": mode}).wait_ready()
        try:
            before = settle(fakes, runner, False, quiet=0.5)
            span, latencies, statuses = send_paced(runner, ALERTS, PACE_SECONDS)
            after = settle(fakes, runner, mode == "queued")
            retry_depth = runner.depth("bridge-retry")
        finally:
            stop_all([runner])
        assert statuses == Counter({202: ALERTS}), statuses
        received = {sink: after["requests"][sink] - before["requests"][sink] for sink in SINKS}
        answered = {sink: Counter(after["statuses"][sink]) - Counter(before["statuses"][sink]) for sink in SINKS}
        records = sink_records(runner.lines())
        delivered = Counter()
        pending = Counter()
        for _, sink, fields in records:
            delivered[sink] += int(fields.get("delivered", 0))
            pending[sink] += int(fields.get("retried", 0))
        batches = [int(m.group(1)) for line in runner.lines() if (m := BATCH_LINE.search(line))]
        results[mode] = dict(span=span, latencies=latencies, received=received, answered=answered,
                             delivered=delivered, pending=pending, batches=batches, retry_depth=retry_depth,
                             invocations=len(invocation_times(runner.lines())))

    queued, inline = results["queued"], results["inline"]
    target = math.ceil(ALERTS / BATCH)
    batches = queued["batches"]
    lines = [f"2. requests per sink for {ALERTS} single-alert Alertmanager webhooks (2 metrics each) sent at a steady "
             f"{ALERTS / PACE_SECONDS:.0f}/s over {PACE_SECONDS:.0f} s ({SENDERS} senders), every sink healthy "
             f"(contract fakes); sending took {queued['span']:.1f} s queued, {inline['span']:.1f} s inline",
             f"  answers: queued p50 {ms(queued['latencies'], 50):.1f} ms, p99 {ms(queued['latencies'], 99):.1f} ms; "
             f"inline p50 {ms(inline['latencies'], 50):.1f} ms, p99 {ms(inline['latencies'], 99):.1f} ms",
             f"  queued: {queued['invocations']} delivery invocations merging {len(batches)} batches of "
             f"{min(batches, default=0)}-{max(batches, default=0)} messages (mean "
             f"{statistics.fmean(batches) if batches else 0:.1f}; {sum(batches)} messages in all)",
             f"  target: at most ceil({ALERTS} / {BATCH}) = {target} per sink where its limits allow, "
             f"at least 10x fewer than inline",
             f"  {'sink':14}{'inline':>8}{'queued':>8}{'ratio':>8}  verdict; metrics delivered inline / queued"]
    for sink in SINKS:
        i, q = inline["received"][sink], queued["received"][sink]
        ratio = i / q if q else float("inf")
        verdict = "met" if q <= target and ratio >= 10 else "NOT met"
        note = ""
        if inline["pending"][sink]:
            note = (f"; inline, {inline['pending'][sink]} metrics were deferred to the retry queue, to be sent one "
                    f"request per envelope once the limit allows")
        if sink == "betterstack":
            note += " (client-side limit: 500 requests in any minute"
            if i > 500:
                note += (f"; {i - 500} over: concurrent first requests can each build a Bridge of their own, with "
                         f"its own limiter, as runtime.bridge() takes no lock")
            note += ")"
        if sink == "azure_monitor":
            note += " (series pre-aggregated per minute within each request)"
        bad = {s: n for s, n in (inline["answered"][sink] + queued["answered"][sink]).items() if not 200 <= s < 300}
        if bad:
            note += f"; non-2xx answers {bad}"
        lines.append(f"  {sink:14}{i:8}{q:8}{ratio:7.1f}x  {verdict}; {inline['delivered'][sink]} / "
                     f"{queued['delivered'][sink]}{note}")
    lines.append(f"  retry queue at the end: inline {inline['retry_depth']}, queued {queued['retry_depth']} messages")
    return lines


# -- 3. the delivery function's throughput --------------------------------------------------------


def drain_figures(backend: str, state: Path, environ: dict[str, str]) -> list[str]:
    from bridges.core import Bridge
    from bridges.delivery import auth
    from bridges.delivery.queued import enqueue, worker_for
    from bridges.ingest.normalize import Normalizer
    from bridges.queues import StorageQueue
    from bridges.settings import load_settings

    saved = dict(os.environ)
    try:
        with ExitStack() as stack:
            fakes = {name: stack.enter_context(fake) for name, fake in contract_fakes(accepting=True).items()}
            identity = stack.enter_context(fast(FakeIdentityEndpoint()))
            os.environ.update(environ, IDENTITY_ENDPOINT=identity.endpoint, IDENTITY_HEADER=identity.secret)
            auth._credential = None
            suffix = uuid.uuid4().hex[:8]
            bridge = Bridge(load_settings({
                **sink_settings(fakes), "BRIDGE_SINKS": ",".join(SINKS), "BRIDGE_STATE_DIR": str(state),
                "BRIDGE_OUTBOX_DIR": str(state / "outbox"), "BRIDGE_DELIVERY_QUEUE": f"bench-deliver-{suffix}",
                "BRIDGE_RETRY_QUEUE": f"bench-retry-{suffix}", "BRIDGE_DEADLETTER_QUEUE": f"bench-dead-{suffix}",
            }))
            queue = bridge.delivery_queue
            assert isinstance(queue, SqliteQueue if backend == "SQLite" else StorageQueue), queue
            worker = worker_for(bridge)
            worker.linger_seconds = 0  # everything is on the queue already
            normalized = Normalizer().normalize(json.loads(payload(METRICS_PER_MESSAGE, stamp=int(time.time()))),
                                                time.time_ns())
            metrics = normalized.metrics
            assert len(metrics) == METRICS_PER_MESSAGE, normalized.errors[:3]

            def fill(count: int) -> int:
                return sum(enqueue(queue, metrics, time.time_ns()) for _ in range(count))

            def drain() -> tuple[int, int, list, Counter, Counter, Counter]:
                invocations = taken = 0
                sizes, delivered, rejected, pending = [], Counter(), Counter(), Counter()
                while messages := queue.receive(1, worker.lease_seconds):
                    batch = worker.process(messages[0].text)
                    queue.delete(messages[0])
                    invocations += 1
                    taken += batch.metrics
                    sizes.append(batch.messages)
                    for sink, sink_report in batch.reports.items():
                        delivered[sink] += sink_report.delivered
                        rejected[sink] += len(sink_report.rejected) + sink_report.rejected_without_detail
                        pending[sink] += sink_report.pending
                return invocations, taken, sizes, delivered, rejected, pending

            fill(2)  # warm up: queue created, connections open, token fetched, schemas compiled
            drain()
            requests_before = {name: len(fake.received) for name, fake in fakes.items()}
            started = time.perf_counter()
            sent = fill(MESSAGES)
            fill_seconds = time.perf_counter() - started
            started = time.perf_counter()
            invocations, taken, sizes, delivered, rejected, pending = drain()
            seconds = time.perf_counter() - started
            assert taken == MESSAGES * METRICS_PER_MESSAGE and queue.depth() == 0, (taken, queue.depth())
            assert not any(pending.values()), pending
            sent_requests = {name: len(fake.received) - requests_before[name] for name, fake in fakes.items()}
            # the last request each fake took, against its vendor's contract (untimed)
            checked = {}
            for name, fake in fakes.items():
                answer = fake.contract.answer(fake, fake.received[-1])
                assert 200 <= answer.status < 300, (name, answer.status, answer.body[:300])
                checked[name] = answer.status
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from bridges.delivery import auth as _auth
        _auth._credential = None
    accepted = taken
    return [
        f"  {backend}: {accepted / seconds:,.0f} metrics/s through the delivery function ({sent} messages "
        f"({MESSAGES} enqueues of {METRICS_PER_MESSAGE} metrics) drained in {seconds:.2f} s by {invocations} "
        f"invocations merging {min(sizes)}-{max(sizes)} messages; enqueue took {fill_seconds / MESSAGES * 1000:.2f} ms "
        f"per call)",
        f"    requests per sink {sent_requests}; delivered {dict(delivered)}; refused locally by the sink's encoder "
        f"{ {k: v for k, v in rejected.items() if v} }; last request of each checked against its contract: "
        f"{checked}",
    ]


def main() -> None:
    for name in [n for n in os.environ if n.startswith(("AzureWebJobsStorage", "BRIDGE_"))]:
        del os.environ[name]
    logging.getLogger().addHandler(logging.NullHandler())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-queued-") as tmp:
        tmp = Path(tmp)
        with FakesProcess() as fakes:
            lines = latency_figures(tmp / "latency", fakes)
            lines += requests_figures(tmp / "per-sink", fakes)
        lines.append(f"3. delivery function throughput, in-process: receive(1) -> worker_for(bridge).process "
                     f"(batch {BATCH}, linger 0) -> delete; five sinks on in-process fakes accepting everything")
        lines += drain_figures("SQLite", tmp / "drain-sqlite", {})
        lines += on_azurite(lambda storage: drain_figures("Azurite", tmp / "drain-azurite",
                                                          {"AzureWebJobsStorage": storage}), indent="  ")
    lines.append(f"(whole benchmark: {time.monotonic() - started:.0f} s)")
    report("queued", lines)


if __name__ == "__main__":
    main()
