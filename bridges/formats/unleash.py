"""Unleash in: the custom metrics endpoint and the SDKs' regular metrics call, answered as
Unleash answers (CONTRACTS sections 5, 9 and 10), so an application or SDK only changes its
Unleash URL to the bridge's.

``CUSTOM``, ``POST /api/client/metrics/custom`` (Unleash 7.0 to 8.0):
``{"metrics": [{"name", "value", "labels"?}]}``, each entry one item (origin ``metrics[i]``).
Unleash keeps only the last value per name, labels and minute of receipt and merely labels it
``TYPE counter``: a value that is replaced, not added, and may go down or be negative, which is
what a gauge is. So an entry is a **gauge**, except a name ending in ``_total`` with a value
>= 0, which is a **cumulative counter** (Prometheus's naming for running totals; the same rule
as remote-write). The body has no time: the point is at receipt, as Unleash keys it.
What the bridge's Unleash sink sends there comes back as follows: gauges as gauges,
cumulative counters named ``*_total`` as counters (others as gauges), delta counters as a gauge
of the summed increase, and histograms, summaries and aggregates as the gauge series the sink
wrote them as (``_count``, ``_sum``, ``_bucket{le}``, ``{quantile}``, ``_min``, ``_max``).

``CLIENT``, ``POST /api/client/metrics`` (what every SDK sends each interval):
- ``impactMetrics`` (Unleash 8.1+, ``impactMetricsSchema`` and the SDK "Impact Metrics Client
  Specification"): an SDK collects and CLEARS its registry at each report, so a
  ``counter`` sample is the increase since the last report: a **delta counter**; a ``gauge``
  sample a **gauge**; a ``histogram`` sample (``count``, ``sum``, cumulative ``buckets`` of
  ``{"le": number or "+Inf", "count"}``, the ``+Inf`` one holding the count) one **histogram**
  of that interval, with per-bucket counts. Label values may be strings or numbers (the schema
  allows both); numbers become their text. Origin ``impactMetrics[i].samples[j]``.
- ``help`` is the description (cut to the canonical 1,024 characters, as remote-write's is); a
  trailing ``" [unit]"`` is the unit, and a help text equal to the name is no description (how
  the bridge's sink writes a metric without one).
- ``bucket.toggles`` (``{feature: {"yes", "no", "variants": {variant: n}}}``, the evaluations of
  the interval) become **delta counters** ``unleash_feature_evaluations`` with tags ``feature``,
  ``result`` (``yes``/``no``) and ``unleash_feature_variant_evaluations`` with tags ``feature``
  and ``variant`` (separate names, as variants count evaluations already in yes/no); both carry
  ``app`` (``appName``) and, when sent, ``environment``. Origin ``bucket.toggles.<feature>.yes``...
- Every point's time is ``bucket.stop`` (the end of the interval the counts cover); without a
  bucket, the time of receipt. Impact samples are not given ``app``/``environment`` tags: the
  specification has SDKs add ``appName`` and ``environment`` labels to every sample already.
What the bridge's sink sends as impact metrics comes back as it was sent: gauges, delta
counters, histograms (and the description and unit through ``help``); its conversions stay
converted (cumulative counters and summaries as gauges, aggregates as a ``+Inf``-only
histogram plus ``_min``/``_max`` gauges).

A body that cannot be read as a whole (not JSON, no ``metrics`` array, no ``appName``, an
unreadable ``bucket``) is refused with Unleash's status: 400, and 415 for a Content-Type other
than JSON (a missing one is read as JSON). Entries that cannot be read are refused one by one;
the others are accepted. Answers: 202 with an empty body when nothing was refused; else 400 in
Unleash's ``BadDataError`` shape, ``details`` holding each refusal's ``path`` in the request
(``metrics[2].value``) and message. The ``id`` is derived from the answer's content (Unleash
draws a random one; clients only log it), which keeps these functions pure.
"""
from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import cast

from bridges.formats import Answer, BodyError, Decoded, Outcome, Refused, media_type
from bridges.formats.canonical import load_json
from bridges.timestamps import TimestampError, parse_timestamp

VALIDATION_FAILED = ("Request validation failed: your request body or params contain invalid data. "
                     "Refer to the `details` list for more information.")
EVALUATIONS = "unleash_feature_evaluations"
VARIANT_EVALUATIONS = "unleash_feature_variant_evaluations"
IMPACT_TYPES = ("counter", "gauge", "histogram")
MAX_UNIT_CHARS = 64  # the canonical schema's limit: a longer "[...]" stays in the description
MAX_DESCRIPTION_CHARS = 1024  # the canonical schema's limit: longer help text is cut, not refused
_ERROR_NAMES = {400: "BadDataError", 413: "ContentTooLargeError", 415: "ContentTypeError", 503: "ServiceUnavailableError"}
_HELP_WITH_UNIT = re.compile(r"(.*) \[([^\[\]]+)\]", re.DOTALL)
# Where a canonical field came from in an Unleash entry (validation errors name canonical pointers).
_FIELDS = {"/name": ".name", "/description": ".help", "/unit": ".help", "/gauge": ".value", "/counter": ".value",
           "/gauge/value": ".value", "/counter/value": ".value", "/histogram": "", "/histogram/count": ".count",
           "/histogram/sum": ".sum", "/histogram/buckets": ".buckets", "/tags": ".labels"}
_ENTRY_FIELDS = (".name", ".help")  # on an impact metric, not on its samples


class _Format:
    """What both endpoints share: reading JSON as Unleash does, and its answers."""

    def answer(self, outcome: Outcome) -> Answer:
        """202 and no body when nothing was refused; else 400 BadDataError listing each refusal."""
        if not outcome.rejected:
            return 202, None, {}
        details = [_detail(problem) for problem in outcome.problems]
        if outcome.rejected > len(details):
            details.append({"path": "", "message": f"{outcome.rejected - len(details)} more refused, not listed"})
        return _error(400, VALIDATION_FAILED, details)

    def refuse(self, error: BodyError) -> Answer:
        path = error.where.get("path")
        message = VALIDATION_FAILED if error.status == 400 else error.message
        return _error(error.status, message, [{"path": path, "message": error.message} if path is not None
                                              else {"message": error.message}])

    @staticmethod
    def _document(body: bytes, content_type: str | None) -> object:
        kind = media_type(content_type)
        if kind not in ("application/json", ""):
            raise BodyError(415, f"We do not accept the content-type you provided ({kind}). Send application/json.")
        if not body.strip():
            return {}  # express.json() reads an empty body as {}
        return load_json(body)


class _Custom(_Format):
    """POST /api/client/metrics/custom."""

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
        document = self._document(body, content_type)
        if not isinstance(document, dict) or "metrics" not in document:
            raise BodyError(400, "The `metrics` property is required. It was not present on the data you sent.",
                            path="metrics")
        metrics = document["metrics"]
        if not isinstance(metrics, list):
            raise BodyError(400, "The `metrics` property must be an array.", path="metrics")
        decoded = Decoded([], origins=[])
        for index, metric in enumerate(metrics):
            origin = f"metrics[{index}]"
            if not isinstance(metric, dict):
                decoded.refused.append(Refused(origin, "a metric must be an object with name and value"))
            elif "value" not in metric:
                decoded.refused.append(Refused(f"{origin}.value", "The `value` property is required."))
            else:
                _add(decoded, origin, _custom_item(metric))
        return decoded


def _custom_item(metric: dict) -> dict:
    """A gauge, or a cumulative counter for a ``*_total`` name with a value >= 0 (see the docstring).
    Types are left to validation, which names the field."""
    name, value = metric.get("name"), metric["value"]
    counter = isinstance(name, str) and name.endswith("_total") and _is_number(value) and value >= 0
    item = {**_named(metric), ("counter" if counter else "gauge"): {"value": value}}
    if "labels" in metric:
        item["tags"] = metric["labels"]
    return item


class _Client(_Format):
    """POST /api/client/metrics."""

    def decode(self, body: bytes, content_type: str | None, params: Mapping[str, str], max_bytes: int) -> Decoded:
        document = self._document(body, content_type)
        if not isinstance(document, dict):
            raise BodyError(400, "The request body must be an object.", path="")
        app = document.get("appName")
        if not isinstance(app, str) or not app:
            raise BodyError(400, "The `appName` property is required. It was not present on the data you sent.",
                            path="appName")
        bucket = document.get("bucket")
        stop = _bucket_stop(bucket)
        decoded = Decoded([], origins=[])
        tags = {"app": app}
        environment = document.get("environment")
        if isinstance(environment, str) and environment:
            tags["environment"] = environment
        if bucket is not None:
            _toggles(decoded, bucket.get("toggles"), tags, stop)
        _impact_metrics(decoded, document.get("impactMetrics"), stop)
        return decoded


def _bucket_stop(bucket: object) -> object:
    """``bucket.stop`` as sent (validated here: Unleash refuses the whole body when the bucket is
    unreadable), or None without a bucket."""
    if bucket is None:
        return None
    if not isinstance(bucket, dict):
        raise BodyError(400, "The `bucket` property must be an object with start, stop and toggles.", path="bucket")
    for edge in ("start", "stop"):
        if edge not in bucket:
            raise BodyError(400, f"The `bucket.{edge}` property is required.", path=f"bucket.{edge}")
        try:
            parse_timestamp(bucket[edge])
        except TimestampError as exc:
            raise BodyError(400, f"The `bucket.{edge}` property must be a date: {exc}", path=f"bucket.{edge}") from None
    return bucket["stop"]


def _toggles(decoded: Decoded, toggles: object, tags: dict, stop: object) -> None:
    """Feature evaluations of the interval as delta counters."""
    if toggles is None:
        return
    if not isinstance(toggles, dict):
        raise BodyError(400, "The `bucket.toggles` property must be an object.", path="bucket.toggles")
    for feature, counts in toggles.items():
        origin = f"bucket.toggles.{feature}"
        if not isinstance(counts, dict):
            decoded.refused.append(Refused(origin, "must be an object with yes, no and variants counts"))
            continue
        for result in ("yes", "no"):
            if result in counts:
                _add(decoded, f"{origin}.{result}",
                     _delta(EVALUATIONS, counts[result], {"feature": feature, "result": result, **tags}, stop))
        variants = counts.get("variants")
        if variants is None:
            continue
        if not isinstance(variants, dict):
            decoded.refused.append(Refused(f"{origin}.variants", "must be an object of counts by variant"))
            continue
        for variant, count in variants.items():
            _add(decoded, f"{origin}.variants.{variant}",
                 _delta(VARIANT_EVALUATIONS, count, {"feature": feature, "variant": variant, **tags}, stop))


def _delta(name: str, value: object, tags: dict, stop: object) -> dict:
    return _timed({"name": name, "counter": {"value": value, "temporality": "delta"}, "tags": tags}, stop)


def _impact_metrics(decoded: Decoded, metrics: object, stop: object) -> None:
    if metrics is None:
        return
    if not isinstance(metrics, list):
        raise BodyError(400, "The `impactMetrics` property must be an array.", path="impactMetrics")
    for index, metric in enumerate(metrics):
        where = f"impactMetrics[{index}]"
        if not isinstance(metric, dict):
            decoded.refused.append(Refused(where, "an impact metric must be an object"))
            continue
        kind, samples = metric.get("type"), metric.get("samples")
        if kind not in IMPACT_TYPES:
            decoded.refused.append(Refused(f"{where}.type", f"must be one of {', '.join(IMPACT_TYPES)}"))
            continue
        if not isinstance(samples, list):
            decoded.refused.append(Refused(f"{where}.samples", "must be an array"))
            continue
        described = _described(metric.get("help"), metric.get("name"))
        for number, sample in enumerate(samples):
            origin = f"{where}.samples[{number}]"
            if not isinstance(sample, dict):
                decoded.refused.append(Refused(origin, "a sample must be an object"))
                continue
            point = _point(kind, sample)
            if isinstance(point, Refused):
                decoded.refused.append(Refused(origin + cast(str, point.origin), point.message))  # a field suffix
                continue
            item = {**_named(metric), **point, **described}
            if "labels" in sample:
                item["tags"] = _labels(sample["labels"])
            _add(decoded, origin, _timed(item, stop))


def _point(kind: str, sample: dict) -> dict | Refused:
    """The canonical point of an impact sample; a Refused whose origin is the field's suffix."""
    if kind == "histogram":
        return _histogram(sample)
    body = {"value": sample["value"]} if "value" in sample else {}
    return {"counter": {**body, "temporality": "delta"}} if kind == "counter" else {"gauge": body}


def _histogram(sample: dict) -> dict | Refused:
    """Per-bucket counts from Unleash's cumulative buckets; the ``+Inf`` one (last) holds the count."""
    buckets = sample.get("buckets")
    if not isinstance(buckets, list):
        return Refused(".buckets", "must be an array of {le, count}")
    out, previous, previous_le = [], 0, -math.inf
    for index, bucket in enumerate(buckets):
        at = f".buckets[{index}]"
        if not isinstance(bucket, dict) or "le" not in bucket or not _is_number(bucket.get("count")):
            return Refused(at, "a bucket is {le: number or \"+Inf\", count: number}")
        le, count = bucket["le"], bucket["count"]
        if count < previous:
            return Refused(at, "bucket counts must be cumulative (never smaller than the previous one)")
        if le == "+Inf":
            if index != len(buckets) - 1:
                return Refused(at, "the +Inf bucket must be the last")
            if _is_number(sample.get("count")) and count != sample["count"]:
                return Refused(at, "the +Inf bucket must hold the count")
            break
        if not _is_number(le) or le <= previous_le:
            return Refused(f"{at}.le", "bucket bounds must be increasing numbers (or \"+Inf\", last)")
        out.append({"upper_limit": le, "count": count - previous})
        previous, previous_le = count, le
    return {"histogram": {"count": sample.get("count"), "sum": sample.get("sum"), "buckets": out}}


def _labels(labels: object) -> object:
    """Label values may be numbers in impact metrics: their text. Other types are left to validation."""
    if not isinstance(labels, dict):
        return labels
    return {key: _text(value) if _is_number(value) else value for key, value in labels.items()}


def _text(number: int | float) -> str:
    """A number as JavaScript writes it: 1, 1.5 (not 1.0)."""
    return str(int(number)) if isinstance(number, float) and number.is_integer() and abs(number) < 1e21 else str(number)


def _described(help_text: object, name: object) -> dict:
    """Description and unit from ``help`` (``"Queue depth [items]"``); the name alone is none."""
    if not isinstance(help_text, str):
        return {}
    out: dict = {}
    match = _HELP_WITH_UNIT.fullmatch(help_text)
    if match and len(match[2]) <= MAX_UNIT_CHARS:
        help_text, out["unit"] = match[1], match[2]
    if help_text and help_text != name:
        out["description"] = help_text[:MAX_DESCRIPTION_CHARS]
    return out


def _named(metric: dict) -> dict:
    """The name when there is one (validation says what is wrong with it, or that it is missing)."""
    return {"name": metric["name"]} if "name" in metric else {}


def _timed(item: dict, stop: object) -> dict:
    if stop is not None:
        item["dt"] = stop
    return item


def _add(decoded: Decoded, origin: str, item: dict) -> None:
    assert decoded.origins is not None  # this decoder names every item's origin
    decoded.items.append(item)
    decoded.origins.append(origin)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _detail(problem: Refused) -> dict:
    """A refusal as a BadDataError detail: the path in the request, and the message. Validation
    messages start with the canonical field's JSON pointer, turned back into the Unleash field."""
    origin, message = str(problem.origin), problem.message
    if not message.startswith("/") or ": " not in message:
        return {"path": origin, "message": message}
    pointer, text = message.split(": ", 1)
    if pointer == "/dt":
        return {"path": "bucket.stop", "message": text}
    head, tail = pointer, ""
    for prefix in ("/tags", "/histogram/buckets"):
        if pointer.startswith(prefix + "/"):
            head, rest = prefix, pointer[len(prefix) + 1:].split("/", 1)[0]
            key = rest.replace("~1", "/").replace("~0", "~")
            tail = f"[{key}]" if prefix == "/histogram/buckets" else f".{key}"
    field = _FIELDS.get(head)
    if field is None or origin.startswith("bucket."):  # toggle counters: the count itself is the field
        return {"path": origin, "message": message if field is None else text}
    if field in _ENTRY_FIELDS:
        origin = origin.split(".samples[", 1)[0]
    return {"path": origin + field + tail, "message": text}


def _error(status: int, message: str, details: list) -> Answer:
    """Unleash's error shape: {"id", "name", "message", "details"}."""
    document = {"name": _ERROR_NAMES.get(status, "BadDataError"), "message": message, "details": details}
    identity = uuid.uuid5(uuid.NAMESPACE_URL, "unleash-error:" + json.dumps([status, document], sort_keys=True, default=str))
    return status, {"id": str(identity), **document}, {}


CUSTOM = _Custom()
CLIENT = _Client()
