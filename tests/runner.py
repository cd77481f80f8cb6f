"""Start ``python -m bridges serve`` as a subprocess on a free port and stop it with Ctrl-C."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from support import ROOT

from bridges.settings import binding_defaults


@contextmanager
def running_bridge(*args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd: Path = ROOT):
    """Yield (base_url, output_lines); on exit send SIGINT and check the runner stopped cleanly.

    ``cwd`` is the project folder (host.json, .bridge/); the repository stays importable. Run
    from the checkout itself, the runner keeps its state in a temporary folder instead."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "AzureWebJobsStorage"))}
    environment.update(binding_defaults(), PYTHONPATH=str(ROOT))  # the host runs no function without them
    if Path(cwd) == ROOT:  # queues and keys stay out of the checkout
        state = tempfile.mkdtemp(prefix="bridge-state-")
        environment.update({"BRIDGE_STATE_DIR": state, "BRIDGE_OUTBOX_DIR": os.path.join(state, "outbox")})
    environment.update(env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "bridges", "serve", "--port", "0", *args],
        cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    ready: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Listening on "):
                ready.put(line.split()[2])
        ready.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        base = ready.get(timeout=timeout)
        if base is None:
            raise RuntimeError("the runner did not start:\n" + "\n".join(lines))
        yield base, lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        reader.join(timeout=5)
    assert process.returncode == 0, "\n".join(lines)
    assert "Stopped." in lines


def wait_for_line(lines: list[str], text: str, timeout: float = 10) -> str:
    """The first output line containing ``text``, waiting for the runner to write it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(lines))


def raw_request(base: str, request: bytes, half_close: bool = False) -> str:
    """Send raw bytes to the runner and read its answer until it closes the connection;
    ``half_close`` shuts our side for writing after the bytes, as a client that left."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base)
    received = b""
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(request)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        while chunk := connection.recv(4096):
            received += chunk
    return received.decode()


def wait_until(condition, timeout: float = 20, what: str = "the condition"):
    """The first true value of ``condition()``, polled until ``timeout`` (never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not in {timeout} s: {what}")
