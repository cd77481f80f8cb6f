"""The real Azure Functions Python worker (4.34.0) as a test peer, driven by a stand-in host.

Fixture (session-scoped): ``functions_worker`` -> FunctionsWorkerPeer. It has checked that
everything is in place and built, once, a copy of the deployed package; ``peer.start(mode,
settings)`` (a context manager) then starts one worker on that package and yields a
FunctionsHost, a gRPC server speaking ``AzureFunctionsRpc.EventStream`` as the Functions host
does, with the helpers ``metadata()``, ``load()``, ``load_all()``, ``invoke_http()``,
``invoke_queue()`` and ``invoke_timer()``.

What it uses, and where it comes from:
- the worker: ``$FUNCTIONS_WORKER_DIR``, by default ``.peers/functions-worker/worker``, which
  install-peers.sh assembles from ``../shared/peers/azure-functions-python-worker`` and the
  generated ``azure_functions_worker/protos/*_pb2*.py`` the shared copy lacks (from the PyPI
  package azure-functions-runtime-v1, same protocol);
- the worker's own dependencies (azure-functions 1.22.0b4, protobuf 4.25, grpcio 1.59, ...):
  ``.peers/functions-worker/venv``, whose interpreter also runs the worker;
- the app's packages as a remote build makes them (``pip install --target
  .python_packages/lib/site-packages -r requirements.txt``):
  ``.peers/functions-worker/app-packages/<sha256(requirements.txt)[:16]>-py<X.Y>/``.
  ``bash scripts/install-peers.sh`` installs both (``make test`` runs it).
- the deployed package: the files ``.funcignore`` keeps (read here, gitignore-style), copied
  into a temporary folder, with ``.python_packages`` linked to that remote build.

The host side runs in the test process: ``grpcio`` (pinned in requirements-dev.txt) with the
worker's generated modules, which the project's protobuf (requirements.txt) reads too. In
specialized mode the worker itself imports the app's protobuf, as on a Dedicated/Premium/Flex
instance, because the app's packages come first on PYTHONPATH.

Modes:
- ``specialized``: the worker starts in the app folder with
  ``PYTHONPATH=<app>/.python_packages/lib/site-packages:<worker>``; WorkerInitRequest names
  the app folder.
- ``placeholder``: a pre-warmed Linux Consumption instance. The worker starts in an empty
  standby folder with ``WEBSITE_PLACEHOLDER_MODE=1`` and ``CONTAINER_NAME`` set, before the app
  exists (the same PYTHONPATH, naming a folder that is not there yet), so its own protobuf 4.25
  and azure-functions 1.22.0b4 are imported first. Then the app is put in place and the host
  specializes the worker: FunctionEnvironmentReloadRequest (the app's settings as the whole
  environment, and the app folder), then indexing and loading as usual.

App settings reach the worker as its environment (and, in placeholder mode, in the
FunctionEnvironmentReloadRequest). Binding expressions ``%NAME%`` are resolved as the host
resolves them: from those settings alone; a function whose binding names an unset setting is
not loaded (``host.unloadable``), as the host leaves such a function out with an indexing error.

If the worker cannot be run (missing pieces, no StartStream), the tests that use it are skipped
with the reason (failed when CI=true), as for every peer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from peers import PeerUnavailable, serve_peer, stop_process, unavailable

ROOT = Path(__file__).resolve().parents[2]
PEER_DIR = ROOT / ".peers" / "functions-worker"
VENV_PYTHON = PEER_DIR / "venv" / "bin" / "python"
INSTALL_HINT = ("run `bash scripts/install-peers.sh` to install it (the worker itself comes from "
                "$FUNCTIONS_WORKER_DIR, by default ../shared/peers/azure-functions-python-worker)")
HOST = "127.0.0.1"
HOST_VERSION = "4.1040.300.25317"  # what WorkerInitRequest says the host is
START_TIMEOUT = 60.0  # process start to StartStream (a cold start imports grpc and protobuf)
REQUEST_TIMEOUT = 60.0  # one request to its response
STOP_TIMEOUT = 10.0
MODES = ("specialized", "placeholder")
_SETTING_REFERENCE = re.compile(r"%([^%\s]+)%")


def worker_dir() -> Path:
    """$FUNCTIONS_WORKER_DIR, else the copy install-peers.sh assembled (the shared worker with its
    generated gRPC modules), else the shared worker itself."""
    configured = os.environ.get("FUNCTIONS_WORKER_DIR", "").strip()
    if configured:
        return Path(configured)
    assembled = PEER_DIR / "worker"
    return assembled if (assembled / ".installed").is_file() else ROOT.parent / "shared" / "peers" / "azure-functions-python-worker"


# ------------------------------------------------------------------ .funcignore (gitignore syntax)


@dataclass(frozen=True)
class IgnoreRule:
    pattern: str
    regex: re.Pattern
    negated: bool
    directory_only: bool
    anchored: bool  # matched against the whole relative path, else against the last component

    def matches(self, relative: str, is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        subject = relative if self.anchored else relative.rsplit("/", 1)[-1]
        return self.regex.fullmatch(subject) is not None


def _glob_regex(glob: str) -> str:
    """One gitignore glob as a regular expression over '/'-separated paths."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i) and (i == 0 or glob[i - 1] == "/"):
            out.append("(?:.*/)?")  # zero or more whole folders
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")  # everything inside
            i += 3
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                out.append(re.escape("["))
                i += 1
                continue
            body = glob[i + 1:end]
            if body[0] in "!^":
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif glob[i] == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return "".join(out)


def parse_ignore(text: str) -> list[IgnoreRule]:
    """The rules of a .gitignore-style file (.funcignore), in order; the last match decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\") and raw.endswith(" "):  # an escaped trailing space stays
            line += " "
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:]
        elif line.startswith(("\\#", "\\!")):
            line = line[1:]
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line  # a slash at the start or in the middle anchors it to the root
        glob = line.lstrip("/")
        rules.append(IgnoreRule(raw.strip(), re.compile(_glob_regex(glob), re.DOTALL), negated, directory_only, anchored))
    return rules


def ignored(rules: list[IgnoreRule], relative: str, is_dir: bool) -> bool:
    verdict = False
    for rule in rules:
        if rule.matches(relative, is_dir):
            verdict = not rule.negated
    return verdict


def kept_files(project: Path, rules: list[IgnoreRule] | None = None) -> list[str]:
    """The files of the deployed package: every file under ``project`` that .funcignore keeps
    ('/'-separated, relative, sorted). An excluded folder is not entered, so nothing under it
    can be brought back by a later '!' rule (as in git)."""
    if rules is None:
        ignore_file = project / ".funcignore"
        rules = parse_ignore(ignore_file.read_text(encoding="utf-8")) if ignore_file.is_file() else []
    kept = []
    for folder, dirs, files in os.walk(project):
        base = Path(folder).relative_to(project).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs if not ignored(rules, prefix + d, True))
        kept.extend(prefix + f for f in files if not ignored(rules, prefix + f, False))
    return sorted(kept)


def copy_package(project: Path, destination: Path) -> list[str]:
    """Copy the files .funcignore keeps into ``destination``; the list of them."""
    files = kept_files(project)
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, target)
    return files


def app_packages_dir(python_version: str) -> Path:
    """Where install-peers.sh puts the remote build of requirements.txt for this Python."""
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()[:16]
    return PEER_DIR / "app-packages" / f"{digest}-py{python_version}"


# ------------------------------------------------------------------ what the host sees


class WorkerError(AssertionError):
    """The worker answered a request with a failure (its exception is in the message)."""


@dataclass
class IndexedFunction:
    """One function as the worker indexed it (FunctionMetadataResponse)."""

    name: str
    function_id: str
    bindings: list[dict]  # raw_bindings, parsed: the binding JSON the host reads
    metadata: object = field(repr=False)  # the RpcFunctionMetadata, sent back in FunctionLoadRequest

    @property
    def trigger(self) -> dict:
        return next(b for b in self.bindings if b["type"].endswith("Trigger"))

    @property
    def setting_references(self) -> list[str]:
        """The app settings its bindings name as ``%NAME%``, in order."""
        names: list[str] = []
        for binding in self.bindings:
            for value in binding.values():
                if isinstance(value, str):
                    names.extend(n for n in _SETTING_REFERENCE.findall(value) if n not in names)
        return names


@dataclass
class Invocation:
    """What an InvocationResponse said."""

    ok: bool
    exception: str  # "Type: message" and the stack trace, when it failed
    return_value: object | None  # TypedData
    output_data: list
    logs: list[str]

    def __str__(self) -> str:
        text = "succeeded" if self.ok else f"failed: {self.exception}"
        return text + ("\nlogs:\n  " + "\n  ".join(self.logs[-20:]) if self.logs else "")


@dataclass
class HttpAnswer:
    """An HTTP function's answer as the host would send it (500 when the invocation failed)."""

    status: int
    headers: dict[str, str]
    body: bytes
    invocation: Invocation

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.body[:500]!r} ({self.invocation})"


def _typed_bytes(data) -> bytes:
    kind = data.WhichOneof("data")
    if kind is None:
        return b""
    if kind == "bytes":
        return data.bytes
    if kind in ("string", "json"):
        return getattr(data, kind).encode("utf-8")
    if kind == "stream":
        return data.stream
    raise WorkerError(f"an HTTP body of TypedData kind {kind!r}")


def _json_datum(value) -> object:
    from azure_functions_worker.protos import FunctionRpc_pb2

    return FunctionRpc_pb2.TypedData(json=json.dumps(value))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class FunctionsHost:
    """A gRPC server speaking AzureFunctionsRpc.EventStream with one worker, as the host does."""

    def __init__(self, pb, pb_grpc, grpc):
        self._protos = pb  # FunctionRpc_pb2: the messages
        self._pb_grpc = pb_grpc  # FunctionRpc_pb2_grpc: the service
        self._grpc = grpc
        self._outgoing: queue.Queue = queue.Queue()
        self._waiters: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.connected = threading.Event()
        self.worker_id = ""
        self.request_id = str(uuid.uuid4())
        self.logs: list[tuple[str, str, str]] = []  # (invocation id, level, message) of every RpcLog
        self.functions: dict[str, IndexedFunction] = {}
        self.loaded: set[str] = set()
        self.unloadable: dict[str, list[str]] = {}  # function -> unset settings its bindings name
        self.settings: dict[str, str] = {}
        self.mode = ""
        self.app_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._server = None
        self.port = 0

    # -- the gRPC side

    def serve(self) -> int:
        from concurrent.futures import ThreadPoolExecutor

        host = self

        class Servicer(self._pb_grpc.FunctionRpcServicer):
            def EventStream(self, request_iterator, context):
                threading.Thread(target=host._read, args=(request_iterator,), name="functions-host-read",
                                 daemon=True).start()
                while True:
                    message = host._outgoing.get()
                    if message is None:
                        return
                    yield message

        options = [("grpc.max_receive_message_length", 2147483647), ("grpc.max_send_message_length", 2147483647)]
        self._server = self._grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="functions-host"),
                                         options=options)
        self._pb_grpc.add_FunctionRpcServicer_to_server(Servicer(), self._server)
        self.port = self._server.add_insecure_port(f"{HOST}:0")
        if not self.port:
            raise PeerUnavailable(f"could not listen on {HOST}")
        self._server.start()
        return self.port

    def _read(self, messages) -> None:
        try:
            for message in messages:
                kind = message.WhichOneof("content")
                if kind == "start_stream":
                    self.worker_id = message.start_stream.worker_id
                    self.connected.set()
                elif kind == "rpc_log":
                    log = message.rpc_log
                    level = self._protos.RpcLog.Level.Name(log.level)
                    self.logs.append((log.invocation_id, level, log.message))
                elif kind == "function_load_response":
                    self._resolve((kind, message.function_load_response.function_id), message)
                elif kind == "invocation_response":
                    self._resolve((kind, message.invocation_response.invocation_id), message)
                else:
                    self._resolve((kind, ""), message)
        except Exception:  # the stream ends with an error when the worker goes away
            pass
        finally:
            self._closed.set()
            with self._lock:
                waiters, self._waiters = self._waiters, {}
            for future in waiters.values():
                if not future.done():
                    future.set_exception(WorkerError(f"the worker closed the stream{self._exit_note()}"))

    def _resolve(self, key: tuple[str, str], message) -> None:
        with self._lock:
            future = self._waiters.pop(key, None)
        if future is not None:
            future.set_result(message)

    def request(self, expect: tuple[str, str], timeout: float = REQUEST_TIMEOUT, **content):
        """Send one StreamingMessage and wait for the response it expects (kind, key)."""
        if self._closed.is_set():
            raise WorkerError(f"the worker closed the stream{self._exit_note()}")
        future: Future = Future()
        with self._lock:
            self._waiters[expect] = future
        self._outgoing.put(self._protos.StreamingMessage(request_id=self.request_id, **content))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            raise WorkerError(f"no {expect[0]} within {timeout:.0f} s{self._exit_note()}") from None

    def _exit_note(self) -> str:
        if self.process is not None and self.process.poll() is not None:
            return f" (worker exited with code {self.process.returncode}):\n{self.log_tail()}"
        return ""

    def log_tail(self, lines: int = 40) -> str:
        text = ""
        if self.log_path is not None and self.log_path.exists():
            text = "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:])
        recent = "\n".join(f"[{level}] {message}" for _, level, message in self.logs[-lines:])
        return f"{text}\n-- worker logs over gRPC --\n{recent}"

    def _check(self, status, what: str) -> None:
        if status.status != self._protos.StatusResult.Success:
            name = self._protos.StatusResult.Status.Name(status.status)
            detail = f"{status.exception.message}\n{status.exception.stack_trace}".strip()
            raise WorkerError(f"{what}: {name}: {detail}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, STOP_TIMEOUT)
        self._outgoing.put(None)
        if self._server is not None:
            self._server.stop(grace=1).wait(5)

    # -- the host's requests

    def init(self, function_app_directory: Path, worker_directory: Path) -> dict[str, str]:
        """WorkerInitRequest; the worker's capabilities."""
        p = self._protos
        answer = self.request(("worker_init_response", ""), worker_init_request=p.WorkerInitRequest(
            host_version=HOST_VERSION, capabilities={}, worker_directory=str(worker_directory),
            function_app_directory=str(function_app_directory)))
        self._check(answer.worker_init_response.result, "WorkerInitRequest")
        return dict(answer.worker_init_response.capabilities)

    def reload_environment(self, environment: dict[str, str], function_app_directory: Path) -> None:
        """FunctionEnvironmentReloadRequest: how the host specializes a placeholder worker."""
        p = self._protos
        answer = self.request(
            ("function_environment_reload_response", ""),
            function_environment_reload_request=p.FunctionEnvironmentReloadRequest(
                environment_variables=environment, function_app_directory=str(function_app_directory)))
        self._check(answer.function_environment_reload_response.result, "FunctionEnvironmentReloadRequest")

    def metadata(self, function_app_directory: Path | None = None) -> list[IndexedFunction]:
        """FunctionsMetadataRequest: every function the worker indexed, with its binding JSON.
        Raises WorkerError when indexing failed (the host then has no functions at all)."""
        directory = function_app_directory or self.app_dir
        answer = self.request(("function_metadata_response", ""), functions_metadata_request=(
            self._protos.FunctionsMetadataRequest(function_app_directory=str(directory))))
        response = answer.function_metadata_response
        self._check(response.result, "FunctionsMetadataRequest")
        indexed = [
            IndexedFunction(m.name, m.function_id, [json.loads(raw) for raw in m.raw_bindings], m)
            for m in response.function_metadata_results
        ]
        if directory == self.app_dir:
            self.functions = {f.name: f for f in indexed}
        return indexed

    def load(self, function_id: str) -> None:
        """FunctionLoadRequest for one indexed function (by its id)."""
        function = next(f for f in self.functions.values() if f.function_id == function_id)
        answer = self.request(("function_load_response", function_id), function_load_request=(
            self._protos.FunctionLoadRequest(function_id=function_id, metadata=function.metadata)))
        self._check(answer.function_load_response.result, f"FunctionLoadRequest {function.name}")
        self.loaded.add(function.name)

    def load_all(self) -> dict[str, list[str]]:
        """Load every indexed function whose binding settings resolve, as the host does; the
        others are left out, each with the unset settings it names (also ``self.unloadable``)."""
        if not self.functions:
            self.metadata()
        self.unloadable = {}
        for function in self.functions.values():
            unset = [name for name in function.setting_references if not self.settings.get(name, "").strip()]
            if unset:
                self.unloadable[function.name] = unset
                continue
            self.load(function.function_id)
        return self.unloadable

    def _function(self, name: str) -> IndexedFunction:
        if name not in self.loaded:
            raise WorkerError(f"{name} is not loaded (loaded: {sorted(self.loaded)}; "
                              f"left out for unset settings: {self.unloadable})")
        return self.functions[name]

    def invoke(self, name: str, data, trigger_metadata: dict | None = None) -> Invocation:
        """InvocationRequest with ``data`` (TypedData) as the trigger's input."""
        p = self._protos
        function = self._function(name)
        invocation_id = str(uuid.uuid4())
        trace_parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        request = p.InvocationRequest(
            invocation_id=invocation_id, function_id=function.function_id,
            input_data=[p.ParameterBinding(name=function.trigger["name"], data=data)],
            trigger_metadata=trigger_metadata or {},
            trace_context=p.RpcTraceContext(trace_parent=trace_parent, trace_state="", attributes={}),
            retry_context=p.RetryContext(retry_count=0, max_retry_count=0))
        answer = self.request(("invocation_response", invocation_id), invocation_request=request)
        response = answer.invocation_response
        ok = response.result.status == p.StatusResult.Success
        exception = "" if ok else f"{response.result.exception.message}\n{response.result.exception.stack_trace}"
        logs = [f"[{level}] {message}" for iid, level, message in self.logs if iid == invocation_id]
        return Invocation(ok, exception, response.return_value if response.HasField("return_value") else None,
                          list(response.output_data), logs)

    def invoke_http(self, name: str, method: str, url: str, headers: dict[str, str] | None = None,
                    body: bytes | str | None = None, params: dict[str, str] | None = None,
                    query: dict[str, str] | None = None) -> HttpAnswer:
        """An HTTP request as the host passes it (RpcHttp; body as bytes, the RawHttpBodyBytes
        capability; header names lower-cased; ``params`` are the route parameters)."""
        p = self._protos
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if body:
            headers.setdefault("content-length", str(len(body)))
        http = p.RpcHttp(method=method.upper(), url=url, headers=headers, params=params or {}, query=query or {})
        if body is not None:
            http.body.CopyFrom(p.TypedData(bytes=body))
        invocation = self.invoke(name, p.TypedData(http=http))
        if not invocation.ok:
            return HttpAnswer(500, {}, b"", invocation)  # what the host answers for a failed invocation
        value = invocation.return_value
        if value is None or value.WhichOneof("data") != "http":
            raise WorkerError(f"{name} returned no HTTP response: {value}")
        return HttpAnswer(int(value.http.status_code or 200), dict(value.http.headers),
                          _typed_bytes(value.http.body), invocation)

    def invoke_queue(self, name: str, text: str, message_id: str | None = None, dequeue_count: int = 1) -> Invocation:
        """A queue message as the host delivers it. With host.json's messageEncoding "base64"
        the stored message is the base64 of the text; the host decodes it and passes the text
        as a string (the Python worker takes string or bytes), with the message's properties
        as trigger metadata."""
        p = self._protos
        stored = base64.b64encode(text.encode("utf-8")).decode("ascii")  # as it sits in the storage queue
        delivered = base64.b64decode(stored).decode("utf-8")
        now = datetime.now(timezone.utc)
        metadata = {
            "Id": p.TypedData(string=message_id or str(uuid.uuid4())),
            "DequeueCount": p.TypedData(json=str(dequeue_count)),
            "InsertionTime": _json_datum(_iso(now)),
            "ExpirationTime": _json_datum(_iso(now + timedelta(days=7))),
            "NextVisibleTime": _json_datum(_iso(now + timedelta(minutes=10))),
            "PopReceipt": p.TypedData(string=base64.b64encode(os.urandom(8)).decode("ascii")),
            "sys": _json_datum({"MethodName": name, "UtcNow": _iso(now), "RandGuid": str(uuid.uuid4())}),
        }
        return self.invoke(name, p.TypedData(string=delivered), metadata)

    def invoke_timer(self, name: str, past_due: bool = False) -> Invocation:
        """A timer firing: the TimerInfo JSON the host sends."""
        now = datetime.now(timezone.utc)
        info = {"Schedule": {"AdjustForDST": True},
                "ScheduleStatus": {"Last": _iso(now - timedelta(minutes=1)), "Next": _iso(now + timedelta(minutes=1)),
                                   "LastUpdated": _iso(now - timedelta(minutes=1))},
                "IsPastDue": past_due}
        metadata = {"sys": _json_datum({"MethodName": name, "UtcNow": _iso(now), "RandGuid": str(uuid.uuid4())})}
        return self.invoke(name, _json_datum(info), metadata)

    # -- what the worker process has loaded

    def loaded_from(self, fragment: str) -> list[str]:
        """Paths of the shared libraries the worker process has mapped whose path contains
        ``fragment`` (e.g. 'google/_upb': which protobuf runs). Empty where /proc is missing."""
        try:
            maps = Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return []
        return sorted({line.split(None, 5)[-1] for line in maps.splitlines()
                       if fragment in line and len(line.split(None, 5)) == 6})


# ------------------------------------------------------------------ the peer


@dataclass
class FunctionsWorkerPeer:
    worker_dir: Path
    python: Path
    python_version: str
    packages: Path  # the remote build: <packages>/lib/site-packages
    template: Path  # the deployed package, copied once per session
    files: list[str]  # what .funcignore kept
    pb: object = field(repr=False)  # FunctionRpc_pb2
    pb_grpc: object = field(repr=False)  # FunctionRpc_pb2_grpc
    grpc: object = field(repr=False)

    def base_environment(self) -> dict[str, str]:
        """What a Functions host gives every worker, less this machine's proxies and settings."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env.update({
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "FUNCTIONS_WORKER_RUNTIME_VERSION": self.python_version,
            "FUNCTIONS_EXTENSION_VERSION": "~4",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    @contextmanager
    def start(self, mode: str = "specialized", settings: dict[str, str] | None = None) -> Iterator[FunctionsHost]:
        """A worker on a fresh copy of the deployed package, initialized (and, in placeholder
        mode, specialized) with these app settings; stopped and removed afterwards. Indexing
        is left to the test: ``host.metadata()`` and ``host.load_all()``."""
        if mode not in MODES:
            raise ValueError(f"mode is one of {MODES}")
        settings = dict(settings or {})
        workdir = Path(tempfile.mkdtemp(prefix=f"functions-worker-{mode}-"))
        host = FunctionsHost(self.pb, self.pb_grpc, self.grpc)
        host.settings = settings
        host.mode = mode
        try:
            # The app's final place; in placeholder mode it appears only at specialization.
            app = workdir / "home" / "site" / "wwwroot"
            staged = workdir / "staged" / "wwwroot"
            shutil.copytree(self.template, staged, symlinks=True)
            (staged / ".python_packages").symlink_to(self.packages, target_is_directory=True)
            app.parent.mkdir(parents=True)
            host.app_dir = app
            site_packages = app / ".python_packages" / "lib" / "site-packages"
            environment = {**self.base_environment(), **settings, "AzureWebJobsScriptRoot": str(app),
                           "PYTHONPATH": f"{site_packages}{os.pathsep}{self.worker_dir}"}
            if mode == "specialized":
                staged.rename(app)
                cwd, start_env = app, environment
            else:
                standby = workdir / "standby" / "wwwroot"
                standby.mkdir(parents=True)
                cwd = standby
                start_env = {**self.base_environment(), "WEBSITE_PLACEHOLDER_MODE": "1",
                             "CONTAINER_NAME": "placeholder-container", "AzureWebJobsScriptRoot": str(standby),
                             "PYTHONPATH": environment["PYTHONPATH"]}
                environment.update({"WEBSITE_PLACEHOLDER_MODE": "0", "CONTAINER_NAME": "placeholder-container"})
            host.serve()
            host.log_path = workdir / "worker.log"
            self._launch(host, cwd, start_env)
            if mode == "specialized":
                host.init(app, self.worker_dir)
            else:
                host.init(cwd, self.worker_dir)
                host.metadata(cwd)  # the placeholder app: no function_app.py, so nothing indexed
                staged.rename(app)  # the app is mounted at specialization
                host.reload_environment(environment, app)
            yield host
        finally:
            host.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _launch(self, host: FunctionsHost, cwd: Path, env: dict[str, str]) -> None:
        worker_id = str(uuid.uuid4())
        args = [str(self.python), "-m", "azure_functions_worker", "--host", HOST, "--port", str(host.port),
                "--workerId", worker_id, "--requestId", host.request_id, "--grpcMaxMessageLength", "2147483647"]
        with open(host.log_path, "wb") as log:
            host.process = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not host.connected.wait(0.1):
            if host.process.poll() is not None:
                raise PeerUnavailable(f"the worker exited with code {host.process.returncode} before StartStream:\n"
                                      f"{host.log_tail()}")
            if time.monotonic() > deadline:
                raise PeerUnavailable(f"no StartStream from the worker within {START_TIMEOUT:.0f} s:\n{host.log_tail()}")


def prepare() -> Iterator[FunctionsWorkerPeer]:
    """Generator: check the pieces, build the deployed package once, yield the peer, clean up.

    Raises PeerUnavailable (before the first yield) when something is missing."""
    source = worker_dir()
    if not (source / "azure_functions_worker" / "__main__.py").is_file():
        raise PeerUnavailable(f"no Python worker at {source} (set FUNCTIONS_WORKER_DIR)")
    protos_dir = source / "azure_functions_worker" / "protos"
    missing = [n for n in ("FunctionRpc_pb2.py", "FunctionRpc_pb2_grpc.py", "shared/NullableTypes_pb2.py",
                           "identity/ClaimsIdentityRpc_pb2.py") if not (protos_dir / n).is_file()]
    if missing:
        raise PeerUnavailable(f"the worker at {source} lacks its generated gRPC modules "
                              f"({', '.join('protos/' + n for n in missing)}); its README says they are there")
    if not VENV_PYTHON.is_file():
        raise PeerUnavailable(f"the worker's dependencies are not installed ({VENV_PYTHON} is missing)")
    try:
        version = subprocess.run([str(VENV_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"{VENV_PYTHON} does not run: {exc}") from None
    packages = app_packages_dir(version)
    if not (packages / ".installed").is_file():
        raise PeerUnavailable(f"no remote build of this requirements.txt for Python {version} at {packages}")
    try:
        import grpc
    except ImportError:
        raise PeerUnavailable("grpcio is not installed in the test environment (requirements-dev.txt pins it)") from None
    if str(source) not in sys.path:
        sys.path.append(str(source))
    try:
        from azure_functions_worker.protos import FunctionRpc_pb2, FunctionRpc_pb2_grpc
    except Exception as exc:  # noqa: BLE001 - any import failure makes the peer unusable
        raise PeerUnavailable(f"the worker's generated gRPC modules do not import here: {exc!r}") from None
    template_root = Path(tempfile.mkdtemp(prefix="functions-worker-package-"))
    try:
        template = template_root / "wwwroot"
        files = copy_package(ROOT, template)
        yield FunctionsWorkerPeer(source, VENV_PYTHON, version, packages, template, files, FunctionRpc_pb2,
                                 FunctionRpc_pb2_grpc, grpc)
    finally:
        shutil.rmtree(template_root, ignore_errors=True)


@pytest.fixture(scope="session")
def functions_worker():
    """The real Python worker, ready to start on a copy of the deployed package."""
    yield from serve_peer(prepare, "Azure Functions Python worker", INSTALL_HINT)


@contextmanager
def started(peer: FunctionsWorkerPeer, mode: str, settings: dict[str, str]) -> Iterator[FunctionsHost]:
    """``peer.start`` under the peers' rule: a worker that does not come up fails the test
    under CI=true and skips it elsewhere, with the reason."""

    starting = peer.start(mode, settings)
    try:
        host = starting.__enter__()
    except PeerUnavailable as exc:
        unavailable(f"the Python worker ({mode}) did not start: {exc}", INSTALL_HINT)
        raise  # unavailable() never returns
    try:
        yield host
    except BaseException:
        if not starting.__exit__(*sys.exc_info()):
            raise
    else:
        starting.__exit__(None, None, None)


def names(functions: Iterable[IndexedFunction]) -> list[str]:
    return sorted(f.name for f in functions)
