"""Values, tags and timestamps read from what a rule's expressions give.

A metric's value, a tag, a part of a metric's name, a delivery id and a timestamp each come from
evaluating an expression over a delivery. This module turns such a raw JSON value into what an
item holds (a number, text, epoch nanoseconds) or refuses it with ``Refuse``, whose message names
the value in a short preview. It imports no other rule module: the expressions (whose custom
functions refuse the same way) and the rule engine both build on it.
"""
from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal

from bridges.timestamps import (
    EPOCH_ORDINAL,
    MAX_TIME_NS,
    NS_PER_SECOND,
    TimestampError,
    check_range,
    datetime_ns,
    parse_rfc3339,
    parse_timestamp,
)

TIMESTAMP_FORMATS = ("auto", "rfc3339", "unix", "unix_ms", "unix_us", "unix_ns")
_PREVIEW_CHARS = 60


class Refuse(Exception):
    """An event or metric that cannot become an item; the message is the reason."""


def is_number(value: object) -> bool:
    """A JSON number as JMESPath sees it: booleans are not numbers."""
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


_INTEGER = re.compile(r"[+-]?\d{1,18}")
# Unambiguous, so a long string of digits is matched in linear time.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def preview(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = object.__repr__(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number" if isinstance(value, numbers.Number) else type(value).__name__


def as_number(raw: object) -> object:
    """A metric value: numbers as they are, booleans as 1/0, numeric strings parsed."""
    kind = type(raw)
    if kind is int or kind is float:
        return raw
    if kind is bool:
        return 1 if raw else 0
    if isinstance(raw, str):
        text = raw.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _NUMBER.fullmatch(text):
            return float(text)
    elif is_number(raw) and isinstance(raw, (int, float)):
        return raw
    raise Refuse(f"{preview(raw)} is {kind_of(raw)}, not a number")


def as_text(raw: object) -> str:
    """A tag value or name part: strings as they are, numbers and booleans as their JSON text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        try:
            return str(raw)
        except ValueError:  # more digits than Python writes as text
            raise Refuse("a number too long to write as text") from None
    if isinstance(raw, float):
        return repr(raw)
    raise Refuse(f"{preview(raw)} is {kind_of(raw)}, not text")


_SCALES = {"unix": NS_PER_SECOND, "unix_ms": 1_000_000, "unix_us": 1000, "unix_ns": 1}


def timestamp_reader(form: str | list[str]) -> Callable[[object], int]:
    """Raw value -> epoch ns for a timestamp format, or for the first of a list of formats that
    reads it (a sender that writes one field in several forms); raises Refuse or TimestampError."""
    if isinstance(form, list):
        return _first_of(form)
    if form == "auto":
        return parse_timestamp
    if form == "rfc3339":
        def rfc3339(raw):
            if not isinstance(raw, str):
                raise Refuse(f"{preview(raw)} is {kind_of(raw)}; the rfc3339 format reads strings")
            return check_range(parse_rfc3339(raw))

        return rfc3339
    if form in _SCALES:
        scale = _SCALES[form]

        def epoch(raw):
            time_ns: int | Decimal
            if isinstance(raw, int) and not isinstance(raw, bool):
                time_ns = raw * scale
            elif (isinstance(raw, float) and math.isfinite(raw)) or (isinstance(raw, str) and _NUMBER.fullmatch(raw.strip())):
                try:
                    time_ns = Decimal(repr(raw) if isinstance(raw, float) else raw.strip()) * scale
                except ArithmeticError:  # beyond what Decimal holds: far outside any valid time
                    time_ns = -1
            else:
                raise Refuse(f"{preview(raw)} is not a number of {form} epoch time")
            # Checked before rounding: "1e999999999" must not become a billion-digit integer.
            if not 0 <= time_ns <= MAX_TIME_NS:
                raise Refuse(f"{preview(raw)} as {form} is outside 1970-01-01 .. 9999-12-31")
            return round(time_ns)

        return epoch

    attempt = _pattern_attempt(form)

    def pattern(raw):
        time_ns = attempt(raw)
        if time_ns is None:
            raise _Unmatched(raw, form)
        return time_ns

    return pattern


def _pattern_attempt(form: str) -> Callable[[object], int | None]:
    """Epoch ns of a value written in a strptime pattern; None for a text that does not match it
    at all (no exception: in a list of formats, that is the commonest outcome); raises Refuse
    for anything else that cannot be read."""
    quick = _numeric_strptime(form)

    def attempt(raw):
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise Refuse(f"{preview(raw)} is {kind_of(raw)}; the pattern {form!r} reads strings")
        try:
            time_ns = quick(raw) if quick is not None else _epoch_ns(datetime.strptime(raw, form))
        except ValueError as exc:
            raise _Unmatched(raw, form, exc) from None
        return None if time_ns is None else check_range(time_ns)

    return attempt


# strptime's own expressions (CPython Lib/_strptime.py) for the numeric directives.
_DIRECTIVES = {
    "Y": r"(?P<Y>\d\d\d\d)", "m": r"(?P<m>1[0-2]|0[1-9]|[1-9])",
    "d": r"(?P<d>3[0-1]|[1-2]\d|0[1-9]|[1-9]| [1-9])", "H": r"(?P<H>2[0-3]|[0-1]\d|\d)",
    "M": r"(?P<M>[0-5]\d|\d)", "S": r"(?P<S>6[0-1]|[0-5]\d|\d)", "f": r"(?P<f>[0-9]{1,6})",
    "z": r"(?P<z>(?-i:Z)|(?P<sign>[+-])(?P<zh>\d\d):?(?P<zm>[0-5]\d)(?P<zs>:?[0-5]\d(?:\.\d{1,6})?)?)",
}


_GROUPS = ("Y", "m", "d", "H", "M", "S", "f", "z", "sign", "zh", "zm", "zs")


def _epoch_ns(moment: datetime) -> int:
    """A strptime result as epoch ns (not yet checked to lie in 1970..9999): a time without a
    zone is UTC."""
    return datetime_ns(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))


class _Unmatched(Refuse):
    """A text a pattern does not read. The message is written only when asked for: a list of
    formats tries several patterns on each delivery and shows none of their messages."""

    def __init__(self, raw: str, form: str, error: ValueError | None = None):
        super().__init__(raw, form, error)

    def __str__(self) -> str:
        raw, form, error = self.args
        return f"{preview(raw)} does not match {form!r}: {error or f'time data {raw!r} does not match format {form!r}'}"


def _numeric_strptime(form: str) -> Callable[[str], int | None] | None:
    """Epoch ns (not yet checked to lie in 1970..9999) for a text written in a pattern of numeric directives only (%Y %m %d %H %M %S
    %f %z, each at most once, and literal text), as ``datetime.strptime`` and then the UTC
    instant would give, several times faster: CI webhooks write their times this way on every
    delivery. None for any other pattern, which strptime itself reads. Matches as strptime does
    (its expressions, a run of spaces as one or more, case-insensitive) and fails with a
    ValueError where it does, except for a text that does not match the pattern at all: None,
    where strptime says "does not match format". An offset with seconds is left to strptime. A
    test holds the two to each other."""
    parts, seen = [], set()
    for literal, directive in re.findall(r"([^%]*)(%.|%$|$)", form):
        parts.append(r"\s+".join(re.escape(piece) for piece in re.split(r"\s+", literal)))
        if directive == "%":  # a stray %: strptime says what is wrong
            return None
        code = directive[1:]
        if not code:
            continue
        if code == "%":
            parts.append("%")
        elif code in _DIRECTIVES and code not in seen:
            seen.add(code)
            parts.append(_DIRECTIVES[code])
        else:
            return None
    # Every group exists, those of directives the pattern lacks empty at the end, so one call
    # reads them all in a fixed order.
    written = "".join(parts)
    missing = "".join(f"(?P<{name}>)" for name in _GROUPS if f"(?P<{name}>" not in written)
    expression = re.compile(written + missing, re.IGNORECASE)

    def read(text: str) -> int | None:
        found = expression.match(text)
        if found is None:
            return None
        if len(text) != found.end():
            raise ValueError(f"unconverted data remains: {text[found.end():]}")
        year, month, day, hour, minute, second, fraction, zone, sign, zone_hours, zone_minutes, zone_seconds = \
            found.group(*_GROUPS)
        if zone_seconds:
            return _epoch_ns(datetime.strptime(text, form))
        offset = 0
        if zone and zone not in "Zz":
            offset = int(zone_hours) * 3600 + int(zone_minutes) * 60
            if offset >= 86400:
                raise ValueError(f"offset {zone} is not strictly between -24 and 24 hours")
            offset = -offset if sign == "-" else offset
        if second and int(second) > 59:
            raise ValueError("second must be in 0..59")
        days = date(int(year or 1900), int(month or 1), int(day or 1)).toordinal()
        seconds = (days - EPOCH_ORDINAL) * 86400 + int(hour or 0) * 3600 + int(minute or 0) * 60 + int(second or 0)
        return (seconds - offset) * NS_PER_SECOND + (int(fraction.ljust(6, "0")) * 1000 if fraction else 0)

    return read


def _first_of(forms: list[str]) -> Callable[[object], int]:
    """The first format of the list that reads a value (a pattern that does not match is passed
    over without an exception)."""
    attempts = [timestamp_reader(form) if form in TIMESTAMP_FORMATS else _pattern_attempt(form) for form in forms]

    def first(raw):
        for attempt in attempts:
            try:
                time_ns = attempt(raw)
            except (Refuse, TimestampError):
                continue
            if time_ns is not None:
                return time_ns
        raise Refuse(f"{preview(raw)} matches none of the formats {', '.join(map(repr, forms))}")

    return first


def check_strptime(form: str) -> None:
    """A pattern is usable when it reads back what it writes (a bad directive fails here, at load)."""
    sample = datetime(2001, 2, 3, 4, 5, 6, 7000, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(form), form)
    except ValueError as exc:
        raise ValueError(f"{form!r} is not a usable strptime pattern: {exc}") from None


def delivery_text(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, (dict, list)):
        text = json.dumps(raw, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=repr)
    else:
        try:
            text = as_text(raw)
        except (Refuse, ValueError):
            text = str(raw)
    return text or None
