"""A fake Dynatrace Metrics API v2 that enforces the ingest contract (CONTRACTS.md section 3).

It parses each line on its own (written from the protocol, not from the bridge's encoder):
metric key, dimensions, payload and timestamp window, then answers as Dynatrace does: 202
with line counts, or 400 with the first ten invalid lines (1-based) while keeping the valid
ones. ``refuse_keys`` makes it refuse lines of chosen metric keys, to test partial success.
"""
from __future__ import annotations

import json
import re
import time

from fakes.server import Answer, FakeReceiver, Received

MAX_BODY_BYTES = 1_000_000
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")
_DIM_KEY = re.compile(r"[a-z_][a-z0-9_:-]*(\.[a-z_][a-z0-9_:-]*)*")
_NUMBER = r"-?\d+(?:\.\d+(?:[eE][+-]?\d+)?)?"
_GAUGE_SUMMARY = re.compile(rf"gauge,min=({_NUMBER}),max=({_NUMBER}),sum=({_NUMBER}),count=(\d+)")
_SINGLE = re.compile(rf"(?:gauge,)?({_NUMBER})|count,delta=({_NUMBER})")
_METADATA = re.compile(r"#([^ ]+) (gauge|count) (dt\.meta\.[a-z]+=.+)")


def split_unescaped(text: str, separator: str) -> list[str]:
    """Split on a separator that is neither backslash-escaped nor inside double quotes."""
    parts, current, quoted, escaped = [], "", False, False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == '"':
            current += char
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def line_error(line: str, now_ms: int) -> str | None:
    """Why Dynatrace would refuse this line, or None."""
    if line.startswith("#"):
        return None if _METADATA.fullmatch(line) else "invalid metadata line"
    if len(line) > 50_000:
        return "line too long"
    parts = split_unescaped(line, " ")
    if len(parts) not in (2, 3):
        return "expected 'key,dims payload [timestamp]'"
    head = split_unescaped(parts[0], ",")
    key = head[0]
    if not (3 <= len(key) <= 255 and _KEY.fullmatch(key)):
        return f"failed to parse metric key {key!r}"
    if key.startswith("dt."):
        return "metric key prefix dt. is reserved"
    if len(head) - 1 > 50:
        return "more than 50 dimensions"
    for dimension in head[1:]:
        name, sep, value = dimension.partition("=")
        if not sep or not _DIM_KEY.fullmatch(name):
            return f"invalid dimension {dimension!r}"
        if len(value) > 250 or (value.endswith("\\") and not value.endswith("\\\\")):
            return f"invalid dimension value for {name!r}"
        if re.search(r'(?<!\\)[= ,"]', value) and not (value.startswith('"') and value.endswith('"')):
            return f"unescaped character in dimension value for {name!r}"
    payload = parts[1]
    summary = _GAUGE_SUMMARY.fullmatch(payload)
    if summary:
        low, high, total, count = (float(summary.group(i)) for i in range(1, 5))
        if count < 1 or not low <= total / count <= high:
            return "inconsistent gauge fields: min <= avg <= max doesn't hold"
    elif not _SINGLE.fullmatch(payload):
        return f"invalid payload {payload!r}"
    if len(parts) == 3:
        if not parts[2].isdigit():
            return "invalid timestamp"
        if not now_ms - 3_600_000 <= int(parts[2]) <= now_ms + 600_000:
            return "timestamp outside the accepted range"
    return None


class FakeDynatrace(FakeReceiver):
    def __init__(self, token: str | None = "dt0c01.TEST", refuse_keys: set[str] = frozenset(),
                 max_body_bytes: int = MAX_BODY_BYTES):
        super().__init__()
        self.token = token
        self.refuse_keys = set(refuse_keys)
        self.max_body_bytes = max_body_bytes
        self.accepted_lines: list[str] = []

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or not request.path.endswith("/metrics/ingest"):
            return _json(404, {"error": {"code": 404, "message": "Not found"}})
        if self.token is not None and request.headers.get("authorization") != f"Api-Token {self.token}":
            return _json(401, {"error": {"code": 401, "message": "Missing authorization parameter."}})
        if not request.headers.get("content-type", "").startswith("text/plain"):
            return _json(415, {"error": {"code": 415, "message": "Unsupported media type"}})
        if len(request.body) > self.max_body_bytes:
            return _json(413, {"error": {"code": 413, "message": "Payload too large"}})
        lines = [line for line in request.body.decode("utf-8").split("\n") if line.strip()]
        if not lines:
            return _json(400, {"linesOk": 0, "linesInvalid": 0, "error": {"code": 400, "message": "empty request", "invalidLines": []}})
        now_ms = int(time.time() * 1000)
        invalid = []
        for number, line in enumerate(lines, start=1):
            problem = line_error(line, now_ms)
            if problem is None and line.split(",")[0].split(" ")[0] in self.refuse_keys:
                problem = "refused by the test"
            if problem is None:
                self.accepted_lines.append(line)
            else:
                invalid.append({"line": number, "error": problem})
        if not invalid:
            return _json(202, {"linesOk": len(lines), "linesInvalid": 0, "error": None, "warnings": None})
        return _json(400, {
            "linesOk": len(lines) - len(invalid), "linesInvalid": len(invalid),
            "error": {"code": 400, "message": f"First {min(10, len(invalid))} errors reported", "invalidLines": invalid[:10]},
        })


def _json(status: int, document: dict) -> Answer:
    return Answer(status, {"Content-Type": "application/json;charset=utf-8"}, json.dumps(document).encode())
