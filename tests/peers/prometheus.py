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
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import NO_PROXY_OPENER, PeerUnavailable, free_port, log_tail, scratch_dir, serve_peer, served, version_line

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
CONFIG = "global:\n  scrape_interval: 1h\n  evaluation_interval: 1h\n"


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
        with NO_PROXY_OPENER.open(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as reply:
            answer = json.load(reply)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def run_prometheus(config=lambda port: CONFIG):
    """Generator: start Prometheus, yield a PrometheusPeer, stop it and remove its files.
    ``config(port)`` is its prometheus.yml, given the port it will listen on."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PeerUnavailable("the `prometheus` binary is not on PATH")
    version = version_line(binary)
    with scratch_dir("prometheus-peer-") as workdir:
        port = free_port(HOST)
        (workdir / "prometheus.yml").write_text(config(port))
        peer = PrometheusPeer(f"http://{HOST}:{port}", version, str(workdir / "prometheus.log"))
        command = [binary, "--web.enable-remote-write-receiver", f"--config.file={workdir / 'prometheus.yml'}",
                   f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={HOST}:{port}"]
        with served(command, Path(peer.log_path), f"{peer.url}/-/ready", "prometheus", START_TIMEOUT):
            yield peer


@pytest.fixture(scope="session")
def prometheus_peer():
    """A running Prometheus with the remote-write receiver on (no auth)."""
    yield from serve_peer(run_prometheus, "Prometheus peer")
