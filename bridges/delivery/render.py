"""Requests in a form a person (and a golden file) can read: secrets masked, bodies decoded.

Used by ``python -m bridges render`` and by the sinks' golden tests, so both show the same.
"""
from __future__ import annotations

import json

from bridges.delivery.sinks.base import Request
from bridges.formats import media_type
from bridges.masking import masked_headers
from bridges.timestamps import NS_PER_SECOND, format_rfc3339


def readable_body(body: bytes, content_type: str) -> object:
    kind = media_type(content_type)
    if kind == "text/plain":
        return body.decode("utf-8").split("\n")
    if kind == "application/json":
        return json.loads(body)
    if kind == "application/x-ndjson":
        return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
    if kind == "application/msgpack":
        import msgpack

        return _timestamps_as_text(msgpack.unpackb(body, raw=False))
    return body.hex()


def _timestamps_as_text(value: object) -> object:
    import msgpack

    if isinstance(value, msgpack.Timestamp):
        return format_rfc3339(value.seconds * NS_PER_SECOND + value.nanoseconds)
    if isinstance(value, list):
        return [_timestamps_as_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _timestamps_as_text(v) for k, v in value.items()}
    return value


def decoded(body: bytes, content_encoding: str, content_type: str) -> object:
    """The body without its Content-Encoding, decoded by type (remote-write: snappy + protobuf)."""
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        import gzip

        return readable_body(gzip.decompress(body), content_type)
    if encoding == "snappy" and media_type(content_type) == "application/x-protobuf":
        from bridges.formats.remote_write import decode_write_request

        return decode_write_request(body)
    return readable_body(body, content_type)


def readable(request: Request) -> dict:
    lowered = {k.lower(): v for k, v in request.headers.items()}
    return {
        "method": request.method,
        "url": request.url,
        "headers": masked_headers(request.headers),
        "body": decoded(request.body, lowered.get("content-encoding", ""), lowered.get("content-type", "")),
    }
