"""Format codecs: pure functions from bytes to raw items and back. No I/O, no clock, no settings.

Every decoder reports a body it cannot use as ``BodyError`` with the HTTP status that fits
(400 malformed, 413 too large, 415 unsupported), the reason, and where known the position.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field


class BodyError(Exception):
    """A request body that cannot be decoded as a whole."""

    def __init__(self, status: int, message: str, **where: object):
        super().__init__(message)
        self.status = status
        self.message = message
        self.where = where

    def to_json(self) -> dict:
        return {"error": self.message, **self.where}


@dataclass(frozen=True, slots=True)
class Refused:
    """A part of a request that could not become a metric. ``origin`` is where the client
    sent it, in the client's own terms: a JSON pointer, a 1-based Dynatrace line number..."""

    origin: object
    message: str


@dataclass
class Decoded:
    """What a decoder read: raw items in the canonical shape of ``schemas/metric.schema.json``
    (validated afterwards by the one Normalizer), and where each came from.

    ``item_pointer(i)`` is the JSON pointer of item i in the request (canonical JSON);
    ``origins[i]``, when given, is item i's origin as the client names it (a vendor format).
    ``refused`` lists parts the decoder itself could not read; ``skipped`` counts, by reason,
    parts that are deliberately not metrics (metadata lines, staleness markers).
    """

    items: list
    item_pointer: Callable[[int], str] = lambda i: f"/{i}"
    may_hold_surrogates: bool = False
    origins: list | None = None
    refused: list[Refused] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def origin(self, index: int) -> object:
        return self.origins[index] if self.origins is not None else self.item_pointer(index)


@dataclass
class Outcome:
    """What became of one vendor-format request, for that format's ``answer``.

    ``problems`` are the refusals of the decoder and of validation together, in request order
    and cut to a bounded number; ``rejected`` counts them all; ``units`` is how many parts the
    client sent (Dynatrace: non-empty lines, metadata included), ``delivery`` the per-sink report.
    """

    accepted: int
    rejected: int
    problems: list[Refused]
    units: int
    skipped: dict[str, int] = field(default_factory=dict)
    delivery: dict = field(default_factory=dict)


# A format's answer: HTTP status, body, extra headers. The body is JSON (a dict), None (an empty
# body) or bytes in the format's own encoding, with its Content-Type among the headers.
Answer = tuple[int, dict | bytes | None, dict]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_PARAMETER = re.compile(rf'{_TOKEN}[ \t]*=[ \t]*(?:{_TOKEN}|"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*")')
MAX_GZIP_MEMBERS = 1000
_GZIP_PIECE = 65536  # input fed to zlib at a time: what it copies per call stays small


def media_type(content_type: str | None) -> str:
    """'Application/JSON; charset=utf-8' -> 'application/json'; '' when none was sent.

    A Content-Type that is not ``type/subtype`` with well-formed parameters (RFC 9110 8.3)
    raises BodyError 415 rather than being read as a missing one."""
    if content_type is None or not content_type.strip():
        return ""
    kind, *parameters = content_type.split(";")
    kind = kind.strip(" \t")
    if not _MEDIA_TYPE.fullmatch(kind) or not all(
            _PARAMETER.fullmatch(p.strip(" \t")) for p in parameters if p.strip(" \t")):
        shown = content_type if len(content_type) <= 80 else content_type[:80] + "…"
        raise BodyError(415, f"the Content-Type {shown!r} is not a media type (type/subtype[; name=value])")
    return kind.lower()


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo a gzip Content-Encoding without ever holding more than ``max_bytes`` decoded bytes.

    Every member is read, as ``gzip -d`` does (``cat a.gz b.gz`` is one valid gzip body), up
    to MAX_GZIP_MEMBERS; anything after the last member that is not gzip is refused."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    if not body:
        raise BodyError(400, "the gzip body is empty")
    view = memoryview(body)
    parts: list[bytes] = []
    size = position = members = 0
    while position < len(body):
        members += 1
        if members > MAX_GZIP_MEMBERS:
            raise BodyError(400, f"the gzip body has more than {MAX_GZIP_MEMBERS} members")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        start = position
        while not inflater.eof and position < len(body):
            piece = view[position:position + _GZIP_PIECE]
            try:
                data = inflater.decompress(piece, max_bytes - size + 1)
            except zlib.error as exc:
                what = "cannot be decompressed" if members == 1 else f"has data after member {members - 1} that is not gzip"
                raise BodyError(400, f"the gzip body {what}: {exc}", position=start) from None
            size += len(data)
            if size > max_bytes:
                raise BodyError(413, f"the decompressed body is over the limit of {max_bytes} bytes")
            parts.append(data)
            position += len(piece) - len(inflater.unused_data) - len(inflater.unconsumed_tail)
        if not inflater.eof:
            raise BodyError(400, "the gzip body is truncated", position=start)
    return b"".join(parts)
