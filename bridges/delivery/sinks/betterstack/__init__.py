"""Better Stack: metrics as MessagePack, JSON or NDJSON to a metrics source, with its source token. Its declaration."""
from __future__ import annotations

from bridges.delivery.sinks.declaration import SinkDeclaration
from bridges.setting_rows import Setting, choice, http_url, positive_int, token


def _build(settings):
    from bridges.delivery.sinks.betterstack.sink import BetterStackSink

    return BetterStackSink.from_settings(settings)


SINK = SinkDeclaration(
    name="betterstack",
    settings=(
        Setting("BETTERSTACK_URL", "", http_url,
                "The source's ingesting host (`https://s1234567.eu-nbg-2.betterstackdata.com`) or the older "
                "`https://in.logs.betterstack.com`; `/metrics` is appended when the URL has no path.", "betterstack"),
        Setting("BETTERSTACK_SOURCE_TOKEN", "", token, "The metrics source's token.", "betterstack"),
        Setting("BETTERSTACK_FORMAT", "msgpack", choice("msgpack", "json", "ndjson"), "Body encoding: msgpack, json or ndjson.",
                "betterstack"),
        Setting("BETTERSTACK_MAX_REQUESTS_PER_MINUTE", "500", positive_int,
                "Client-side rate limit per process (Better Stack allows 500 requests a minute per IP).", "betterstack"),
    ),
    required=("BETTERSTACK_URL", "BETTERSTACK_SOURCE_TOKEN"),
    build=_build,
)
