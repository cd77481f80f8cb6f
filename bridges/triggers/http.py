"""HTTP-triggered functions: canonical ingest and health."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import azure.functions as func

from bridges import runtime

if TYPE_CHECKING:
    from bridges.core import Reply

blueprint = func.Blueprint()


def to_response(reply: Reply) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(reply.body, ensure_ascii=False),
        status_code=reply.status,
        headers=reply.headers,
        mimetype="application/json",
        charset="utf-8",
    )


@blueprint.route(route="metrics", methods=["POST"])
def ingest_metrics(req: func.HttpRequest) -> func.HttpResponse:
    """Canonical metrics (JSON, NDJSON or MessagePack) in; per-item verdicts out."""
    reply = runtime.bridge().ingest(
        req.get_body(), req.headers.get("content-type"), req.headers.get("content-encoding")
    )
    return to_response(reply)


@blueprint.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Version, configured sinks and configuration problems, for probes and people."""
    return to_response(runtime.bridge().health())
