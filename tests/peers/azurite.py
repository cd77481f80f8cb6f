"""Real Azurite queue and table services for tests (the Azure Storage emulator), one process each.

Fixtures (session-scoped):
    azurite       -> AzuritePeer with `connection_string` (explicit form: the well-known
                     devstoreaccount1 key and QueueEndpoint=http://127.0.0.1:<port>/devstoreaccount1)
    azurite_table -> AzuriteTablePeer, the same with TableEndpoint=http://127.0.0.1:<port>/devstoreaccount1

Azurite 3.35.0 is installed by `bash scripts/install-azurite.sh` into .peers/azurite/ (3.36+
needs Node 22). It runs in memory with --skipApiVersionCheck, because azure-storage-queue 12.x
sends an API version newer than 3.35 knows (CONTRACTS §10); azure-data-tables 12.7 sends
2019-02-02, which 3.35 knows, and the flag is kept for both alike. Listens on 127.0.0.1 only. If
a service cannot be started its fixture skips (or fails when CI=true).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import PeerUnavailable, free_port, serve_peer, stop_process

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / ".peers" / "azurite" / "node_modules" / ".bin"
AZURITE_BIN = BIN_DIR / "azurite-queue"
AZURITE_TABLE_BIN = BIN_DIR / "azurite-table"
INSTALL_HINT = "run `bash scripts/install-azurite.sh` to install it"

HOST = "127.0.0.1"
ACCOUNT = "devstoreaccount1"
# The emulator's published, well-known key (not a secret).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class AzuritePeer:
    port: int
    log_path: str

    @property
    def queue_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint={self.queue_endpoint};"
        )


@dataclass
class AzuriteTablePeer:
    port: int
    log_path: str

    @property
    def table_endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"TableEndpoint={self.table_endpoint};"
        )


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def run_azurite():
    """Generator: start azurite-queue on a free port, yield an AzuritePeer, stop it.

    Raises PeerUnavailable (before the first yield) when it cannot be started.
    """
    yield from _run_service(AZURITE_BIN, "queue", AzuritePeer)


def run_azurite_table():
    """Generator: start azurite-table on a free port, yield an AzuriteTablePeer, stop it.

    Raises PeerUnavailable (before the first yield) when it cannot be started.
    """
    yield from _run_service(AZURITE_TABLE_BIN, "table", AzuriteTablePeer)


def _run_service(binary: Path, service: str, peer_type):
    """Start one Azurite service (`service` names its --<service>Host/--<service>Port flags)."""
    what = binary.name
    if not binary.exists():
        raise PeerUnavailable(f"{what} is not installed at {binary}")
    if not shutil.which("node"):
        raise PeerUnavailable("node is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="azurite-peer-"))
    log_path = workdir / "azurite.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    args = [
        str(binary),
        f"--{service}Host", HOST,
        f"--{service}Port", str(port),
        "--inMemoryPersistence",
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                cwd=str(workdir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            rc = proc.poll()
            if rc is not None:
                raise PeerUnavailable(f"{what} exited with code {rc} during start:\n{_tail(str(log_path))}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(
                    f"{what} did not open {HOST}:{port} within {START_TIMEOUT:.0f} s:\n"
                    f"{_tail(str(log_path))}"
                )
            time.sleep(0.1)
        yield peer_type(port=port, log_path=str(log_path))
    finally:
        if proc is not None:
            stop_process(proc, STOP_TIMEOUT)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite():
    """A running Azurite queue service on a free loopback port."""
    yield from serve_peer(run_azurite, "Azurite queue service", INSTALL_HINT)


@pytest.fixture(scope="session")
def azurite_table():
    """A running Azurite table service on a free loopback port."""
    yield from serve_peer(run_azurite_table, "Azurite table service", INSTALL_HINT)
