"""Format codecs: pure functions from bytes to raw items and back. No I/O, no clock, no settings.

Every decoder reports a body it cannot use as ``BodyError`` with the HTTP status that fits
(400 malformed, 413 too large, 415 unsupported), the reason, and where known the position.
"""
from __future__ import annotations

import zlib


class BodyError(Exception):
    """A request body that cannot be decoded as a whole."""

    def __init__(self, status: int, message: str, **where: object):
        super().__init__(message)
        self.status = status
        self.message = message
        self.where = where

    def to_json(self) -> dict:
        return {"error": self.message, **self.where}


def media_type(content_type: str | None) -> str:
    """'Application/JSON; charset=utf-8' -> 'application/json'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo a gzip Content-Encoding without ever holding more than ``max_bytes`` decoded bytes."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BodyError(400, f"the gzip body cannot be decompressed: {exc}") from None
    if len(data) > max_bytes:
        raise BodyError(413, f"the decompressed body is over the limit of {max_bytes} bytes")
    if not inflater.eof:
        raise BodyError(400, "the gzip body is truncated")
    return data
