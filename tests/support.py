"""What tests share besides fixtures: the repository root, the fixed receipt time, and helpers
that build a Bridge, run the delivery function and read the outbox. Tests import these from
here; conftest.py holds only fixtures."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bridges import runtime  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

# 2026-11-22T10:00:00Z: the receipt time every test sees.
NOW_NS = 1_795_341_600 * 1_000_000_000


def use_bridge(settings: dict[str, str], now_ns: int = NOW_NS) -> Bridge:
    """Install, for the triggers, a Bridge built from these settings on a fixed clock."""
    instance = Bridge(load_settings(settings), clock=lambda: now_ns)
    runtime.use(instance)
    return instance


def drain(bridge: Bridge) -> list:
    """Run the delivery function over everything on the Bridge's delivery queue, as the host
    does (one message per invocation, deleted when it succeeded); the batches it delivered."""
    from bridges.delivery.queued import worker_for

    worker = worker_for(bridge)
    worker.linger_seconds = 0  # everything is on the queue already
    batches = []
    while messages := bridge.delivery_queue.receive(1, 60):
        batches.append(worker.process(messages[0].text))
        bridge.delivery_queue.delete(messages[0])
    return batches


def outbox_lines(bridge: Bridge) -> list[dict]:
    files = sorted(bridge.settings.outbox_dir.glob("*.ndjson"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


STATUS_OF_CLASS = {"2xx": 201, "3xx": 302, "4xx": 418, "5xx": 599}  # a status each class key stands for


def walk_status_table(sink, request, body: bytes = b"", headers: dict | None = None) -> dict:
    """Classify one answer per entry of the sink's status table and check the outcome is the one
    the entry names (a Misconfigured entry: a Drop marked misconfigured with that hint); entries
    that read the body are returned for the caller to check. Returns {key: outcome}."""
    from bridges.delivery.sinks.base import Drop, Misconfigured, Reply

    outcomes = {}
    for key, rule in sink.status_outcomes.items():
        status = STATUS_OF_CLASS.get(key, key)
        outcome = sink.classify(request, Reply(status, headers or {}, body))
        if isinstance(rule, Misconfigured):
            assert outcome == Drop(outcome.reason, misconfigured=True, hint=rule.hint), (key, outcome)
            assert outcome.reason.startswith(f"{sink.title} answered {status}: {rule.hint}"), (key, outcome)
        elif isinstance(rule, type):
            assert type(outcome) is rule, (key, outcome)
            assert not getattr(outcome, "misconfigured", False), (key, outcome)
        outcomes[key] = outcome
    return outcomes


def load_file(path):
    """One rule file, read, validated and compiled as start-up does; raises its first MappingError."""
    from bridges.webhooks.rule_files import check_paths

    loaded, errors = check_paths([Path(path)])
    if errors:
        raise errors[0]
    [rules] = loaded
    return rules
