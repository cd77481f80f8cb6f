"""The embedded default sink: canonical NDJSON appended to a local folder.

It lets a user see exactly what the bridge accepted before any backend is configured. Files
are named by the UTC day the outbox took them (``metrics-2026-11-22.ndjson``: with queued delivery,
the delivery function's day, which can be the day after receipt for a metric accepted just
before midnight); one delivery's metrics are written with a single append, so concurrent
deliveries never interleave lines.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bridges.delivery.sinks.base import LocalSink
from bridges.formats.canonical import encode_ndjson
from bridges.model import Metric
from bridges.timestamps import NS_PER_SECOND


class OutboxSink(LocalSink):
    name = "outbox"

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()

    def path_for(self, now_ns: int) -> Path:
        day = datetime.fromtimestamp(now_ns // NS_PER_SECOND, tz=UTC).strftime("%Y-%m-%d")
        return self.directory / f"metrics-{day}.ndjson"

    def deliver(self, metrics: Sequence[Metric], now_ns: int) -> int:
        """Append the metrics; raises OSError when they could not be written."""
        data = encode_ndjson(metrics)
        path = self.path_for(now_ns)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)
        return len(metrics)

    def status(self) -> dict:
        """What /api/health shows: where the outbox is and whether it can be written."""
        existing = self.directory
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        writable = existing.is_dir() and os.access(existing, os.W_OK)
        return {"configured": True, "directory": str(self.directory), "writable": writable}
