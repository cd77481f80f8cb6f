"""A fake Azure Monitor workspace remote-write endpoint enforcing CONTRACTS 2.8.

POST ``/dataCollectionRules/<dcr>/streams/Microsoft-PrometheusMetrics/api/v1/write`` with an
``api-version`` query; the remote-write headers; ``Authorization: Bearer`` with a token from
the fake identity endpoint for ``https://monitor.azure.com/`` (401 without one, 403 for
another audience, as during role propagation); a snappy BLOCK body (framed -> 400) holding a
protobuf WriteRequest, parsed here by hand from the wire format (independent of the sink's
protobuf description); every series with ``__name__``, sorted unique non-empty label names
matching the spec's regexes, non-empty values, samples in timestamp order. 204 on success.
``refuse`` names metrics whose presence makes the whole request 400, as a real receiver does
for one out-of-order sample. Scripted answers (429/500/503/403, resets) come from FakeReceiver.
"""
from __future__ import annotations

import re
import struct

import cramjam

from fakes.identity import audience_of
from fakes.server import Answer, FakeReceiver, Received

PATH = re.compile(r"^/dataCollectionRules/dcr-[0-9a-f]{32}/streams/Microsoft-PrometheusMetrics/api/v1/write$")
WRITE_PATH = "/dataCollectionRules/dcr-3ff856c920bd45b08e8c11526c753824/streams/Microsoft-PrometheusMetrics/api/v1/write"
AUDIENCE = "https://monitor.azure.com/"
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
FRAMED = b"\xff\x06\x00\x00sNaPpY"


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; value is int, float or bytes."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = struct.unpack_from("<d", data, position)[0], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position:position + length], position + length
            if position > len(data):
                raise ValueError("truncated field")
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield number, wire, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ValueError("truncated varint")
        byte = data[position]
        result |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return result, position
        shift += 7


def parse_write_request(data: bytes) -> list[dict]:
    """[{"labels": [(name, value), ...], "samples": [(value, timestamp ms), ...]}] from protobuf bytes."""
    series = []
    for number, wire, value in _fields(data):
        if (number, wire) != (1, 2):
            raise ValueError(f"WriteRequest field {number} (wire type {wire}) is not in remote-write 1.0")
        labels, samples = [], []
        for n, w, v in _fields(value):
            if (n, w) == (1, 2):
                pair = {k: val.decode("utf-8") for k, wt, val in _fields(v) if wt == 2}
                labels.append((pair.get(1, ""), pair.get(2, "")))
            elif (n, w) == (2, 2):
                sample = {k: val for k, wt, val in _fields(v)}
                stamp = sample.get(2, 0)
                samples.append((sample.get(1, 0.0), stamp - (1 << 64) if stamp >= 1 << 63 else stamp))
            else:
                raise ValueError(f"TimeSeries field {n} (wire type {w}) is not in remote-write 1.0")
        series.append({"labels": labels, "samples": samples})
    return series


def series_error(entry: dict) -> str | None:
    """Why one TimeSeries breaks the remote-write 1.0 rules, or None."""
    labels = entry["labels"]
    names = [name for name, _ in labels]
    if not labels:
        return "a series without labels"
    if names != sorted(names, key=lambda n: n.encode()):
        return f"labels not sorted: {names}"
    if len(set(names)) != len(names):
        return f"duplicate label names: {names}"
    values = dict(labels)
    if "__name__" not in values:
        return "no __name__ label"
    if not METRIC_NAME.match(values["__name__"]):
        return f"invalid metric name {values['__name__']!r}"
    for name, value in labels:
        if not LABEL_NAME.match(name) or (name.startswith("__") and name != "__name__"):
            return f"invalid label name {name!r}"
        if value == "":
            return f"empty value for label {name!r}"
    if not entry["samples"]:
        return "a series without samples"
    stamps = [t for _, t in entry["samples"]]
    if stamps != sorted(stamps):
        return "samples out of timestamp order"
    return None


class FakePrometheusWrite(FakeReceiver):
    def __init__(self, refuse: set[str] | frozenset = frozenset()) -> None:
        super().__init__()
        self.refuse = set(refuse)
        self.accepted: list[dict] = []  # every series of every accepted request, labels as dicts

    @property
    def write_url(self) -> str:
        return f"{self.url}{WRITE_PATH}?api-version=2023-04-24"

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or not PATH.match(request.path):
            return Answer(404, body=b"no such data collection rule stream")
        if not request.query.get("api-version"):
            return Answer(400, body=b"api-version is required")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return Answer(401, body=b"missing bearer token")
        if audience_of(token) != AUDIENCE:
            return Answer(403, body=f"token audience {audience_of(token)!r} is not {AUDIENCE}".encode())
        for header, expected in (("content-encoding", "snappy"), ("content-type", "application/x-protobuf"),
                                 ("x-prometheus-remote-write-version", "0.1.0")):
            if request.headers.get(header) != expected:
                return Answer(400, body=f"{header} must be {expected}".encode())
        if not request.headers.get("user-agent"):
            return Answer(400, body=b"user-agent is required")
        if request.body.startswith(FRAMED):
            return Answer(400, body=b"snappy: framed format, expected block format")
        try:
            series = parse_write_request(bytes(cramjam.snappy.decompress_raw(request.body)))
        except Exception as exc:  # noqa: BLE001 - a bad body is the sender's fault: 400
            return Answer(400, body=f"cannot decode body: {exc}".encode())
        for entry in series:
            problem = series_error(entry)
            if problem is None and dict(entry["labels"])["__name__"] in self.refuse:
                problem = "out of order sample (refused by the test)"
            if problem is not None:
                return Answer(400, body=problem.encode())
        with self._lock:
            self.accepted += [{"labels": dict(e["labels"]), "samples": e["samples"]} for e in series]
        return Answer(204)
