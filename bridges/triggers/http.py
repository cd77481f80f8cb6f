"""HTTP-triggered functions: canonical ingest, each vendor format in, generic webhooks, health,
and the OpenAPI document that describes them all.

Every route but health and the OpenAPI document needs a function key (the app's default auth
level). The vendor routes take the path their clients already post to, so a client changes only
its base URL.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import azure.functions as func

from bridges import runtime

if TYPE_CHECKING:
    from bridges.core import Bridge, InputFormat
    from bridges.replies import Reply

blueprint = func.Blueprint()
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "schemas" / "openapi.json"


def to_response(reply: Reply) -> func.HttpResponse:
    if reply.body is None:  # vendors that answer with an empty body (202, 204)
        return func.HttpResponse(status_code=reply.status, headers=reply.headers)
    if isinstance(reply.body, bytes):  # a format's own encoding (OTLP's protobuf): its Content-Type is in the headers
        return func.HttpResponse(reply.body, status_code=reply.status, headers=reply.headers)
    return func.HttpResponse(
        json.dumps(reply.body, ensure_ascii=False),
        status_code=reply.status,
        headers=reply.headers,
        mimetype="application/json",
        charset="utf-8",
    )


def _answer(handle: Callable[[Bridge], Reply], fmt: InputFormat | None = None) -> func.HttpResponse:
    """The Bridge's reply; while a setting is bad, 503 naming it (the function still indexed),
    in ``fmt``'s shape when given (a client reading its own protocol's errors)."""
    from bridges.core import misconfigured, refused_as
    from bridges.settings import SettingsError

    try:
        bridge = runtime.bridge()
    except SettingsError as exc:
        reply = misconfigured(exc)
        return to_response(refused_as(fmt, reply) if fmt is not None else reply)
    return to_response(handle(bridge))


def _receive(fmt, req: func.HttpRequest, query: tuple[str, ...] = ()) -> func.HttpResponse:
    """A vendor format's request; the decoder gets the route parameters and the query parameters
    named in ``query`` (only those: the query also holds the function key and vendors' passwords)."""
    params = {**{name: req.params[name] for name in query if name in req.params}, **req.route_params}
    return _answer(lambda bridge: bridge.receive(
        fmt, req.get_body(), req.headers.get("content-type"), req.headers.get("content-encoding"), params))


@blueprint.route(route="metrics", methods=["POST"])
def ingest_metrics(req: func.HttpRequest) -> func.HttpResponse:
    """Canonical metrics (JSON, NDJSON or MessagePack; Better Stack's objects) in; per-item verdicts out."""
    return _answer(lambda bridge: bridge.ingest(
        req.get_body(), req.headers.get("content-type"), req.headers.get("content-encoding")))


@blueprint.route(route="v2/metrics/ingest", methods=["POST"])
def ingest_dynatrace(req: func.HttpRequest) -> func.HttpResponse:
    """Dynatrace metric ingestion protocol, answered as Dynatrace answers."""
    from bridges.formats import dynatrace

    return _receive(dynatrace, req)


@blueprint.route(route="v1/write", methods=["POST"])
def ingest_remote_write(req: func.HttpRequest) -> func.HttpResponse:
    """Prometheus remote-write 1.0 (snappy + protobuf): a Prometheus server's remote_write target."""
    from bridges.formats import remote_write

    return _receive(remote_write, req)


@blueprint.route(route="v1/metrics", methods=["POST"])
def ingest_otlp(req: func.HttpRequest) -> func.HttpResponse:
    """OTLP/HTTP metrics (protobuf or JSON): an OpenTelemetry SDK's or Collector's endpoint base `/api`."""
    from bridges.formats import otlp

    # One format instance per request: it answers in the request's encoding (OTLP/HTTP), also a
    # refusal before decoding; the setting's resource attributes.
    content_type = req.headers.get("content-type")
    return _answer(lambda bridge: bridge.receive(
        otlp.Otlp(bridge.settings.otlp_resource_attributes, content_type), req.get_body(), content_type,
        req.headers.get("content-encoding"), req.route_params), otlp.Otlp(content_type=content_type))


@blueprint.route(route="v2/write", methods=["POST"])
def ingest_influx_v2(req: func.HttpRequest) -> func.HttpResponse:
    """InfluxDB line protocol at the v2 write API (Telegraf outputs.influxdb_v2, influxdb-client)."""
    from bridges.formats import influx

    return _receive(influx.V2, req, query=("precision",))


@blueprint.route(route="write", methods=["POST"])
def ingest_influx_v1(req: func.HttpRequest) -> func.HttpResponse:
    """InfluxDB line protocol at the 1.x write API (Telegraf outputs.influxdb)."""
    from bridges.formats import influx

    return _receive(influx.V1, req, query=("precision",))


@blueprint.route(route="client/metrics/custom", methods=["POST"])
def ingest_unleash_custom(req: func.HttpRequest) -> func.HttpResponse:
    """Unleash custom metrics (the 7.x endpoint)."""
    from bridges.formats import unleash

    return _receive(unleash.CUSTOM, req)


@blueprint.route(route="client/metrics", methods=["POST"])
def ingest_unleash_client(req: func.HttpRequest) -> func.HttpResponse:
    """Unleash SDK metrics: impact metrics and feature evaluation counts."""
    from bridges.formats import unleash

    return _receive(unleash.CLIENT, req)


@blueprint.route(route="azure/{*resourceId}", methods=["POST"])
def ingest_azure_monitor(req: func.HttpRequest) -> func.HttpResponse:
    """Azure Monitor custom-metric documents at /api/azure/<resource id>/metrics (a catch-all
    must end a route template, so '/metrics' is checked by the decoder)."""
    from bridges.formats import azure_monitor

    return _receive(azure_monitor, req)


@blueprint.route(route="webhooks/{source}", methods=["POST", "OPTIONS"])
def webhook(req: func.HttpRequest) -> func.HttpResponse:
    """Any JSON webhook, turned into metrics by the source's mapping rules; OPTIONS answers the
    CloudEvents webhook validation (WebHook-Request-Origin), which Event Grid sends to an
    endpoint subscribed with the CloudEvents schema. The query parameters go to the signature
    check (a shared secret in the URL, as Event Grid sends it); nothing else reads or logs them."""
    return _answer(lambda bridge: bridge.webhook(
        req.route_params.get("source", ""), req.get_body(), dict(req.headers), req.method, dict(req.params)))


@blueprint.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Version, configured sinks and configuration problems, for probes and people."""
    return _answer(lambda bridge: bridge.health())


@cache
def _openapi_document() -> bytes:
    """schemas/openapi.json, read on the first request and kept for the process."""
    return OPENAPI_PATH.read_bytes()


@blueprint.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI 3.1 description of every HTTP function (schemas/openapi.json), for API tools."""
    return func.HttpResponse(_openapi_document(), mimetype="application/json", charset="utf-8")
