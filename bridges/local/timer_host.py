"""The timer host: fires the timer-triggered functions on their schedules, in one thread.

Its own module so the scheduling loop stands apart from the HTTP transport and the queue
process; the schedules themselves are ``bridges.scheduled.schedules``.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from datetime import UTC, datetime

from azure.functions.timer import TimerRequest

from bridges.local.hosting import invoke
from bridges.local.indexing import IndexedFunction
from bridges.scheduled.schedules import Schedule, expand

log = logging.getLogger("bridges.local")  # one logger for the whole runner, as the log lines name it


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
            invoke(function, request)
            outcome = "succeeded"
        except Exception:
            log.exception("timer function %s failed", function.name)
            outcome = "failed"
        log.info("timer %s (%s) %s (%.1f ms)", function.name, schedule.expression, outcome, (time.perf_counter() - started) * 1000)
