"""The HTTP host: routes requests to the HTTP-triggered functions and serves them over HTTP/1.1.

Its own module because the transport is most of the runner. It is kept to what the Functions
host would let through, so a client cannot take the runner down: chunked bodies are read strictly
(RFC 9112 section 7.1) and never past ``HOST_MAX_BODY_BYTES``; every request must arrive whole
within ``READ_TIMEOUT`` seconds of its first line, and an idle keep-alive connection is closed
after as long, so a slow or silent client frees its thread; at most ``MAX_CONNECTIONS``
connections are served at once.

Beyond that bound the runner stops accepting: new connections wait in the listen backlog, as
at a thread-per-connection server's worker limit (Apache's MaxRequestWorkers), and are served
as soon as a slot frees, within the read timeout if the holders are idle. Not a quick 503: it
would be written before the request is read, and closing a socket with unread input resets
it, which can lose the answer. (The host's own 429 beyond ``maxOutstandingRequests`` throttles
requests already read; this bound is on connections, before anything is read.)

``BRIDGE_SERVE_READ_TIMEOUT`` (seconds) and ``BRIDGE_SERVE_MAX_CONNECTIONS``, in the environment
or ``local.settings.json``, change the two limits (``server.serve`` reads them); they are the
runner's, not app settings.
"""
from __future__ import annotations

import io
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from bridges.local.hosting import host_json, invoke, state_dir
from bridges.local.indexing import IndexedFunction
from bridges.local.routes import RouteTemplate

log = logging.getLogger("bridges.local")  # one logger for the whole runner, as the log lines name it
HOST_MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's own request size limit
READ_TIMEOUT = 30.0  # seconds for a whole request (headers and body), and for an idle keep-alive
MAX_CONNECTIONS = 100  # connections served at once: the host's maxConcurrentRequests on Consumption
MAX_LINE = 8192  # bytes in a chunk-size or trailer line, as for a header line
MAX_TRAILER_LINES = 100  # as http.client's limit on header lines
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e]*)?\r\n")  # size [; ext] CRLF
KEY_FILE = "function-key"  # in BRIDGE_STATE_DIR


@dataclass
class Answer:
    """One HTTP answer of the runner, and the function that gave it (if any)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    function: str = ""


def _json(status: int, document: dict, function: str = "") -> Answer:
    return Answer(status, json.dumps(document).encode(), {"Content-Type": "application/json; charset=utf-8"}, function)


class HttpHost:
    """Routes requests to HTTP-triggered functions and turns their responses into HTTP."""

    def __init__(self, functions: list[IndexedFunction], route_prefix: str, function_key: str | None):
        self.route_prefix = route_prefix.strip("/")
        self.function_key = function_key
        routes = [(RouteTemplate(f.route), f) for f in functions if f.trigger_type == "httpTrigger"]
        self.routes = sorted(routes, key=lambda pair: pair[0].specificity())

    def url_path(self, function: IndexedFunction) -> str:
        return "/" + "/".join(p for p in (self.route_prefix, function.route.strip("/")) if p)

    def handle(self, method: str, target: str, headers: dict[str, str], read_body) -> Answer:
        parts = urlsplit(target)
        path = parts.path
        prefix = "/" + self.route_prefix if self.route_prefix else ""
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            return _json(404, {"error": f"no function at {path}"})
        allowed: set[str] = set()
        for template, function in self.routes:
            route_params = template.match(path[len(prefix):])
            if route_params is None:
                continue
            if function.methods and method not in function.methods:
                allowed.update(function.methods)
                continue
            if not self._authorized(function, parts.query, headers):
                return _json(401, {"error": "this function needs a key: ?code=<key> or header x-functions-key"}, function.name)
            body = read_body()
            if isinstance(body, Answer):  # the body could not be read
                body.function = function.name
                return body
            request = func.HttpRequest(
                method, f"http://{headers.get('host', 'localhost')}{target}",
                headers=headers, params=dict(parse_qsl(parts.query)), route_params=route_params, body=body,
            )
            try:
                response = invoke(function, request)
            except Exception:
                log.exception("function %s failed", function.name)
                return _json(500, {"error": f"function {function.name} failed; see the runner's log"}, function.name)
            return _from_response(response, function.name)
        if allowed:
            methods = ", ".join(sorted(allowed))
            answer = _json(405, {"error": f"{method} is not allowed here; use {methods}"})
            answer.headers["Allow"] = methods
            return answer
        return _json(404, {"error": f"no function at {path}"})

    def _authorized(self, function: IndexedFunction, query: str, headers: dict[str, str]) -> bool:
        if self.function_key is None or function.auth_level == "ANONYMOUS":
            return True
        given = dict(parse_qsl(query)).get("code") or headers.get("x-functions-key", "")
        return secrets.compare_digest(given.encode(), self.function_key.encode())


def _from_response(response: object, function: str) -> Answer:
    if response is None:
        return Answer(204, function=function)
    if not isinstance(response, func.HttpResponse):
        return _json(500, {"error": f"the function returned {type(response).__name__}, not an HttpResponse"}, function)
    headers = dict(response.headers)
    if response.mimetype and not any(k.lower() == "content-type" for k in headers):
        # As the worker's converter (azure.functions.http): a charset for text/* only.
        text = response.mimetype.startswith("text/") and response.charset
        headers["Content-Type"] = response.mimetype + (f"; charset={response.charset}" if text else "")
    return Answer(response.status_code, response.get_body() or b"", headers, function)


class _ClientGone(Exception):
    """The client closed the connection before its request was whole: there is no request."""


class _Malformed(Exception):
    """Chunked framing that breaks RFC 9112 section 7.1."""


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, all due by one deadline.

    A timeout per ``recv`` alone would let a client that sends a byte now and then hold its
    thread forever; here each read may only wait for what is left of the deadline. Between
    reads the socket keeps the whole timeout, which then bounds the writes.
    """

    def __init__(self, connection, seconds: float):
        self.connection = connection
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        self.deadline = time.monotonic() + self.seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"nothing complete in {self.seconds} s")
        self.connection.settimeout(left)
        try:
            return self.connection.recv_into(buffer)
        finally:
            self.connection.settimeout(self.seconds)


def _handler_class(host: HttpHost, read_timeout: float = READ_TIMEOUT):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY the body waits for the
        # client's delayed ACK (~40 ms an answer). The host's Kestrel sets it too.
        disable_nagle_algorithm = True
        server_version = "bridges-local"
        timeout = read_timeout  # also bounds each write: a client that never reads cannot hold us

        def setup(self) -> None:
            super().setup()
            self.rfile.close()
            self._reader = _DeadlineReader(self.connection, read_timeout)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            self._reader.restart()  # the wait for the next request on a kept-alive connection
            try:
                super().handle_one_request()
            except (_ClientGone, ConnectionError):
                self.close_connection = True
                log.info("%s: the client left before its request was whole", self.client_address[0])

        def parse_request(self) -> bool:
            self._reader.restart()  # the request line is in: its headers and body get the whole time
            return super().parse_request()

        def _dispatch(self) -> None:
            started = time.perf_counter()
            self._body_read = False
            answer = self._framing_error()
            if answer is None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = host.handle(self.command, self.path, headers, self._read_body)
            if not self._body_read and self._has_body():
                self.close_connection = True  # an unread body must not be taken for the next request
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.body)))
            if self.close_connection:
                self.send_header("Connection", "close")  # so the client does not reuse it
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)
            elapsed = (time.perf_counter() - started) * 1000
            log.info(
                "%s %s -> %s %d (%.1f ms)",
                self.command, self.path.split("?")[0], answer.function or "-", answer.status, elapsed,
            )

        def _has_body(self) -> bool:
            return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() != "0"

        def _framing_error(self) -> Answer | None:
            """The answer to a request whose body length is not certain (RFC 9112 section 6)."""
            codings = self.headers.get_all("Transfer-Encoding") or []
            lengths = self.headers.get_all("Content-Length") or []
            if codings:
                names = [name.strip().lower() for name in ",".join(codings).split(",")]
                if lengths:  # a classic request-smuggling shape: refuse it, then close
                    return _json(400, {"error": "Content-Length and Transfer-Encoding must not come together"})
                if self.request_version == "HTTP/1.0":
                    return _json(400, {"error": "Transfer-Encoding is not HTTP/1.0"})
                if names[-1] != "chunked":
                    return _json(400, {"error": "chunked must be the final transfer coding"})
                if names != ["chunked"]:
                    return _json(501, {"error": f"transfer codings {codings!r} are not understood; send chunked alone"})
            elif lengths and (len({n.strip() for n in lengths}) > 1 or not re.fullmatch(r"[0-9]+", lengths[0].strip())):
                return _json(400, {"error": f"Content-Length {', '.join(lengths)!r} is not a number of bytes"})
            return None

        def _read_body(self) -> bytes | Answer:
            """The request body, or the answer to give when it is too large or malformed."""
            try:
                body = self._read_chunked() if "Transfer-Encoding" in self.headers else self._read_sized()
            except _Malformed as exc:
                return _json(400, {"error": f"malformed chunked transfer encoding: {exc}"})
            if body is None:
                return _json(413, {"error": f"the body is over the host limit of {HOST_MAX_BODY_BYTES} bytes"})
            self._body_read = True
            return body

        def _read_sized(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            return self._exactly(length) if length <= HOST_MAX_BODY_BYTES else None

        def _read_chunked(self) -> bytes | None:
            """De-chunk the body; None, before reading it, for a chunk that would pass the host's limit."""
            body = bytearray()  # not a list of chunks: a million tiny ones would cost far more than their bytes
            while True:
                match = _CHUNK_SIZE.fullmatch(self._line())
                if not match:
                    raise _Malformed("a chunk size is 1 to 16 hex digits, maybe a ;extension, then CRLF")
                size = int(match[1], 16)
                if size == 0:
                    break
                if len(body) + size > HOST_MAX_BODY_BYTES:
                    return None
                body += self._exactly(size)
                if self._exactly(2) != b"\r\n":
                    raise _Malformed("chunk data must be followed by CRLF")
            for _ in range(MAX_TRAILER_LINES):
                line = self._line()
                if line == b"\r\n":
                    return bytes(body)
                if b":" not in line:
                    raise _Malformed("a trailer line is a field, name: value")
            raise _Malformed(f"more than {MAX_TRAILER_LINES} trailer lines")

        def _line(self) -> bytes:
            """One line of chunked framing, read with a limit so a line without an end cannot grow memory."""
            line = self.rfile.readline(MAX_LINE + 1)
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE:
                    raise _Malformed(f"a line is over {MAX_LINE} bytes")
                raise _ClientGone
            if not line.endswith(b"\r\n"):
                raise _Malformed("lines end with CRLF")
            return line

        def _exactly(self, size: int) -> bytes:
            data = self.rfile.read(size)
            if len(data) < size:
                raise _ClientGone
            return data

        def __getattr__(self, name: str):
            """Every method goes to the routes, as at the host: one a function does not take is
            405 with Allow (http.server alone would answer 501 in HTML for TRACE, QUERY...)."""
            if name.startswith("do_"):
                return self._dispatch
            raise AttributeError(name)

        def log_message(self, format: str, *args: object) -> None:  # the dispatch line says it all
            pass

        def log_error(self, format: str, *args: object) -> None:  # timeouts and unparsable requests
            log.info("%s: " + format, self.client_address[0], *args)  # noqa: G003 - the handler's own format

    return Handler


class LocalServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them at once.

    At the bound the accept loop waits for a slot, so new connections queue in the listen
    backlog (see the module docstring for why not a 503).
    """

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: room for those waiting for a slot

    def __init__(self, address: tuple[str, int], handler, max_connections: int = MAX_CONNECTIONS):
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        while not self._slots.acquire(timeout=0.5):  # a timed wait sees Ctrl-C (on Windows too) and shutdown()
            if self._closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()


def make_server(address: tuple[str, int], http_host: HttpHost, read_timeout: float = READ_TIMEOUT,
                max_connections: int = MAX_CONNECTIONS) -> LocalServer:
    return LocalServer(address, _handler_class(http_host, read_timeout), max_connections)


def route_prefix(project_dir: Path) -> str:
    """extensions.http.routePrefix from host.json ('api' when absent)."""
    return host_json(project_dir).get("extensions", {}).get("http", {}).get("routePrefix", "api")


def key_path(project_dir: Path) -> Path:
    return state_dir(project_dir) / KEY_FILE


def local_function_key(project_dir: Path) -> str:
    """A key kept in BRIDGE_STATE_DIR/function-key (created on first use), never printed."""
    path = key_path(project_dir)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key
