"""Azure Monitor custom metrics in: what a client POSTs to ``{region}.monitoring.azure.com{resourceId}/metrics``.

The route is ``POST /api/azure/{*resourceId}``: a client (Telegraf's azure_monitor output, a
script following Microsoft's REST sample) changes only its base URL, so the rest of the path is
``<resource id>/metrics``. One trailing ``/metrics`` is required and removed; the resource id
must name a resource, not a subscription or resource group (the check the settings use).
Points keep that resource id as their Azure target; the region is in the host name the client
used, not in the body, so the points carry none (the Azure sink's default region applies).

Bodies (CONTRACTS 1.3): one JSON document (``application/json``) or NDJSON, one per line
(``application/x-ndjson``); gzip is undone by the pipeline. A document is
``{"time", "data": {"baseData": {"metric", "namespace", "dimNames", "series": [...]}}}`` and each
series ``{"dimValues", "min", "max", "sum", "count"}`` becomes one aggregate: the metric name and
namespace as written, tags from ``dimNames`` paired with ``dimValues``, ``dt`` from ``time``
(ISO 8601; a one-digit offset hour as in Microsoft's own sample, ``-7:00``, is read as ``-07:00``).
This is the shape the Azure sink writes, so what it sends comes back as the same aggregates
(with its own conversions: names reduced to ``[A-Za-z0-9_]``, points merged per minute, gauges
and counters sent as one observation each).

A document without that shape is refused whole with the field named (``/data/baseData/metric``);
a series whose ``dimValues`` do not match ``dimNames`` is refused alone; the numbers of a series
are checked by the Normalizer as the aggregate's (``count`` a whole number of at least 1,
``min <= sum/count <= max``). Origins are JSON pointers into the document, after the NDJSON
line number for NDJSON (``line 3 /data/baseData/series/1``).

Answers as the service does: 200 with an empty body when everything was taken; otherwise 400
``{"error": {"code": "BadRequest", "message": ...}}`` naming the first problems, while the valid
series are still taken (a client such as Telegraf does not resend a batch after a 400).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.formats.canonical import JSON_TYPES, NDJSON_TYPES, load_json, may_hold_surrogates
from bridges.setting_rows import resource_id as checked_resource_id
from bridges.timestamps import TimestampError, parse_timestamp

SUPPORTED = "application/json or application/x-ndjson"
MAX_PROBLEMS_SHOWN = 5
ERROR_CODES = {400: "BadRequest", 404: "ResourceNotFound", 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType",
               503: "ServiceUnavailable"}
_SHORT_OFFSET = re.compile(r"([+-])(\d)(:\d\d)?$")
_SERIES_FIELDS = ("min", "max", "sum", "count")
_AGGREGATE_FIELD = re.compile(r"/aggregate(/(?:min|max|sum|count))?: ")


class _Refusal(Exception):
    """A document or series that cannot be read; ``pointer`` names the field."""

    def __init__(self, pointer: str, message: str):
        super().__init__(message)
        self.pointer = pointer
        self.message = message


def decode(body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
    resource_id = target_resource(params.get("resourceId", ""))
    kind = media_type(content_type)
    if not body.strip():
        raise BodyError(400, "the body is empty: send a custom metric document (JSON) or documents (NDJSON)")
    if kind in NDJSON_TYPES:
        documents: list[tuple[int | None, bytes]] = [
            (number, line) for number, line in enumerate(body.split(b"\n"), start=1) if line.strip()
        ]
    elif kind in JSON_TYPES:
        documents = [(None, body)]
    else:
        raise BodyError(415, f"unsupported Content-Type {kind[:80]!r}: send {SUPPORTED}")
    # JSON escapes can spell lone surrogates: let the Normalizer check the text.
    decoded = Decoded([], origins=[], may_hold_surrogates=may_hold_surrogates(body))
    for number, data in documents:
        prefix = "" if number is None else f"line {number} "
        try:
            document = load_json(data) if number is None else _parse_line(data, number)
            _read_document(document, prefix, resource_id, decoded)
        except _Refusal as refusal:
            decoded.refused.append(Refused(_origin(prefix, refusal.pointer), refusal.message))
    return decoded


def _origin(prefix: str, pointer: str) -> str:
    """``line 3 /data/baseData/series/1`` for NDJSON, the bare pointer for JSON ("" is the document)."""
    return (prefix + pointer).strip()


def target_resource(path: str) -> str:
    """The resource id for the rest of the route path: ``subscriptions/.../metrics`` ->
    ``/subscriptions/...``; raises BodyError when it is not a resource's metrics path."""
    path = path.strip("/")
    head, slash, tail = path.rpartition("/")
    if not slash or tail.lower() != "metrics":
        raise BodyError(404, "no such endpoint: post custom metrics to /api/azure/<resource id>/metrics")
    resource_id = "/" + head
    try:
        valid = checked_resource_id(resource_id)
    except ValueError:
        valid = None
    if valid is None:
        raise BodyError(400, f"{resource_id[:300]!r} is not the id of an Azure resource "
                             "(/subscriptions/.../resourceGroups/.../providers/...): custom metrics cannot be "
                             "sent to a subscription or resource group")
    return valid


def _parse_line(data: bytes, number: int) -> object:
    """One NDJSON document; a malformed line is refused alone, the others are still read."""
    try:
        return load_json(data, line=number)
    except BodyError as error:
        column = error.where.get("column")
        raise _Refusal("", error.message + (f" (column {column})" if column else "")) from None


def _read_document(document: object, prefix: str, resource_id: str, decoded: Decoded) -> None:
    if not isinstance(document, dict):
        raise _Refusal("", "a custom metric document must be a JSON object")
    time = document.get("time")
    if not isinstance(time, str):
        raise _Refusal("/time", "'time' is required: an ISO 8601 time such as 2024-01-07T18:25:20Z")
    time = _SHORT_OFFSET.sub(r"\g<1>0\2\3", time)
    try:
        parse_timestamp(time)
    except TimestampError as problem:
        raise _Refusal("/time", f"'time' {time[:60]!r} cannot be read: {problem}") from None
    data = document.get("data")
    base = data.get("baseData") if isinstance(data, dict) else None
    if not isinstance(base, dict):
        raise _Refusal("/data/baseData", "'data.baseData' is required: an object with metric, namespace and series")
    metric, namespace = base.get("metric"), base.get("namespace")
    if not isinstance(metric, str):
        raise _Refusal("/data/baseData/metric", "'metric' is required: the metric name, a string")
    if not isinstance(namespace, str):
        raise _Refusal("/data/baseData/namespace", "'namespace' is required: the metric namespace, a string")
    names = base.get("dimNames") or []
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise _Refusal("/data/baseData/dimNames", "'dimNames' must be an array of strings")
    if len(set(names)) != len(names):
        raise _Refusal("/data/baseData/dimNames", "'dimNames' names a dimension twice")
    series = base.get("series")
    if not isinstance(series, list) or not series:
        raise _Refusal("/data/baseData/series", "'series' is required: an array of at least one series")
    head = {"name": metric, "dt": time, "namespace": namespace, "azure": {"resource_id": resource_id}}
    for index, entry in enumerate(series):
        pointer = f"/data/baseData/series/{index}"
        try:
            item = _series(entry, names, head, pointer)
        except _Refusal as refusal:
            decoded.refused.append(Refused(_origin(prefix, refusal.pointer), refusal.message))
            continue
        assert decoded.origins is not None  # this decoder names every item's origin
        decoded.items.append(item)
        decoded.origins.append(_origin(prefix, pointer))


def _series(entry: object, names: list, head: dict, pointer: str) -> dict:
    if not isinstance(entry, dict):
        raise _Refusal(pointer, "a series must be an object with dimValues, min, max, sum and count")
    values = entry.get("dimValues") or []
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise _Refusal(pointer + "/dimValues", "'dimValues' must be an array of strings")
    if len(values) != len(names):
        raise _Refusal(pointer + "/dimValues",
                       f"'dimValues' holds {len(values)} values for {len(names)} 'dimNames': they must match one to one")
    item = dict(head)
    item["aggregate"] = {field: entry[field] for field in _SERIES_FIELDS if field in entry}
    if names:
        item["tags"] = dict(zip(names, values, strict=True))
    return item


def answer(outcome: Outcome) -> Answer:
    """200 and no body when everything was taken; else 400 BadRequest naming the first problems."""
    if outcome.rejected == 0:
        return 200, None, {}
    shown = [_described(problem) for problem in outcome.problems[:MAX_PROBLEMS_SHOWN]]
    more = outcome.rejected - len(shown)
    message = f"{outcome.rejected} of the series or documents could not be taken: " + "; ".join(shown)
    if more > 0:
        message += f"; and {more} more"
    return 400, {"error": {"code": "BadRequest", "message": message}}, {}


def _described(problem: Refused) -> str:
    """``origin: message``, a field of the aggregate named as the series field it came from
    (``/data/baseData/series/1/count: ...`` rather than ``... /aggregate/count: ...``)."""
    origin, message = str(problem.origin), problem.message
    field = _AGGREGATE_FIELD.match(message)
    if field:
        origin, message = origin + (field.group(1) or ""), message[field.end():]
    return f"{origin}: {message}" if origin else message


def _code(status: int) -> str:
    return ERROR_CODES.get(status) or ("BadRequest" if status < 500 else "InternalServerError")


def refuse(error: BodyError) -> Answer:
    """Azure's error body ``{"error": {"code", "message"}}`` for a body that cannot be read."""
    message = error.message
    if error.where:
        message += " (" + ", ".join(f"{name} {value}" for name, value in error.where.items()) + ")"
    return error.status, {"error": {"code": _code(error.status), "message": message}}, {}
