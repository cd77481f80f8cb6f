"""The bridge's own metrics: what each sink was given, delivered, rejected, retried and
dead-lettered, and how long delivery took.

Every observation is logged as one structured record (``custom_dimensions``, which Application
Insights keeps as custom dimensions of the trace). With ``BRIDGE_SELF_METRICS`` on they are
also sent to the sinks as ``bridge_*`` delta counters and a ``bridge_delivery_seconds`` gauge,
tagged ``sink``. Those are sent once, best effort: a failure is logged and not queued, so the
bridge's telemetry can never feed its own retry queue in a loop.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from bridges.model import Counter, Gauge, Metric

log = logging.getLogger("bridges.delivery.selfmetrics")
COUNTS = ("accepted", "delivered", "rejected", "retried", "dead_lettered")


def observation(sink: str, seconds: float | None = None, **counts: int) -> dict:
    """One record: counts per sink (missing ones are 0) and the delivery time."""
    record = {"sink": sink, **{name: int(counts.get(name, 0)) for name in COUNTS}}
    if seconds is not None:
        record["delivery_seconds"] = round(seconds, 6)
    return record


def log_observations(records: Sequence[dict], source: str) -> None:
    for record in records:
        log.info(
            "bridge %s %s: %s", source, record["sink"],
            ", ".join(f"{k}={v}" for k, v in record.items() if k != "sink"),
            extra={"custom_dimensions": {"source": source, **record}},
        )


def as_metrics(records: Sequence[dict], now_ns: int) -> list[Metric]:
    """The records as canonical metrics (delta counters and a gauge), tagged by sink."""
    metrics = []
    for record in records:
        tags = (("sink", record["sink"]),)
        for name in COUNTS:
            if record[name]:
                metrics.append(Metric(f"bridge_{name}_total", Counter(record[name], "delta"), now_ns, tags))
        if "delivery_seconds" in record:
            metrics.append(Metric("bridge_delivery_seconds", Gauge(record["delivery_seconds"]), now_ns, tags, unit="s"))
    return metrics


class _Discard:
    """Self-metrics are best effort: what a sink cannot take now is logged, never queued."""

    def hand_off(self, sink, metrics, reason, after, now_ns) -> None:
        log.warning("bridge metrics not delivered to %s: %s", sink, reason)


def send(delivery, records: Sequence[dict], now_ns: int, only: str | None = None) -> None:
    """Deliver the records as metrics through ``delivery`` (to ``only`` that sink, if named)."""
    from bridges.delivery.deliver import DeliveryError

    metrics = as_metrics(records, now_ns)
    if not metrics:
        return
    try:
        delivery.deliver(metrics, now_ns, handoff=_Discard(), only=only)
    except DeliveryError as exc:
        log.warning("bridge metrics not delivered: %s", exc)


def log_queue(status: dict) -> None:
    """One structured record of the delivery queue's state (depth, oldest message's age in
    seconds, poison depth), which the workbook charts; written after each delivery."""
    record = {"queue": status.get("queue", "?"), "depth": status.get("depth"),
              "oldest_seconds": status.get("oldest_seconds", 0.0),
              "poison_depth": status.get("poison", {}).get("depth")}
    log.info("bridge delivery queue %s: depth=%s, oldest_seconds=%s, poison_depth=%s", record["queue"],
             record["depth"], record["oldest_seconds"], record["poison_depth"],
             extra={"custom_dimensions": {"source": "delivery queue", **record}})
