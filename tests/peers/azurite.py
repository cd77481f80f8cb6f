"""A real Azurite queue service for tests (the Azure Storage emulator, queue service only).

Fixture (session-scoped):
    azurite -> AzuritePeer with `connection_string` (explicit form: the well-known
               devstoreaccount1 key and QueueEndpoint=http://127.0.0.1:<port>/devstoreaccount1)

Azurite 3.35.0 is installed by `bash scripts/install-azurite.sh` into .peers/azurite/ (3.36+
needs Node 22). It runs in memory with --skipApiVersionCheck, because azure-storage-queue 12.x
sends an API version newer than 3.35 knows (CONTRACTS §10). Listens on 127.0.0.1 only. If it
cannot be started the fixture skips (or fails when CI=true).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from peers import PeerUnavailable, free_port, serve_peer

ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = ROOT / ".peers" / "azurite" / "node_modules" / ".bin" / "azurite-queue"
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


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    try:  # anything left in its process group (npm's .bin shim may leave node behind)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def run_azurite():
    """Generator: start azurite-queue on a free port, yield an AzuritePeer, stop it.

    Raises PeerUnavailable (before the first yield) when it cannot be started.
    """
    if not AZURITE_BIN.exists():
        raise PeerUnavailable(f"azurite-queue is not installed at {AZURITE_BIN}")
    if not shutil.which("node"):
        raise PeerUnavailable("node is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="azurite-peer-"))
    log_path = workdir / "azurite.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    args = [
        str(AZURITE_BIN),
        "--queueHost", HOST,
        "--queuePort", str(port),
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
                raise PeerUnavailable(f"azurite-queue exited with code {rc} during start:\n{_tail(str(log_path))}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(
                    f"azurite-queue did not open {HOST}:{port} within {START_TIMEOUT:.0f} s:\n"
                    f"{_tail(str(log_path))}"
                )
            time.sleep(0.1)
        yield AzuritePeer(port=port, log_path=str(log_path))
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite():
    """A running Azurite queue service on a free loopback port."""
    yield from serve_peer(run_azurite, "Azurite queue service", INSTALL_HINT)
