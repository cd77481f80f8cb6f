"""The timer functions (synthetic checks, polled sources) as the local runner fires them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from fakes.server import Answer, FakeReceiver
from runner import running_bridge, wait_for_line, wait_until
from support import ROOT

STATUS_PAGE = {"components": [{"name": "api", "status": "operational"}, {"name": "db", "status": "major_outage"}]}
RULES = {"rules": [{"name": "components", "events": "body.components", "tags": {"component": "event.name"},
                    "metrics": [{"name": "statuspage.component.up", "type": "gauge",
                                 "value": "event.status == 'operational' && `1` || `0`"}]}]}


class Target(FakeReceiver):
    """What the checks and the sources request: a health endpoint and a status page."""

    def answer(self, request) -> Answer:
        if request.path == "/summary.json":
            return Answer(200, {"Content-Type": "application/json"}, json.dumps(STATUS_PAGE).encode())
        return Answer(200, {"Content-Type": "text/plain"}, b"ok")


@pytest.fixture
def target():
    with Target() as server:
        yield server


def written(outbox: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(outbox.glob("*.ndjson")) for line in f.read_text().splitlines()]


def test_the_checks_timer_writes_check_metrics(target, tmp_path):
    outbox = tmp_path / "outbox"
    checks = {"checks": [{"name": "homepage", "url": target.url + "/health", "timeout": 2}]}
    env = {"CHECKS_SCHEDULE": "*/1 * * * * *", "BRIDGE_CHECKS": json.dumps(checks), "BRIDGE_OUTBOX_DIR": str(outbox),
           "BRIDGE_LOCATION": "laptop"}
    with running_bridge(env=env) as (_, lines):
        assert "  synthetic_checks: timer */1 * * * * *" in lines
        up = wait_until(lambda: [m for m in written(outbox) if m["name"] == "check_up"], timeout=30,
                        what="check_up in the outbox")
        wait_for_line(lines, "timer synthetic_checks (*/1 * * * * *) succeeded")
    assert up[0]["gauge"]["value"] == 1
    assert up[0]["tags"] == {"check": "homepage", "host": "127.0.0.1", "location": "laptop"}
    assert ("GET", "/health") in [(r.method, r.path) for r in target.received]


def test_the_sources_timer_writes_the_mapped_metrics(target, tmp_path):
    outbox = tmp_path / "outbox"
    sources = {"sources": [{"name": "status", "url": target.url + "/summary.json", "mapping": RULES}]}
    env = {"SOURCES_SCHEDULE": "*/1 * * * * *", "BRIDGE_SOURCES": json.dumps(sources), "BRIDGE_OUTBOX_DIR": str(outbox)}
    with running_bridge(env=env) as (_, lines):
        assert "  polled_sources: timer */1 * * * * *" in lines
        wait_until(lambda: {"statuspage.component.up", "poll_up"} <= {m["name"] for m in written(outbox)}, timeout=30,
                   what="the mapped metrics and poll_up in the outbox")
        wait_for_line(lines, "timer polled_sources (*/1 * * * * *) succeeded")
    metrics = written(outbox)
    assert {(m["tags"]["component"], m["gauge"]["value"]) for m in metrics if m["name"] == "statuspage.component.up"} == {
        ("api", 1), ("db", 0)}
    assert {(m["gauge"]["value"], m["tags"]["source"]) for m in metrics if m["name"] == "poll_up"} == {(1, "status")}


def test_functions_lists_the_timers_with_their_schedule_settings():
    done = subprocess.run([sys.executable, "-m", "bridges", "functions"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["synthetic_checks", "timerTrigger", "%CHECKS_SCHEDULE%", "-"] in rows
    assert ["polled_sources", "timerTrigger", "%SOURCES_SCHEDULE%", "-"] in rows


@pytest.mark.parametrize("setting, value, named", [
    ("CHECKS_SCHEDULE", "every minute", "CHECKS_SCHEDULE"),
    ("CHECKS_SCHEDULE", "0 * * * *", "CHECKS_SCHEDULE"),  # five fields: the seconds are missing
    ("SOURCES_SCHEDULE", "00:00:00", "SOURCES_SCHEDULE"),
    ("CHECKS_SCHEDULE", "", "CHECKS_SCHEDULE"),  # unset: the host has no fallback to the default
])
def test_a_bad_or_unset_schedule_leaves_that_timer_unhosted_and_says_so(setting, value, named, tmp_path):
    timer = {"CHECKS_SCHEDULE": "synthetic_checks", "SOURCES_SCHEDULE": "polled_sources"}[setting]
    with running_bridge(env={"BRIDGE_STATE_DIR": str(tmp_path), setting: value}) as (base, lines):
        line = wait_for_line(lines, f"{timer}: not hosted")
        assert named in line
        health = requests.get(f"{base}/api/health", timeout=10)  # the HTTP functions still run
    if value:  # a bad value is a bad setting: every function answers 503 naming it
        assert health.status_code == 503 and health.json()["problems"][0].startswith(setting)
    else:  # unset: the bridge has its default, but the host will not run the timer; health says so
        assert health.status_code == 200
        assert any(setting in problem and timer in problem for problem in health.json()["problems"])


def test_a_bad_declaration_makes_every_function_answer_503_naming_it(tmp_path):
    """A bad setting never stops the functions from indexing: each answers 503 naming it."""
    bad = '{"checks": [{"name": "x", "url": "ftp://x"}]}'
    with running_bridge(env={"BRIDGE_STATE_DIR": str(tmp_path), "BRIDGE_CHECKS": bad}) as (base, lines):
        health = requests.get(f"{base}/api/health", timeout=10)
        ingest = requests.post(f"{base}/api/metrics", json={"name": "a", "gauge": {"value": 1}}, timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "misconfigured"
    assert health.json()["problems"][0].startswith("BRIDGE_CHECKS: at /checks/0/url")
    assert ingest.status_code == 503 and "BRIDGE_CHECKS: at /checks/0/url" in ingest.json()["error"]
    assert ingest.headers["Retry-After"]