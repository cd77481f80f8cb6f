"""InfluxDB line protocol in: what Telegraf's ``outputs.influxdb_v2`` and ``outputs.influxdb`` and
the influxdb-client libraries POST to ``/api/v2/write`` (``V2``) and to the 1.x ``/write`` (``V1``).

A client points its URL at the bridge and keeps its body: one point a line,
``measurement[,tag=value...] field=value[,field=value...] [timestamp]`` (CONTRACTS 12.12).
The Content-Type is not read (InfluxDB does not read it; clients send ``text/plain``); the body
is UTF-8. gzip (``Content-Encoding: gzip``) is undone by the bridge before the decoder runs.
``org``, ``bucket``, ``db`` and ``rp`` are not used (the bridge has one destination: its sinks);
the Influx token (``Authorization: Token ...``, ``u``/``p``) is not the bridge's key, never read
and never logged: the function key travels as ``x-functions-key`` or ``?code=``. Only the
``precision`` query parameter reaches the decoder.

Precision (of the timestamps of a whole request): v2 takes ``ns`` (the default), ``us``, ``ms``,
``s``; v1 also ``n``, ``u``, ``µ``, ``m`` and ``h``. Any other value refuses the request (400).

What each field becomes: a gauge ``<measurement>_<field key>`` with the line's tags and time.
- float (``1.5``, ``-2e3``, ``1``): the number; NaN and infinities cannot be written (the syntax
  has no words for them).
- integer (``1i``, int64) and unsigned (``1u``, uint64): the whole number, as a gauge (the line
  protocol says nothing about counters; what a client counts it sends as a gauge of its total).
- boolean (``t``, ``T``, ``true``, ``True``, ``TRUE`` and the same for false): a gauge 1 or 0,
  so an up/down or running flag can be charted and alerted on.
- string (``"..."``): not a metric: skipped, and counted in ``skipped`` ("string fields").
A key given twice (tag or field) keeps its last value. Names the canonical model cannot take
(a measurement with a space, say) are refused by the Normalizer, naming the line.

Escapes, as the line protocol reference has them: in a measurement ``\\,`` and ``\\ `` (space);
in tag keys, tag values and field keys ``\\,``, ``\\=`` and ``\\ ``; in string field values
``\\"`` and ``\\\\``; everywhere ``\\\\`` is one backslash, and a backslash before any other
character is a literal backslash. A newline ends a line wherever it is (the protocol does not
support one in a value). Lines are ``\\n``-separated (a ``\\r`` before it is dropped), leading
blanks are ignored, ``#`` starts a comment line.

A line without a timestamp takes the time of receipt (the Normalizer's clock). Timestamps are
integers in the request's precision, and must come out within int64 nanoseconds and not before
1970 (the canonical model has no earlier time).

Answers, as InfluxDB answers: 204 and no body when every line was written. A line that breaks
the syntax is refused naming its 1-based line number and InfluxDB's own reason ("unable to
parse '<line>': missing fields"); v2 answers 400 ``{"code": "invalid", "message": ...}`` (with
``X-Platform-Error-Code: invalid``), v1 400 ``{"error": ...}``, the message naming the first
refused line and how many were refused. Unlike InfluxDB OSS v2 (which writes nothing of a body
with a line it cannot parse), the good lines are kept, as InfluxDB 1.x and InfluxDB Cloud
Serverless do: Telegraf and the client libraries do not retry a 400, so what was good would
otherwise be lost. A body with no line at all is 400 "writing requires points"; a body over
BRIDGE_MAX_BODY_BYTES is 413 in the same shapes.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused
from bridges.timestamps import format_rfc3339

NO_POINTS = "writing requires points"
STRING_FIELDS = "string fields"
MAX_STRING_BYTES = 64 * 1024  # a string field value's limit (the line protocol reference)
_INT64 = 2**63
_UINT64 = 2**64
_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_NS_V1 = {**_NS, "n": 1, "u": 1_000, "µ": 1_000, "m": 60_000_000_000, "h": 3_600_000_000_000}

# An element runs to its first unescaped separator; `\\.` takes a backslash and what follows as
# one piece, so `\\\\,` is a backslash then a separating comma.
_MEASUREMENT = re.compile(r"(?:[^, \\]|\\.|\\$)*", re.DOTALL)
_KEY_OR_TAG = re.compile(r"(?:[^,= \\]|\\.|\\$)*", re.DOTALL)
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_BARE_VALUE = re.compile(r"[^, ]*")
_SPACES = re.compile(r" +")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_FLOAT = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"-?\d+i")
_UNSIGNED = re.compile(r"\d+u")
_TIMESTAMP = re.compile(r"-?\d{1,25}")
_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))


class LineError(ValueError):
    """Why InfluxDB would not parse a line, in its words."""


def _unescape(text: str, special: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: m.group(1) if m.group(1) in special else m.group(0), text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int | None]:
    """(measurement, tags, fields, timestamp) of one line as written; raises LineError.

    Field values are float, int (integer and unsigned), bool or str."""
    if "\\" not in line and '"' not in line:  # what agents mostly send: read by splitting
        plain = _plain_line(line)
        if plain is not None:
            return plain
    return _escaped_line(line)


def _plain_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int | None] | None:
    """A line without escapes or quotes read with ``str.split`` (a few times faster than the
    element regexes); None for anything unusual, which ``_escaped_line`` then reads (or refuses
    with InfluxDB's reason): never a different result, only a faster one."""
    parts = line.split(" ")
    if len(parts) == 2:
        head, field_set, stamp = parts[0], parts[1], None
    elif len(parts) == 3 and parts[2].isdecimal() and len(parts[2]) <= 25:  # isdecimal: as _TIMESTAMP's \d
        head, field_set, stamp = parts
    else:
        return None
    measurement, *pairs = head.split(",")
    if not measurement:
        return None
    tags: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not value or "=" in value:
            return None
        tags[key] = value
    fields: dict[str, object] = {}
    try:
        for pair in field_set.split(","):
            key, _, value = pair.partition("=")
            if not key:
                return None
            fields[key] = _value(value)
    except LineError:
        return None
    return measurement, tags, fields, None if stamp is None else int(stamp)


def _escaped_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int | None]:
    """Any line, element by element with the regexes that know the escapes and quoted strings."""
    end = _MEASUREMENT.match(line).end()  # type: ignore[union-attr]  # matches the empty string
    measurement = _unescape(line[:end], ", \\")
    if not measurement:
        raise LineError("missing measurement")
    position = end
    tags: dict[str, str] = {}
    while position < len(line) and line[position] == ",":
        key_end = _KEY_OR_TAG.match(line, position + 1).end()  # type: ignore[union-attr]
        key = line[position + 1:key_end]
        if not key:
            raise LineError("missing tag key")
        if key_end >= len(line) or line[key_end] != "=":
            raise LineError("missing tag value")
        value_end = _KEY_OR_TAG.match(line, key_end + 1).end()  # type: ignore[union-attr]
        value = line[key_end + 1:value_end]
        if not value:
            raise LineError("missing tag value")
        if value_end < len(line) and line[value_end] == "=":
            raise LineError("invalid tag format")
        tags[_unescape(key, ",= \\")] = _unescape(value, ",= \\")
        position = value_end
    spaces = _SPACES.match(line, position)
    if spaces is None or spaces.end() == len(line):
        raise LineError("missing fields")
    position = spaces.end()
    fields: dict[str, object] = {}
    while True:
        key_end = _KEY_OR_TAG.match(line, position).end()  # type: ignore[union-attr]
        key = line[position:key_end]
        if not key:
            raise LineError("missing field key")
        if key_end >= len(line) or line[key_end] != "=":
            raise LineError("missing field value")
        position = key_end + 1
        if position < len(line) and line[position] == '"':
            quoted = _STRING.match(line, position)
            if quoted is None:
                raise LineError("unbalanced quotes")
            text = _unescape(quoted.group(1), '"\\')
            if len(text.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
                raise LineError(f"string field {_shown(key)} is longer than {MAX_STRING_BYTES} bytes")
            field: object = text
            position = quoted.end()
        else:
            bare_end = _BARE_VALUE.match(line, position).end()  # type: ignore[union-attr]
            field = _value(line[position:bare_end])
            position = bare_end
        fields[_unescape(key, ",= \\")] = field
        if position == len(line):
            return measurement, tags, fields, None
        if line[position] == ",":
            position += 1
            continue
        if line[position] != " ":
            raise LineError("invalid field format")
        break
    rest = line[position:].strip(" ")
    if not rest:
        return measurement, tags, fields, None
    if not _TIMESTAMP.fullmatch(rest):
        raise LineError("bad timestamp")
    return measurement, tags, fields, int(rest)


def _value(text: str) -> object:
    """A bare field value. Floats, the most common, are tried first: the forms cannot overlap
    (an integer ends in i, an unsigned in u, a boolean is a word)."""
    if _FLOAT.fullmatch(text):
        value = float(text)
        if not math.isfinite(value):
            raise LineError(f"unable to parse float {text}: value out of range")
        return value
    if not text:
        raise LineError("missing field value")
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INTEGER.fullmatch(text):
        number = _digits(text)
        if not -_INT64 <= number < _INT64:
            raise LineError(f"unable to parse integer {text}: value out of range")
        return number
    if _UNSIGNED.fullmatch(text):
        number = _digits(text)
        if number >= _UINT64:
            raise LineError(f"unable to parse unsigned {text}: value out of range")
        return number
    if text[:1] in "-.0123456789":
        raise LineError("invalid number")
    raise LineError("invalid boolean")


def _digits(text: str) -> int:
    """The number before an integer's i or u. Past Python's limit on the digits of an int
    (4300) it is far out of range: refused as such, not a ValueError (a 500)."""
    try:
        return int(text[:-1])
    except ValueError:
        kind = "integer" if text.endswith("i") else "unsigned"
        raise LineError(f"unable to parse {kind} {_shown(text)}: value out of range") from None


def _shown(text: str) -> str:
    """Client text for a reason, cut so that reasons stay short."""
    return text if len(text) <= 100 else text[:100] + "…"


def _text_lines(body: bytes) -> Iterator[tuple[int, str | int]]:
    """(number, text) of each line that is not blank or a comment, or (number, position of its
    first byte that is not UTF-8). A body that is UTF-8 throughout, the usual one, is decoded
    once: a UTF-8 sequence never holds the byte of ``\\n``, so its lines are the same."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        for number, raw in enumerate(body.split(b"\n"), start=1):
            raw = raw.removesuffix(b"\r").lstrip(b" \t")
            if raw and not raw.startswith(b"#"):
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, exc.start
        return
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r").lstrip(" \t")
        if line and not line.startswith("#"):
            yield number, line


class _Format:
    """One of the two write APIs: the same lines, its own precisions and error shape."""

    def __init__(self, name: str, precisions: Mapping[str, int], expected: str):
        self.NAME = name
        self._precisions = precisions
        self._expected = expected

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
        precision = params.get("precision") or "ns"
        if precision not in self._precisions:
            raise BodyError(400, f"invalid precision {_shown(precision)!r}: expected {self._expected}")
        multiplier = self._precisions[precision]
        items: list[dict] = []
        origins: list[int] = []
        decoded = Decoded(items, origins=origins)
        strings = 0
        lines = 0
        for number, line in _text_lines(body):
            lines += 1
            if isinstance(line, int):
                decoded.refused.append(Refused(number, f"the line is not valid UTF-8 (byte {line})"))
                continue
            try:
                measurement, tags, fields, timestamp = parse_line(line)
                dt: int | str | None = None
                if timestamp is not None:
                    time_ns = timestamp * multiplier
                    if not -_INT64 <= time_ns < _INT64:
                        raise LineError("time outside range")
                    if time_ns < 0:
                        raise LineError("time before 1970-01-01: the bridge's metric model cannot keep it")
                    # An integer dt is read by its size; nanoseconds before 1973 go as text.
                    dt = time_ns if time_ns >= 10**17 else format_rfc3339(time_ns)
            except LineError as problem:
                decoded.refused.append(Refused(number, f"unable to parse '{_shown(line)}': {problem}"))
                continue
            prefix = measurement + "_"
            for key, value in fields.items():
                if isinstance(value, str):
                    strings += 1
                    continue
                item: dict = {"name": prefix + key, "gauge": {"value": int(value) if value.__class__ is bool else value}}
                if tags:  # one dict for the fields of a line: items are read, never changed
                    item["tags"] = tags
                if dt is not None:
                    item["dt"] = dt
                items.append(item)
                origins.append(number)
        if not lines:
            raise BodyError(400, NO_POINTS)
        if strings:
            decoded.skipped[STRING_FIELDS] = strings
        return decoded

    def answer(self, outcome: Outcome) -> Answer:
        """204 when everything was written; else 400 naming the first refused line."""
        if not outcome.rejected:
            return 204, None, {}
        first = outcome.problems[0] if outcome.problems else None
        message = f"line {first.origin}: {first.message}" if first else "points were refused"
        message += f" ({outcome.rejected} refused, {outcome.accepted} written)"
        return self._error(400, message)

    def refuse(self, error: BodyError) -> Answer:
        return self._error(error.status, error.message)

    def _error(self, status: int, message: str) -> Answer:
        raise NotImplementedError


class _V2(_Format):
    def _error(self, status: int, message: str) -> Answer:
        code = _V2_CODES.get(status, "invalid" if status < 500 else "internal error")
        return status, {"code": code, "message": message}, {"X-Platform-Error-Code": code}


class _V1(_Format):
    def _error(self, status: int, message: str) -> Answer:
        return status, {"error": message}, {}


# InfluxDB 2's error codes (its errors' "code" member) for the statuses the bridge answers.
_V2_CODES = {400: "invalid", 413: "request too large", 415: "unsupported media type",
             429: "too many requests", 503: "unavailable"}

V2 = _V2("influx_v2", _NS, "ns, us, ms or s")
V1 = _V1("influx_v1", _NS_V1, "n, ns, u, µ, us, ms, s, m or h")
