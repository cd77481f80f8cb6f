"""Raw items -> canonical ``Metric`` objects, or errors that point at the offending field.

Validation is per item: the valid items of a batch are kept when others fail. The JSON Schema
in ``schemas/metric.schema.json`` is the contract; it is checked with jsonschema-rs (fast, the
same standard) and, only for items that fail, with jsonschema, whose messages and paths we
report. Rules a schema cannot state (finite numbers, ordered buckets, bucket counts within the
total, consistent aggregates, real calendar dates) are checked while converting.
"""
from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any

from bridges.model import (
    CUMULATIVE,
    POINT_KINDS,
    Aggregate,
    AzureTarget,
    Bucket,
    Counter,
    Gauge,
    Histogram,
    Metric,
    Point,
    Quantile,
    Summary,
)
from bridges.timestamps import EPOCH_NS_FROM, MAX_TIME_NS, TimestampError, parse_timestamp

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
METRIC_SCHEMA = SCHEMA_DIR / "metric.schema.json"
MAX_REPORTED_ERRORS = 100
MAX_ERRORS_PER_ITEM = 10
MAX_MESSAGE_CHARS = 300
MAX_SHOWN_VALUE_CHARS = 60
MAX_NESTING = 16  # a metric is at most 4 levels deep; beyond this an item is refused unexplored
EXPLAIN_BUDGET = 4096  # values copied to explain one invalid item
# Errors that hold for the item when they hold for a cut copy of it (not "required", "oneOf"...).
_TRUE_OF_A_CUT_COPY = frozenset(
    ["maxItems", "maxProperties", "additionalProperties", "propertyNames", "type", "enum",
     "maxLength", "minLength", "pattern", "minimum", "maximum"]
)
_BIG_INT = 2**63
_AGGREGATE_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one item was rejected. ``pointer`` is a JSON pointer into the request document."""

    index: int
    pointer: str
    message: str

    def to_json(self) -> dict:
        return {"index": self.index, "pointer": self.pointer, "message": self.message}


@dataclass
class Normalized:
    metrics: list[Metric] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # each accepted metric's item index
    errors: list[ItemError] = field(default_factory=list)
    rejected: int = 0

    @property
    def errors_not_shown(self) -> int:
        """Rejected items whose reasons were left out of ``errors`` to bound the answer."""
        return self.rejected - len({e.index for e in self.errors})


PAUSE_COLLECTION_FROM = 100  # items: below this, pausing the cycle collector is not worth its calls


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large request is decoded and normalized: every item
    and metric made is a tracked object, and each collection meanwhile would walk them all again
    (a third of the time, measured). Decoded bodies, items and metrics hold no cycles; reference
    counting frees them as usual. Only whoever found collection enabled enables it again, so
    concurrent requests leave it as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Invalid(Exception):
    """A rule broken while converting; ``path`` is relative to the item."""

    def __init__(self, path: Sequence[object], message: str):
        super().__init__(message)
        self.path = tuple(path)
        self.message = message


def json_pointer(parts: Iterable[object]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _short(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


class Normalizer:
    """Compiles the schema once per process (on first use, to keep imports cheap)."""

    def __init__(self, schema_path: Path = METRIC_SCHEMA):
        self._schema_path = schema_path

    @cached_property
    def schema(self) -> dict:
        return json.loads(self._schema_path.read_text(encoding="utf-8"))

    @cached_property
    def _fast(self):
        import jsonschema_rs

        return jsonschema_rs.Draft202012Validator(self.schema)

    @cached_property
    def _explaining(self):
        from bridges.ingest.jsonschemas import explaining_validator

        return explaining_validator(self.schema)

    @cached_property
    def _fast_batch(self):
        import jsonschema_rs

        return jsonschema_rs.Draft202012Validator({"type": "array", "items": self.schema})

    def normalize(
        self, items: Sequence[Any], now_ns: int, item_pointer=None, check_unicode: bool = True
    ) -> Normalized:
        """Convert every item; ``item_pointer(i)`` is the pointer of item i in the document.

        ``check_unicode=False`` skips the lone-surrogate check for input that cannot hold them.
        """
        if len(items) < PAUSE_COLLECTION_FROM:
            return self._normalized(items, now_ns, item_pointer, check_unicode)
        with collection_paused():
            return self._normalized(items, now_ns, item_pointer, check_unicode)

    def _normalized(self, items: Sequence[Any], now_ns: int, item_pointer, check_unicode: bool) -> Normalized:
        pointer_of = item_pointer or (lambda i: f"/{i}")
        result = Normalized()
        # One call for the whole batch is the common case; items are checked one by one only
        # when the batch holds an invalid one.
        all_valid = _safely(self._fast_batch.is_valid, items)
        is_valid = self._fast.is_valid
        for index, item in enumerate(items):
            valid = all_valid or _safely(is_valid, item)
            if not valid and result.rejected >= MAX_REPORTED_ERRORS:
                # Past the reporting cap only the verdict is counted, not explained.
                result.rejected += 1
                continue
            try:
                if valid:
                    result.metrics.append(_convert(item, now_ns, check_unicode))
                    result.indexes.append(index)
                    continue
                problems = self._explain(item)
                if not problems:
                    result.metrics.append(_convert(item, now_ns, check_unicode))
                    result.indexes.append(index)
                    continue
            except _Invalid as invalid:
                problems = [(invalid.path, invalid.message)]
            result.rejected += 1
            if result.rejected <= MAX_REPORTED_ERRORS:
                base = pointer_of(index)
                for path, message in problems:
                    result.errors.append(ItemError(index, base + json_pointer(path), _short(message)))
        return result

    def _explain(self, item: object) -> list[tuple[tuple, str]]:
        """jsonschema's readable errors for an item, most specific first.

        jsonschema is slow on huge items, so it reads a copy cut to EXPLAIN_BUDGET values:
        still too big for every size limit of the schema, yet cheap to walk.
        """
        preview = _Preview()
        copy = preview.copy(item, ())
        found = self._explaining.iter_errors(copy)
        if preview.cut:  # the cut copy may lack what the item has: trust only what it shows
            found = (e for e in found if e.validator in _TRUE_OF_A_CUT_COPY)
        first = islice(found, MAX_ERRORS_PER_ITEM)
        errors = sorted(first, key=lambda e: (list(map(str, e.absolute_path)), e.message))
        if not errors and preview.cut:
            return [((), f"the item is too large: it holds more than {EXPLAIN_BUDGET} values")]
        return [(tuple(e.absolute_path), _message(e, item)) for e in errors]


class _Preview:
    """Copies an item up to a budget of values, refusing what JSON cannot carry (msgpack bytes,
    non-string keys) and nesting deeper than any metric has; recursion is bounded by that depth."""

    def __init__(self) -> None:
        self.budget = EXPLAIN_BUDGET
        self.cut = False

    def copy(self, value: object, path: tuple) -> object:
        if len(path) > MAX_NESTING:
            raise _Invalid(path, f"nested deeper than {MAX_NESTING} levels")
        if isinstance(value, dict):
            copied: dict[str, object] = {}
            for key, inner in value.items():
                if not isinstance(key, str):
                    raise _Invalid(path, f"object keys must be strings, found {type(key).__name__}")
                if not self._spend():
                    break
                copied[key] = self.copy(inner, path + (key,))
            return copied
        if isinstance(value, list):
            elements: list[object] = []
            for index, inner in enumerate(value):
                if not self._spend():
                    break
                elements.append(self.copy(inner, path + (index,)))
            return elements
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise _Invalid(path, f"{type(value).__name__} values are not accepted here")
        return value

    def _spend(self) -> bool:
        if self.budget <= 0:
            self.cut = True
            return False
        self.budget -= 1
        return True


def _safely(is_valid, instance: object) -> bool:
    """jsonschema-rs refuses values JSON cannot hold (non-string keys) by raising: invalid."""
    try:
        return is_valid(instance)
    except (ValueError, TypeError, OverflowError):
        return False


def _message(error, item: object) -> str:
    path = list(error.absolute_path)
    if error.validator == "oneOf" and not path:
        found = [k for k in POINT_KINDS if isinstance(item, dict) and k in item]
        return (
            "exactly one of gauge, counter, histogram, summary, aggregate is required"
            + (f"; found {', '.join(found)}" if found else "")
        )
    if error.validator == "not" and error.schema.get("description"):  # our schema says it in words
        return error.schema["description"]
    if path == ["name"] and error.validator == "pattern":
        return "a metric name must not be empty" if error.instance == "" else "a metric name must not contain control characters"
    if path == ["dt"] and error.validator == "anyOf":
        try:
            parse_timestamp(error.instance)
        except TimestampError as exc:
            return str(exc)
    shown = repr(error.instance)
    if len(shown) > MAX_SHOWN_VALUE_CHARS:  # keep the reason readable, not the value
        return error.message.replace(shown, shown[:MAX_SHOWN_VALUE_CHARS] + "…")
    return error.message


def _number(value: Any, path: tuple, *tail: object) -> float:
    """A finite number, ints beyond 64 bits as floats; the error path is built only on error."""
    if value.__class__ is float:
        if value - value == 0.0:  # false for NaN and the infinities
            return value
        raise _Invalid(path + tail, "NaN and infinities are not accepted")
    if -_BIG_INT < value < _BIG_INT:
        return value
    try:
        return float(value)
    except OverflowError:
        raise _Invalid(path + tail, "number too large") from None


def _convert(item: dict, now_ns: int, check_unicode: bool = True) -> Metric:
    """Build a Metric from a schema-valid item, checking what the schema cannot."""
    for kind in POINT_KINDS:
        if kind in item:
            break
    point = _POINT_BUILDERS[kind](item[kind], (kind,))
    dt = item.get("dt")
    if dt is None:
        time_ns = now_ns
    elif dt.__class__ is int and EPOCH_NS_FROM <= dt <= MAX_TIME_NS:  # epoch ns, as rules write them
        time_ns = dt
    else:
        try:
            time_ns = parse_timestamp(dt)
        except TimestampError as exc:
            raise _Invalid(("dt",), str(exc)) from None
    tags = item.get("tags")
    azure = item.get("azure")
    if check_unicode:
        _check_text(item, tags)
    return Metric(  # positional: the frozen constructor is on the hot path
        item["name"],
        point,
        time_ns,
        tuple(sorted(tags.items())) if tags else (),
        item.get("namespace"),
        item.get("unit"),
        item.get("description"),
        AzureTarget(azure["resource_id"], azure.get("region")) if azure else None,
    )


def _check_text(item: dict, tags: dict | None) -> None:
    """Refuse strings that are not valid Unicode (lone surrogates from JSON escapes)."""
    for field_name in ("name", "namespace", "unit", "description"):
        _encodable(item.get(field_name), (field_name,))
    for key, value in (tags or {}).items():
        _encodable(key, ("tags",))
        _encodable(value, ("tags", key))


def _encodable(text: object, path: tuple) -> None:
    if isinstance(text, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(path, "text must be valid Unicode (no lone surrogates)") from None


def _gauge(body: dict, path: tuple) -> Gauge:
    return Gauge(_number(body["value"], path, "value"))


def _counter(body: dict, path: tuple) -> Counter:
    return Counter(_number(body["value"], path, "value"), body.get("temporality", CUMULATIVE))


def _histogram(body: dict, path: tuple) -> Histogram:
    buckets = []
    previous = None
    for i, raw in enumerate(body["buckets"]):
        limit = _number(raw["upper_limit"], path, "buckets", i, "upper_limit")
        if previous is not None and limit <= previous:
            raise _Invalid(path + ("buckets", i, "upper_limit"), "bucket upper limits must strictly increase")
        previous = limit
        buckets.append(Bucket(limit, int(raw["count"])))
    count = int(body["count"])
    if sum(b.count for b in buckets) > count:
        raise _Invalid(path + ("buckets",), f"bucket counts add up to more than count ({count})")
    return Histogram(count, _number(body["sum"], path, "sum"), tuple(buckets))


def _summary(body: dict, path: tuple) -> Summary:
    quantiles = []
    previous = None
    for i, raw in enumerate(body["quantiles"]):
        q = raw["quantile"]
        if previous is not None and q <= previous:
            raise _Invalid(path + ("quantiles", i, "quantile"), "quantiles must strictly increase")
        previous = q
        quantiles.append(Quantile(q, _number(raw["value"], path, "quantiles", i, "value")))
    return Summary(int(body["count"]), _number(body["sum"], path, "sum"), tuple(quantiles))


def _aggregate(body: dict, path: tuple) -> Aggregate:
    low = _number(body["min"], path, "min")
    high = _number(body["max"], path, "max")
    total = _number(body["sum"], path, "sum")
    count = int(body["count"])
    if low > high:
        raise _Invalid(path + ("min",), "min is greater than max")
    mean = total / count
    slack = _AGGREGATE_TOLERANCE * max(1.0, abs(low), abs(high))
    if not (low - slack <= mean <= high + slack):
        raise _Invalid(path + ("sum",), f"sum/count ({mean:g}) must lie between min and max")
    return Aggregate(low, high, total, count)


_POINT_BUILDERS: dict[str, Callable[[dict, tuple], Point]] = {
    "gauge": _gauge,
    "counter": _counter,
    "histogram": _histogram,
    "summary": _summary,
    "aggregate": _aggregate,
}
