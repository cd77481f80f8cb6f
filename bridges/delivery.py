"""The delivery stage: hand accepted metrics to every enabled sink.

A sink that cannot take the metrics raises; the stage turns that into ``DeliveryError`` so the
HTTP answer can say 503 (try again) instead of claiming an acceptance that was lost.
"""
from __future__ import annotations

import logging
from typing import Protocol, Sequence

from bridges.model import Metric

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    def deliver(self, metrics: Sequence[Metric], now_ns: int) -> int: ...

    def status(self) -> dict: ...


class DeliveryError(Exception):
    """No sink failure may pass silently: the caller must tell the sender to retry."""

    def __init__(self, sink: str, reason: str):
        super().__init__(f"{sink}: {reason}")
        self.sink = sink
        self.reason = reason


class Delivery:
    def __init__(self, sinks: Sequence[Sink]):
        self.sinks = list(sinks)

    def deliver(self, metrics: Sequence[Metric], now_ns: int) -> dict[str, dict]:
        """Per-sink report; raises DeliveryError when a sink could not take the metrics."""
        report = {}
        for sink in self.sinks:
            try:
                delivered = sink.deliver(metrics, now_ns)
            except OSError as exc:
                log.error("sink %s failed: %s", sink.name, exc.strerror or exc)
                raise DeliveryError(sink.name, exc.strerror or type(exc).__name__) from exc
            report[sink.name] = {"delivered": delivered}
        return report

    def status(self) -> dict[str, dict]:
        return {sink.name: sink.status() for sink in self.sinks}
