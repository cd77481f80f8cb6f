"""Unleash: custom or impact metrics to an Unleash server, with a client or backend API token. Its declaration."""
from __future__ import annotations

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, choice, http_url, plain_text, token


def _build(settings):
    from bridges.delivery.sinks.unleash.sink import UnleashSink

    return UnleashSink.from_settings(settings)


SINK = SinkDeclaration(
    name="unleash",
    settings=(
        Setting("UNLEASH_URL", "", http_url, "Base URL of the Unleash server (`https://unleash.example.com`).", "unleash"),
        Setting("UNLEASH_API_TOKEN", "", token, "A client or backend API token, sent raw in `Authorization`.",
                "unleash"),
        Setting("UNLEASH_API", "auto", choice("auto", "custom", "impact"),
                "custom: `/api/client/metrics/custom` (Unleash 7.0-8.0); impact: impact metrics in `/api/client/metrics` "
                "(8.1+); auto: custom, switching to impact for the process on a 404.", "unleash"),
        Setting("UNLEASH_APP_NAME", "metrics-bridge", plain_text, "appName reported with impact metrics.", "unleash"),
    ),
    required=("UNLEASH_URL", "UNLEASH_API_TOKEN"),
    build=_build,
)
