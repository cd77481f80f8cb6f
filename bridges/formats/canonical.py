"""The canonical format (a superset of Better Stack's): JSON, NDJSON and MessagePack.

A body is one metric object, an array of them, or ``{"metrics": [...]}``; NDJSON is one
metric per line. ``decode`` returns the raw items and how to point into the document;
``encode_ndjson`` writes canonical metrics one per line.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable

from bridges.formats import BodyError, Decoded, media_type
from bridges.timestamps import MAX_TIME_NS, NS_PER_SECOND, format_rfc3339

JSON_TYPES = ("application/json", "text/json", "")
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines")
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
SUPPORTED = "application/json, application/x-ndjson or application/msgpack"


def decode(body: bytes, content_type: str | None) -> Decoded:
    kind = media_type(content_type)
    if not body.strip():
        raise BodyError(400, "the body is empty")
    if kind in JSON_TYPES:
        decoded = _container(load_json(body))
    elif kind in NDJSON_TYPES:
        decoded = Decoded(_load_ndjson(body), lambda i: f"/{i}")
    else:
        decoded = None
    if decoded is not None:
        decoded.may_hold_surrogates = may_hold_surrogates(body)
        return decoded
    if kind in MSGPACK_TYPES:
        decoded = _container(_load_msgpack(body))
        _msgpack_timestamps_to_text(decoded.items)
        return decoded
    raise BodyError(415, f"unsupported Content-Type {kind!r}: send {SUPPORTED}")


def may_hold_surrogates(body: bytes) -> bool:
    """Whether JSON text may decode to lone surrogates (only \\uD800-\\uDFFF escapes make them),
    so that the costly per-string Unicode check runs only then."""
    return _SURROGATE_ESCAPE.search(body) is not None


def _container(document: object) -> Decoded:
    if isinstance(document, list):
        return Decoded(document, lambda i: f"/{i}")
    if isinstance(document, dict) and "metrics" in document and "name" not in document:
        metrics = document["metrics"]
        if not isinstance(metrics, list):
            raise BodyError(400, "'metrics' must be an array of metric objects", pointer="/metrics")
        return Decoded(metrics, lambda i: f"/metrics/{i}")
    return Decoded([document], lambda i: "")


def load_json(data: bytes, line: int | None = None) -> object:
    """Parse JSON; ``line`` is the NDJSON line number, where the data is one line of a body."""
    where = {} if line is None else {"line": line}
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        if line is None:
            where = {"line": exc.lineno, "column": exc.colno, "position": exc.pos}
        else:
            where["column"] = exc.colno
        raise BodyError(400, f"malformed JSON: {exc.msg}", **where) from None
    except UnicodeDecodeError as exc:
        raise BodyError(400, "the body is not valid UTF-8", position=exc.start, **where) from None
    except RecursionError:
        raise BodyError(400, "the JSON is nested too deeply", **where) from None
    except ValueError:  # only Python's limit on the digits of an integer is left to raise this
        where = _long_number_position(data, line)
        at = ", ".join(f"{name} {value}" for name, value in where.items())
        raise BodyError(400, f"the number at {at} has more than {MAX_INTEGER_DIGITS} digits", **where) from None


MAX_INTEGER_DIGITS = sys.get_int_max_str_digits() or 4300
# Strings are skipped whole, so that digits inside them are never taken for a number.
_STRING_OR_LONG_NUMBER = re.compile(
    rb'"(?:[^"\\]|\\.)*"|(?<![0-9.eE+-])(-?[0-9]{%d,})(?![0-9.eE])' % (MAX_INTEGER_DIGITS + 1), re.DOTALL)


def _long_number_position(data: bytes, line: int | None) -> dict:
    """Where the first integer too long for Python starts, as the JSON error positions are given."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    for match in _STRING_OR_LONG_NUMBER.finditer(data):
        if match.group(1) is not None:
            start = match.start(1)
            column = start - data.rfind(b"\n", 0, start)
            if line is not None:
                return {"line": line, "column": column}
            return {"line": data.count(b"\n", 0, start) + 1, "column": column, "position": start}
    return {} if line is None else {"line": line}


def _load_ndjson(body: bytes) -> list:
    items = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            items.append(load_json(line, line=number))
    return items


def _load_msgpack(body: bytes) -> object:
    import msgpack

    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(body), 1))
    unpacker.feed(body)
    try:
        document = unpacker.unpack()
    except msgpack.OutOfData:
        raise BodyError(400, "malformed MessagePack: the body ends in the middle of a value", position=len(body)) from None
    except msgpack.StackError:
        raise BodyError(400, "the MessagePack is nested too deeply") from None
    except UnicodeDecodeError:
        raise BodyError(400, "malformed MessagePack: a string is not valid UTF-8", position=unpacker.tell()) from None
    except (ValueError, TypeError) as exc:
        raise BodyError(400, f"malformed MessagePack: {exc}", position=unpacker.tell()) from None
    if unpacker.tell() != len(body):
        raise BodyError(400, "malformed MessagePack: extra data after the first value", position=unpacker.tell())
    return document


def _msgpack_timestamps_to_text(items: list) -> None:
    """MessagePack's timestamp extension becomes RFC 3339 text, exact to the nanosecond."""
    import msgpack

    for item in items:
        if isinstance(item, dict) and isinstance(item.get("dt"), msgpack.Timestamp):
            stamp = item["dt"]
            time_ns = stamp.seconds * NS_PER_SECOND + stamp.nanoseconds
            # Out of range stays a number, so normalization rejects it with its own message.
            item["dt"] = format_rfc3339(time_ns) if 0 <= time_ns <= MAX_TIME_NS else time_ns


def encode_ndjson(metrics: Iterable) -> bytes:
    """Canonical NDJSON: one compact JSON object per line, each newline-terminated."""
    return b"".join(
        json.dumps(m.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"
        for m in metrics
    )
