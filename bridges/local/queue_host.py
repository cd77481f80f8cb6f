"""The queue host: feeds the queue-triggered functions from their queues with the host's
peek-lock, retry and poison rules, in a second, nice'd process of their own.

Its own module because it is a process apart: ``server.serve`` starts it (``start_queue_process``)
and, run again inside it, hands over to ``serve_queues``.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.functions.queue import QueueMessage

from bridges.local.hosting import invoke, state_dir
from bridges.local.indexing import IndexedFunction
from bridges.queues import Message, SqliteQueue, StaleReceipt, open_queue, poison_name
from bridges.scheduled.schedules import expand
from bridges.settings import SettingsError

log = logging.getLogger("bridges.local")  # one logger for the whole runner, as the log lines name it
MESSAGE_TTL = timedelta(days=7)  # Azure Storage's default time-to-live for a queue message
QUEUE_PROCESS = "BRIDGE_SERVE_QUEUES_FOR"  # in the queue functions' process: the runner's pid
QUEUE_PROCESS_NICENESS = 10


_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)")


def timespan(text: str, key: str) -> float:
    """Seconds in a host.json TimeSpan (``[d.]hh:mm:ss[.fff]``); a bad one stops start-up."""
    match = _TIMESPAN.fullmatch(str(text).strip())
    if not match:
        raise SettingsError(f"host.json {key}: {text!r} is not a TimeSpan like '00:00:02'")
    days, hours, minutes, seconds = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


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
            invoke(self.function, _queue_message(message))
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


def start_queue_process(app_module: str, project_dir: Path) -> subprocess.Popen:
    """Run the queue-triggered functions in a process of their own, as the Flex Consumption plan
    runs every non-HTTP function on its own instances (per-function scaling): a delivery
    function encoding a batch then never holds up an HTTP answer, here as there. The process
    dies with the runner (SIGKILL included) and writes to the same output."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    root = str(Path(__file__).resolve().parents[2])  # <root>/bridges/local/queue_host.py: the checkout the child imports
    path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
    return subprocess.Popen(
        [sys.executable, "-m", "bridges", "serve", "--app", app_module, "--log-level", level],
        cwd=project_dir, env={**os.environ, QUEUE_PROCESS: str(os.getpid()), "PYTHONPATH": path},
        start_new_session=True,  # Ctrl-C reaches the runner, which stops this process itself
    )


def stop_queue_process(process: subprocess.Popen) -> None:
    """Let in-flight messages finish as QueueHost.stop does (it was sent SIGINT); then make
    sure it is gone."""
    try:
        process.wait(timeout=QueueHost.STOP_SECONDS + 5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def serve_queues(queues: QueueHost, runner_pid: int) -> int:
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
        import ctypes  # lazy: only the queue process needs it, not the runner's start-up

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
