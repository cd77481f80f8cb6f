"""``python -m bridges serve``: host the indexed FunctionApp on this machine.

HTTP functions answer at ``http://HOST:PORT/<routePrefix>/<route>`` with their declared
methods and route parameters; timer functions fire on their schedules. Like Core Tools, keys
are not demanded unless ``--require-keys`` is given. Each invocation is logged; Ctrl-C (or
SIGTERM) stops the server and the timers cleanly.
"""
from __future__ import annotations

import asyncio
import heapq
import inspect
import json
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

from bridges.local.indexing import IndexedFunction, index, load_app
from bridges.local.routes import RouteTemplate
from bridges.local.schedule import Schedule, expand
from bridges.settings import local_values

log = logging.getLogger("bridges.local")
HOST_MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's own request size limit
KEY_FILE = Path(".bridge") / "function-key"
EXAMPLE_METRIC = '{"name":"test_metric","gauge":{"value":123},"tags":{"host":"laptop"}}'


def _invoke(function: IndexedFunction, argument: object) -> object:
    arg_name = function.trigger["name"]
    result = function.user_function(**{arg_name: argument})
    if inspect.isawaitable(result):
        result = asyncio.run(result)
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
        charset = f"; charset={response.charset}" if response.charset else ""
        headers["Content-Type"] = response.mimetype + charset
    return Answer(response.status_code, response.get_body() or b"", headers, function)


def _handler_class(host: HttpHost):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "bridges-local"

        def _dispatch(self) -> None:
            started = time.perf_counter()
            self._body_read = False
            length = self.headers.get("Content-Length")
            if length is not None and not length.strip().isdigit():
                answer = _json(400, {"error": f"Content-Length {length!r} is not a number of bytes"})
            else:
                headers = {k.lower(): v for k, v in self.headers.items()}
                answer = host.handle(self.command, self.path, headers, self._read_body)
            if not self._body_read and (length or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # an unread body must not be taken for the next request
            self.send_response(answer.status)
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer.body)
            elapsed = (time.perf_counter() - started) * 1000
            log.info(
                "%s %s -> %s %d (%.1f ms)",
                self.command, self.path.split("?")[0], answer.function or "-", answer.status, elapsed,
            )

        def _read_body(self) -> bytes | Answer:
            """The request body, or the answer to give when it is too large or malformed."""
            try:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    body = self._read_chunked()
                else:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length <= HOST_MAX_BODY_BYTES else None
            except ValueError:
                return _json(400, {"error": "malformed chunked transfer encoding"})
            if body is None:
                return _json(413, {"error": f"the body is over the host limit of {HOST_MAX_BODY_BYTES} bytes"})
            self._body_read = True
            return body

        def _read_chunked(self) -> bytes | None:
            """De-chunk the body; None as soon as it grows past the host's limit."""
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > HOST_MAX_BODY_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

        def log_message(self, format: str, *args: object) -> None:  # the dispatch line says it all
            pass

    return Handler


class TimerHost:
    """Fires timer-triggered functions on their schedules until stopped."""

    def __init__(self, functions: list[IndexedFunction], settings: dict[str, str], clock=lambda: datetime.now(timezone.utc)):
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
        queue = []
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


def route_prefix(project_dir: Path) -> str:
    """extensions.http.routePrefix from host.json ('api' when absent)."""
    try:
        host = json.loads((project_dir / "host.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "api"
    return host.get("extensions", {}).get("http", {}).get("routePrefix", "api")


def local_function_key(project_dir: Path) -> str:
    """A key kept in .bridge/function-key (created on first use), never printed."""
    path = project_dir / KEY_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


def serve(host: str, port: int, app_module: str, require_keys: bool, project_dir: Path | None = None) -> int:
    project_dir = (project_dir or Path.cwd()).resolve()
    for name, value in local_values(project_dir / "local.settings.json").items():
        os.environ.setdefault(name, value)  # as Core Tools does: the environment wins
    functions = index(load_app(app_module, project_dir))
    key = local_function_key(project_dir) if require_keys else None
    http_host = HttpHost(functions, route_prefix(project_dir), key)
    timers = TimerHost(functions, dict(os.environ))
    server = ThreadingHTTPServer((host, port), _handler_class(http_host))
    server.daemon_threads = True
    base = f"http://{host}:{server.server_address[1]}"
    _print_banner(functions, http_host, timers, base, require_keys, project_dir)

    def stop_on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    timers.start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        timers.stop()
        server.server_close()
        print("Stopped.", flush=True)
    return 0


def _print_banner(functions, http_host: HttpHost, timers: TimerHost, base: str, require_keys: bool, project_dir: Path) -> None:
    print("Functions:")
    for function in functions:
        if function.trigger_type == "httpTrigger":
            methods = ",".join(function.methods) or "ANY"
            print(f"  {function.name}: [{methods}] {base}{http_host.url_path(function)}  (auth: {function.auth_level.lower()})")
        elif function.trigger_type == "timerTrigger":
            schedules = {f.name: s.expression for f, s in timers.timers}
            print(f"  {function.name}: timer {schedules[function.name]}")
        else:
            print(f"  {function.name}: {function.trigger_type} (not hosted by the local runner yet)")
    key_header = f' -H "x-functions-key: $(cat {project_dir / KEY_FILE})"' if require_keys else ""
    for function in functions:
        if function.trigger_type == "httpTrigger" and function.route == "metrics":
            print("Try:")
            print(
                f"  curl -sS -X POST {base}{http_host.url_path(function)}{key_header} "
                f"-H 'Content-Type: application/json' -d '{EXAMPLE_METRIC}'"
            )
    print(f"Listening on {base} (Ctrl-C to stop)", flush=True)
