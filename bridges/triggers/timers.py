"""Timer-triggered functions: the synthetic checks and the polled sources.

Schedules are app settings (``%CHECKS_SCHEDULE%``, ``%SOURCES_SCHEDULE%``, NCRONTAB in UTC,
default every minute), so they change without a deployment. Each run is bounded by the
longest timeout it holds, well inside the function timeout.
"""
from __future__ import annotations

import azure.functions as func

from bridges import runtime

blueprint = func.Blueprint()


@blueprint.timer_trigger(arg_name="timer", schedule="%CHECKS_SCHEDULE%")
def synthetic_checks(timer: func.TimerRequest) -> None:
    """Run every declared check at once and send the results to every sink."""
    runtime.bridge().run_checks()


@blueprint.timer_trigger(arg_name="timer", schedule="%SOURCES_SCHEDULE%")
def polled_sources(timer: func.TimerRequest) -> None:
    """Poll the sources whose own schedule is due and send what their rules yield."""
    runtime.bridge().poll_sources()
