"""Real peer servers for tests (Unleash, Prometheus, Azurite), started by fixtures on loopback.

What every peer fixture shares: free ports, and the rule for a peer that cannot start — the
test fails under CI (CI=true) and is skipped elsewhere, saying why and how to install it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = "run `bash scripts/install-peers.sh` to install it"


class PeerUnavailable(Exception):
    """A peer could not be started; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def serve_peer(start, what: str, install_hint: str = INSTALL_HINT):
    """Body of a peer fixture: ``start()`` is a generator yielding the running peer and stopping
    it when closed. Yields the peer, or fails (CI) / skips (elsewhere) when it cannot start."""
    running = start()
    try:
        peer = next(running)
    except (PeerUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable(f"{what} unavailable: {exc}", install_hint)
    try:
        yield peer
    finally:
        running.close()


def unavailable(reason: str, install_hint: str = INSTALL_HINT) -> None:
    """A peer that cannot start: the test fails under CI=true and is skipped elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true, so this is a failure)", pytrace=False)
    pytest.skip(f"{reason}; {install_hint}")


def npm_package(folder: Path, version: str, needed: str) -> Path:
    """An npm package scripts/install-peers.sh installed as data (its folder under node_modules),
    at the pinned version and holding ``needed``; else ``unavailable``."""
    import json

    problem = None
    if not (folder / needed).is_file():
        problem = f"{folder.name} is not installed at {folder} (no {needed})"
    else:
        installed = json.loads((folder / "package.json").read_text()).get("version")
        if installed != version:
            problem = f"{folder.name} {installed} is installed, not the pinned {version}"
    if problem:
        unavailable(problem)
    return folder


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, a wait, then SIGKILL to whatever is left in its process group (a launcher such
    as npm's .bin shim may leave its child behind); it must have been started in a session of
    its own."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
