"""Prometheus remote-write 1.0 bodies: a protobuf ``WriteRequest`` in the snappy BLOCK format.

The messages are built at first use from a description written from the spec's field numbers
(CONTRACTS 2.4), in a private descriptor pool, so no generated ``*_pb2.py`` or protoc is
needed and nothing clashes with another library's ``prometheus.proto``::

    WriteRequest { repeated TimeSeries timeseries = 1; }   (2 and 3 reserved)
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   (milliseconds)

Label sets are serialized by the protobuf runtime (once each, cached); each sample's few bytes
are framed here, since a runtime message per sample made encoding 5.6x the speed floor
(2.4x this way). Snappy: ``cramjam.snappy.compress_raw`` (block). ``cramjam.snappy.compress`` writes the framed
format, which receivers refuse with 400.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from typing import Iterable, Sequence

Labels = Sequence[tuple[str, str]]  # sorted (name, value) pairs, __name__ among them


@lru_cache(maxsize=1)
def messages():
    """(WriteRequest, TimeSeries, Label, Sample) classes, built once per process."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="bridges/remote_write_v1.proto", package="bridges.prw", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, str | None]) -> None:
        proto = file.message_type.add(name=name)
        for field_name, number, kind, type_name in fields:
            field = proto.field.add(name=field_name, number=number, type=kind, label=F.LABEL_OPTIONAL)
            if type_name is not None:  # the message fields, all repeated
                field.type_name, field.label = type_name, F.LABEL_REPEATED

    message("Label", ("name", 1, F.TYPE_STRING, None), ("value", 2, F.TYPE_STRING, None))
    message("Sample", ("value", 1, F.TYPE_DOUBLE, None), ("timestamp", 2, F.TYPE_INT64, None))
    message("TimeSeries", ("labels", 1, F.TYPE_MESSAGE, ".bridges.prw.Label"),
            ("samples", 2, F.TYPE_MESSAGE, ".bridges.prw.Sample"))
    message("WriteRequest", ("timeseries", 1, F.TYPE_MESSAGE, ".bridges.prw.TimeSeries"))
    write_request = file.message_type[-1]
    write_request.reserved_range.add(start=2, end=4)  # 2 and 3 (metadata in prompb)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"bridges.prw.{name}"))
                 for name in ("WriteRequest", "TimeSeries", "Label", "Sample"))


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
