"""``python -m bridges serve``: host the indexed FunctionApp on this machine.

HTTP functions answer at ``http://HOST:PORT/<routePrefix>/<route>`` with their declared
methods and route parameters; timer functions fire on their schedules; queue functions are fed
from their queues (SQLite in ``.bridge/`` or Azure Storage when ``AzureWebJobsStorage`` is
set) with the host's peek-lock, retry and poison rules, in a second process of their own (as the
Flex Consumption plan scales non-HTTP functions on their own instances). Like Core Tools, keys are not demanded
unless ``--require-keys`` is given. Each invocation is logged; Ctrl-C (or SIGTERM) stops the
server, the timers and the queue pollers cleanly.

Start-up only: it reads local.settings.json, indexes the app, leaves out the functions the host
would not run, and starts the hosts, each in a module of its own (``http_host``, ``timer_host``,
``queue_host``; what they share is in ``hosting``).
"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path

from bridges.local.hosting import app_settings, host_json
from bridges.local.http_host import (
    MAX_CONNECTIONS,
    READ_TIMEOUT,
    HttpHost,
    key_path,
    local_function_key,
    make_server,
    route_prefix,
)
from bridges.local.indexing import IndexedFunction, index, load_app
from bridges.local.queue_host import (
    QUEUE_PROCESS,
    QueueHost,
    QueueOptions,
    serve_queues,
    start_queue_process,
    stop_queue_process,
)
from bridges.local.timer_host import TimerHost
from bridges.scheduled.schedules import Schedule, ScheduleError, expand
from bridges.settings import SettingsError, local_values

EXAMPLE_METRIC = '{"name":"test_metric","gauge":{"value":123},"tags":{"host":"laptop"}}'


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
        return serve_queues(queues, int(os.environ[QUEUE_PROCESS]))
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
        queue_process = start_queue_process(app_module, project_dir) if queues.listeners else None
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
            stop_queue_process(queue_process)
        server.server_close()
        print("Stopped.", flush=True)
    return 0


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
