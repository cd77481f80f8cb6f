"""The outbox: canonical NDJSON files on this machine, the sink used when no backend is configured. Its declaration."""
from __future__ import annotations

from bridges.delivery.sinks.declaration import SinkDeclaration


def _build(settings):
    from bridges.delivery.sinks.outbox.sink import OutboxSink

    return OutboxSink(settings.outbox_dir)


SINK = SinkDeclaration(name="outbox", settings=(), required=(), build=_build)
