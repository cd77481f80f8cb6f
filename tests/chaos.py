"""Chaos for the conservation tests: fake backends that fail at random, per request, and count
exactly which points (by their ``seq`` tag) each one took; a host-like retry loop; and the
book-keeping that says what became of every point at every sink.

A chaos fake is a contract fake (tests/fakes/) with two overrides:

- ``_next_step`` (the FakeReceiver's per-request script hook) decides, per request, from a
  seeded ``random.Random``: answer normally, 500, 429 with ``Retry-After``, a connection reset,
  or answer normally but later than the client's timeout (the backend then *has* the points
  although the client saw a timeout: those are "ghost" deliveries, the at-least-once kind);
- ``answer`` applies body-dependent failures (a Prometheus receiver refusing chosen ``seq``
  values for good with 400, an Unleash refusing chosen ``seq`` values with 503 until healed,
  Dynatrace's partial 400 refusing at most 10 lines), then the vendor contract, and records the
  ``seq`` of every point in a 2xx (or the accepted part of a partial 400).
"""
from __future__ import annotations

import gzip
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import cramjam
from fakes.azure_monitor import FakeAzureMonitor
from fakes.betterstack import FakeBetterStack, decode_body
from fakes.dynatrace import FakeDynatrace, line_error
from fakes.prometheus import FakePrometheusWrite, parse_write_request
from fakes.server import RESET, Answer, Received, Scripted
from fakes.unleash import FakeUnleash

from bridges.retry.decision import DeadLetter
from bridges.retry.envelopes import metrics_of
from bridges.settings import BACKEND_SINKS

SINKS = BACKEND_SINKS  # every sink with settings; each needs a fake receiver below
RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-bridge/providers/Microsoft.Web/sites/func-bridge"
DT_TOKEN = "dt0c01.CHAOS"
BS_TOKEN = "bs-chaos-token"
UNLEASH_TOKEN = "default:development.fake-client-token"
_DT_SEQ = re.compile(r'[ ,]seq="?(\d+)"?[ ,]')


# -- which seq values a request carries, per backend ------------------------------------------


def seqs_dynatrace(lines: list[str]) -> list[int]:
    out = []
    for line in lines:
        if not line.startswith("#"):
            match = _DT_SEQ.search(line.split(" ", 1)[0] + " ")
            if match:
                out.append(int(match.group(1)))
    return out


def seqs_of(sink: str, request: Received) -> list[int]:
    body = request.body
    if sink == "dynatrace":
        return seqs_dynatrace([line for line in body.decode("utf-8").split("\n") if line.strip()])
    if sink == "betterstack":
        return [int(m["tags"]["seq"]) for m in decode_body(body, request.headers.get("content-type", ""))]
    if sink == "unleash":
        return [int(m["labels"]["seq"]) for m in json.loads(body)["metrics"]]
    if sink == "azure_monitor":
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        out = []
        for line in body.decode("utf-8").split("\n"):
            if line.strip():
                data = json.loads(line)["data"]["baseData"]
                names = data.get("dimNames") or []
                out += [int(dict(zip(names, s["dimValues"], strict=True))["seq"]) for s in data["series"]]
        return out
    if sink == "prometheus":
        series = parse_write_request(bytes(cramjam.snappy.decompress_raw(body)))
        return [int(dict(s["labels"])["seq"]) for s in series]
    raise ValueError(sink)


# -- the chaos layer -----------------------------------------------------------------------------


@dataclass
class Rates:
    """Probabilities per request (the rest answers normally)."""

    error500: float = 0.10
    throttle429: float = 0.08
    slow: float = 0.03
    reset: float = 0.05
    partial: float = 0.0  # Dynatrace only: a 400 refusing 1-10 of the lines

    def total(self) -> float:
        return self.error500 + self.throttle429 + self.slow + self.reset + self.partial


class ChaosMixin:
    """Put before a fake class: ``class ChaosDynatrace(ChaosMixin, FakeDynatrace)``."""

    sink: str = ""

    def setup_chaos(self, seed: int, rates: Rates, slow_seconds: float, retry_after: str = "1",
                    refuse_seqs: frozenset = frozenset(), stall_seqs: frozenset = frozenset()) -> None:
        self.rng = random.Random(seed)
        self.rates = rates
        self.slow_seconds = slow_seconds
        self.retry_after = retry_after
        self.refuse_seqs = frozenset(refuse_seqs)  # 400 for good (a Drop) while present in a request
        self.stall_seqs = frozenset(stall_seqs)  # 503 while present in a request, until healed
        self.healthy = False  # True: no random failures and no stalls (refusals stay)
        self.down: tuple[int, dict] | None = None  # (status, headers): every request gets it
        self.delivered: Counter = Counter()  # seq -> answered deliveries (2xx, or kept lines of a partial)
        self.ghosts: Counter = Counter()  # seq -> deliveries the client timed out on
        self.refused_lines: Counter = Counter()  # seq -> lines refused by a partial 400
        self.decisions: Counter = Counter()
        self._chaos_lock = threading.Lock()
        self._local = threading.local()

    # the per-request decision, before the body is looked at
    def _next_step(self):
        step = super()._next_step()
        if step is not None:
            return step
        self._local.slow = False
        self._local.partial = False
        if self.down is not None:
            self._count("down")
            return Scripted(self.down[0], dict(self.down[1]))
        if self.healthy:
            return None
        r = self.rates
        with self._chaos_lock:
            roll = self.rng.random()
        for name, p in (("500", r.error500), ("429", r.throttle429), ("slow", r.slow), ("reset", r.reset),
                        ("partial", r.partial)):
            if roll < p:
                self._count(name)
                if name == "500":
                    return Scripted(500, {"Content-Type": "text/plain"}, b"chaos: internal error")
                if name == "429":
                    return Scripted(429, {"Retry-After": self.retry_after}, b"chaos: slow down")
                if name == "reset":
                    return RESET
                if name == "slow":
                    self._local.slow = True
                    return Scripted(slow=self.slow_seconds)
                self._local.partial = True
                return None
            roll -= p
        self._count("ok")
        return None

    def _count(self, name: str) -> None:
        with self._chaos_lock:
            self.decisions[name] += 1

    def answer(self, request: Received) -> Answer:
        slow = getattr(self._local, "slow", False)
        partial = getattr(self._local, "partial", False)
        self._local.slow = self._local.partial = False
        try:
            seqs = seqs_of(self.sink, request)
        except Exception:  # noqa: BLE001 - not ours to judge: the contract answers
            seqs = []
        refused = sorted(self.refuse_seqs.intersection(seqs))
        if refused:
            self._count("refused")
            return Answer(400, {"Content-Type": "text/plain"}, f"chaos: seq {refused[0]} refused for good".encode())
        if self.stall_seqs.intersection(seqs) and not self.healthy:
            self._count("stalled")
            return Answer(503, {"Retry-After": self.retry_after}, b"chaos: stalled")
        answer = super().answer(request)
        if not 200 <= answer.status < 300:
            return answer
        if partial:
            return self._partial(request, slow)
        with self._chaos_lock:
            (self.ghosts if slow else self.delivered).update(seqs)
        return answer

    def _partial(self, request: Received, slow: bool) -> Answer:
        raise NotImplementedError


class ChaosDynatrace(ChaosMixin, FakeDynatrace):
    sink = "dynatrace"

    def _partial(self, request: Received, slow: bool) -> Answer:
        """Dynatrace's 400: at most 10 lines refused (so every refusal is listed), the rest kept."""
        lines = [line for line in request.body.decode("utf-8").split("\n") if line.strip()]
        data = [n for n, line in enumerate(lines, start=1) if not line.startswith("#")]
        with self._chaos_lock:
            chosen = set(self.rng.sample(data, min(len(data), self.rng.randint(1, 10))))
        invalid = [{"line": n, "error": "chaos: line refused"} for n in sorted(chosen)]
        now_ms = int(time.time() * 1000)
        assert all(line_error(line, now_ms) is None for line in lines)
        kept = [line for n, line in enumerate(lines, start=1) if n not in chosen]
        with self._chaos_lock:
            self.delivered.update(seqs_dynatrace(kept))
            self.refused_lines.update(seqs_dynatrace([lines[n - 1] for n in chosen]))
        body = {"linesOk": len(kept), "linesInvalid": len(invalid),
                "error": {"code": 400, "message": f"First {len(invalid)} errors reported", "invalidLines": invalid}}
        return Answer(400, {"Content-Type": "application/json;charset=utf-8"}, json.dumps(body).encode())


class ChaosBetterStack(ChaosMixin, FakeBetterStack):
    sink = "betterstack"


class ChaosUnleash(ChaosMixin, FakeUnleash):
    sink = "unleash"


class ChaosAzureMonitor(ChaosMixin, FakeAzureMonitor):
    sink = "azure_monitor"


class ChaosPrometheus(ChaosMixin, FakePrometheusWrite):
    sink = "prometheus"


def make_fakes() -> dict:
    return {
        "dynatrace": ChaosDynatrace(token=DT_TOKEN),
        "betterstack": ChaosBetterStack(token=BS_TOKEN),
        "unleash": ChaosUnleash(version="7", token=UNLEASH_TOKEN),
        "azure_monitor": ChaosAzureMonitor(),
        "prometheus": ChaosPrometheus(),
    }


def sink_settings(fakes: dict) -> dict[str, str]:
    return {
        "DYNATRACE_URL": fakes["dynatrace"].url + "/api/v2/metrics/ingest",
        "DYNATRACE_API_TOKEN": DT_TOKEN,
        "BETTERSTACK_URL": fakes["betterstack"].url,
        "BETTERSTACK_SOURCE_TOKEN": BS_TOKEN,
        "UNLEASH_URL": fakes["unleash"].url,
        "UNLEASH_API_TOKEN": UNLEASH_TOKEN,
        "UNLEASH_API": "custom",
        "AZURE_MONITOR_RESOURCE_ID": RESOURCE,
        "AZURE_MONITOR_ENDPOINT": fakes["azure_monitor"].url,
        "PROMETHEUS_REMOTE_WRITE_URL": fakes["prometheus"].write_url,
    }


# -- points and answers ------------------------------------------------------------------------


def batch(first: int, count: int, dt: float | None = None) -> list[dict]:
    points = []
    for seq in range(first, first + count):
        point = {"name": "chaos_gauge", "gauge": {"value": float(seq)}, "tags": {"seq": str(seq)}}
        if dt is not None:
            point["dt"] = dt
        points.append(point)
    return points


@dataclass
class Ledger:
    """What the HTTP answers said, by seq, per sink."""

    accepted: set[int] = field(default_factory=set)
    rejected: dict[str, dict[int, str]] = field(default_factory=dict)
    pending: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    routed: Counter = field(default_factory=Counter)  # routes declared: metrics sent to each sink

    queued: int = 0

    def record(self, points: list[dict], status: int, answer: dict) -> None:
        """An HTTP answer: inline, it says per sink what became of each point; queued, how many
        points wait on the delivery queue (the delivery function's batches say the rest)."""
        self.statuses[status] += 1
        assert status == 202, answer
        assert answer["accepted"] == len(points) and answer["rejected"] == 0, answer
        seqs = [int(p["tags"]["seq"]) for p in points]
        self.accepted.update(seqs)
        delivery = dict(answer["delivery"])
        routing = delivery.pop("routing", None)  # routes declared: what each sink was sent
        if routing is not None:
            for sink, count in routing["sinks"].items():
                self.routed[sink] += count
            assert routing["unrouted"] == 0 and routing["dropped"] == {}, routing
        if "queued" in delivery:
            assert delivery == {"queued": len(points)}, answer
            self.queued += len(points)
            return
        self.record_reports({sink: seqs for sink in delivery}, delivery, routing and routing["sinks"])

    def record_batch(self, batch) -> None:
        """What the delivery function made of one batch (``bridges.delivery.queued.Batch``): with
        routes declared, each sink's report points into its own share."""
        seqs = [int(dict(m.tags)["seq"]) for m in batch.merged]
        shares = {sink: seqs + [int(dict(m.tags)["seq"]) for m in (batch.shares or {}).get(sink, [])]
                  for sink in batch.reports}
        self.record_reports(shares, {name: report.to_json() for name, report in batch.reports.items()})

    def record_reports(self, seqs_of_sink: dict[str, list[int]], reports: dict, counts: dict | None = None) -> None:
        """Per-sink reports; a rejection's index points into that sink's seqs (inline with routes,
        into the request's, and ``counts`` says how many the sink was sent)."""
        for sink, report in reports.items():
            seqs = seqs_of_sink[sink]
            listed = report.get("rejections", [])
            # every refusal identified: the mapping from index back to seq is complete
            assert report["rejected"] == len(listed), (sink, report)
            sent = len(seqs) if counts is None else counts[sink]
            assert report["delivered"] + report["rejected"] + report["pending"] == sent, (sink, report)
            self.pending[sink] += report["pending"]
            for item in listed:
                seq = seqs[item["index"]]
                assert item["reason"], item
                assert seq not in self.rejected.setdefault(sink, {}), (sink, seq)
                self.rejected[sink][seq] = item["reason"]


def dead_letters(queue) -> list[DeadLetter]:
    """Every record of the dead-letter queue, read as ``deadletter list`` reads them."""
    from bridges.retry.deadletters import read_all

    return [DeadLetter.from_text(m.text) for m in read_all(queue, hide_seconds=30)]


def dead_by_sink(records: list[DeadLetter]) -> dict[str, dict[int, list[str]]]:
    out: dict[str, dict[int, list[str]]] = {}
    for record in records:
        assert record.reason
        for metric in metrics_of(record.envelope):
            out.setdefault(record.envelope.sink, {}).setdefault(int(dict(metric.tags)["seq"]), []).append(record.reason)
    return out


# -- the host's part: the retry function fed from its queue ---------------------------------------


@dataclass
class DrainStats:
    invocations: int = 0
    failures: int = 0
    poisoned: list[str] = field(default_factory=list)
    waits: int = 0
    attempts: Counter = field(default_factory=Counter)  # envelope attempt number -> invocations


def drain(retry_queue, worker, wait, *, limit_seconds: float = 240, max_dequeue_count: int = 5,
          batch_size: int = 32) -> DrainStats:
    """Receive ``batch_size`` messages, ``process`` each, delete on success, release on exception
    (poison after ``max_dequeue_count``), until the queue holds nothing, hidden or not.
    ``wait()`` is called when nothing is visible: it advances an injected clock or sleeps a little."""
    from bridges.retry.envelopes import Envelope

    stats = DrainStats()
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        messages = retry_queue.receive(batch_size, 60)
        if not messages:
            if retry_queue.depth() == 0:
                return stats
            stats.waits += 1
            wait()
            continue
        for message in messages:
            stats.invocations += 1
            try:
                stats.attempts[Envelope.from_text(message.text).attempt] += 1
                worker.process(message.text)
            except Exception:  # noqa: BLE001 - as the host: release, poison after maxDequeueCount
                stats.failures += 1
                if message.dequeue_count >= max_dequeue_count:
                    stats.poisoned.append(message.text)
                    retry_queue.delete(message)
                else:
                    retry_queue.release(message, 0)
            else:
                retry_queue.delete(message)
    raise AssertionError(f"the retry queue did not drain in {limit_seconds} s: {retry_queue.depth()} left")


class OffsetClock:
    """time.time() plus an offset the test advances (for SqliteQueue's visibility)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# -- the law -------------------------------------------------------------------------------------


@dataclass
class Verdict:
    sink: str
    delivered: int = 0
    rejected: int = 0
    dead: int = 0
    lost: list[int] = field(default_factory=list)
    twice: list[tuple[int, int, int, int]] = field(default_factory=list)  # (seq, delivered, rejected, dead)
    ghosts: int = 0  # extra deliveries from requests the client timed out on (at-least-once)

    def line(self) -> str:
        return (f"{self.sink:13} delivered {self.delivered:6}  rejected {self.rejected:4}  dead-lettered "
                f"{self.dead:5}  lost {len(self.lost)}  counted twice {len(self.twice)}  "
                f"timeout duplicates {self.ghosts}")


def account(sink: str, accepted: set[int], delivered: Counter, ghosts: Counter, rejected: dict[int, str],
            dead: dict[int, list[str]]) -> Verdict:
    """Each accepted seq must be exactly one of: delivered once (answered), rejected, dead-lettered."""
    verdict = Verdict(sink)
    for seq in sorted(accepted):
        d, r, x = delivered.get(seq, 0), int(seq in rejected), len(dead.get(seq, ()))
        verdict.delivered += d > 0
        verdict.rejected += r
        verdict.dead += x > 0
        if d + r + x == 0:
            verdict.lost.append(seq)  # a ghost delivery alone does not count: the bridge lost track
        elif d + r + x > 1:
            verdict.twice.append((seq, d, r, x))
    verdict.ghosts = sum(ghosts.values())
    strays = (set(delivered) | set(rejected) | set(dead)) - accepted
    assert not strays, f"{sink}: seq values that were never accepted: {sorted(strays)[:10]}"
    return verdict
