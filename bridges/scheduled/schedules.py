"""Timer schedules as the Functions host reads them.

NCRONTAB has six fields, seconds first (``0 */5 * * * *``), in UTC; ``%SETTING%`` names are
expanded from the app settings first. A TimeSpan (``00:05:00``) runs at that interval, as the
host allows on dedicated plans.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

_SETTING = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")
_MONTHS = {name: number for number, name in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
_DAYS = {name: number for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
# (name, lowest, highest, names) of the six NCRONTAB fields, seconds first.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day", 1, 31, {}),
           ("month", 1, 12, _MONTHS), ("day-of-week", 0, 6, _DAYS))
_ITEM = re.compile(r"(\*|(\w+)(?:-(\w+))?)(?:/(\d+))?")


class ScheduleError(ValueError):
    """A schedule the host would refuse; the message names the setting or the expression."""


def expand(schedule: str, settings: Mapping[str, str]) -> str:
    def lookup(match: re.Match) -> str:
        name = match.group(1)
        if not settings.get(name, "").strip():
            raise ScheduleError(f"{name}: the schedule {schedule!r} names this app setting, but it is not set")
        return settings[name].strip()

    return _SETTING.sub(lookup, schedule)


class Schedule:
    def __init__(self, expression: str):
        self.expression = expression
        span = _TIMESPAN.fullmatch(expression)
        if span:
            hours, minutes, seconds = map(int, span.groups())
            if hours > 23 or minutes > 59 or seconds > 59:
                raise ScheduleError(f"{expression!r}: a TimeSpan is hh:mm:ss, hours to 23, minutes and seconds to 59")
            self.interval: timedelta | None = timedelta(hours=hours, minutes=minutes, seconds=seconds)
            if not self.interval:
                raise ScheduleError(f"{expression!r}: a TimeSpan schedule must be longer than zero")
            return
        self.interval = None
        fields = expression.split()
        if len(fields) != 6:
            raise ScheduleError(
                f"{expression!r}: an NCRONTAB schedule has six fields, seconds first, e.g. '0 */5 * * * *'"
            )
        for field, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
            problem = _field_problem(field, low, high, names)
            if problem:
                raise ScheduleError(f"{expression!r}: the {name} field {field!r} {problem}")

    def next_after(self, moment: datetime) -> datetime:
        """The first firing strictly after ``moment`` (an aware UTC datetime)."""
        if self.interval is not None:
            return moment + self.interval
        from croniter import croniter

        return croniter(self.expression, moment, second_at_beginning=True).get_next(datetime)

    def window(self, moment: datetime) -> tuple[datetime, datetime]:
        """(the firing before, the firing) of the run at ``moment``, which stands for the latest
        firing at or before it: what a timer run covers. A TimeSpan covers the interval before."""
        if self.interval is not None:
            return moment - self.interval, moment
        from croniter import croniter

        tick = croniter(self.expression, moment + timedelta(microseconds=1), second_at_beginning=True).get_prev(datetime)
        return croniter(self.expression, tick, second_at_beginning=True).get_prev(datetime), tick


def _field_problem(field: str, low: int, high: int, names: dict) -> str | None:
    """Why a field is not what the host's NCRONTAB reads (lists of *, a, a-b, each with an
    optional /step, numbers in range or names), else None. Checked here, without croniter, so
    validating the schedule settings costs nothing at start-up; croniter also reads L, W, #, ?
    and H, which the host refuses."""
    for item in field.split(","):
        match = _ITEM.fullmatch(item)
        if not match:
            return "is not NCRONTAB (numbers, names, * , - / only)"
        _, first, last, step = match.groups()
        for value in (first, last):
            if value is None:
                continue
            number = int(value) if value.isdigit() else names.get(value.upper())
            if number is None or not low <= number <= high:
                return f"has {value!r}, not a value from {low} to {high}" + (" or a name" if names else "")
        if step is not None and int(step) == 0:
            return "has a step of 0"
    return None
