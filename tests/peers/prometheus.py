"""A real Prometheus (Debian package ``prometheus``) as a remote-write receiver for tests.

Fixture (session-scoped): ``prometheus_peer`` -> PrometheusPeer with ``write_url`` (no auth)
and ``query(expr, at)`` over ``/api/v1/query``. It runs its own server on a free loopback port
with ``--web.enable-remote-write-receiver``, no scrape jobs and a temporary TSDB, and stops it
at teardown. Not installed: skipped with the reason (failed when CI=true); install it with
`bash scripts/install-peers.sh`.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import PeerUnavailable, free_port, serve_peer

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CONFIG = "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\n"
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class PrometheusPeer:
    url: str
    version: str
    log_path: str

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The instant query's result vector: [{"metric": {labels}, "value": [t, "v"]}]."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        with _NO_PROXY_OPENER.open(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(Path(self.log_path).read_text(errors="replace").splitlines(True)[-lines:])
        except OSError:
            return ""


def run_prometheus(config=lambda port: CONFIG):
    """Generator: start Prometheus, yield a PrometheusPeer, stop it and remove its files.
    ``config(port)`` is its prometheus.yml, given the port it will listen on."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PeerUnavailable("the `prometheus` binary is not on PATH")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split("\n")[0]
    workdir = Path(tempfile.mkdtemp(prefix="prometheus-peer-"))
    port = free_port(HOST)
    (workdir / "prometheus.yml").write_text(config(port))
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--web.enable-remote-write-receiver", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={HOST}:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    peer = PrometheusPeer(f"http://{HOST}:{port}", version, str(log_path))
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise PeerUnavailable(f"prometheus exited with {proc.returncode}:\n{peer.log_tail()}")
            try:
                with _NO_PROXY_OPENER.open(f"{peer.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"prometheus not ready within {START_TIMEOUT:.0f} s:\n{peer.log_tail()}")
            time.sleep(0.1)
        yield peer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def prometheus_peer():
    """A running Prometheus with the remote-write receiver on (no auth)."""
    yield from serve_peer(run_prometheus, "Prometheus peer")
