"""Routes as a sender and an operator see them (bridges/routing wired into the bridge): each sink
gets only what the declaration sends it, shaped by its processors, inline and through the delivery
queue; a routed share that fails retries and replays as that sink's share; health counts what
routing did; ``render --explain`` says why (golden files).
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import azure.functions as func
import pytest
from fakes.betterstack import FakeBetterStack, decode_body
from fakes.dynatrace import FakeDynatrace
from fakes.server import Scripted
from support import ROOT, drain, outbox_lines

from bridges import runtime
from bridges.core import Bridge
from bridges.queues import LOCAL_FILE, SqliteQueue
from bridges.retry.deadletter_command import run_deadletter
from bridges.retry.envelopes import Envelope, metrics_of
from bridges.retry.worker import RetryWorker
from bridges.settings import load_settings
from bridges.triggers.http import health, ingest_metrics

DT_TOKEN = "dt0c01.ROUTEDTOKEN"
BS_TOKEN = "bs-routed-token"
GOLDEN = Path(__file__).parent / "testdata" / "routing"
ROUTES = {
    "routes": [
        {"name": "flags", "match": {"name": "ff_*"}, "sinks": ["dynatrace"]},
        {"name": "rest", "sinks": ["betterstack", "outbox"]},
    ],
    "sinks": {
        "dynatrace": {"rename": {"prefix": "flags."}},
        "betterstack": {"tag_keys": {"drop": ["user"]}},
    },
}
POINTS = [
    {"name": "ff_checkout", "gauge": {"value": 1}, "tags": {"user": "u1"}},
    {"name": "queue.depth", "gauge": {"value": 7}, "tags": {"user": "u2", "queue": "orders"}},
    {"name": "ff_search", "gauge": {"value": 0}},
]


def make_bridge(tmp_path: Path, dynatrace, betterstack, routes=ROUTES, **settings: str) -> Bridge:
    return Bridge(load_settings({
        "BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "BRIDGE_ROUTES": json.dumps(routes),
        "BRIDGE_SINKS": "outbox,dynatrace,betterstack",
        "DYNATRACE_URL": dynatrace.url, "DYNATRACE_API_TOKEN": DT_TOKEN,
        "BETTERSTACK_URL": betterstack.url, "BETTERSTACK_SOURCE_TOKEN": BS_TOKEN, **settings}))


def ingest(bridge: Bridge, items: list) -> tuple[int, dict]:
    reply = bridge.ingest(json.dumps(items).encode(), "application/json")
    return reply.status, reply.body


def dynatrace_names(fake: FakeDynatrace) -> list[str]:
    return [line.split(" ")[0].split(",")[0] for line in fake.accepted_lines]


def betterstack_metrics(fake: FakeBetterStack) -> list[dict]:
    return [m for r in fake.received for m in decode_body(r.body, r.headers.get("content-type", ""))]


def assert_each_sink_got_its_share(dynatrace, betterstack, bridge) -> None:
    assert sorted(dynatrace_names(dynatrace)) == ["flags.ff_checkout", "flags.ff_search"]
    [other] = betterstack_metrics(betterstack)
    assert other["name"] == "queue.depth" and other["tags"] == {"queue": "orders"}  # user dropped for Better Stack
    [kept] = outbox_lines(bridge)
    assert kept["name"] == "queue.depth" and kept["tags"] == {"queue": "orders", "user": "u2"}  # the outbox: as sent


def test_inline_each_sink_gets_only_its_share_processed_for_it(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, dynatrace, betterstack, BRIDGE_DELIVERY="inline")
        status, answer = ingest(bridge, POINTS)
    assert status == 202
    delivery = answer["delivery"]
    assert delivery["routing"] == {"sinks": {"dynatrace": 2, "betterstack": 1, "outbox": 1}, "unrouted": 0, "dropped": {}}
    assert delivery["dynatrace"]["delivered"] == 2 and delivery["betterstack"]["delivered"] == 1
    assert_each_sink_got_its_share(dynatrace, betterstack, bridge)


def test_queued_shares_wait_as_envelopes_named_for_their_sink_and_each_sink_gets_its_own(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, dynatrace, betterstack)
        status, answer = ingest(bridge, POINTS)
        assert status == 202 and answer["delivery"]["queued"] == 3
        waiting = [Envelope.from_text(m.text) for m in bridge.delivery_queue.peek(32)]
        assert sorted((e.sink, e.attempt, e.count) for e in waiting) == [
            ("betterstack", 0, 1), ("dynatrace", 0, 2), ("outbox", 0, 1)]
        assert not dynatrace.received and not betterstack.received  # the sender never waits for a backend
        [batch] = drain(bridge)
    assert batch.messages == 3 and set(batch.reports) == {"dynatrace", "betterstack", "outbox"}
    assert_each_sink_got_its_share(dynatrace, betterstack, bridge)


def test_a_routed_share_that_fails_retries_and_replays_as_what_its_sink_was_meant_to_get(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, dynatrace, betterstack, BRIDGE_RETRY_MAX_ATTEMPTS="1")
        ingest(bridge, POINTS)
        dynatrace.script(Scripted(500), Scripted(500))
        [batch] = drain(bridge)
        assert batch.reports["dynatrace"].pending == 2 and batch.reports["betterstack"].delivered == 1
        database = tmp_path / ".bridge" / LOCAL_FILE
        later = SqliteQueue(database, "bridge-retry", clock=lambda: time.time() + 700)
        [message] = later.receive(32, 60)
        envelope = Envelope.from_text(message.text)
        assert envelope.sink == "dynatrace"
        assert sorted(m.name for m in metrics_of(envelope)) == ["flags.ff_checkout", "flags.ff_search"]
        dead = SqliteQueue(database, "bridge-deadletter")
        sinks = {sink.name: sink for sink in bridge.delivery.sinks}
        RetryWorker(bridge.settings, sinks, later, dead, delivery=bridge.delivery).process(message.text)
        assert dead.depth() == 1  # out of attempts: dead-lettered with the renamed metrics

        class Queues:
            deadletter, retry, poison, delivery_poison, delivery = dead, later, None, None, bridge.delivery_queue

        err = io.StringIO()
        from bridges.__main__ import _parser

        args = _parser().parse_args(["deadletter", "replay", "--all"])
        assert run_deadletter(args, Queues(), time.time_ns(), io.StringIO(), err) == 0, err.getvalue()
        [replayed] = later.receive(32, 60)
        RetryWorker(bridge.settings, sinks, later, dead, delivery=bridge.delivery).process(replayed.text)
    assert dynatrace_names(dynatrace) == ["flags.ff_checkout", "flags.ff_search"]  # renamed, once, after replay
    assert len(betterstack.received) == 1  # never sent again


def test_metrics_no_route_matches_are_counted_never_silently_lost(tmp_path):
    routes = {"routes": [{"match": {"name": "ff_*"}, "sinks": ["dynatrace"]}]}
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, dynatrace, betterstack, routes, BRIDGE_DELIVERY="inline")
        status, answer = ingest(bridge, POINTS)
        health = bridge.health().body
    assert status == 202 and answer["delivery"]["routing"]["unrouted"] == 1
    assert health["routing"]["declared"] is True and health["routing"]["unrouted"] == 1
    assert not betterstack.received and outbox_lines(bridge) == []


def test_health_reports_folds_and_routes_to_sinks_that_are_not_enabled(tmp_path):
    routes = {"routes": [{"sinks": ["outbox", "unleash"]}],
              "sinks": {"outbox": {"cardinality": {"limit": 2, "tags": ["user"]}}}}
    bridge = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "BRIDGE_DELIVERY": "inline",
                                   "BRIDGE_ROUTES": json.dumps(routes)}))
    users = [{"name": "logins", "counter": {"value": 1}, "tags": {"user": f"u{n}"}} for n in range(5)]
    assert ingest(bridge, users)[0] == 202
    health = bridge.health().body
    assert health["status"] == "degraded"
    assert any("unleash, which is not enabled" in problem for problem in health["problems"])
    assert health["routing"]["sinks"]["outbox"]["folded"] == 3
    assert health["routing"]["sinks"]["outbox"]["folded_by_name"] == {"logins": 3}
    assert sorted(line["tags"]["user"] for line in outbox_lines(bridge)) == ["other", "other", "other", "u0", "u1"]


def test_a_bad_declaration_is_a_bad_setting_named_by_health_and_every_function(tmp_path, monkeypatch):
    """Never delivered to the wrong place: until the declaration is fixed, every function answers
    503 naming it (senders send again), and health says what is wrong."""
    monkeypatch.setenv("BRIDGE_ROUTES", json.dumps({"routes": [{"sinks": ["graphite"]}]}))
    monkeypatch.setenv("BRIDGE_OUTBOX_DIR", str(tmp_path / "outbox"))
    try:
        assert runtime.start() is None
        assert re.match(r"^BRIDGE_ROUTES: .*/routes/0/sinks/0", str(runtime.problem())), runtime.problem()
        answers = [function(func.HttpRequest(method, "http://localhost/api/x", body=body,
                                             headers={"Content-Type": "application/json"}))
                   for function, method, body in ((health, "GET", b""), (ingest_metrics, "POST", json.dumps(POINTS).encode()))]
        for answer in answers:
            document = json.loads(answer.get_body())
            assert answer.status_code == 503 and "graphite" in document["problems"][0], document
    finally:
        runtime.use(None)
    assert not (tmp_path / "outbox").exists()


def run_render(*argv: str, routes: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridges", "render", "--explain", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "BRIDGE_ROUTES_FILE": str(routes), "HOME": "/tmp"})


@pytest.mark.parametrize("case, argv", [
    ("canonical", ["tests/testdata/routing/payload.json"]),
    ("github", ["--source", "github", "-H", "X-GitHub-Event: workflow_job",
                "tests/testdata/webhooks/github/workflow_job_completed.json"]),
])
def test_render_explain_says_per_metric_which_route_matched_and_what_each_processor_did(case, argv):
    result = run_render(*argv, routes=GOLDEN / "routes.yaml")
    assert result.returncode == 0, result.stderr
    golden = GOLDEN / f"explain-{case}.txt"
    if __import__("os").environ.get("UPDATE_GOLDEN"):
        golden.write_text(result.stdout)
    assert result.stdout == golden.read_text()


def test_the_readme_routing_examples_are_valid_declarations():
    import yaml

    from bridges.routing import parse_routes

    text = (ROOT / "README.md").read_text()
    section = text.split("## Routing", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(json|yaml)\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3
    for kind, block in blocks:
        document = json.loads(block) if kind == "json" else yaml.safe_load(block)
        assert parse_routes(document, "README").declared


def test_a_routed_metric_too_large_for_a_queue_message_is_413_naming_it_in_the_request(tmp_path):
    import random

    rng = random.Random(3)
    huge = {"name": "ff_huge", "gauge": {"value": 1},
            "tags": {f"k{n}": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1000))
                     for n in range(60)}}
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        bridge = make_bridge(tmp_path, dynatrace, betterstack)
        status, answer = ingest(bridge, [*POINTS, huge])  # the fourth item: dynatrace's third metric
        assert status == 413 and "the metric at /3 is too large" in answer["error"], answer
        assert bridge.delivery_queue.depth() == 0  # nothing kept, for any sink


def test_a_share_for_a_sink_no_longer_enabled_is_dead_lettered_with_that_reason_and_the_rest_delivered(tmp_path):
    with FakeDynatrace(token=DT_TOKEN) as dynatrace, FakeBetterStack(BS_TOKEN) as betterstack:
        ingest(make_bridge(tmp_path, dynatrace, betterstack), POINTS)
    # the app restarts with Dynatrace's and Better Stack's settings removed while their shares wait
    later = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "BRIDGE_ROUTES": json.dumps(ROUTES),
                                  "BRIDGE_SINKS": "outbox"}))
    [batch] = drain(later)
    assert set(batch.reports) == {"outbox"}
    assert [line["name"] for line in outbox_lines(later)] == ["queue.depth"]
    database = tmp_path / ".bridge" / LOCAL_FILE
    retry = SqliteQueue(database, "bridge-retry", clock=lambda: time.time() + 3600)
    dead = SqliteQueue(database, "bridge-deadletter")
    sinks = {sink.name: sink for sink in later.delivery.sinks}
    while messages := retry.receive(32, 60):
        for message in messages:
            RetryWorker(later.settings, sinks, retry, dead, delivery=later.delivery).process(message.text)
            retry.delete(message)
    records = [json.loads(m.text) for m in dead.peek(32)]
    assert sorted((r["envelope"]["sink"], r["envelope"]["count"]) for r in records) == [("betterstack", 1), ("dynatrace", 2)]
    assert all("not enabled" in r["reason"] for r in records), records
