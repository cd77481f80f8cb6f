"""The timer functions (synthetic checks, polled sources) as the local runner fires them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from fakes.server import Answer, FakeReceiver
from runner import running_bridge, wait_for_line, wait_until

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
    ("BRIDGE_CHECKS", '{"checks": [{"name": "x", "url": "ftp://x"}]}', "BRIDGE_CHECKS: at /checks/0/url"),
])
def test_a_bad_schedule_or_declaration_stops_serve_with_its_name(setting, value, named, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update({"PYTHONPATH": str(ROOT), "BRIDGE_STATE_DIR": str(tmp_path), setting: value})
    done = subprocess.run([sys.executable, "-m", "bridges", "serve", "--port", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert named in done.stderr
    assert "Listening on" not in done.stdout
