"""Dynatrace metric ingestion protocol in: what a Dynatrace client POSTs to ``/api/v2/metrics/ingest``.

A client that sends to Dynatrace (Telegraf, Micrometer, OneAgent scripts, curl) points its URL
at the bridge and keeps its body: ``text/plain`` (any charset; none is read as UTF-8), one data
point per line, ``metric.key[,dim=value,...] payload [timestamp]`` (CONTRACTS 3.2).

What each payload becomes (chosen so that what ``bridges.delivery.sinks.dynatrace.sink`` writes comes back
as the metric it was made from, wherever the protocol can carry it):
- ``55`` and ``gauge,55``: a gauge. The protocol calls a plain value a gauge summary of one
  observation, but it is what a client sends for "the value now", and the sink writes gauges so.
- ``gauge,min=..,max=..,sum=..,count=..`` (all four, any order): an aggregate.
- ``count,delta=5``: a counter with temporality delta.
- ``count,5`` is refused: the protocol says a count value must be given as the delta field.
What the sink converts cannot come back as it was, so it comes back as sent: a cumulative
counter as a gauge of its total, a histogram as gauges ``<key>_count``, ``<key>_sum`` and
``<key>_bucket`` (dimension ``le``), a summary as gauges ``<key>_count``, ``<key>_sum`` and
``<key>`` (dimension ``quantile``). Reassembling them would guess at what a client meant.

Dimension keys become tags as written; quoted values lose their quotes, and backslash escapes
(``\\"``, ``\\\\``, and in unquoted values ``\\=``, ``\\,``, ``\\ ``) are undone. Of a key given twice
the first value is kept (the protocol keeps one). The timestamp is UTC milliseconds (-> ``dt``);
without one the point takes the time of receipt. Dynatrace's window (1 h past, 10 min ahead) is
not checked here: a decoder has no clock, and each sink enforces its own window.

Metadata lines ``#key gauge|count dt.meta.unit=..,dt.meta.description="..",dt.meta.displayname=".."``
give the unit and description of that key's gauge or count lines anywhere in the same body (the
first metadata line of a key and kind wins, as in Dynatrace); the display name has no place in
the canonical model and is dropped. They count as valid lines and in ``skipped``.

Refused here, with reasons worded as Dynatrace words them: lines over 50,000 characters, keys
that break the key rules (sections of ``[A-Za-z0-9_-]`` not starting with a digit or hyphen, 3
to 255 characters) or start with the reserved ``dt.``, dimension keys outside lower-case
``[a-z0-9_:.-]``, more than 50 dimensions, unreadable values, numbers that are NaN, infinite or
out of range. A limit is checked as soon as it is passed (a line's length before it is read,
the 51st dimension before the rest of the line), so refusing a hostile body costs time in
proportion to its size, never more. The rest (a
negative delta, count 0, min > max) is left to the Normalizer, which words it for the field.

Every non-empty line is exactly one item, one refusal or one metadata line, so the pipeline's
count of what the client sent is the number of non-empty lines, as Dynatrace counts
``linesOk + linesInvalid``. Line numbers are 1-based physical lines.

``parse_line`` and ``parse_metadata`` are pure, strict readers of one line: the test fake
receiver could use them instead of its own.
"""
from __future__ import annotations

import codecs
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.timestamps import format_rfc3339

MEDIA_TYPES = ("text/plain", "")
EMPTY_REQUEST = "empty request"
METADATA_LINES = "metadata lines"
MAX_DIMENSIONS = 50
MAX_LINE_CHARS = 50_000  # the serialized line limit of Dynatrace's own client libraries (CONTRACTS 3.4)
MAX_LISTED_ERRORS = 10
NS_PER_MS = 1_000_000

_BLANKS = " \t\r"
_KEY_END = re.compile(r"[, \t]|$")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*")
_KEY_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*\.?")  # where a bad key breaks
_DIMENSION_KEY = re.compile(r"[a-z0-9_:-]+(?:\.[a-z0-9_:-]+)*")
# key=value, the value quoted (escapes: any character after a backslash) or bare (spaces and
# commas escaped with a backslash, no double quote).
_PAIR = re.compile(r'([^=, \t]*)=(?:"((?:[^"\\]|\\.)*)"|((?:[^, \t"\\]|\\.)*))', re.DOTALL)
_ESCAPED = re.compile(r"\\(.)", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d{1,30}")
_TIMESTAMP = re.compile(r"\d{1,19}")
# The common line, whose dimension values need no quotes or escapes: read in one match.
_SIMPLE_LINE = re.compile(
    r"([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*)"
    r"((?:,[a-z0-9_:-]+(?:\.[a-z0-9_:-]+)*=[^=, \t\"\\]*)*) ([^ \t]+)(?: (\d{1,19}))?"
)
_METADATA = re.compile(r"#([^ \t]*)[ \t]+([^ \t]+)[ \t]+(.+)", re.DOTALL)
_METADATA_FIELDS = {"dt.meta.unit": "unit", "dt.meta.description": "description", "dt.meta.displayname": None}
_SUMMARY_FIELDS = ("min", "max", "sum", "count")


class LineError(ValueError):
    """Why Dynatrace would refuse a line, in its own words."""


@dataclass(frozen=True)
class DataLine:
    """One data point as written: ``kind`` is gauge, aggregate or counter (delta)."""

    key: str
    dimensions: dict[str, str]
    kind: str
    values: dict[str, int | float]
    timestamp_ms: int | None = None

    @property
    def payload_format(self) -> str:
        """``gauge`` or ``count``, as metadata lines name it."""
        return "count" if self.kind == "counter" else "gauge"


@dataclass(frozen=True)
class Metadata:
    key: str
    payload_format: str  # gauge or count
    fields: dict[str, str] = field(default_factory=dict)  # unit, description: what the model keeps


# --- reading one line ---------------------------------------------------------------------


def parse_line(line: str) -> DataLine:
    """Read one data line (without its line break); raises LineError."""
    simple = _SIMPLE_LINE.fullmatch(line)
    if simple is not None:
        key, pairs, payload, timestamp = simple.groups()
        if pairs.count(",") <= MAX_DIMENSIONS and 3 <= len(key) <= 255 and not key.startswith("dt."):
            dimensions: dict[str, str] = {}
            for pair in pairs.split(",")[1:] if pairs else ():
                name, _, value = pair.partition("=")
                dimensions.setdefault(name, value)
            kind, values = _payload(payload)
            return DataLine(key, dimensions, kind, values, int(timestamp) if timestamp else None)
    found = _KEY_END.search(line)
    assert found is not None  # `$` always matches
    key_end = found.start()
    key = _metric_key(line[:key_end])
    dimensions = {}
    count = 0
    position = key_end
    while position < len(line) and line[position] == ",":
        name, value, position = _pair(line, position + 1, "dimension")
        if not _DIMENSION_KEY.fullmatch(name):
            raise LineError(f"invalid dimension key {_shown(name)}: only lower-case letters, digits and - . : _ are allowed")
        dimensions.setdefault(name, value)
        count += 1
        if count > MAX_DIMENSIONS:  # refused at once: the rest of the line is never read
            raise LineError(f"too many dimensions (more than {MAX_DIMENSIONS}): at most {MAX_DIMENSIONS} are allowed")
    parts = [part for part in re.split(r"[ \t]+", line[position:]) if part]
    if not parts:
        raise LineError(f"missing payload after metric key {_shown(key)}")
    if len(parts) > 2:
        raise LineError(f"unexpected {_shown(parts[2])} after the timestamp: expected 'key[,dimensions] payload [timestamp]'")
    kind, values = _payload(parts[0])
    timestamp = None
    if len(parts) == 2:
        if not _TIMESTAMP.fullmatch(parts[1]):
            raise LineError(f"invalid timestamp {_shown(parts[1])}: expected UTC milliseconds")
        timestamp = int(parts[1])
    return DataLine(key, dimensions, kind, values, timestamp)


def parse_metadata(line: str) -> Metadata:
    """Read one metadata line ``#key gauge|count dt.meta.x=..,...``; raises LineError."""
    match = _METADATA.fullmatch(line)
    if match is None:
        raise LineError("invalid metadata line: expected '#metric.key gauge|count dt.meta.<property>=\"<value>\"'")
    try:
        key = _metric_key(match.group(1))
    except LineError as problem:
        raise LineError(f"invalid metadata line: {problem}") from None
    payload_format = match.group(2)
    if payload_format not in ("gauge", "count"):
        raise LineError(f"invalid metadata line: unknown payload format {_shown(payload_format)} (gauge or count)")
    text = match.group(3)
    fields: dict[str, str] = {}
    position = 0
    while True:
        while position < len(text) and text[position] in " \t":
            position += 1
        name, value, position = _pair(text, position, "metadata property")
        name = name.lower()
        if name not in _METADATA_FIELDS:
            raise LineError(f"invalid metadata property {_shown(name)}: "
                            "expected dt.meta.unit, dt.meta.description or dt.meta.displayname")
        kept = _METADATA_FIELDS[name]
        if kept and value and kept not in fields:
            fields[kept] = value
        if position == len(text) or text[position:].strip(_BLANKS) == "":
            return Metadata(key, payload_format, fields)
        position += 1  # the comma _pair stopped at
        if text[position - 1] != ",":
            raise LineError(f"invalid metadata line: unexpected {text[position - 1]!r} at index {position - 1}")


def _metric_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        if not key:
            raise LineError("missing metric key")
        where = _KEY_PREFIX.match(key)
        index = where.end() if where else 0
        shown = repr(key[index]) if index < len(key) else "end of key"
        raise LineError(f"failed to parse metric key {_shown(key)}; error at {shown} (index {index})")
    if not 3 <= len(key) <= 255:
        raise LineError(f"invalid metric key {_shown(key)}: the length must be 3 to 255 characters")
    if key.startswith("dt."):
        raise LineError(f"invalid metric key {_shown(key)}: the prefix 'dt.' is reserved for Dynatrace")
    return key


def _pair(text: str, position: int, what: str) -> tuple[str, str, int]:
    """(name, unescaped value, position after it) of ``name=value`` at ``position``; the value
    must end at a comma, a blank or the end."""
    match = _PAIR.match(text, position)
    if match is None:
        shown = re.split(r"[, \t]", text[position:], maxsplit=1)[0]
        raise LineError(f"invalid {what} {_shown(shown)}: expected key=value")
    name, quoted, bare = match.groups()
    end = match.end()
    if end < len(text) and text[end] not in ", \t":
        if quoted is None and bare == "" and text[end] == '"':
            problem = "the quoted value is not closed"
        elif quoted is None and text[end] == '"':
            problem = "a double quote must be escaped with a backslash, or the value quoted"
        elif quoted is None:
            problem = "it ends in a lone backslash"
        else:
            problem = f"unexpected {text[end]!r} after the closing quote"
        raise LineError(f"invalid {what} value for {_shown(name)}: {problem}")
    value = quoted if quoted is not None else bare
    if "\\" in value:
        value = _ESCAPED.sub(_escaped_character, value)
    return name, value, end


def _escaped_character(match: re.Match) -> str:
    """What a backslash escape stands for (a function: a template would be parsed per call)."""
    return match.group(1)


def _shown(text: str) -> str:
    """Quoted client text for a reason, cut so that reasons stay short."""
    return repr(text if len(text) <= 80 else text[:80] + "…")


def _payload(text: str) -> tuple[str, dict]:
    """(kind, values) of a payload: a number, gauge,<number>, gauge,min=,max=,sum=,count= or count,delta=."""
    if _NUMBER.fullmatch(text):
        return "gauge", {"value": _number(text, text)}
    kind, _, rest = text.partition(",")
    if kind == "gauge" and _NUMBER.fullmatch(rest):
        return "gauge", {"value": _number(rest, text)}
    if kind == "gauge" and "=" in rest:
        values: dict[str, float] = {}
        for part in rest.split(","):
            name, _, number = part.partition("=")
            if name not in _SUMMARY_FIELDS or name in values:
                raise LineError(f"invalid gauge payload {_shown(text)}: expected gauge,min=<v>,max=<v>,sum=<v>,count=<n>")
            if name == "count":
                if not _INTEGER.fullmatch(number):
                    raise LineError(f"invalid gauge payload {_shown(text)}: count must be a whole number")
                values[name] = int(number)
            else:
                values[name] = _number(number, text)
        if len(values) != len(_SUMMARY_FIELDS):
            missing = ", ".join(n for n in _SUMMARY_FIELDS if n not in values)
            raise LineError(f"invalid gauge payload {_shown(text)}: "
                            f"all of min, max, sum and count are required (missing {missing})")
        return "aggregate", {name: values[name] for name in _SUMMARY_FIELDS}
    if kind == "count":
        name, _, number = rest.partition("=")
        if name == "delta" and _NUMBER.fullmatch(number):
            return "counter", {"value": _number(number, text), "temporality": "delta"}
        raise LineError(f"invalid count payload {_shown(text)}: a count value is given as the delta field (count,delta=<value>)")
    raise LineError(f"invalid payload {_shown(text)}: "
                    "expected <value>, gauge,<value>, gauge,min=,max=,sum=,count= or count,delta=<value>")


def _number(text: str, payload: str) -> int | float:
    """An int for whole numbers (as the sink writes them), else a finite float."""
    if _INTEGER.fullmatch(text):
        return int(text)
    if not _NUMBER.fullmatch(text):
        raise LineError(f"invalid number {_shown(text)} in payload {_shown(payload)}")
    value = float(text)
    if not math.isfinite(value):
        raise LineError(f"number {_shown(text)} in payload {_shown(payload)} is out of range")
    return value


# --- the format ---------------------------------------------------------------------------


def decode(body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
    text, codec = _text(body, content_type)
    items: list[dict] = []
    origins: list[int] = []
    formats: list[str] = []
    refused: list[Refused] = []
    metadata: dict[tuple[str, str], dict[str, str]] = {}
    metadata_lines = 0
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip(_BLANKS)
        if not line:
            continue
        try:
            if len(line) > MAX_LINE_CHARS:
                raise LineError(f"the line is {len(line)} characters long: at most {MAX_LINE_CHARS} are allowed")
            if line.startswith("#"):
                described = parse_metadata(line)
                metadata.setdefault((described.key, described.payload_format), described.fields)
                metadata_lines += 1
            else:
                point = parse_line(line)
                items.append(_item(point))
                origins.append(number)
                formats.append(point.payload_format)
        except LineError as problem:
            refused.append(Refused(number, str(problem)))
    if not (items or refused or metadata_lines):
        raise BodyError(400, EMPTY_REQUEST)
    if metadata:
        for item, payload_format in zip(items, formats, strict=True):
            item.update(metadata.get((item["name"], payload_format), ()))
    return Decoded(
        items, origins=origins, refused=refused, skipped={METADATA_LINES: metadata_lines} if metadata_lines else {},
        may_hold_surrogates=codec != "utf-8",
    )


def _item(point: DataLine) -> dict:
    item: dict = {"name": point.key, point.kind: point.values}
    if point.dimensions:
        item["tags"] = point.dimensions
    if point.timestamp_ms is not None:
        time_ns = point.timestamp_ms * NS_PER_MS
        # An integer dt is read by its size (CONTRACTS: seconds ... nanoseconds); nanoseconds of
        # instants before 1973 would read as microseconds, so those go as text.
        item["dt"] = time_ns if time_ns >= 10**17 else format_rfc3339(time_ns)
    return item


def _text(body: bytes, content_type: str | None) -> tuple[str, str]:
    """The body as text in its declared charset (UTF-8 when none), and the codec's name."""
    kind = media_type(content_type)
    if kind not in MEDIA_TYPES:
        raise BodyError(415, f"unsupported Content-Type {_shown(kind)}: send text/plain")
    charset = _charset(content_type) or "utf-8"
    try:
        codec = codecs.lookup(charset).name
        return body.decode(codec), codec
    except LookupError:
        raise BodyError(415, f"unsupported charset {_shown(charset)}: send UTF-8") from None
    except ValueError as exc:  # UnicodeDecodeError and codecs' own complaints
        where = {"position": exc.start} if isinstance(exc, UnicodeDecodeError) else {}
        raise BodyError(400, f"the body is not valid {charset}", **where) from None


def _charset(content_type: str | None) -> str | None:
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


def answer(outcome: Outcome) -> Answer:
    """Dynatrace's ValidationResponse: 202 when every line was taken, else 400 listing the first
    ten invalid lines (one entry a line) while the valid ones are kept."""
    if outcome.units == 0:
        return _empty_request()
    if outcome.rejected == 0:
        return 202, {"linesOk": outcome.units, "linesInvalid": 0, "error": None, "warnings": None}, {}
    by_line: dict[object, list[str]] = {}
    for problem in outcome.problems:
        if problem.origin in by_line or len(by_line) < MAX_LISTED_ERRORS:
            by_line.setdefault(problem.origin, []).append(problem.message)
    listed = [{"line": line, "error": "; ".join(messages)} for line, messages in by_line.items()]
    message = "First 10 errors reported" if outcome.rejected > MAX_LISTED_ERRORS else f"{outcome.rejected} invalid lines"
    error = {"code": 400, "message": message, "invalidLines": listed}
    return 400, {"linesOk": max(0, outcome.units - outcome.rejected), "linesInvalid": outcome.rejected,
                 "error": error, "warnings": None}, {}


def refuse(error: BodyError) -> Answer:
    """Dynatrace's ErrorEnvelope, or its ValidationResponse for an empty request."""
    if error.status == 400 and error.message == EMPTY_REQUEST:
        return _empty_request()
    return error.status, {"error": {"code": error.status, "message": error.message}}, {}


def _empty_request() -> Answer:
    return 400, {"linesOk": 0, "linesInvalid": 0, "error": {"code": 400, "message": EMPTY_REQUEST, "invalidLines": []}}, {}
