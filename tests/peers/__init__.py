"""Real peer servers for tests (Unleash, Prometheus, Azurite), started by fixtures on loopback.

What every peer fixture shares: free ports, and the rule for a peer that cannot start — the
test fails under CI (CI=true) and is skipped elsewhere, saying why and how to install it.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

INSTALL_HINT = "run `bash scripts/install-peers.sh` to install it"
# Peers are on loopback: a proxy from the environment must never be asked for them.
NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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


def log_tail(path: str | Path, lines: int = 40) -> str:
    """The last lines of a peer's log, for the reason it could not start."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def version_line(binary: str) -> str:
    """The first line ``binary --version`` prints (on stdout or stderr, as Go programs choose)."""
    found = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=10)
    return (found.stdout or found.stderr).split("\n")[0]


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder for a peer's files, removed with them when the block ends."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def served(command: Sequence[str], log_path: Path, ready_url: str, what: str,
           start_timeout: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run a server binary (its output in ``log_path``, in a session of its own) until the block
    ends; the block starts once ``ready_url`` answers 200. PeerUnavailable, with the log's tail,
    when it exits first or is not ready within ``start_timeout`` seconds."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise PeerUnavailable(f"{what} exited with {proc.returncode}:\n{log_tail(log_path)}")
            try:
                with NO_PROXY_OPENER.open(ready_url, timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"{what} not answering {ready_url} within {start_timeout:.0f} s:\n"
                                      f"{log_tail(log_path)}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)


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
