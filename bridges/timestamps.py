"""Timestamps in every form Better Stack documents, to UTC epoch nanoseconds and back.

Integers are epoch seconds, milliseconds, microseconds or nanoseconds, told apart by size
(seconds below 1e11, i.e. before the year 5138; milliseconds below 1e14; microseconds below
1e17; nanoseconds above). Strings are RFC 3339 / ISO 8601 with 'T' or a space, up to nine
fraction digits and 'Z' or an offset. A string without an offset is refused rather than
guessed: the same text means different instants in different zones.
"""
from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta

NS_PER_SECOND = 1_000_000_000
MAX_TIME_NS = 253_402_300_799 * NS_PER_SECOND  # 9999-12-31T23:59:59Z
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)"
)


# The commonest forms, in ASCII digits: 2024-01-07T18:25:20Z or …+02:00, with up to nine fraction digits.
_COMMON = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", re.ASCII)


class TimestampError(ValueError):
    """A timestamp that cannot be read; the message says which forms are accepted."""


def parse_timestamp(value: object) -> int:
    """Epoch nanoseconds (UTC) for an integer, number, RFC 3339 string or aware datetime."""
    if isinstance(value, bool):
        raise TimestampError("a timestamp is a number or an RFC 3339 string, not a boolean")
    if isinstance(value, int):
        return check_range(_int_to_ns(value))
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise TimestampError("a numeric timestamp must be a finite, non-negative epoch time")
        if value > MAX_TIME_NS / NS_PER_SECOND:  # checked first: 1e300 s in nanoseconds is no float
            raise TimestampError("timestamp outside 1970-01-01 .. 9999-12-31")
        return check_range(round(value * NS_PER_SECOND))
    if isinstance(value, str):
        return check_range(parse_rfc3339(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TimestampError("a timestamp needs a time zone")
        return check_range(datetime_ns(value))
    raise TimestampError("a timestamp is an epoch number or an RFC 3339 string")


EPOCH_NS_FROM = 10**17  # an integer from here on is epoch nanoseconds (below: s, ms or µs)


def _int_to_ns(value: int) -> int:
    if value < 0:
        raise TimestampError("an epoch timestamp cannot be negative")
    if value < 10**11:
        return value * NS_PER_SECOND
    if value < 10**14:
        return value * 1_000_000
    if value < EPOCH_NS_FROM:
        return value * 1000
    return value


def parse_rfc3339(text: str) -> int:
    """Epoch ns of an RFC 3339 text. The commonest forms (``2024-01-07T18:25:20Z`` or
    ``…+02:00``, with or without a fraction) are read by the C parser alone; every other text,
    or one it refuses, by ``_by_parts``, which reads every form and explains what is wrong (a
    test holds the two alike)."""
    common = _COMMON.fullmatch(text)
    if common is not None:
        fraction, zone = common.groups()
        try:  # digits past the sixth (Azure writes seven) are cut for it and added back
            moment = datetime.fromisoformat(text if fraction is None or len(fraction) <= 6 else text[:26] + zone)
        except ValueError:
            pass
        else:
            nanos = int(fraction[6:].ljust(3, "0")) if fraction is not None and len(fraction) > 6 else 0
            return datetime_ns(moment) + nanos
    return _by_parts(text)


def _by_parts(text: str) -> int:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError(
            "not an RFC 3339 timestamp: expected e.g. 2024-01-07T18:25:20Z or "
            "2024-01-07 18:25:20.123+02:00 (a time zone is required)"
        )
    if match.group(8) != "z" and text[10] != "t":
        # Common case: the C parser is exact to the microsecond and much faster; digits past
        # the sixth are cut for it and added back as nanoseconds.
        nanos, micro_text = 0, text
        if match.end(7) - match.start(7) > 6:
            cut = match.start(7) + 6
            nanos = int(text[cut:match.end(7)].ljust(3, "0"))
            micro_text = text[:cut] + text[match.end(7):]
        try:
            moment = datetime.fromisoformat(micro_text)
        except ValueError:
            pass  # the parser below explains what is wrong
        else:
            return datetime_ns(moment) + nanos
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        ordinal = date(int(year), int(month), int(day)).toordinal()
    except ValueError as exc:
        raise TimestampError(f"not a calendar date: {exc}") from None
    hour, minute, second = int(hour), int(minute), int(second)
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError("hour, minute or second out of range")
    offset = 0
    if not zulu:
        off_hours, off_minutes = int(off_h), int(off_m or 0)
        if off_hours > 23 or off_minutes > 59:
            raise TimestampError("time zone offset out of range")
        offset = (off_hours * 3600 + off_minutes * 60) * (1 if sign == "+" else -1)
    seconds = (ordinal - EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second - offset
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * NS_PER_SECOND + nanos


def datetime_ns(moment: datetime) -> int:
    """Epoch ns of an aware datetime, to the microsecond; not yet checked to lie in 1970..9999."""
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000


def check_range(time_ns: int) -> int:
    """The time itself when it lies in 1970-01-01 .. 9999-12-31, else TimestampError."""
    if time_ns < 0 or time_ns > MAX_TIME_NS:
        raise TimestampError("timestamp outside 1970-01-01 .. 9999-12-31")
    return time_ns


def format_rfc3339(time_ns: int) -> str:
    """RFC 3339 in UTC with 'Z', with as many fraction digits (0, 3, 6 or 9) as it needs."""
    seconds, nanos = divmod(time_ns, NS_PER_SECOND)
    text = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        digits = f"{nanos:09d}"
        while digits.endswith("000"):
            digits = digits[:-3]
        text += "." + digits
    return text + "Z"
