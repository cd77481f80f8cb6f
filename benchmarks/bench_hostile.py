"""What refusing a hostile body costs, per byte, against reading a valid one of the same route.

Each hostile body is one the bridge was attacked with (issue 13): a Dynatrace line of 10 MB
with 2.5 million dimensions (5.6 s of CPU before limits were checked as soon as passed), lines
just past the 50-dimension limit, a gzip body of the most members allowed and one past it, and
a JSON integer of a million digits. Each is sent through ``Bridge.receive`` or ``Bridge.ingest``
as a trigger would; the figure is the CPU time of the best of a few rounds, in nanoseconds per
byte of the body, beside a valid body's (the foundation's 10,000-point payload, and Dynatrace
lines as the Dynatrace sink writes them). Nothing here is asserted: tests check behaviour.
"""
from __future__ import annotations

import gzip
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_ingest import payload  # noqa: E402
from benchmarks.common import report  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.formats import MAX_GZIP_MEMBERS, dynatrace  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

ROUNDS = 3


def cpu_seconds(action) -> float:
    """The least CPU time of a few rounds (CPU, not wall time: the machine's other load stays out)."""
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        action()
        best = min(best, time.process_time() - started)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        bridge = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": folder, "BRIDGE_STATE_DIR": folder,
                                       "BRIDGE_DELIVERY": "inline",  # the figures include the outbox write
                                       "BRIDGE_MAX_BODY_BYTES": str(40 * 1024 * 1024)}))
        valid = payload()
        bridge.parse(valid, "application/json")  # warm up: compiles the schema once
        dynatrace_valid = "\n".join(f"shop.orders,host=web-{i % 50},zone=z{i % 3} gauge,{i} 1795341600000"
                                    for i in range(100_000)).encode()
        member = gzip.compress(b'{"name": "m", "gauge": {"value": 1}}\n')
        cases = [  # (label, body, how it is sent, expected status)
            ("valid canonical JSON, 10,000 points (parse only)", valid,
             lambda body: bridge.parse(body, "application/json"), None),
            ("valid Dynatrace lines, 100,000 (decode + normalize + outbox)", dynatrace_valid,
             lambda body: bridge.receive(dynatrace, body, "text/plain"), 202),
            ("one Dynatrace line of 2.5 million dimensions", _one_huge_line(),
             lambda body: bridge.receive(dynatrace, body, "text/plain"), 400),
            ("Dynatrace lines of 60 quoted dimensions each", _lines_past_the_limit(),
             lambda body: bridge.receive(dynatrace, body, "text/plain"), 400),
            (f"gzip of {MAX_GZIP_MEMBERS} members (accepted)", member * MAX_GZIP_MEMBERS,
             lambda body: bridge.ingest(body, "application/x-ndjson", "gzip"), 202),
            (f"gzip of {MAX_GZIP_MEMBERS + 1} members (refused)", member * (MAX_GZIP_MEMBERS + 1),
             lambda body: bridge.ingest(body, "application/x-ndjson", "gzip"), 400),
            ("a JSON integer of a million digits", b'[{"name": "m", "gauge": {"value": ' + b"7" * 1_000_000 + b"}}]",
             lambda body: bridge.ingest(body, "application/json"), 400),
        ]
        lines = ["body | bytes | CPU ms (best of 3) | ns per byte", "--- | --- | --- | ---"]
        for label, body, send, status in cases:
            if status is not None:
                answer = send(body)
                assert answer.status == status, (label, answer.status, answer.body)
            cpu = cpu_seconds(lambda: send(body))
            lines.append(f"{label} | {len(body):,} | {cpu * 1000:.1f} | {cpu * 1e9 / len(body):.0f}")
    report("hostile", lines)


def _one_huge_line() -> bytes:
    return ("my.metric" + "".join(f",d{i}=v" for i in range(2_500_000)) + " 1").encode()


def _lines_past_the_limit() -> bytes:
    line = "my.metric" + "".join(f',d{i}="v\\"w"' for i in range(60)) + " 1"
    return "\n".join(line for _ in range(10_000_000 // len(line))).encode()


if __name__ == "__main__":
    main()
