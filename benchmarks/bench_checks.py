"""One run of 100 synthetic checks against a server that answers each after 200 ms.

The server runs in its own process (a threaded HTTP server with a listen backlog for all 100
connections), so the CPU time this process spends is the bridge's alone. Timed: the wall time of
``Bridge.run_checks`` over the 100 checks, metrics included, not delivered (delivery is the
sinks' cost, measured by bench_sinks.py), against the 200 ms one answer takes; target <= 1.5x.
The bridge's own overhead per check is its process CPU time for the run divided by the checks,
and the wall time beyond the 200 ms, divided likewise.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import report  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.settings import load_settings  # noqa: E402

CHECKS = 100
DELAY_SECONDS = 0.2
ROUNDS = 7
SERVER = f"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep({DELAY_SECONDS})
        body = b'{{"status": "ok"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True

server = Server(("127.0.0.1", 0), Slow)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def main() -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        checks = {"checks": [{"name": f"check-{i}", "url": f"http://127.0.0.1:{port}/health/{i}", "timeout": 5,
                              "assertions": [{"jmespath": "status", "equals": "ok"}]} for i in range(CHECKS)]}
        with tempfile.TemporaryDirectory() as state:
            os.chdir(state)
            bridge = Bridge(load_settings({"BRIDGE_CHECKS": json.dumps(checks)}))
            bridge.run_checks(deliver=False)  # warm up: imports, TLS-free sockets, thread stacks
            walls, cpus = [], []
            for _ in range(ROUNDS):
                cpu, wall = time.process_time(), time.perf_counter()
                results, metrics = bridge.run_checks(deliver=False)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                down = [r for r in results if not r.up]
                if down:
                    raise SystemExit(f"{len(down)} checks failed, e.g. {down[0].check.name}: {down[0].message}")
    finally:
        server.kill()
    best, median = min(walls), statistics.median(walls)
    lines = [
        f"{CHECKS} checks, each answered after {DELAY_SECONDS * 1000:.0f} ms, {len(metrics)} metrics per run, {ROUNDS} runs",
        f"wall time per run: best {best * 1000:.0f} ms, median {median * 1000:.0f} ms: "
        f"{best / DELAY_SECONDS:.2f}x (median {median / DELAY_SECONDS:.2f}x) the {DELAY_SECONDS * 1000:.0f} ms answer; "
        "target <= 1.5x",
        f"bridge overhead per check: {min(cpus) / CHECKS * 1000:.2f} ms CPU (median {statistics.median(cpus) / CHECKS * 1000:.2f}), "
        f"{(best - DELAY_SECONDS) / CHECKS * 1000:.2f} ms of wall time beyond the answer",
    ]
    report("checks", lines)


if __name__ == "__main__":
    main()
