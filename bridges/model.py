"""The canonical metric model: what every input becomes and every sink reads.

Frozen dataclasses, so a metric handed to five sinks cannot be changed by one of them.
The JSON form is described by ``schemas/metric.schema.json``; ``Metric.to_json`` writes it.
Histogram bucket counts are per bucket (Better Stack's form); ``Histogram.cumulative_buckets``
gives Prometheus's form.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

from bridges.timestamps import format_rfc3339

DELTA = "delta"
CUMULATIVE = "cumulative"
MAX_COUNT = 2**63 - 1  # counts are 64-bit integers in the schema and at every backend


def _quick_init(cls):
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot through its
    descriptor: the generated one goes through ``object.__setattr__`` per field, about three
    times slower, and metrics are built per point on every hot path. Same signature, defaults
    and immutability."""
    names = [f.name for f in fields(cls)]
    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    parameters = ", ".join(f"{name}=_default_{name}" if name in defaults else name for name in names)
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names)
    scope = {f"_set_{name}": cls.__dict__[name].__set__ for name in names}
    scope.update({f"_default_{name}": value for name, value in defaults.items()})
    exec(f"def __init__(self, {parameters}):\n{body}", scope)  # noqa: S102 - as dataclasses does
    scope["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = scope["__init__"]
    return cls


@_quick_init
@dataclass(frozen=True, slots=True)
class Gauge:
    value: float
    kind = "gauge"

    def to_json(self) -> dict:
        return {"value": self.value}


@_quick_init
@dataclass(frozen=True, slots=True)
class Counter:
    """A count that never decreases: a running total (cumulative) or an increase (delta)."""

    value: float
    temporality: str = CUMULATIVE
    kind = "counter"

    def to_json(self) -> dict:
        return {"value": self.value, "temporality": self.temporality}


@_quick_init
@dataclass(frozen=True, slots=True)
class Bucket:
    upper_limit: float
    count: int


@_quick_init
@dataclass(frozen=True, slots=True)
class Histogram:
    """Per-bucket counts; observations above the last upper limit are ``overflow``."""

    count: int
    sum: float
    buckets: tuple[Bucket, ...]
    kind = "histogram"

    @property
    def overflow(self) -> int:
        return self.count - sum(bucket.count for bucket in self.buckets)

    def cumulative_buckets(self) -> tuple[tuple[float, int], ...]:
        """(upper limit, observations <= limit) pairs, ending with (+inf, count)."""
        running = 0
        pairs = []
        for bucket in self.buckets:
            running += bucket.count
            pairs.append((bucket.upper_limit, running))
        pairs.append((float("inf"), self.count))
        return tuple(pairs)

    def to_json(self) -> dict:
        return {
            "count": self.count,
            "sum": self.sum,
            "buckets": [{"upper_limit": b.upper_limit, "count": b.count} for b in self.buckets],
        }


@_quick_init
@dataclass(frozen=True, slots=True)
class Quantile:
    quantile: float
    value: float


@_quick_init
@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    sum: float
    quantiles: tuple[Quantile, ...]
    kind = "summary"

    def to_json(self) -> dict:
        return {
            "count": self.count,
            "sum": self.sum,
            "quantiles": [{"quantile": q.quantile, "value": q.value} for q in self.quantiles],
        }


@_quick_init
@dataclass(frozen=True, slots=True)
class Aggregate:
    """Pre-aggregated observations (Azure Monitor series, Dynatrace gauge summary)."""

    min: float
    max: float
    sum: float
    count: int
    kind = "aggregate"

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max, "sum": self.sum, "count": self.count}


Point = Gauge | Counter | Histogram | Summary | Aggregate
POINT_KINDS = ("gauge", "counter", "histogram", "summary", "aggregate")


@_quick_init
@dataclass(frozen=True, slots=True)
class AzureTarget:
    """The Azure resource (and its region) that custom metrics for this point belong to."""

    resource_id: str
    region: str | None = None


@_quick_init
@dataclass(frozen=True, slots=True)
class Metric:
    """One data point. ``tags`` are sorted (key, value) pairs; ``time_ns`` is UTC epoch nanoseconds."""

    name: str
    point: Point
    time_ns: int
    tags: tuple[tuple[str, str], ...] = ()
    namespace: str | None = None
    unit: str | None = None
    description: str | None = None
    azure: AzureTarget | None = None

    @property
    def kind(self) -> str:
        return self.point.kind

    def tag_dict(self) -> dict[str, str]:
        return dict(self.tags)

    def to_json(self) -> dict:
        """The canonical JSON form, with every default written out."""
        doc: dict = {"name": self.name, self.point.kind: self.point.to_json()}
        if self.tags:
            doc["tags"] = dict(self.tags)
        doc["dt"] = format_rfc3339(self.time_ns)
        for field in ("namespace", "unit", "description"):
            value = getattr(self, field)
            if value is not None:
                doc[field] = value
        if self.azure is not None:
            target = {"resource_id": self.azure.resource_id}
            if self.azure.region is not None:
                target["region"] = self.azure.region
            doc["azure"] = target
        return doc
