"""The host's view of the app: what get_functions() and each binding JSON say."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def indexed():
    # get_functions() may be called once per app; a fresh import gives a fresh app.
    import importlib
    import sys

    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app").app
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in app.get_functions()}


def _keyed_post(route: str, methods: list[str] | None = None) -> list[dict]:
    return [
        {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": methods or ["POST"], "authLevel": "FUNCTION",
         "route": route},
        {"direction": "OUT", "type": "http", "name": "$return"},
    ]


def _anonymous_get(route: str) -> list[dict]:
    return [
        {"direction": "IN", "type": "httpTrigger", "name": "req", "methods": ["GET"], "authLevel": "ANONYMOUS",
         "route": route},
        {"direction": "OUT", "type": "http", "name": "$return"},
    ]


def test_every_function_and_its_bindings(indexed):
    assert {name: doc["bindings"] for name, doc in indexed.items()} == {
        "ingest_metrics": _keyed_post("metrics"),
        "ingest_dynatrace": _keyed_post("v2/metrics/ingest"),
        "ingest_remote_write": _keyed_post("v1/write"),
        "ingest_influx_v2": _keyed_post("v2/write"),
        "ingest_influx_v1": _keyed_post("write"),
        "ingest_otlp": _keyed_post("v1/metrics"),
        "ingest_unleash_custom": _keyed_post("client/metrics/custom"),
        "ingest_unleash_client": _keyed_post("client/metrics"),
        "ingest_azure_monitor": _keyed_post("azure/{*resourceId}"),
        "webhook": _keyed_post("webhooks/{source}", ["POST", "OPTIONS"]),  # OPTIONS: the CloudEvents validation
        "health": _anonymous_get("health"),
        "openapi_document": _anonymous_get("openapi.json"),
        "deliver_accepted": [
            {"direction": "IN", "type": "queueTrigger", "name": "msg", "queueName": "%BRIDGE_DELIVERY_QUEUE%",
             "connection": "AzureWebJobsStorage"},
        ],
        "retry_deliveries": [
            {"direction": "IN", "type": "queueTrigger", "name": "msg", "queueName": "%BRIDGE_RETRY_QUEUE%",
             "connection": "AzureWebJobsStorage"},
        ],
        "synthetic_checks": [
            {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%CHECKS_SCHEDULE%"},
        ],
        "polled_sources": [
            {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%SOURCES_SCHEDULE%"},
        ],
    }


def test_function_app_is_thin():
    from support import ROOT

    source = (ROOT / "function_app.py").read_text()
    code = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith(("#", '"""'))]
    assert len(code) <= 20
    assert "func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)" in source
    assert "register_functions(" in source


def test_host_json_shape():
    from support import ROOT

    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"}
    assert host["logging"]["logLevel"]["default"]
    queues = host["extensions"]["queues"]
    assert queues["messageEncoding"] == "base64" and queues["maxDequeueCount"] >= 1


def test_runtime_requirements_are_pinned_and_functions_below_2():
    from support import ROOT

    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert all("==" in line for line in lines)
    version = next(l.split("==")[1] for l in lines if l.startswith("azure-functions=="))
    assert int(version.split(".")[0]) < 2
    assert not any(l.startswith(("pytest", "hypothesis")) for l in lines)
