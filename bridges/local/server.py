"""``python -m bridges serve``: host the indexed FunctionApp on this machine.

HTTP functions answer at ``http://HOST:PORT/<routePrefix>/<route>`` with their declared
methods and route parameters; timer functions fire on their schedules; queue functions are fed
from their queues (SQLite in ``.bridge/`` or Azure Storage when ``AzureWebJobsStorage`` is
set) with the host's peek-lock, retry and poison rules, in a second process of their own (as the
Flex Consumption plan scales non-HTTP functions on their own instances). Like Core Tools, keys are not demanded
unless ``--require-keys`` is given. Each invocation is logged; Ctrl-C (or SIGTERM) stops the
server, the timers and the queue pollers cleanly.

The transport is kept to what the Functions host would let through, so a client cannot take
the runner down: chunked bodies are read strictly (RFC 9112 section 7.1) and never past
``HOST_MAX_BODY_BYTES``; every request must arrive whole within ``READ_TIMEOUT`` seconds of its
first line, and an idle keep-alive connection is closed after as long, so a slow or silent
client frees its thread; at most ``MAX_CONNECTIONS`` connections are served at once.

Beyond that bound the runner stops accepting: new connections wait in the listen backlog, as
at a thread-per-connection server's worker limit (Apache's MaxRequestWorkers), and are served
as soon as a slot frees, within the read timeout if the holders are idle. Not a quick 503: it
would be written before the request is read, and closing a socket with unread input resets
it, which can lose the answer. (The host's own 429 beyond ``maxOutstandingRequests`` throttles
requests already read; this bound is on connections, before anything is read.)

``BRIDGE_SERVE_READ_TIMEOUT`` (seconds) and ``BRIDGE_SERVE_MAX_CONNECTIONS``, in the environment
or ``local.settings.json``, change the two limits; they are the runner's, not app settings.
"""
from __future__ import annotations

import asyncio
import heapq
import inspect
import io
import json
import logging
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.queue import QueueMessage
from azure.functions.timer import TimerRequest

from bridges.local.indexing import IndexedFunction, index, load_app
from bridges.local.routes import RouteTemplate
from bridges.queues import Message, SqliteQueue, StaleReceipt, open_queue, poison_name
from bridges.scheduled.schedules import Schedule, ScheduleError, expand
from bridges.settings import SETTINGS, SettingsError, local_values

log = logging.getLogger("bridges.local")
HOST_MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's own request size limit
READ_TIMEOUT = 30.0  # seconds for a whole request (headers and body), and for an idle keep-alive
MAX_CONNECTIONS = 100  # connections served at once: the host's maxConcurrentRequests on Consumption
MAX_LINE = 8192  # bytes in a chunk-size or trailer line, as for a header line
MAX_TRAILER_LINES = 100  # as http.client's limit on header lines
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e]*)?\r\n")  # size [; ext] CRLF
KEY_FILE = "function-key"  # in BRIDGE_STATE_DIR
EXAMPLE_METRIC = '{"name":"test_metric","gauge":{"value":123},"tags":{"host":"laptop"}}'
MESSAGE_TTL = timedelta(days=7)  # Azure Storage's default time-to-live for a queue message


def app_settings() -> dict[str, str]:
    """The app settings in force: the environment (with local.settings.json's ``Values``)."""
    return {name: value for name, value in os.environ.items() if value.strip()}


def state_dir(project_dir: Path) -> Path:
    """BRIDGE_STATE_DIR (its default when unset): the SQLite queues and the function key."""
    default = next(setting.default for setting in SETTINGS if setting.name == "BRIDGE_STATE_DIR")
    return project_dir / (app_settings().get("BRIDGE_STATE_DIR") or default)


def unhostable(function: IndexedFunction, settings: dict[str, str]) -> str | None:
    """Why the host would not run this function, or None. A binding that names an unset app
    setting (``%CHECKS_SCHEDULE%``) or holds an invalid schedule disables that function on the
    host, with no fallback to the code's defaults; the other functions still run."""
    try:
        if function.trigger_type == "timerTrigger":
            Schedule(expand(function.trigger["schedule"], settings))
        elif function.trigger_type == "queueTrigger":
            expand(function.trigger["queueName"], settings)
    except ScheduleError as exc:
        binding = function.trigger.get("schedule") or function.trigger.get("queueName", "")
        what = "queue name" if function.trigger_type == "queueTrigger" else "schedule"
        reason = str(exc).replace("the schedule", f"the {what}", 1)
        return reason if "is not set" in reason else f"{binding}: {reason}"
    return None


def disabled(function_name: str) -> bool:
    """``AzureWebJobs.<function>.Disabled`` set to true (or 1), as the host reads it: the function
    is not run (for a trigger paused during an incident, or a test)."""
    value = os.environ.get(f"AzureWebJobs.{function_name}.Disabled", "").strip().lower()
    return value in ("true", "1")


def _invoke(function: IndexedFunction, argument: object) -> object:
    arg_name = function.trigger["name"]
    result = function.user_function(**{arg_name: argument})
    if inspect.isawaitable(result):
        result = asyncio.run(result)  # type: ignore[arg-type]  # an async def's result: a coroutine
    return result


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
                response = _invoke(function, request)
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


def _positive(name: str, default, kind):
    """A transport limit from the environment (after local.settings.json), else its default."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not (value > 0 and math.isfinite(value)):
        raise SettingsError(f"{name}: expected a positive number, got {text!r}")
    return value


class TimerHost:
    """Fires timer-triggered functions on their schedules until stopped (the functions given are
    hostable: ``unhostable`` left out those with an unset or invalid schedule)."""

    def __init__(self, functions: list[IndexedFunction], settings: dict[str, str], clock=lambda: datetime.now(UTC)):
        self.clock = clock
        self.timers = []
        for function in functions:
            if function.trigger_type == "timerTrigger":
                schedule = Schedule(expand(function.trigger["schedule"], settings))
                self.timers.append((function, schedule))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timers", daemon=True)

    def start(self) -> None:
        if self.timers:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        now = self.clock()
        queue: list[tuple[datetime, int]] = []
        for position, (function, schedule) in enumerate(self.timers):
            if function.trigger.get("runOnStartup"):
                heapq.heappush(queue, (now, position))
            else:
                heapq.heappush(queue, (schedule.next_after(now), position))
        while queue and not self._stop.is_set():
            due, position = queue[0]
            wait = (due - self.clock()).total_seconds()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))
                continue
            heapq.heappop(queue)
            function, schedule = self.timers[position]
            following = schedule.next_after(max(due, self.clock()))
            self._fire(function, schedule, due, following)
            heapq.heappush(queue, (following, position))

    def _fire(self, function: IndexedFunction, schedule: Schedule, due: datetime, following: datetime) -> None:
        late = (self.clock() - due).total_seconds()
        request = TimerRequest(
            past_due=late > 1.0,
            schedule_status={"Last": due.isoformat(), "Next": following.isoformat()},
            schedule={"AdjustForDST": False},
        )
        started = time.perf_counter()
        try:
            _invoke(function, request)
            outcome = "succeeded"
        except Exception:
            log.exception("timer function %s failed", function.name)
            outcome = "failed"
        log.info("timer %s (%s) %s (%.1f ms)", function.name, schedule.expression, outcome, (time.perf_counter() - started) * 1000)


_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)")


def timespan(text: str, key: str) -> float:
    """Seconds in a host.json TimeSpan (``[d.]hh:mm:ss[.fff]``); a bad one stops start-up."""
    match = _TIMESPAN.fullmatch(str(text).strip())
    if not match:
        raise SettingsError(f"host.json {key}: {text!r} is not a TimeSpan like '00:00:02'")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def host_json(project_dir: Path) -> dict:
    try:
        return json.loads((project_dir / "host.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def route_prefix(project_dir: Path) -> str:
    """extensions.http.routePrefix from host.json ('api' when absent)."""
    return host_json(project_dir).get("extensions", {}).get("http", {}).get("routePrefix", "api")


@dataclass(frozen=True)
class QueueOptions:
    """host.json ``extensions.queues`` and ``functionTimeout``, with the host's defaults."""

    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0  # the delay before a failed message is tried again
    batch_size: int = 16
    max_dequeue_count: int = 5
    function_timeout: float = 1800.0  # how long a received message stays hidden while it runs (Flex: 30 min)

    @classmethod
    def from_host_json(cls, host: dict) -> QueueOptions:
        queues = host.get("extensions", {}).get("queues", {})
        defaults = cls()
        return cls(
            max_polling_interval=max(0.1, timespan(queues.get("maxPollingInterval", "00:01:00"), "extensions.queues.maxPollingInterval")),
            visibility_timeout=timespan(queues.get("visibilityTimeout", "00:00:00"), "extensions.queues.visibilityTimeout"),
            batch_size=min(32, max(1, int(queues.get("batchSize", defaults.batch_size)))),
            max_dequeue_count=max(1, int(queues.get("maxDequeueCount", defaults.max_dequeue_count))),
            function_timeout=timespan(host.get("functionTimeout", "00:30:00"), "functionTimeout"),
        )


class QueueListener:
    """Feeds one queue-triggered function from its queue, as the host's queue listener does.

    Peek-lock: a received message stays hidden for ``function_timeout`` while it runs; success
    deletes it, failure makes it visible again after ``visibility_timeout``, and the try that
    reaches ``max_dequeue_count`` moves it to ``<queue>-poison``. A message in flight when the
    runner stops is abandoned, never deleted: it reappears once its lease runs out.
    """

    FIRST_BACKOFF = 0.1  # seconds; doubled while the queue stays empty, up to maxPollingInterval

    def __init__(self, function: IndexedFunction, queue, poison, options: QueueOptions, stop: threading.Event):
        self.function = function
        self.queue = queue
        self.poison = poison  # <queue>-poison on the same backend
        self.options = options
        self._stop = stop
        self.thread = threading.Thread(target=self._run, name=f"queue-{queue.name}", daemon=True)

    @property
    def backend(self) -> str:
        return "SQLite" if isinstance(self.queue, SqliteQueue) else "Azure Storage"

    def _run(self) -> None:
        delay = self.FIRST_BACKOFF
        while not self._stop.is_set():
            try:
                messages = self.queue.receive(self.options.batch_size, self.options.function_timeout)
            except Exception as exc:  # e.g. Azurite not running: keep trying, as the host does
                # The type and status only: a storage SDK message can carry the account URL.
                log.warning("queue %s: receive failed (%s %s)", self.queue.name, type(exc).__name__,
                            getattr(exc, "status_code", "") or "")
                messages = []
            if messages:
                delay = self.FIRST_BACKOFF
                self._run_batch(messages)
                continue  # more may be waiting: poll again at once
            self._stop.wait(delay)
            delay = min(delay * 2, self.options.max_polling_interval)

    def _run_batch(self, messages: list[Message]) -> None:
        """Run the batch concurrently, as the host does, and wait for all of it."""
        workers = [threading.Thread(target=self._process, args=(m,), daemon=True) for m in messages]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _process(self, message: Message) -> None:
        started = time.perf_counter()
        try:
            _invoke(self.function, _queue_message(message))
        except Exception:
            log.exception("queue function %s failed on message %s", self.function.name, message.id)
            outcome = self._settle_failure(message)
        else:
            outcome = self._settle(self.queue.delete, message, "succeeded")
        log.info(
            "queue %s (%s) message %s try %d %s (%.1f ms)",
            self.function.name, self.queue.name, message.id, message.dequeue_count, outcome,
            (time.perf_counter() - started) * 1000,
        )

    def _settle_failure(self, message: Message) -> str:
        if message.dequeue_count < self.options.max_dequeue_count:
            return self._settle(self.queue.release, message, "failed; will retry", self.options.visibility_timeout)
        self.poison.send(message.text)  # sent before the delete: a crash in between duplicates, never loses
        return self._settle(self.queue.delete, message, f"failed; moved to {self.poison.name}")

    def _settle(self, action, message: Message, outcome: str, *args) -> str:
        """Delete or release; a stale receipt means someone else owns the message now."""
        try:
            action(message, *args)
        except StaleReceipt as exc:
            log.warning("queue %s: %s", self.queue.name, exc)
            return outcome + " (receipt stale: the message is no longer ours)"
        return outcome


def _queue_message(message: Message) -> QueueMessage:
    """The message as the Python worker hands it over: bytes body, times, dequeue count."""
    inserted = datetime.fromtimestamp(message.inserted_at, UTC)
    visible = message.next_visible_at
    return QueueMessage(
        id=message.id,
        body=message.text.encode("utf-8"),
        dequeue_count=message.dequeue_count,
        expiration_time=inserted + MESSAGE_TTL,
        insertion_time=inserted,
        time_next_visible=datetime.fromtimestamp(visible, UTC) if visible is not None else None,
        pop_receipt=message.pop_receipt,
    )


class QueueHost:
    """One listener per queue-triggered function; queue names expand ``%SETTING%`` like schedules
    (the functions given are hostable: ``unhostable`` left out those naming an unset setting)."""

    def __init__(self, functions: list[IndexedFunction], settings: dict[str, str], project_dir: Path, options: QueueOptions):
        self._stop = threading.Event()
        self.listeners = []
        for function in functions:
            if function.trigger_type != "queueTrigger":
                continue
            name = expand(function.trigger["queueName"], settings)
            state = state_dir(project_dir)
            queue = open_queue(name, os.environ, state)
            poison = open_queue(poison_name(name), os.environ, state)
            self.listeners.append(QueueListener(function, queue, poison, options, self._stop))

    def start(self) -> None:
        for listener in self.listeners:
            listener.thread.start()

    STOP_SECONDS = 10

    def stop(self) -> None:
        """Let in-flight messages finish for a while; the rest reappear after their lease."""
        self._stop.set()
        deadline = time.monotonic() + self.STOP_SECONDS
        for listener in self.listeners:
            if listener.thread.is_alive():
                listener.thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if listener.thread.is_alive():
                log.warning("queue %s: abandoning the message in flight; it reappears after its lease", listener.queue.name)


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


QUEUE_PROCESS = "BRIDGE_SERVE_QUEUES_FOR"  # in the queue functions' process: the runner's pid
QUEUE_PROCESS_NICENESS = 10


def serve(host: str, port: int, app_module: str, require_keys: bool, project_dir: Path | None = None,
          read_timeout: float | None = None, max_connections: int | None = None) -> int:
    project_dir = (project_dir or Path.cwd()).resolve()
    for name, value in local_values(project_dir / "local.settings.json").items():
        os.environ.setdefault(name, value)  # as Core Tools does: the environment wins
    read_timeout = read_timeout or _positive("BRIDGE_SERVE_READ_TIMEOUT", READ_TIMEOUT, float)
    max_connections = max_connections or _positive("BRIDGE_SERVE_MAX_CONNECTIONS", MAX_CONNECTIONS, int)
    indexed = index(load_app(app_module, project_dir))
    settings = app_settings()
    not_run = {f.name: f"disabled (AzureWebJobs.{f.name}.Disabled)" for f in indexed if disabled(f.name)}
    not_run.update({f.name: f"not hosted: {why}" for f in indexed if f.name not in not_run
                    for why in [unhostable(f, settings)] if why})
    functions = [f for f in indexed if f.name not in not_run]
    queues = QueueHost(functions, settings, project_dir, QueueOptions.from_host_json(host_json(project_dir)))
    if os.environ.get(QUEUE_PROCESS):
        return _serve_queues(queues, int(os.environ[QUEUE_PROCESS]))
    key = local_function_key(project_dir) if require_keys else None
    http_host = HttpHost(functions, route_prefix(project_dir), key)
    timers = TimerHost(functions, settings)
    server = make_server((host, port), http_host, read_timeout, max_connections)
    base = f"http://{host}:{server.server_address[1]}"
    for name, why in not_run.items():
        print(f"  {name}: {why}", flush=True)

    def stop_on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    queue_process = None
    try:
        queue_process = _start_queue_process(app_module, project_dir) if queues.listeners else None
        timers.start()
        _print_banner(functions, http_host, timers, queues, base, require_keys, project_dir)  # ends "Listening on"
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        if queue_process is not None:
            queue_process.send_signal(signal.SIGINT)  # both wind down at once
        timers.stop()
        if queue_process is not None:
            _stop_queue_process(queue_process)
        server.server_close()
        print("Stopped.", flush=True)
    return 0


def _start_queue_process(app_module: str, project_dir: Path) -> subprocess.Popen:
    """Run the queue-triggered functions in a process of their own, as the Flex Consumption plan
    runs every non-HTTP function on its own instances (per-function scaling): a delivery
    function encoding a batch then never holds up an HTTP answer, here as there. The process
    dies with the runner (SIGKILL included) and writes to the same output."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    return subprocess.Popen(
        [sys.executable, "-m", "bridges", "serve", "--app", app_module, "--log-level", level],
        cwd=project_dir, env={**os.environ, QUEUE_PROCESS: str(os.getpid()), "PYTHONPATH": path},
        start_new_session=True,  # Ctrl-C reaches the runner, which stops this process itself
    )


def _stop_queue_process(process: subprocess.Popen) -> None:
    """Let in-flight messages finish as QueueHost.stop does (it was sent SIGINT); then make
    sure it is gone."""
    try:
        process.wait(timeout=QueueHost.STOP_SECONDS + 5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _serve_queues(queues: QueueHost, runner_pid: int) -> int:
    """The queue functions' process: feed them until SIGINT or SIGTERM, or until the runner is
    gone (then at once, as a killed instance does: messages in flight reappear after their lease)."""
    _die_with(runner_pid)
    try:  # background work: on one machine the HTTP answers come first (Flex gives it other instances)
        os.nice(QUEUE_PROCESS_NICENESS)
    except (OSError, AttributeError):
        pass

    def stop_on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    queues.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        queues.stop()
    return 0


def _die_with(runner_pid: int) -> None:
    """Exit the moment the runner exits: PR_SET_PDEATHSIG where Linux has it, else a watcher."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == runner_pid:
            time.sleep(0.2)
        os._exit(1)

    if os.getppid() != runner_pid:  # the runner died before the signal was asked for
        os._exit(1)
    threading.Thread(target=watch, name="runner-watch", daemon=True).start()


def _print_banner(functions, http_host: HttpHost, timers: TimerHost, queues: QueueHost, base: str, require_keys: bool, project_dir: Path) -> None:
    print("Functions:")
    for function in functions:
        if function.trigger_type == "httpTrigger":
            methods = ",".join(function.methods) or "ANY"
            print(f"  {function.name}: [{methods}] {base}{http_host.url_path(function)}  (auth: {function.auth_level.lower()})")
        elif function.trigger_type == "timerTrigger":
            schedules = {f.name: s.expression for f, s in timers.timers}
            print(f"  {function.name}: timer {schedules[function.name]}")
        elif function.trigger_type == "queueTrigger":
            listener = next(q for q in queues.listeners if q.function is function)
            print(f"  {function.name}: queue {listener.queue.name} ({listener.backend})")
        else:
            print(f"  {function.name}: {function.trigger_type} (not hosted by the local runner yet)")
    key_header = f' -H "x-functions-key: $(cat {key_path(project_dir)})"' if require_keys else ""
    for function in functions:
        if function.trigger_type == "httpTrigger" and function.route == "metrics":
            print("Try:")
            print(
                f"  curl -sS -X POST {base}{http_host.url_path(function)}{key_header} "
                f"-H 'Content-Type: application/json' -d '{EXAMPLE_METRIC}'"
            )
    print(f"Listening on {base} (Ctrl-C to stop)", flush=True)
