"""The bridge's request handling as plain functions on plain data.

Triggers turn a host request into ``ingest(body, content_type, content_encoding)`` or
``health()`` and the returned ``Reply`` into a host response; nothing here knows the host.
The clock and the delivery stage are injected so tests control them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from bridges import __version__, selfmetrics
from bridges.delivery import Delivery, DeliveryError
from bridges.formats import BodyError, decompress
from bridges.formats import canonical
from bridges.normalize import Normalized, Normalizer
from bridges.retrying import QueueHandoff
from bridges.settings import Settings
from bridges.sinks import build_sinks

RETRY_AFTER_SECONDS = 30
log = logging.getLogger(__name__)


@dataclass
class Reply:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


class Bridge:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], int] = time.time_ns,
        delivery: Delivery | None = None,
        normalizer: Normalizer | None = None,
    ):
        self.settings = settings
        self.clock = clock
        self.delivery = delivery or Delivery(
            build_sinks(settings), QueueHandoff(settings), timeout_seconds=settings.http_timeout_seconds,
            deadline_seconds=settings.delivery_deadline_seconds,
        )
        self.normalizer = normalizer or Normalizer()

    def parse(self, body: bytes, content_type: str | None, content_encoding: str | None = None) -> Normalized:
        """Decode, validate and normalize a canonical body; raises BodyError for the whole body."""
        limit = self.settings.max_body_bytes
        if len(body) > limit:
            raise BodyError(413, f"the body is over the limit of {limit} bytes (BRIDGE_MAX_BODY_BYTES)")
        decoded = canonical.decode(decompress(body, content_encoding, limit), content_type)
        count = len(decoded.items)
        if count > self.settings.max_items:
            raise BodyError(413, f"{count} metrics is more than the limit of {self.settings.max_items} (BRIDGE_MAX_ITEMS)")
        if count == 0:
            raise BodyError(400, "the body holds no metrics")
        return self.normalizer.normalize(
            decoded.items, self.clock(), decoded.item_pointer, check_unicode=decoded.may_hold_surrogates
        )

    def ingest(self, body: bytes, content_type: str | None, content_encoding: str | None = None) -> Reply:
        """POST /api/metrics: 202 when at least one metric was accepted and handed on."""
        try:
            result = self.parse(body, content_type, content_encoding)
        except BodyError as exc:
            log.info("ingest refused the body: %d %s", exc.status, exc.message)
            return Reply(exc.status, exc.to_json())
        log.info("ingest: %d accepted, %d rejected", len(result.metrics), result.rejected)
        answer = {
            "accepted": len(result.metrics),
            "rejected": result.rejected,
            "errors": [error.to_json() for error in result.errors],
        }
        if result.errors_not_shown:
            answer["errors_not_shown"] = result.errors_not_shown
        if not result.metrics:
            return Reply(400, answer)
        try:
            reports = self.delivery.deliver(result.metrics, self.clock())
        except DeliveryError as exc:
            return Reply(
                503,
                {"error": f"accepted metrics could be neither delivered nor kept ({exc}); send again"},
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        original = result.indexes.__getitem__
        answer["delivery"] = {name: report.to_json(original) for name, report in reports.items()}
        self._observe(reports, len(result.metrics))
        return Reply(202, answer)

    def _observe(self, reports: dict, accepted: int) -> None:
        """Log (and, with BRIDGE_SELF_METRICS, send) what each sink made of this request."""
        records = [
            selfmetrics.observation(name, report.seconds, accepted=accepted, delivered=report.delivered,
                                    rejected=report.to_json()["rejected"], retried=report.pending)
            for name, report in reports.items()
        ]
        selfmetrics.log_observations(records, "ingest")
        if self.settings.self_metrics:
            selfmetrics.send(self.delivery, records, self.clock())

    def health(self) -> Reply:
        """GET /api/health: version, sinks and configuration problems; never a secret."""
        sinks = self.delivery.status()
        problems = list(self.settings.sink_problems)
        for name, sink in sinks.items():
            if sink.get("writable") is False:
                problems.append(f"{name}: {sink.get('directory')} is not writable")
            if sink.get("misconfigured"):
                problems.append(f"{name}: {sink['misconfigured']}")
        answer = {"status": "degraded" if problems else "ok", "version": __version__, "sinks": sinks,
                  "problems": problems, "retry": self.retry_status()}
        return Reply(200, answer)

    def retry_status(self) -> dict:
        """Depths of the retry, poison and dead-letter queues, dead letters per sink."""
        from bridges.deadletters import open_retry_queues, retry_status
        from bridges.settings import environment

        try:
            queues = open_retry_queues(self.settings, environment())
        except ValueError as exc:  # e.g. an unresolved Key Vault reference in AzureWebJobsStorage
            return {"error": str(exc)}
        return retry_status(queues.retry, queues.deadletter, queues.poison)
