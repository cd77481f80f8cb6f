"""The delivery stage as a user sees it through POST /api/metrics: per-sink reports, isolation
between sinks, splitting, pending hand-off, rate limiting, and secrets kept out of everything.

The Bridges here deliver inline (BRIDGE_DELIVERY=inline): the answer then carries each sink's
report, which is what these tests read."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from fakes.dynatrace import FakeDynatrace
from fakes.server import Answer, Scripted

from bridges import runtime
from bridges.core import Bridge
from bridges.delivery.deliver import Delivery
from bridges.delivery.sinks import build_sinks
from bridges.delivery.sinks.dynatrace.sink import DynatraceSink
from bridges.masking import Secret
from bridges.model import Gauge, Metric
from bridges.settings import load_settings

TOKEN = "dt0c01.SECRETTOKEN"


def gauge(name: str, value: float = 1, dt: str | None = None) -> dict:
    return {"name": name, "gauge": {"value": value}, **({"dt": dt} if dt else {})}


def ingest(bridge: Bridge, items: list) -> tuple[int, dict]:
    reply = bridge.ingest(json.dumps(items).encode(), "application/json")
    return reply.status, reply.body


def dynatrace_bridge(tmp_path, url: str, **extra: str) -> Bridge:
    settings = load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "DYNATRACE_URL": url,
                              "DYNATRACE_API_TOKEN": TOKEN, "BRIDGE_DELIVERY": "inline", **extra})
    bridge = Bridge(settings)  # the real clock: the fake checks Dynatrace's time window
    runtime.use(bridge)
    return bridge


class Recorded:
    """A hand-off that keeps what it is given, to see what the delivery stage left pending."""

    def __init__(self) -> None:
        self.kept: list[dict] = []

    def hand_off(self, sink, metrics, reason, after, now_ns) -> None:
        self.kept += [{"sink": sink, "metric": m.to_json(), "reason": reason, "retry_after": after} for m in metrics]


def test_configured_sinks_replace_the_outbox_and_report_per_sink(tmp_path):
    with FakeDynatrace(token=TOKEN) as fake:
        bridge = dynatrace_bridge(tmp_path, fake.url)
        status, answer = ingest(bridge, [gauge("bridge.a"), {"name": "bad"}, gauge("bridge.b", 2)])
    assert status == 202
    assert answer["delivery"] == {"dynatrace": {"delivered": 2, "rejected": 0, "pending": 0}}
    assert [line.split(" ")[0] for line in fake.accepted_lines] == ["bridge.a", "bridge.b"]
    assert not (tmp_path / "outbox").exists()


def test_refusals_are_reported_with_the_index_of_the_request_item(tmp_path):
    with FakeDynatrace(token=TOKEN, refuse_keys={"bridge.refused"}) as fake:
        bridge = dynatrace_bridge(tmp_path, fake.url)
        old = "2020-01-01T00:00:00Z"
        status, answer = ingest(bridge, [{"name": "x"}, gauge("bridge.ok"), gauge("bridge.refused"), gauge("bridge.old", dt=old)])
    report = answer["delivery"]["dynatrace"]
    assert (status, report["delivered"], report["rejected"], report["pending"]) == (202, 1, 2, 0)
    assert sorted((r["index"], r["reason"].split(":")[0]) for r in report["rejections"]) == [
        (2, "Dynatrace refused the line"), (3, "outside Dynatrace's window of 1 hour in the past to 10 minutes in the future")]


def test_retryable_failures_are_queued_for_retry_never_counted_as_delivered(tmp_path):
    from bridges.queues import SqliteQueue
    from bridges.retry.envelopes import Envelope, metrics_of

    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(503, {"Retry-After": "30"}))
        bridge = dynatrace_bridge(tmp_path, fake.url)
        status, answer = ingest(bridge, [gauge("bridge.a"), gauge("bridge.b")])
    assert status == 202
    assert answer["delivery"]["dynatrace"] == {
        "delivered": 0, "rejected": 0, "pending": 2, "pending_reasons": ["Dynatrace answered 503"]}
    queue = SqliteQueue(tmp_path / ".bridge" / "queues.sqlite3", "bridge-retry")
    assert queue.depth() == 1 and queue.receive(1, 60) == []  # invisible for its backoff
    later = SqliteQueue(tmp_path / ".bridge" / "queues.sqlite3", "bridge-retry", clock=lambda: time.time() + 31)
    [message] = later.receive(1, 60)  # Retry-After (30 s) is the least it waits
    envelope = Envelope.from_text(message.text)
    assert (envelope.sink, envelope.attempt, envelope.last_error) == ("dynatrace", 1, "Dynatrace answered 503")
    assert [m.name for m in metrics_of(envelope)] == ["bridge.a", "bridge.b"]


def test_when_the_retry_queue_cannot_be_written_the_answer_is_503(tmp_path):
    from bridges.retry.worker import QueueHandoff

    class Unwritable:
        def send(self, text, visibility_timeout=0):
            raise ConnectionError("storage account unreachable")

    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(500))
        settings = load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path), "DYNATRACE_URL": fake.url, "DYNATRACE_API_TOKEN": TOKEN,
                                  "BRIDGE_DELIVERY": "inline"})
        bridge = Bridge(settings, delivery=Delivery(build_sinks(settings), QueueHandoff(settings, Unwritable())))
        reply = bridge.ingest(json.dumps([gauge("bridge.a")]).encode(), "application/json")
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "30"
    assert "could not keep 1 pending metrics: storage account unreachable" in reply.body["error"]


def test_too_large_requests_are_split_and_every_metric_arrives_once(tmp_path):
    with FakeDynatrace(token=TOKEN, max_body_bytes=2_000) as fake:
        bridge = dynatrace_bridge(tmp_path, fake.url)
        status, answer = ingest(bridge, [gauge(f"bridge.metric.number{i:03d}", i) for i in range(200)])
    assert status == 202
    assert answer["delivery"]["dynatrace"]["delivered"] == 200
    names = sorted(line.split(" ")[0] for line in fake.accepted_lines)
    assert names == sorted(f"bridge.metric.number{i:03d}" for i in range(200))
    assert any(r for r in fake.received if len(r.body) > 2_000)  # the first try was too large


def test_a_failing_sink_does_not_hold_up_or_duplicate_another(tmp_path):
    arrived_at_b = threading.Event()
    a_saw_b_first = []

    class Blocking(FakeDynatrace):
        def answer(self, request):
            a_saw_b_first.append(arrived_at_b.wait(timeout=10))
            return Answer(500)

    class Signalling(FakeDynatrace):
        def answer(self, request):
            arrived_at_b.set()
            return super().answer(request)

    with Blocking(token=TOKEN) as slow, Signalling(token=TOKEN) as fast:
        sink_a, sink_b = DynatraceSink(slow.url, Secret(TOKEN)), DynatraceSink(fast.url, Secret(TOKEN))
        sink_a.name, sink_b.name = "dynatrace-a", "dynatrace-b"
        delivery = Delivery([sink_a, sink_b], Recorded())
        reports = delivery.deliver([Metric("bridge.x", Gauge(1), time.time_ns())], time.time_ns())
    assert a_saw_b_first == [True]  # b was served while a was still busy: they ran side by side
    assert (reports["dynatrace-a"].pending, reports["dynatrace-b"].delivered) == (1, 1)
    assert len(fast.received) == 1  # a's failure did not make b send twice


def test_a_sink_that_leaves_a_request_unanswered_is_not_waited_for_again(tmp_path):
    """One hanging backend costs one timeout: the rest of that delivery, and new deliveries for
    QUIET_SECONDS, hand its metrics straight to the retry queue while the other sink delivers;
    the retry function's delivery (to that one sink) still tries, and an answer ends the quiet."""
    from fakes.server import RESET

    from bridges.delivery.deliver import QUIET_SECONDS

    with FakeDynatrace(token=TOKEN) as hanging, FakeDynatrace(token=TOKEN) as healthy:
        sink_a, sink_b = DynatraceSink(hanging.url, Secret(TOKEN)), DynatraceSink(healthy.url, Secret(TOKEN))
        sink_a.name, sink_b.name = "dynatrace-a", "dynatrace-b"
        now = [1000.0]
        handoff = Recorded()
        delivery = Delivery([sink_a, sink_b], handoff, clock=lambda: now[0])
        metrics = [Metric(f"bridge.m{i}", Gauge(i), time.time_ns()) for i in range(2500)]  # 3 requests each
        hanging.script(RESET)
        first = delivery.deliver(metrics, time.time_ns())
        assert len(hanging.received) == 1 and first["dynatrace-a"].pending == 2500
        assert first["dynatrace-b"].delivered == 2500 and len(healthy.received) == 3
        assert any("left a request unanswered" in r for r in first["dynatrace-a"].pending_reasons)
        now[0] += QUIET_SECONDS - 1
        second = delivery.deliver(metrics[:10], time.time_ns())
        assert len(hanging.received) == 1 and second["dynatrace-a"].pending == 10  # not tried
        assert second["dynatrace-b"].delivered == 10
        retried = delivery.deliver(metrics[:10], time.time_ns(), only="dynatrace-a")  # the retry function
        assert retried["dynatrace-a"].delivered == 10 and len(hanging.received) == 2
        third = delivery.deliver(metrics[:10], time.time_ns())
    assert third["dynatrace-a"].delivered == 10  # it answers again: new deliveries try it at once
    assert {k["sink"] for k in handoff.kept} == {"dynatrace-a"} and len(handoff.kept) == 2510


def test_the_rate_limit_keeps_what_is_over_it_as_pending(tmp_path):
    sink = DynatraceSink("http://127.0.0.1:9", Secret(TOKEN))
    with FakeDynatrace(token=TOKEN) as fake:
        sink = DynatraceSink(fake.url, Secret(TOKEN))
        sink.limits = type(sink.limits)(**{**sink.limits.__dict__, "max_items": 1000, "max_requests_per_minute": 2})
        clock_value = [1000.0]
        delivery = Delivery([sink], Recorded(), clock=lambda: clock_value[0])
        metrics = [Metric(f"bridge.m{i}", Gauge(i), time.time_ns()) for i in range(2500)]
        first = delivery.deliver(metrics, time.time_ns())
        clock_value[0] += 61
        second = delivery.deliver(metrics[:10], time.time_ns())
    assert (first["dynatrace"].delivered, first["dynatrace"].pending) == (2000, 500)
    assert "rate limit of 2 requests a minute" in first["dynatrace"].pending_reasons[0]
    assert second["dynatrace"].delivered == 10  # a minute later the budget is back


def test_a_bug_in_a_sink_keeps_its_metrics_pending(tmp_path, caplog):
    class Broken(DynatraceSink):
        def encode(self, metrics, now_ns):
            raise RuntimeError("boom")

    handoff = Recorded()
    delivery = Delivery([Broken("http://127.0.0.1:9", Secret(TOKEN))], handoff)
    reports = delivery.deliver([Metric("bridge.x", Gauge(1), time.time_ns())], time.time_ns())
    assert reports["dynatrace"].pending == 1
    assert handoff.kept[0]["reason"] == "internal error in the sink (see the log)"
    assert "boom" in caplog.text


def test_a_rejected_token_marks_the_sink_misconfigured_in_health(tmp_path):
    with FakeDynatrace(token="dt0c01.OTHER") as fake:
        bridge = dynatrace_bridge(tmp_path, fake.url)
        status, answer = ingest(bridge, [gauge("bridge.a")])
    assert answer["delivery"]["dynatrace"]["rejected"] == 1
    health = bridge.health().body
    assert health["status"] == "degraded"
    assert health["problems"] == ["dynatrace: http_401: the token is wrong (misconfigured)"]
    assert health["sinks"]["dynatrace"]["misconfigured"] == {"code": "http_401", "hint": "the token is wrong (misconfigured)"}


def test_partly_configured_sinks_are_named_in_health(tmp_path):
    settings = load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path), "BETTERSTACK_URL": "https://in.logs.betterstack.com"})
    health = Bridge(settings).health().body
    assert health["problems"] == ["betterstack: BETTERSTACK_SOURCE_TOKEN is not set"]
    assert list(health["sinks"]) == ["outbox"]


@pytest.mark.parametrize("status", [401, 413, 429, 500, 400])
def test_tokens_never_appear_in_logs_answers_or_health(tmp_path, caplog, status):
    caplog.set_level(logging.DEBUG)
    with FakeDynatrace(token=TOKEN, max_body_bytes=50) as fake:
        if status != 413:
            fake.script(Scripted(status, {}, json.dumps({"error": {"code": status, "message": f"echo {TOKEN}"}}).encode()))
        bridge = dynatrace_bridge(tmp_path, fake.url, BETTERSTACK_SOURCE_TOKEN="bs-SECRET-TOKEN")
        _, answer = ingest(bridge, [gauge("bridge.a"), gauge("bridge.b")])
    seen = caplog.text + json.dumps(answer) + json.dumps(bridge.health().body) + repr(bridge.settings)
    seen += "".join(p.read_text() for p in (tmp_path / "outbox").glob("*")) if (tmp_path / "outbox").exists() else ""
    assert TOKEN not in seen  # even when the backend echoes it back in its error message
    assert "bs-SECRET-TOKEN" not in seen


def test_requests_left_at_the_deadline_are_kept_as_pending(tmp_path):
    ticks = iter(range(0, 1000, 30))  # each look at the clock is 30 s later
    with FakeDynatrace(token=TOKEN) as fake:
        delivery = Delivery([DynatraceSink(fake.url, Secret(TOKEN))], Recorded(),
                            deadline_seconds=60, clock=lambda: next(ticks))
        metrics = [Metric(f"bridge.m{i}", Gauge(i), time.time_ns()) for i in range(3500)]
        report = delivery.deliver(metrics, time.time_ns())["dynatrace"]
    assert (report.delivered, report.pending) == (1000, 2500)
    assert report.pending_reasons == ["delivery deadline of 60 s reached"]
    assert len(fake.received) == 1


def test_without_a_token_metrics_wait_and_health_says_why(tmp_path):
    from bridges.delivery.auth import TokenError

    class NeedsToken(DynatraceSink):
        def authorize(self, request):
            raise TokenError("no Entra token for https://monitoring.azure.com//.default: identity not found")

    delivery = Delivery([NeedsToken("http://127.0.0.1:9", Secret(TOKEN))], Recorded())
    report = delivery.deliver([Metric("bridge.x", Gauge(1), time.time_ns())], time.time_ns())["dynatrace"]
    assert (report.pending, report.pending_reasons) == (1, ["no Entra token for https://monitoring.azure.com//.default: identity not found"])
    shown = delivery.status()["dynatrace"]["misconfigured"]
    assert shown["code"] == "no_token" and shown["hint"].startswith("no Entra token: check")
    assert "identity not found" not in json.dumps(shown)  # azure-identity's own words go to the log only


def test_a_sink_that_works_again_is_no_longer_reported(tmp_path):
    with FakeDynatrace(token=TOKEN) as fake:
        fake.script(Scripted(401))
        delivery = Delivery([DynatraceSink(fake.url, Secret(TOKEN))], Recorded())
        delivery.deliver([Metric("bridge.x", Gauge(1), time.time_ns())], time.time_ns())
        assert "misconfigured" in delivery.status()["dynatrace"]
        delivery.deliver([Metric("bridge.x", Gauge(2), time.time_ns())], time.time_ns())
        assert "misconfigured" not in delivery.status()["dynatrace"]
