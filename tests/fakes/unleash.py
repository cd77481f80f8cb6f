"""A fake unleash-server that enforces both metrics contracts (CONTRACTS.md sections 5, 9, 10).

``FakeUnleash(version="7")`` has the custom endpoint ``POST /api/client/metrics/custom`` and
keeps the last value per name + labels + minute of receipt, as 7.x does (``custom``).
``FakeUnleash(version="8")`` answers 404 there (as 8.1+ does) and takes impact metrics in
``POST /api/client/metrics``: it answers 202 even to a batch it would drop, as Unleash does,
and records why in ``dropped``; valid batches are applied as Unleash does (counters and
histograms add, gauges are set) into ``impact``, and a report that would make Unleash recreate
a metric (new label names, other bucket bounds, another type) is noted in ``recreated``.

Both check the raw token in ``Authorization`` (401 / 403 with Unleash's JSON messages), the
JSON content type (415), the 100 kB body limit (413) and the body schema (400). The checks are
written from the contract, not from the bridge's encoder.
"""
from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime

from fakes.server import Answer, FakeReceiver, Received

MAX_BODY_BYTES = 102_400  # express.json()'s "100kb"
CUSTOM_PATH = "/api/client/metrics/custom"
METRICS_PATH = "/api/client/metrics"
NO_TOKEN = ("This endpoint requires an API token. Please add an authorization header to your request "
            "with a valid token")
WRONG_TOKEN_TYPE = "invalid token: expected a different token type for this endpoint"
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CUSTOM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _labels_problem(labels: object, where: str) -> str | None:
    if not isinstance(labels, dict):
        return f"{where}: labels must be an object"
    for key, value in labels.items():
        if not _NAME.fullmatch(key):
            return f"{where}: label name {key!r} is not [a-zA-Z_][a-zA-Z0-9_]*"
        if not isinstance(value, str) or not value:
            return f"{where}: label {key!r} must be a non-empty string"
    return None


def custom_problem(body: object) -> tuple[str, str | None] | None:
    """(flavour, message) for a custom body Unleash 7 refuses: ``openapi`` (BadDataError JSON)
    or ``joi`` (empty body); None when it is valid. Names must also be Prometheus names."""
    if not isinstance(body, dict) or "metrics" not in body:
        return "openapi", "The `metrics` property is required. It was not present on the data you sent."
    if not isinstance(body["metrics"], list):
        return "openapi", "The `/body/metrics` property must be array."
    for i, metric in enumerate(body["metrics"]):
        where = f"/body/metrics/{i}"
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            return "openapi", f"The `{where}/name` property is required and must be a string."
        if not _number(metric.get("value")):
            return "openapi", f"The `{where}/value` property is required and must be a finite number."
        if "labels" in metric and (not isinstance(metric["labels"], dict)
                                   or not all(isinstance(v, str) for v in metric["labels"].values())):
            return "openapi", f"The `{where}/labels` property must be an object of strings."
        if not metric["name"] or any(v == "" for v in metric.get("labels", {}).values()):
            return "joi", None  # Joi refuses empty strings, with an empty 400
        if not _CUSTOM_NAME.fullmatch(metric["name"]):  # 7.x takes it, but its Prometheus page breaks
            return "joi", None
        problem = _labels_problem(metric.get("labels", {}), where)
        if problem:
            return "joi", None
    return None


def impact_problem(metrics: object) -> str | None:
    """Why Unleash would drop this whole ``impactMetrics`` batch (it still answers 202), or None."""
    if not isinstance(metrics, list):
        return "impactMetrics must be an array"
    for i, metric in enumerate(metrics):
        where = f"impactMetrics[{i}]"
        if not isinstance(metric, dict):
            return f"{where}: not an object"
        for key in ("name", "help"):
            if not isinstance(metric.get(key), str) or not metric[key]:
                return f"{where}: {key} must be a non-empty string"
        if not _NAME.fullmatch(metric["name"]):
            return f"{where}: name {metric['name']!r} is not [a-zA-Z_][a-zA-Z0-9_]*"
        kind = metric.get("type")
        if kind not in ("counter", "gauge", "histogram"):
            return f"{where}: type must be counter, gauge or histogram"
        samples = metric.get("samples")
        if not isinstance(samples, list) or not samples:
            return f"{where}: samples must be a non-empty array"
        for j, sample in enumerate(samples):
            at = f"{where}.samples[{j}]"
            if not isinstance(sample, dict):
                return f"{at}: not an object"
            problem = _labels_problem(sample.get("labels", {}), at)
            if problem:
                return problem
            if kind == "histogram":
                problem = _histogram_problem(sample, at)
            elif not _number(sample.get("value")):
                problem = f"{at}: value must be a finite number"
            elif kind == "counter" and sample["value"] < 0:
                problem = f"{at}: a counter cannot be decreased"
            if problem:
                return problem
    return None


def _histogram_problem(sample: dict, at: str) -> str | None:
    count, total, buckets = sample.get("count"), sample.get("sum"), sample.get("buckets")
    if not _number(count) or count < 0 or not _number(total):
        return f"{at}: count and sum must be finite numbers, count >= 0"
    if not isinstance(buckets, list) or not buckets or not all(isinstance(b, dict) for b in buckets):
        return f"{at}: buckets must be a non-empty array of objects"
    if buckets[-1].get("le") != "+Inf" or buckets[-1].get("count") != count:
        return f"{at}: the last bucket must be le '+Inf' holding the count"
    previous_le, previous_count = -math.inf, 0
    for bucket in buckets[:-1]:
        le, n = bucket.get("le"), bucket.get("count")
        if not _number(le) or le <= previous_le:
            return f"{at}: bucket bounds must be increasing numbers"
        if not _number(n) or n < previous_count:
            return f"{at}: bucket counts must be cumulative"
        previous_le, previous_count = le, n
    if count < previous_count:
        return f"{at}: bucket counts must be cumulative"
    return None


def _key(labels: dict) -> tuple:
    return tuple(sorted(labels.items()))


class FakeUnleash(FakeReceiver):
    def __init__(self, version: str = "7", token: str = "default:development.fake-client-token",
                 frontend_token: str | None = "default:development.fake-frontend-token",
                 max_body_bytes: int = MAX_BODY_BYTES, clock=time.time):
        super().__init__()
        if version not in ("7", "8"):
            raise ValueError("version is '7' (custom endpoint) or '8' (impact metrics)")
        self.version = version
        self.token = token
        self.frontend_token = frontend_token
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.custom: dict[tuple, float] = {}  # (name, labels, minute) -> last value
        self.impact: dict[str, dict] = {}  # name -> {"type", "help", "label_names", "bounds", "series"}
        self.dropped: list[str] = []  # why whole impact batches were dropped (answered 202 all the same)
        self.recreated: list[str] = []  # metrics Unleash would have recreated, losing their series
        self.ignored_impact = 0  # impact batches a 7.x server ignores

    # --- what tests read ------------------------------------------------------------------

    def custom_latest(self) -> dict[tuple, float]:
        """(name, labels) -> the value the latest minute holds, as the Prometheus page shows."""
        latest: dict[tuple, tuple[int, float]] = {}
        for (name, labels, minute), value in self.custom.items():
            if (name, labels) not in latest or latest[(name, labels)][0] <= minute:
                latest[(name, labels)] = (minute, value)
        return {key: value for key, (_, value) in latest.items()}

    def impact_value(self, name: str, **labels: str):
        """A counter's or gauge's value, or a histogram's {"count", "sum", "buckets": {le: count}}."""
        return self.impact[name]["series"][_key(labels)]

    # --- the contract ---------------------------------------------------------------------

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or request.path not in (CUSTOM_PATH, METRICS_PATH):
            return _not_found(request.path)
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.frontend_token is not None and token == self.frontend_token:
            return _json(403, {"message": WRONG_TOKEN_TYPE})
        if not token or token != self.token:
            return _json(401, {"message": NO_TOKEN})
        if request.path == CUSTOM_PATH and self.version == "8":
            return _not_found(request.path)
        content_type = request.headers.get("content-type", "")
        if not content_type.split(";")[0].strip().lower() == "application/json":
            return _json(415, {"name": "ContentTypeError",
                               "message": f"We do not accept the content-type you provided ({content_type}). "
                                          "Try using one of the content-types we do accept instead "
                                          "(application/json) and make sure the body is in the corresponding format."})
        if len(request.body) > self.max_body_bytes:
            return _json(413, {"message": "request entity too large"})
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            return _json(400, {"message": str(exc)})
        if request.path == CUSTOM_PATH:
            return self._custom(body)
        return self._client_metrics(body)

    def _custom(self, body: object) -> Answer:
        refused = custom_problem(body)
        if refused is not None:
            flavour, message = refused
            return _bad_data(message) if flavour == "openapi" else Answer(400)
        minute = int(self.clock() // 60)
        with self._lock:
            for metric in body["metrics"]:
                self.custom[(metric["name"], _key(metric.get("labels", {})), minute)] = metric["value"]
        return Answer(202)

    def _client_metrics(self, body: object) -> Answer:
        if not isinstance(body, dict) or not isinstance(body.get("appName"), str) or not body["appName"]:
            return _bad_data("The `/body/appName` property is required. It was not present on the data you sent.")
        bucket = body.get("bucket")
        if bucket is not None:
            try:
                for edge in ("start", "stop"):
                    datetime.fromisoformat(bucket[edge])
            except (TypeError, KeyError, ValueError):
                return Answer(400)  # Joi, inside the handler: an empty 400
        if "impactMetrics" not in body:
            return Answer(202)
        if self.version == "7":
            self.ignored_impact += 1
            return Answer(202)
        problem = impact_problem(body["impactMetrics"])
        with self._lock:
            if problem:
                self.dropped.append(problem)
            else:
                for metric in body["impactMetrics"]:
                    self._apply(metric)
        return Answer(202)

    def _apply(self, metric: dict) -> None:
        """Unleash's MetricsTranslator: resolve (or recreate) the metric, then add or set."""
        name, kind, samples = metric["name"], metric["type"], metric["samples"]
        label_names = {k for s in samples for k in s.get("labels", {})}
        bounds = tuple(b["le"] for b in samples[0]["buckets"]) if kind == "histogram" else None
        stored = self.impact.get(name)
        if stored is not None and (stored["type"] != kind or not label_names <= stored["label_names"]
                                   or (bounds is not None and bounds != stored["bounds"])):
            self.recreated.append(name)
            stored = None
        if stored is None:
            stored = self.impact[name] = {"type": kind, "help": metric["help"], "label_names": label_names,
                                          "bounds": bounds, "series": {}}
        for sample in samples:
            key = _key(sample.get("labels", {}))
            if kind == "counter":
                stored["series"][key] = stored["series"].get(key, 0) + sample["value"]
            elif kind == "gauge":
                stored["series"][key] = sample["value"]
            else:
                entry = stored["series"].setdefault(key, {"count": 0, "sum": 0, "buckets": {}})
                entry["count"] += sample["count"]
                entry["sum"] += sample["sum"]
                for b in sample["buckets"]:
                    entry["buckets"][b["le"]] = entry["buckets"].get(b["le"], 0) + b["count"]


def _json(status: int, document: dict) -> Answer:
    return Answer(status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(document).encode())


def _bad_data(message: str) -> Answer:
    return _json(400, {"id": "00000000-0000-0000-0000-000000000000", "name": "BadDataError",
                       "message": "Request validation failed: your request body or params contain invalid data. "
                                  "Refer to the `details` list for more information.",
                       "details": [{"message": message}]})


def _not_found(path: str) -> Answer:
    message = f"The path you were looking for ({path}) is not available."
    return _json(404, {"id": "00000000-0000-0000-0000-000000000000", "name": "NotFoundError", "message": message,
                       "details": [{"message": message}]})
