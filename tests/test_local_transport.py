"""The local runner against silent, slow and too many clients.

Each test waits, with a generous limit, for an event (the runner closing the socket, an
answer); none times how long anything took. The read timeout and the connection bound are
made tiny so the whole file runs in a few seconds.
"""
from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from runner import running_bridge, wait_until
from support import ROOT

from bridges.local.indexing import index, load_app

READ_TIMEOUT = 0.3


@pytest.fixture(scope="module")
def base():
    with running_bridge(env={"BRIDGE_SERVE_READ_TIMEOUT": str(READ_TIMEOUT)}) as (url, _):
        yield url


def connect(url: str) -> socket.socket:
    address = urlsplit(url)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def closed_by_runner(connection: socket.socket, trickle: bytes = b"", within: float = 15) -> tuple[bool, bytes]:
    """Whether the runner closed the connection within ``within`` seconds, and what it sent
    first; ``trickle`` is sent every 50 ms meanwhile, as a slow client would."""
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if select.select([connection], [], [], 0.05)[0]:
            try:
                data = connection.recv(4096)
            except ConnectionResetError:
                return True, received
            if not data:
                return True, received
            received += data
        elif trickle:
            try:
                connection.send(trickle)
            except (BrokenPipeError, ConnectionResetError):
                return True, received
    return False, received


def test_a_silent_client_is_disconnected(base):
    with connect(base) as connection:
        assert closed_by_runner(connection) == (True, b"")
    assert requests.get(f"{base}/api/health", timeout=10).status_code == 200


def test_an_idle_keep_alive_connection_is_closed(base):
    with connect(base) as connection:
        connection.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, received = closed_by_runner(connection)
    assert closed and received.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("head, trickle", [
    (b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b"["),
    (b"POST /api/metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n", b"1\r\n \r\n"),
    (b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"x"),
], ids=["body", "chunks", "headers"])
def test_a_trickling_client_is_cut_off_without_a_request(base, head, trickle):
    """A byte now and then used to reset a per-read timeout; the request has one deadline."""
    with connect(base) as connection:
        connection.sendall(head)
        assert closed_by_runner(connection, trickle) == (True, b"")


def test_bad_transport_limits_stop_start_up_with_their_name():
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "BRIDGE_SERVE_MAX_CONNECTIONS": "0"}
    done = subprocess.run([sys.executable, "-m", "bridges", "serve", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "BRIDGE_SERVE_MAX_CONNECTIONS" in done.stderr


def handler_threads(before: frozenset = frozenset()) -> int:
    """Connection threads, leaving out those that were there ``before`` (other tests' servers
    may still hold kept-alive connections)."""
    return sum("process_request_thread" in thread.name and thread not in before for thread in threading.enumerate())


def test_connections_beyond_the_bound_wait_in_the_backlog_and_hold_no_thread():
    """Six idle connections against a bound of two: never more than two threads, and a real
    request is answered once the idle ones have timed out."""
    from bridges.local.http_host import HttpHost, make_server

    host = HttpHost(index(load_app("tests.apps.sample_app", ROOT)), "api", None)
    server = make_server(("127.0.0.1", 0), host, read_timeout=READ_TIMEOUT, max_connections=2)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    counts: list[int] = []
    sampling = threading.Event()
    before = frozenset(threading.enumerate())

    def sample() -> None:
        while not sampling.is_set():
            counts.append(handler_threads(before))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    idle = [connect(url) for _ in range(6)]
    try:
        wait_until(lambda: max(counts, default=0) == 2, what="two connections served at once")
        answer = requests.get(f"{url}/api/items/7", timeout=30)
        assert answer.json() == {"id": "7", "params": {}}
        assert all(closed_by_runner(connection) == (True, b"") for connection in idle)
    finally:
        sampling.set()
        sampler.join()
        for connection in idle:
            connection.close()
        server.shutdown()
        server.server_close()
    assert max(counts) == 2
