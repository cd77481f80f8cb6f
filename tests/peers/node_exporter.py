"""A real node_exporter (Debian package ``prometheus-node-exporter``) as a scrape target for tests.

Fixture (session-scoped): ``node_exporter_peer`` -> NodeExporterPeer with ``metrics_url``. It runs
its own exporter on a free loopback port with only a few collectors (loadavg, stat, textfile), so a
scrape is fast and its families are always the same: those, its own go_*, process_* and promhttp_*
families (go_gc_duration_seconds is a summary), and from the textfile collector the histogram
TEXTFILE holds. Stopped at teardown. Not installed: skipped with the reason (failed when CI=true);
install it with `bash scripts/install-peers.sh`.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import PeerUnavailable, free_port, log_tail, scratch_dir, serve_peer, served, version_line

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
COLLECTORS = ("loadavg", "stat", "textfile")
# Read by the textfile collector and exposed again by the exporter: a histogram it has no collector for.
TEXTFILE = """# HELP batch_wait_seconds Time a batch waited.
# TYPE batch_wait_seconds histogram
batch_wait_seconds_bucket{queue="mail",le="0.1"} 2
batch_wait_seconds_bucket{queue="mail",le="1"} 5
batch_wait_seconds_bucket{queue="mail",le="+Inf"} 6
batch_wait_seconds_sum{queue="mail"} 4.5
batch_wait_seconds_count{queue="mail"} 6
batch_wait_seconds_bucket{queue="sms",le="0.1"} 0
batch_wait_seconds_bucket{queue="sms",le="1"} 1
batch_wait_seconds_bucket{queue="sms",le="+Inf"} 1
batch_wait_seconds_sum{queue="sms"} 0.5
batch_wait_seconds_count{queue="sms"} 1
"""


@dataclass
class NodeExporterPeer:
    url: str
    version: str
    log_path: str

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


def run_node_exporter():
    """Generator: start node_exporter, yield a NodeExporterPeer, stop it and remove its files."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        raise PeerUnavailable("neither `prometheus-node-exporter` nor `node_exporter` is on PATH")
    version = version_line(binary)
    with scratch_dir("node-exporter-peer-") as workdir:
        (workdir / "textfile").mkdir()
        (workdir / "textfile" / "batches.prom").write_text(TEXTFILE)
        port = free_port(HOST)
        peer = NodeExporterPeer(f"http://{HOST}:{port}", version, str(workdir / "node_exporter.log"))
        command = [binary, "--collector.disable-defaults", *(f"--collector.{name}" for name in COLLECTORS),
                   f"--collector.textfile.directory={workdir / 'textfile'}", f"--web.listen-address={HOST}:{port}"]
        with served(command, Path(peer.log_path), peer.metrics_url, "node_exporter", START_TIMEOUT):
            yield peer


@pytest.fixture(scope="session")
def node_exporter_peer():
    """A running node_exporter with a few collectors, on a free loopback port."""
    yield from serve_peer(run_node_exporter, "node_exporter peer")
