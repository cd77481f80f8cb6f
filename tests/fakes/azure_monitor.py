"""A fake Azure Monitor custom metrics endpoint that enforces the contract (CONTRACTS.md 1.7).

Written from the contract, not from the bridge's encoder: path ``/{resourceId}/metrics``, a
bearer token from the fake identity endpoint for ``https://monitoring.azure.com/`` (else 401
InvalidAudience), JSON (one document) or NDJSON, optionally gzip-compressed, and each
document checked as the service does (time window, dimension counts and lengths, 256-character
strings, integer counts, min <= max), answering with the service's error bodies. ``region``
set to a region other than ``serves`` makes it answer RegionMismatch, as a regional endpoint
does for a resource elsewhere. Accepted documents are kept in ``documents``.
"""
from __future__ import annotations

import gzip
import json
import time
from datetime import datetime

from fakes.identity import audience_of
from fakes.server import Answer, FakeReceiver, Received

AUDIENCE = "https://monitoring.azure.com/"
PAST_SECONDS = 30 * 60
FUTURE_SECONDS = 4 * 60
TIME_MESSAGE = "'time' should not be older than 30 minutes and not more than 4 minutes in the future\r\n"
DIMENSIONS_MESSAGE = "'dimValues' and 'dimNames' lengths should be lesser than 10\r\n"


class FakeAzureMonitor(FakeReceiver):
    def __init__(self, serves: str = "westeurope", region: str | None = None, audience: str = AUDIENCE):
        super().__init__()
        self.serves = serves  # the region this endpoint is for
        self.region = region or serves  # the region the resources live in
        self.audience = audience
        self.documents: list[dict] = []
        self.tokens: list[str] = []

    def answer(self, request: Received) -> Answer:
        if request.method != "POST" or not request.path.startswith("/subscriptions/") or not request.path.endswith("/metrics"):
            return _error(404, "ResourceNotFound", "The resource was not found.")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token:
            return _error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
        if audience_of(token) != self.audience:
            return _error(401, "InvalidAudience", "Invalid authorization token audience.")
        self.tokens.append(token)
        if self.region != self.serves:
            return _error(400, "RegionMismatch",
                          f"This endpoint : {self.serves}.monitoring.azure.com does not accept metrics for the resource's "
                          f"region : {self.region}. Ensure you are sending to the correct regional endpoint.")
        body = request.body
        if request.headers.get("content-encoding", "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return _error(400, "BadRequest", "The request body could not be decompressed.\r\n")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            text = body.decode("utf-8")
            if kind == "application/json":
                documents = [json.loads(text)]
            elif kind == "application/x-ndjson":
                documents = [json.loads(line) for line in text.split("\n") if line.strip()]
            else:
                return _error(415, "UnsupportedMediaType", f"Content type {kind!r} is not supported.")
        except ValueError:
            return _error(400, "BadRequest", "The request body is not valid JSON.\r\n")
        now = time.time()
        for document in documents:
            problem = document_error(document, now)
            if problem is not None:
                return _error(400, "BadRequest", problem)
        self.documents.extend(documents)
        return Answer(200)


def document_error(document: object, now: float) -> str | None:
    """The service's message for a document it would refuse, or None."""
    try:
        stamp = datetime.fromisoformat(document["time"].replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            raise ValueError
        data = document["data"]["baseData"]
        metric, namespace, series = data["metric"], data["namespace"], data["series"]
        names = data.get("dimNames") or []
    except (KeyError, TypeError, ValueError, AttributeError):
        return "The document is not a valid custom metric: 'time' (ISO 8601) and data.baseData are required.\r\n"
    if not now - PAST_SECONDS <= stamp.timestamp() <= now + FUTURE_SECONDS:
        return TIME_MESSAGE
    if len(names) > 10:
        return DIMENSIONS_MESSAGE
    strings = [metric, namespace, *names]
    if not all(isinstance(s, str) and 0 < len(s) <= 256 for s in strings) or not isinstance(series, list) or not series:
        return "Metric name, namespace and dimension names must be non-empty strings of at most 256 characters.\r\n"
    for entry in series:
        values = (entry.get("dimValues") or []) if isinstance(entry, dict) else None
        if values is None:
            return "Each series must be an object.\r\n"
        if len(values) != len(names):
            return "'dimValues' and 'dimNames' must have the same length.\r\n"
        if not all(isinstance(v, str) and len(v) <= 256 for v in values):
            return "Dimension values must be strings of at most 256 characters.\r\n"
        numbers = [entry.get(k) for k in ("min", "max", "sum")]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
            return "'min', 'max' and 'sum' must be numbers.\r\n"
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return "'count' must be an integer.\r\n"
        if entry["min"] > entry["max"]:
            return "'min' must not be greater than 'max'.\r\n"
    return None


def _error(status: int, code: str, message: str) -> Answer:
    body = json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()
    return Answer(status, {"Content-Type": "application/json; charset=utf-8"}, body)
