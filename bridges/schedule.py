"""Timer schedules as the Functions host reads them.

NCRONTAB has six fields, seconds first (``0 */5 * * * *``), in UTC; ``%SETTING%`` names are
expanded from the app settings first. A TimeSpan (``00:05:00``) runs at that interval, as the
host allows on dedicated plans.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Mapping

from bridges.settings import SettingsError

_SETTING = re.compile(r"%([^%]+)%")
_TIMESPAN = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")
_NAMES = frozenset("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC SUN MON TUE WED THU FRI SAT".split())


class ScheduleError(SettingsError):
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
            self.interval = timedelta(hours=hours, minutes=minutes, seconds=seconds)
            if not self.interval:
                raise ScheduleError(f"{expression!r}: a TimeSpan schedule must be longer than zero")
            return
        self.interval = None
        if len(expression.split()) != 6:
            raise ScheduleError(
                f"{expression!r}: an NCRONTAB schedule has six fields, seconds first, e.g. '0 */5 * * * *'"
            )
        from croniter import croniter

        extensions = [token for token in re.split(r"[\s,/-]+", expression)
                      if not (token == "*" or token.isdigit() or token.upper() in _NAMES)]
        if extensions:  # croniter reads L, W, #, ? and H; the host's NCRONTAB refuses them
            raise ScheduleError(f"{expression!r}: {extensions[0]!r} is not NCRONTAB (numbers, names, * , - / only)")
        if not croniter.is_valid(expression, second_at_beginning=True):
            raise ScheduleError(f"{expression!r}: not a valid NCRONTAB expression")

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
