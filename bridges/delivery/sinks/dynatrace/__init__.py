"""Dynatrace: the Metrics API v2 line protocol, with an API token or through a local OneAgent. Its declaration."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, boolean, dimensions, http_url, plain_text, token


def _oneagent_needs_no_token(values: Mapping[str, Any]) -> tuple[str, ...]:
    """The OneAgent's local ingest endpoint takes metrics without a token."""
    url = values.get("dynatrace_url")
    parts = urlsplit(url) if isinstance(url, str) else None
    local = parts is not None and parts.hostname in ("localhost", "127.0.0.1", "::1") and \
        parts.path.rstrip("/") == "/metrics/ingest"
    return ("DYNATRACE_API_TOKEN",) if local else ()


def _build(settings):
    from bridges.delivery.sinks.dynatrace.sink import DynatraceSink

    return DynatraceSink.from_settings(settings)


SINK = SinkDeclaration(
    name="dynatrace",
    settings=(
        Setting("DYNATRACE_URL", "", http_url,
                "Metrics ingest URL: `https://<env>.live.dynatrace.com/api/v2/metrics/ingest`, a Managed or ActiveGate "
                "`.../e/<env>/api/v2/metrics/ingest`, or the OneAgent local `http://localhost:14499/metrics/ingest` "
                "(no token). A bare host or environment URL gets `/api/v2/metrics/ingest` appended.", "dynatrace"),
        Setting("DYNATRACE_API_TOKEN", "", token, "API token with the `metrics.ingest` scope.", "dynatrace"),
        Setting("DYNATRACE_METRIC_PREFIX", "", plain_text, "Prefix put before every metric key (a dot is added).", "dynatrace"),
        Setting("DYNATRACE_DEFAULT_DIMENSIONS", "", dimensions,
                "Dimensions added to every line (`key=value,key2=value2`); a metric's own tags win.", "dynatrace"),
        Setting("DYNATRACE_METADATA", "true", boolean,
                "Send `#key gauge dt.meta.unit=...,dt.meta.description=...` lines for metrics with a unit or description.",
                "dynatrace"),
    ),
    required=("DYNATRACE_URL", "DYNATRACE_API_TOKEN"),
    build=_build,
    needless=_oneagent_needs_no_token,
)
