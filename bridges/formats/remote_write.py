"""Prometheus remote-write 1.0 bodies: a protobuf ``WriteRequest`` in the snappy BLOCK format,
written for the Prometheus sink and read for the input route ``POST /api/v1/write``.

The messages are built at first use from a description written from the spec's field numbers
(CONTRACTS 2.4) and prompb's ``MetricMetadata``, in a private descriptor pool, so no generated
``*_pb2.py`` or protoc is needed and nothing clashes with another library's ``prometheus.proto``::

    WriteRequest   { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }  (2 reserved)
    TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2; }
    Label          { string name = 1; string value = 2; }
    Sample         { double value = 1; int64 timestamp = 2; }   (milliseconds)
    MetricMetadata { MetricType type = 1; string metric_family_name = 2; string help = 4; string unit = 5; }

The sink never writes metadata, so its bytes are those of the 1.0 spec. Label sets are
serialized by the protobuf runtime (once each, cached); each sample's few bytes
are framed here, since a runtime message per sample made encoding 5.6x the speed floor
(2.4x this way). Snappy: ``cramjam.snappy.compress_raw`` (block). ``cramjam.snappy.compress`` writes the framed
format, which receivers refuse with 400.

Reading (``decode``, ``answer``, ``refuse``: the input-format contract). The body is snappy
block data whatever the Content-Encoding says (the pipeline leaves ``snappy`` to us); its
declared length is checked against the size limit before anything is inflated (413), and
framed snappy, bad snappy or bad protobuf are 400. Content-Type must be
``application/x-protobuf`` (or absent; Prometheus itself ignores it); a remote-write 2.0 body
(``proto=io.prometheus.write.v2.Request``) is 415, as the 2.0 spec asks of 1.0-only receivers.

Each TimeSeries: ``__name__`` is the name, the other labels the tags (a label with an empty
value is no label, as in Prometheus). A series without ``__name__``, with a repeated or empty
label name is refused whole (origin ``timeseries[i]``). Samples: the millisecond timestamp is
the point's time, exactly (0 is 1970, as for Prometheus). Staleness markers (the NaN
``0x7ff0000000000002``) are skipped and counted, never refused; any other NaN or infinity is
refused, as the canonical model holds finite numbers. A series without samples (e.g. native
histograms, which 1.0 does not define) is skipped and counted.

Types (1.0 carries none, so they are recovered):
- metadata decides a family's type (COUNTER, GAUGE, HISTOGRAM/GAUGEHISTOGRAM, SUMMARY; INFO,
  STATESET and UNKNOWN read as gauges) and gives the description (help, cut to 1024 characters)
  and unit; OpenMetrics counters' metadata names the family without ``_total``. The request's
  own metadata first; else what earlier requests sent: Prometheus sends its metadata in
  requests of their own (every ``metadata_config.send_interval``, 1 minute by default), so each
  process remembers type, help and unit per family (``KnownFamilies``, ``KNOWN``), updated by
  every request's metadata (metadata-only or not; the latest wins) and applied to later samples
  of the family. It is bounded: at most MAX_KNOWN_FAMILIES (10,000) families, least recently
  sent or used forgotten first (a large Prometheus sends a few thousand families; a forgotten one
  is learnt again at the next send); help kept cut, names and units no metric can carry not kept,
  so memory stays bounded whatever a sender sends: about 55 MB at worst (every family with the
  longest name, help and unit, all in 4-byte characters), about 3 MB for 10,000 typical ones.
  A sample that arrives before its family's first metadata reads by naming alone; a request
  refused whole teaches nothing. The reading stays pure (it sees only the merged metadata):
  ``decode`` looks up and updates the cache it is given (default ``KNOWN``) once per request,
  under its lock, as the host may run requests at once; tests give their own or clear ``KNOWN``.
- otherwise Prometheus naming, per (family, other labels, timestamp):
  ``<x>_bucket{le}`` with ``<x>_sum`` and ``<x>_count`` -> ONE histogram (per-bucket counts from the
  cumulative ones; the ``+Inf`` bucket is the count); ``<x>{quantile}`` with ``<x>_sum`` and
  ``<x>_count`` -> one summary (NaN quantiles, Prometheus's value for an empty summary, are left
  out and counted); ``<x>_min``, ``_max``, ``_sum``, ``_count`` together -> an aggregate;
  ``<x>_total`` -> cumulative counter; ``<x>_delta`` with a value >= 0 -> a delta counter named
  ``<x>``; anything else a gauge.
- a family that is incomplete or inconsistent (buckets without ``_count``, counts that are not
  whole numbers or go down, a bucket twice) is not lost: its series become gauges as named.
Those rules undo the Prometheus sink's naming (``bridges.delivery.sinks.prometheus.sink``): gauges, counters
named ``*_total``, delta counters, histograms, summaries with quantiles and aggregates come back
as they were sent (tags as sanitized there). What the wire cannot say does not come back: a
cumulative counter not named ``*_total`` returns as a gauge, a summary without quantiles as
gauges ``_sum`` and ``_count``, times to the millisecond; unit, description, namespace and Azure
target are not sent (the sink writes no metadata).

``answer``: 204 with no body when nothing was refused; otherwise 400 ``{"error": "<n> samples
refused: <first reasons>"}`` (the spec: 400 for invalid samples, not to be retried; the valid
ones were still accepted). ``refuse``: the status with ``{"error": message}``.
"""
from __future__ import annotations

import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.timestamps import format_rfc3339

Labels = Sequence[tuple[str, str]]  # sorted (name, value) pairs, __name__ among them
METRIC_TYPES = ("UNKNOWN", "COUNTER", "GAUGE", "HISTOGRAM", "GAUGEHISTOGRAM", "SUMMARY", "INFO", "STATESET")


@lru_cache(maxsize=1)
def _classes() -> dict:
    """Every message class of the description, by name, built once per process."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="bridges/remote_write_v1.proto", package="bridges.prw", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None]) -> descriptor_pb2.DescriptorProto:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=F.LABEL_OPTIONAL)
            if type_name is not None:
                field.type_name = type_name
                if kind == F.TYPE_MESSAGE:  # the message fields, all repeated
                    field.label = F.LABEL_REPEATED
        return proto

    message("Label", ("name", 1, F.TYPE_STRING, None), ("value", 2, F.TYPE_STRING, None))
    message("Sample", ("value", 1, F.TYPE_DOUBLE, None), ("timestamp", 2, F.TYPE_INT64, None))
    message("TimeSeries", ("labels", 1, F.TYPE_MESSAGE, ".bridges.prw.Label"),
            ("samples", 2, F.TYPE_MESSAGE, ".bridges.prw.Sample"))
    metadata = message("MetricMetadata", ("type", 1, F.TYPE_ENUM, ".bridges.prw.MetricMetadata.MetricType"),
                       ("metric_family_name", 2, F.TYPE_STRING, None), ("help", 4, F.TYPE_STRING, None),
                       ("unit", 5, F.TYPE_STRING, None))
    enum = metadata.enum_type.add(name="MetricType")
    for number, name in enumerate(METRIC_TYPES):
        enum.value.add(name=name, number=number)
    write_request = message("WriteRequest", ("timeseries", 1, F.TYPE_MESSAGE, ".bridges.prw.TimeSeries"),
                            ("metadata", 3, F.TYPE_MESSAGE, ".bridges.prw.MetricMetadata"))
    write_request.reserved_range.add(start=2, end=3)
    # the same request with each TimeSeries left as bytes, for the input's own reading of them
    as_bytes = message("WriteRequestSeriesAsBytes", ("timeseries", 1, F.TYPE_BYTES, None),
                       ("metadata", 3, F.TYPE_MESSAGE, ".bridges.prw.MetricMetadata"))
    as_bytes.field[0].label = F.LABEL_REPEATED

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {proto.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bridges.prw.{proto.name}"))
            for proto in file.message_type}


def messages():
    """(WriteRequest, TimeSeries, Label, Sample) classes, built once per process."""
    classes = _classes()
    return tuple(classes[name] for name in ("WriteRequest", "TimeSeries", "Label", "Sample"))


def write_request(series: Iterable[tuple[Labels, float, int]]) -> bytes:
    """Protobuf bytes of a WriteRequest with one TimeSeries per (labels, value, timestamp ms),
    as Prometheus itself sends them."""
    return b"".join(timeseries(label_bytes(tuple(labels)), value, timestamp) for labels, value, timestamp in series)


@lru_cache(maxsize=65536)
def label_bytes(labels: tuple[tuple[str, str], ...]) -> bytes:
    """One label set as TimeSeries field 1 entries, serialized by the protobuf runtime once
    (label sets repeat across points)."""
    _, TimeSeries, Label, _ = messages()
    return TimeSeries(labels=[Label(name=name, value=value) for name, value in labels]).SerializeToString()


def timeseries(labels: bytes, value: float, timestamp: int) -> bytes:
    """One WriteRequest field 1 entry: the cached labels plus a sample framed here, because
    building a message per sample in the runtime costs about twice the speed budget. Repeated
    fields concatenate, so a WriteRequest is its entries joined; the bytes equal the runtime's
    (proto3 zero values omitted), which a test checks."""
    packed = _DOUBLE.pack(value)
    sample = (b"" if packed == _ZERO else b"\x09" + packed) + _timestamp_field(timestamp)
    body = labels + b"\x12" + bytes((len(sample),)) + sample
    return b"\x0a" + _varint(len(body)) + body


_DOUBLE = struct.Struct("<d")
_ZERO = bytes(8)


@lru_cache(maxsize=1024)
def _timestamp_field(timestamp: int) -> bytes:
    return b"\x10" + _varint(timestamp) if timestamp else b""


def _varint(number: int) -> bytes:
    if 0 <= number < 0x80:
        return bytes((number,))
    number &= 0xFFFF_FFFF_FFFF_FFFF  # int64: negatives take ten bytes
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def compress(protobuf: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(protobuf))


def decompress(body: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.decompress_raw(body))


def decode_write_request(body: bytes) -> dict:
    """A snappy-block WriteRequest as plain data, labels in wire order (for golden files and
    ``python -m bridges render``). Raises ValueError for framed snappy, bad snappy or protobuf."""
    from google.protobuf.message import DecodeError

    if body.startswith(b"\xff\x06\x00\x00sNaPpY"):
        raise ValueError("framed snappy (remote-write needs the block format)")
    try:
        request = messages()[0].FromString(decompress(body))
    except DecodeError as exc:
        raise ValueError(f"not a WriteRequest: {exc}") from None
    except Exception as exc:  # cramjam's DecompressionError is not a ValueError
        raise ValueError(f"not snappy block data: {exc}") from None
    return {"timeseries": [
        {"labels": {label.name: label.value for label in series.labels},
         "samples": [{"value": sample.value, "timestamp": sample.timestamp} for sample in series.samples]}
        for series in request.timeseries
    ]}


# --- reading: the input format ------------------------------------------------------------

OWN_ENCODINGS = frozenset({"snappy"})
PROTOBUF = "application/x-protobuf"
STALE_NAN = 0x7FF0000000000002  # Prometheus's staleness marker, a NaN with these bits
SKIPPED_STALE = "staleness markers"
SKIPPED_EMPTY = "series without samples (native histograms are not read)"
SKIPPED_NAN_QUANTILE = "NaN quantiles of empty summaries"
MAX_SHOWN_REASONS = 3
MAX_DESCRIPTION_CHARS = 1024  # the canonical schema's limit: longer help text is cut, not refused
_FRAMED = b"\xff\x06\x00\x00sNaPpY"
_NS_PER_MS = 1_000_000
_MIN_NS_AS_INTEGER = 10**17  # parse_timestamp reads smaller integers as seconds, ms or µs: send text
_HISTOGRAMS = ("HISTOGRAM", "GAUGEHISTOGRAM")
_PLAIN = ("COUNTER", "GAUGE", "INFO", "STATESET")  # metadata types of single-series families
_PARTS = ("_sum", "_count", "_min", "_max")


def decode(body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int,
           known: KnownFamilies | None = None) -> Decoded:
    """A remote-write request as canonical items, types recovered (see the module docstring).

    ``known``: the family metadata earlier requests sent (default: this process's ``KNOWN``),
    updated with this request's and applied to its families that it sends none for."""
    from google.protobuf.message import DecodeError

    _check_content_type(content_type)
    data = inflate(body, max_bytes)
    request = _parse(data, "WriteRequestSeriesAsBytes")
    try:
        series = [_series(entry) for entry in request.timeseries]
    except DecodeError:  # some series is not valid protobuf: the runtime's own message for the request
        _parse(data)
        raise
    metadata = {m.metric_family_name: m for m in request.metadata}
    metadata = (KNOWN if known is None else known).exchange(metadata, {labels.name for labels, _ in series})
    return _decoded(series, metadata)


MAX_KNOWN_FAMILIES = 10_000  # families whose metadata a process remembers: a few Prometheus servers' worth
MAX_FAMILY_NAME_CHARS = 255  # the canonical schema's longest name: a longer family has no valid metric
MAX_UNIT_CHARS = 64  # the canonical schema's longest unit


@dataclass(frozen=True, slots=True)
class Known:
    """One family's metadata as remembered: read as a request's ``MetricMetadata`` is."""

    type: int
    help: str
    unit: str


class KnownFamilies:
    """Type, help and unit per metric family, from every request's metadata, for later requests
    that carry none: Prometheus sends its metadata in requests of its own, every
    ``metadata_config.send_interval`` (1 minute by default), apart from the samples.

    At most ``max_families`` families, the least recently sent or used forgotten first (a
    forgotten family is learnt again at the next metadata send); help is kept cut to
    MAX_DESCRIPTION_CHARS, and an entry whose family name or unit no valid metric can carry is
    not kept (it forgets what that family had), so memory stays bounded whatever a sender
    sends. One lock around each request's look-up and update: the host may run requests at once.
    """

    def __init__(self, max_families: int = MAX_KNOWN_FAMILIES) -> None:
        self.max_families = max_families
        self._families: OrderedDict[str, Known] = OrderedDict()  # least recently sent or used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._families)

    def get(self, family: str) -> Known | None:
        with self._lock:
            return self._families.get(family)

    def clear(self) -> None:
        """Forget every family (tests start from nothing)."""
        with self._lock:
            self._families.clear()

    def exchange(self, metadata: dict, names: Iterable[str]) -> dict:
        """The request's ``metadata`` (family -> MetricMetadata) plus what is known of the other
        families its series ``names`` may belong to; the request's metadata is then remembered.
        The request's own metadata always wins."""
        families = self._families
        if not families and not metadata:  # nothing known, nothing to learn (a racing update is as if later)
            return metadata
        wanted = {family for name in names for family in _families_of(name) if family not in metadata}
        with self._lock:
            merged = dict(metadata)
            for family in wanted:
                entry = families.get(family)
                if entry is not None:
                    families.move_to_end(family)
                    merged[family] = entry
            for family, entry in metadata.items():
                if not family:
                    continue
                if len(family) > MAX_FAMILY_NAME_CHARS or len(entry.unit) > MAX_UNIT_CHARS:
                    families.pop(family, None)
                    continue
                families[family] = Known(entry.type, entry.help[:MAX_DESCRIPTION_CHARS], entry.unit)
                families.move_to_end(family)
            while len(families) > self.max_families:
                families.popitem(last=False)
        return merged


KNOWN = KnownFamilies()  # this process's: one per worker process, as the label-set caches
_FAMILY_SUFFIXES = ("_bucket", "_sum", "_count", "_min", "_max", "_total")


def _families_of(name: str) -> tuple[str, ...]:
    """The families a series name may belong to: itself, and its name without a family suffix."""
    return (name, *(name[: -len(suffix)] for suffix in _FAMILY_SUFFIXES if name.endswith(suffix) and len(name) > len(suffix)))


def _decoded(series: Sequence[tuple[_LabelSet, list]], metadata: dict) -> Decoded:
    """Items, refusals and skips from each series' (label set, [(value, ms), ...])."""
    decoded = Decoded([], origins=[])
    _families_and_singles(_samples(series, metadata, decoded), metadata, decoded)
    return decoded


def answer(outcome: Outcome) -> Answer:
    """204 and no body when all was taken; 400 naming the first refusals (not to be retried)."""
    if not outcome.rejected:
        return 204, None, {}
    shown = outcome.problems[:MAX_SHOWN_REASONS]
    reasons = "; ".join(f"{problem.origin}: {problem.message}" for problem in shown)
    more = outcome.rejected - len(shown)
    noun = "sample" if outcome.rejected == 1 else "samples"
    text = f"{outcome.rejected} {noun} refused: {reasons}" + (f" (and {more} more)" if more > 0 else "")
    return 400, {"error": text}, {}


def refuse(error: BodyError) -> Answer:
    return error.status, {"error": error.message}, {}


def _check_content_type(content_type: str | None) -> None:
    kind = media_type(content_type)
    if kind not in ("", PROTOBUF):
        raise BodyError(415, f"unsupported Content-Type {kind!r}: remote-write 1.0 sends {PROTOBUF}")
    proto = [part.split("=", 1)[1].strip().strip('"') for part in (content_type or "").split(";")[1:]
             if part.strip().lower().startswith("proto=")]
    if proto and proto[0] != "prometheus.WriteRequest":
        raise BodyError(415, f"unsupported remote-write message {proto[0]!r}: this receiver reads remote-write 1.0 "
                             "(prometheus.WriteRequest)")


def inflate(body: bytes, max_bytes: int) -> bytes:
    """Snappy block data undone; what would inflate beyond ``max_bytes`` is refused first (413)."""
    if not body:
        raise BodyError(400, "the body is empty")
    if body.startswith(_FRAMED):
        raise BodyError(400, "framed snappy: remote-write bodies use the snappy block format")
    length = _declared_length(body)
    if length > max_bytes:
        raise BodyError(413, f"the body would inflate to {length} bytes, over the limit of {max_bytes} bytes")
    try:
        return decompress(body)
    except Exception as exc:  # cramjam's DecompressionError is not a ValueError
        raise BodyError(400, f"not snappy block data: {exc}") from None


def _declared_length(body: bytes) -> int:
    """The uncompressed length a snappy block starts with: a varint of at most 32 bits."""
    length = 0
    for position, byte in enumerate(body[:5]):
        length |= (byte & 0x7F) << (7 * position)
        if byte < 0x80:
            if length > 0xFFFF_FFFF:
                break
            return length
    raise BodyError(400, "not snappy block data: the length at its start is malformed")


def _parse(data: bytes, message: str = "WriteRequest"):
    from google.protobuf.message import DecodeError

    try:
        return _classes()[message].FromString(data)
    except DecodeError as exc:
        raise BodyError(400, f"not a remote-write WriteRequest: {exc}") from None


# Reading each TimeSeries. The runtime parses the request with the series left as bytes (a few
# attribute reads per label through upb made reading 13x the speed floor). The usual layout --
# labels first, then samples each with its value and timestamp in order, all lengths in one
# byte -- is read here; the label set by the runtime once per distinct label bytes (so strings
# are still checked as UTF-8) and cached, as label sets repeat across series and requests. Any
# other layout (fields out of order, unknown fields, long samples) is read by the runtime whole.

_LABEL_SETS: dict[bytes, _LabelSet] = {}
_TIMESTAMPS: dict[bytes, int] = {}  # varint bytes -> ms: a request's samples share a few timestamps
_MAX_CACHED = 65536  # each cache is emptied when it reaches this many entries
_INT64 = 1 << 64
_SAMPLE_HEAD = struct.Struct("<BBBdB")


def _series(data: bytes) -> tuple[_LabelSet, list[tuple[float, int]]]:
    """One serialized TimeSeries as (label set, [(value, ms), ...]), as the runtime reads it."""
    end, at = len(data), 0
    try:
        while at < end and data[at] == 0x0A:  # Label fields
            size = data[at + 1]
            if size > 0x7F:
                return _series_by_runtime(data)
            at += 2 + size
        if at > end:
            return _series_by_runtime(data)
        labels = _LABEL_SETS.get(data[:at]) or _label_set_of_bytes(data[:at])
        if end - at >= 13:  # the usual single sample: tag, length, value, timestamp
            tag, size, value_tag, value, timestamp_tag = _SAMPLE_HEAD.unpack_from(data, at)
            if (tag, value_tag, timestamp_tag) == (0x12, 0x09, 0x10) and size == end - at - 2:
                ms = _TIMESTAMPS.get(data[at + 12:])
                if ms is None:
                    ms = _timestamp(data[at + 12:])
                if ms is not None:
                    return labels, [(value, ms)]
        samples = []
        while at < end:  # Sample fields: [0x09 double] [0x10 varint]
            if data[at] != 0x12 or data[at + 1] > 0x7F:
                return _series_by_runtime(data)
            stop = at + 2 + data[at + 1]
            at += 2
            value = 0.0
            if at < stop and data[at] == 0x09:
                value = _DOUBLE.unpack_from(data, at + 1)[0]
                at += 9
            ms = 0
            if at < stop:
                if data[at] != 0x10:
                    return _series_by_runtime(data)
                ms = _timestamp(data[at + 1:stop])
                if ms is None:
                    return _series_by_runtime(data)
            samples.append((value, ms))
            at = stop
    except (IndexError, struct.error):  # cut short: the runtime says how
        return _series_by_runtime(data)
    if at != end:
        return _series_by_runtime(data)
    return labels, samples


def _series_by_runtime(data: bytes) -> tuple[_LabelSet, list[tuple[float, int]]]:
    series = _classes()["TimeSeries"].FromString(data)
    return _label_set(tuple((label.name, label.value) for label in series.labels)), [
        (sample.value, sample.timestamp) for sample in series.samples]


def _label_set_of_bytes(data: bytes) -> _LabelSet:
    """The label set of a series' Label fields, read by the runtime, then cached."""
    series = _classes()["TimeSeries"].FromString(data)
    labels = _label_set(tuple((label.name, label.value) for label in series.labels))
    if len(_LABEL_SETS) >= _MAX_CACHED:
        _LABEL_SETS.clear()
    _LABEL_SETS[data] = labels
    return labels


def _timestamp(varint: bytes) -> int | None:
    """An int64 varint filling ``varint`` exactly, else None (left to the runtime)."""
    ms = _TIMESTAMPS.get(varint)
    if ms is not None:
        return ms
    size = len(varint)
    if not 0 < size <= 10 or varint[-1] > 0x7F or any(byte < 0x80 for byte in varint[:-1]) or (size == 10 and varint[-1] > 1):
        return None
    ms = sum((byte & 0x7F) << (7 * shift) for shift, byte in enumerate(varint))
    ms = ms - _INT64 if ms >= _INT64 >> 1 else ms
    if len(_TIMESTAMPS) >= _MAX_CACHED:
        _TIMESTAMPS.clear()
    _TIMESTAMPS[varint] = ms
    return ms


@dataclass(frozen=True, slots=True)
class _LabelSet:
    """One series' labels and what they mean. Cached and shared by every series with the same
    label bytes, so never changed (``tags`` included)."""

    pairs: tuple[tuple[str, str], ...]  # (name, value) in wire order
    name: str
    tags: dict
    problem: str | None  # why the series is unusable, or None
    role: tuple | None  # _role without metadata (most requests carry none)


def _label_set(pairs: tuple[tuple[str, str], ...]) -> _LabelSet:
    name, tags, problem = _labels(pairs)
    return _LabelSet(pairs, name, tags, problem, None if problem else _role(name, tags, {}))


@dataclass(slots=True)
class _Sample:
    series: int  # index of its TimeSeries
    number: int  # index in the series' samples, -1 when the series has only this one
    name: str
    tags: dict
    value: float
    ms: int
    role: tuple | None  # see _role
    position: int  # in the list of readable samples: the order of items

    @property
    def origin(self) -> str:
        """Where the sample is in the request (built when needed: most samples join a family)."""
        return _origin(self.series, self.number)


def _origin(series: int, number: int) -> str:
    return f"timeseries[{series}]" if number < 0 else f"timeseries[{series}].samples[{number}]"


def _samples(series: Sequence[tuple[_LabelSet, list]], metadata: dict, decoded: Decoded) -> list[_Sample]:
    """The readable samples in request order; refusals and skips are noted in ``decoded``."""
    samples: list[_Sample] = []
    for index, (labels, points) in enumerate(series):
        problem, count = labels.problem, len(points)
        if problem is not None and count <= 1:
            decoded.refused.append(Refused(_origin(index, -1), problem))
            continue
        if count == 0:
            decoded.skipped[SKIPPED_EMPTY] = decoded.skipped.get(SKIPPED_EMPTY, 0) + 1
            continue
        role = _role(labels.name, labels.tags, metadata) if metadata and problem is None else labels.role
        for number, (value, ms) in enumerate(points):
            if count == 1:
                number = -1
            if problem is not None:
                decoded.refused.append(Refused(_origin(index, number), problem))
            elif value != value and _DOUBLE.pack(value) == _STALE:
                decoded.skipped[SKIPPED_STALE] = decoded.skipped.get(SKIPPED_STALE, 0) + 1
            elif ms < 0:
                decoded.refused.append(Refused(_origin(index, number), f"timestamp {ms} ms is before 1970"))
            else:
                samples.append(_Sample(index, number, labels.name, labels.tags, value, ms, role, len(samples)))
    return samples


_STALE = struct.pack("<Q", STALE_NAN)


def _labels(pairs: Iterable[tuple[str, str]]) -> tuple[str, dict, str | None]:
    """(name, tags, why the label set is unusable or None). Empty values are no labels."""
    seen: set[str] = set()
    name = ""
    tags: dict[str, str] = {}
    for label, value in pairs:
        if not label:
            return name, tags, "a label has an empty name"
        if label in seen:
            return name, tags, f"the label {label!r} appears twice"
        seen.add(label)
        if label == "__name__":
            name = value
        elif value:
            tags[label] = value
    if not name:
        return name, tags, "the series has no __name__ label"
    return name, tags, None


class _Family:
    """The series of one histogram, summary or aggregate candidate: one base name, the same
    other labels, one timestamp."""

    __slots__ = ("base", "buckets", "extra", "ms", "parts", "quantiles", "repeated", "tags")

    def __init__(self, base: str, tags: dict, ms: int) -> None:
        self.base, self.tags, self.ms = base, tags, ms
        self.buckets: list = []  # (le, sample)
        self.quantiles: list = []  # (quantile, sample)
        self.parts: dict = {}  # "_sum", "_count", "_min", "_max" -> sample
        self.extra: list = []  # a second sample of a part: kept, so it is never lost
        self.repeated = False  # a part came twice: inconsistent (bounds that repeat are found by _family_item)


def _families_and_singles(samples: list[_Sample], metadata: dict, decoded: Decoded) -> None:
    """Group samples into families, build each complete one, and make every other sample a
    single item (a counter or a gauge); items go in request order."""
    families: dict[tuple, _Family] = {}
    singles: list[_Sample] = []
    for sample in samples:
        if sample.role is None:
            singles.append(sample)
            continue
        kind, base, tags, detail, tag_key = sample.role
        key = (base, tag_key, sample.ms)
        family = families.get(key)
        if family is None:
            family = families[key] = _Family(base, tags, sample.ms)
        if kind == "bucket":
            family.buckets.append((detail, sample))
        elif kind == "quantile":
            family.quantiles.append((detail, sample))
        else:
            if detail in family.parts:
                family.repeated = True
                family.extra.append(sample)
            else:
                family.parts[detail] = sample
    built: list[tuple[int, dict, str]] = []  # (first sample's position, item, origin)
    for family in families.values():
        item, members = _family_item(family, _type_of(metadata, family.base), decoded)
        if item is None:
            singles += _members(family)
            continue
        _describe(item, metadata.get(family.base))
        if len(members) < len(family.buckets) + len(family.quantiles) + len(family.parts) + len(family.extra):
            taken = {id(m) for m in members}  # the others (say, buckets beside a summary) stand alone
            singles += [s for s in _members(family) if id(s) not in taken]
        series = sorted({m.series for m in members})
        built.append((min(m.position for m in members), item, f"timeseries[{','.join(map(str, series))}]"))
    for sample in singles:
        if sample.role is not None and sample.role[0] == "quantile" and math.isnan(sample.value):
            # A summary's quantile whose _sum and _count went in another request (Prometheus
            # shards a queue by series): NaN is still the quantile of an empty summary.
            decoded.skipped[SKIPPED_NAN_QUANTILE] = decoded.skipped.get(SKIPPED_NAN_QUANTILE, 0) + 1
            continue
        single = _single(sample, metadata)
        if isinstance(single, Refused):
            decoded.refused.append(single)
        else:
            built.append((sample.position, single, sample.origin))
    built.sort(key=lambda entry: entry[0])
    decoded.items[:] = [item for _, item, _ in built]
    assert decoded.origins is not None  # this decoder gives every item its origin
    decoded.origins[:] = [origin for _, _, origin in built]


def _type_of(metadata: dict, family: str) -> str | None:
    """The metadata type of a family, None when unknown or absent."""
    entry = metadata.get(family)
    if entry is None or not 0 < entry.type < len(METRIC_TYPES):
        return None
    return METRIC_TYPES[entry.type]


def _role(name: str, tags: dict, metadata: dict) -> tuple | None:
    """(kind, family, family tags, bound or suffix, family tags as a key) when a series' samples
    may be part of a family."""
    if name.endswith("_bucket") and "le" in tags:
        base = name[: -len("_bucket")]
        le = _bound(tags["le"])
        if base and le is not None and le > -math.inf and _type_of(metadata, base) in (None, *_HISTOGRAMS):
            return _keyed("bucket", base, {k: v for k, v in tags.items() if k != "le"}, le)
    if "quantile" in tags:
        q = _bound(tags["quantile"])
        if q is not None and 0 <= q <= 1 and _type_of(metadata, name) in (None, "SUMMARY"):
            return _keyed("quantile", name, {k: v for k, v in tags.items() if k != "quantile"}, q)
    for suffix in _PARTS:
        if name.endswith(suffix) and name not in metadata:
            base = name[: -len(suffix)]
            if base and _type_of(metadata, base) not in _PLAIN:
                return _keyed("part", base, tags, suffix)
    return None


def _keyed(kind: str, base: str, tags: dict, detail) -> tuple:
    return kind, base, tags, detail, tuple(sorted(tags.items()))


def _bound(text: str) -> float | None:
    """An ``le`` or ``quantile`` label value as a number (``0.5``, ``1``, ``+Inf``), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def _members(family: _Family) -> list[_Sample]:
    return [s for _, s in family.buckets] + [s for _, s in family.quantiles] + list(family.parts.values()) + family.extra


def _family_item(family: _Family, declared: str | None, decoded: Decoded) -> tuple[dict | None, list[_Sample]]:
    """(the histogram, summary or aggregate item, the samples it took), or (None, []) when the
    family is incomplete or inconsistent."""
    parts = family.parts
    if family.repeated or "_sum" not in parts or "_count" not in parts or _repeats(family.buckets) or _repeats(family.quantiles):
        return None, []
    total, count = parts["_sum"].value, _whole(parts["_count"].value)
    if count is None or not math.isfinite(total):
        return None, []
    if family.buckets:
        buckets = _buckets(family.buckets, count)
        if buckets is None:
            return None, []
        point = {"histogram": {"count": count, "sum": total, "buckets": buckets}}
        members = [s for _, s in family.buckets] + [parts["_sum"], parts["_count"]]
    elif family.quantiles or declared == "SUMMARY":
        quantiles = []
        for q, sample in sorted(family.quantiles, key=lambda pair: pair[0]):
            if math.isnan(sample.value):
                decoded.skipped[SKIPPED_NAN_QUANTILE] = decoded.skipped.get(SKIPPED_NAN_QUANTILE, 0) + 1
            elif math.isinf(sample.value):
                return None, []
            else:
                quantiles.append({"quantile": q, "value": sample.value})
        point = {"summary": {"count": count, "sum": total, "quantiles": quantiles}}
        members = [s for _, s in family.quantiles] + [parts["_sum"], parts["_count"]]
    elif "_min" in parts and "_max" in parts:
        low, high = parts["_min"].value, parts["_max"].value
        if not (math.isfinite(low) and math.isfinite(high) and count >= 1 and low <= high
                and _mean_within(total / count, low, high)):
            return None, []
        point = {"aggregate": {"min": low, "max": high, "sum": total, "count": count}}
        members = [parts[suffix] for suffix in ("_min", "_max", "_sum", "_count")]
    else:
        return None, []
    return {"name": family.base, **point, **_tags_and_dt(family.tags, family.ms)}, members


def _repeats(bounds: list) -> bool:
    return len(bounds) > 1 and len({bound for bound, _ in bounds}) < len(bounds)


def _buckets(bounds: list, count: int) -> list | None:
    """Per-bucket counts from cumulative ``(le, sample)`` pairs; the ``+Inf`` bucket must hold
    the count. None when the counts are not whole, go down or exceed the count."""
    buckets: list[dict] = []
    previous = 0
    for le, sample in sorted(bounds, key=lambda pair: pair[0]):
        cumulative = _whole(sample.value)
        if cumulative is None or cumulative < previous:
            return None
        if le == math.inf:
            return buckets if cumulative == count else None
        buckets.append({"upper_limit": le, "count": cumulative - previous})
        previous = cumulative
    return buckets if previous <= count else None


def _mean_within(mean: float, low: float, high: float) -> bool:
    """Whether min <= sum/count <= max, with the slack validation allows (bridges.ingest.normalize), so a
    set of gauges that only looks like an aggregate stays gauges instead of being refused."""
    slack = 1e-6 * max(1.0, abs(low), abs(high))
    return low - slack <= mean <= high + slack


def _whole(value: float) -> int | None:
    """A count: a whole, non-negative, finite number as an int, else None."""
    return int(value) if math.isfinite(value) and value >= 0 and value == int(value) else None


def _single(sample: _Sample, metadata: dict) -> dict | Refused:
    """One sample alone: a counter (metadata COUNTER, ``*_total``; ``*_delta`` as a delta counter)
    or a gauge; NaN and infinities are refused."""
    value, name = sample.value, sample.name
    if not math.isfinite(value):
        shown = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
        return Refused(sample.origin, f"the value {shown} cannot be carried: metrics hold finite numbers only")
    point: dict = {"gauge": {"value": value}}
    declared = _type_of(metadata, name)
    entry = metadata.get(name)
    if declared is None and name.endswith("_total") and _type_of(metadata, name[: -len("_total")]) == "COUNTER":
        declared, entry = "COUNTER", metadata[name[: -len("_total")]]
    if declared == "COUNTER" or (declared is None and name.endswith("_total") and value >= 0):
        point = {"counter": {"value": value}}
    elif declared is None and name.endswith("_delta") and len(name) > len("_delta") and value >= 0:
        name, point = name[: -len("_delta")], {"counter": {"value": value, "temporality": "delta"}}
    item = {"name": name, **point, **_tags_and_dt(sample.tags, sample.ms)}
    _describe(item, entry)
    return item


def _tags_and_dt(tags: dict, ms: int) -> dict:
    ns = ms * _NS_PER_MS
    out: dict = {"tags": dict(tags)} if tags else {}
    out["dt"] = ns if ns >= _MIN_NS_AS_INTEGER else format_rfc3339(ns)
    return out


def _describe(item: dict, entry) -> None:
    """Help text and unit from the request's metadata, when it has them."""
    if entry is None:
        return
    if entry.help:
        item["description"] = entry.help[:MAX_DESCRIPTION_CHARS]
    if entry.unit:
        item["unit"] = entry.unit
