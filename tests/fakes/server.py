"""A scriptable fake backend: a real HTTP server on 127.0.0.1, run in a thread.

Subclasses enforce one vendor's contract in ``answer(request)``. Tests can script what the
next requests get before the contract is even looked at:
``fake.script(Scripted(429, {"Retry-After": "7"}), RESET, Scripted(slow=2.0))``.
Every request that arrived is kept in ``fake.received`` (method, path, query, headers, body).
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Scripted:
    """Answer the next request with this status (or after ``slow`` seconds, normally)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    slow: float = 0.0


RESET = "reset"  # close the connection without answering


class FakeReceiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._script: list[Scripted | str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, *steps: Scripted | str) -> None:
        with self._lock:
            self._script.extend(steps)

    def answer(self, request: Received) -> Answer:
        """The vendor contract; subclasses override."""
        return Answer(200)

    def _next_step(self) -> Scripted | str | None:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Received(
                    self.command, parts.path, parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()}, body,
                )
                with fake._lock:
                    fake.received.append(request)
                step = fake._next_step()
                if step == RESET:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if isinstance(step, Scripted) and step.slow:
                    time.sleep(step.slow)
                if isinstance(step, Scripted) and step.status is not None:
                    answer = Answer(step.status, step.headers, step.body)
                else:
                    answer = fake.answer(request)
                try:
                    self.send_response(answer.status)
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout test): nothing to tell

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def refused_port() -> int:
    """A port on 127.0.0.1 nothing listens on: bound, noted and closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
