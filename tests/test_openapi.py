"""schemas/openapi.json, the OpenAPI 3.1 description of the HTTP API, against what it describes:
the functions the host indexes, the statuses docs/ documents, the canonical metric schema, and
what ``GET /api/openapi.json`` serves."""
from __future__ import annotations

import importlib
import json
import os
import re
import sys

import azure.functions as func
import pytest
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator
from runner import running_bridge
from support import ROOT

from bridges import __version__
from bridges.local.http_host import route_prefix
from bridges.local.indexing import index
from bridges.local.routes import RouteTemplate

OPENAPI = ROOT / "schemas" / "openapi.json"
METRIC_SCHEMA = ROOT / "schemas" / "metric.schema.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def document() -> dict:
    return json.loads(OPENAPI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def http_functions() -> list:
    # get_functions() may be called once per app; a fresh import gives a fresh app.
    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app").app
    return [f for f in index(app) if f.trigger_type == "httpTrigger"]


def operations(document: dict):
    """(path, method, operation) of every operation in the document."""
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    assert [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()] == []
    assert document["info"]["version"] == __version__


def test_every_indexed_http_function_is_documented_and_nothing_else(document, http_functions):
    prefix = "/" + route_prefix(ROOT)
    routes = sorted(((RouteTemplate(f.route), f) for f in http_functions), key=lambda pair: pair[0].specificity())
    documented = set()
    for path, method, operation in operations(document):
        assert path.startswith(prefix + "/"), path
        # The host's own routing (as the local runner does it) must send this path to the function.
        concrete = re.sub(r"\{[^}]+\}", "x", path[len(prefix):])
        template, function = next(((t, f) for t, f in routes if t.match(concrete) is not None), (None, None))
        assert function is not None, f"{method.upper()} {path} reaches no function"
        # operationIds are unique in a document: a function's second method gets its own suffix
        assert operation["operationId"] in (function.name, f"{function.name}_{method}"), (path, method)
        assert set(template.parameters) == {p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"}
        auth = "ANONYMOUS" if operation.get("security", document["security"]) == [] else "FUNCTION"
        documented.add((function.name, method.upper(), auth))
    indexed = {(f.name, method, f.auth_level) for f in http_functions for method in f.methods}
    assert documented == indexed
    assert {"openapi_document", "health", "ingest_metrics", "webhook"} <= {name for name, _, _ in indexed}


def test_the_function_key_is_the_security_of_every_keyed_route(document):
    schemes = document["components"]["securitySchemes"]
    assert {(s["type"], s["in"], s["name"]) for s in schemes.values()} == {
        ("apiKey", "header", "x-functions-key"), ("apiKey", "query", "code")}
    assert document["security"] == [{name: []} for name in schemes]
    for path, method, operation in operations(document):
        if operation.get("security") != []:
            assert "401" in operation["responses"], (path, method)


def _sections() -> dict[str, str]:
    """The text under each heading of the HTTP API's pages (docs/http-api.md, docs/webhooks.md), by heading."""
    text = "\n".join((ROOT / "docs" / page).read_text(encoding="utf-8") for page in ("http-api.md", "webhooks.md"))
    parts = re.split(r"^#{1,4} (.+)$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def _table_rows(section: str, first_header: str) -> list[list[str]]:
    """The rows of the first table in ``section`` whose first header cell is ``first_header``."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _statuses(text: str) -> set[str]:
    return set(re.findall(r"\b[1-5]\d\d\b", text))


def _readme_statuses() -> dict[str, set[str]]:
    """Per documented route (with '<...>' for a parameter), the statuses its tables list."""
    sections = _sections()
    api = sections["HTTP API"]
    found = {"/api/metrics": set().union(*(_statuses(row[0]) for row in _table_rows(api, "status")))}
    for row in _table_rows(sections["Vendor formats in: the bridge as a drop-in receiver"], "route (POST)"):
        route = row[0].strip("`")
        found.setdefault(route, set()).update(_statuses(row[-1]))
    webhooks = sections["Generic webhooks: `POST /api/webhooks/{source}`"]
    found["/api/webhooks/<source>"] = set().union(*(_statuses(row[0]) for row in _table_rows(webhooks, "status")))
    return found


def test_every_status_readme_lists_for_a_route_is_documented_for_it(document):
    readme = _readme_statuses()
    assert readme["/api/metrics"] == {"202", "400", "413", "415", "503"}
    assert readme["/api/webhooks/<source>"] == {"200", "202", "400", "401", "404", "409", "413", "503"}
    assert readme["/api/v1/write"] >= {"204", "400"} and readme["/api/azure/<resource id>/metrics"] >= {"200", "400"}
    # The paragraph under the vendor table: whole-body failures get 400/413/415, a delivery that
    # could not be kept 503; the Azure route answers 404 without its trailing /metrics.
    vendor_routes = [route for route in readme if route not in ("/api/metrics", "/api/webhooks/<source>")]
    for route in vendor_routes:
        readme[route] |= {"400", "413", "415", "503"}
    readme["/api/azure/<resource id>/metrics"].add("404")
    paths = {re.sub(r"\{[^}]+\}", "<>", path): item for path, item in document["paths"].items()}
    for route, statuses in readme.items():
        item = paths[re.sub(r"<[^>]+>", "<>", route)]
        assert statuses <= set(item["post"]["responses"]), route
    assert set(document["paths"]["/api/health"]["get"]["responses"]) == {"200", "503"}  # 503: a bad setting


def _metric_schema_as_embedded() -> dict:
    """metric.schema.json as the document holds it: a component, its references into its own
    $defs written from the document's root, without $schema and $id (schemathesis resolves
    references from the document's root, and the dialect is OpenAPI 3.1's own JSON Schema)."""
    schema = json.loads(METRIC_SCHEMA.read_text(encoding="utf-8"))
    del schema["$schema"], schema["$id"]
    return json.loads(json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/Metric/$defs/'))


def test_canonical_bodies_use_the_canonical_metric_schema(document):
    embedded = _metric_schema_as_embedded()
    if os.environ.get("UPDATE_OPENAPI") and document["components"]["schemas"]["Metric"] != embedded:
        document["components"]["schemas"]["Metric"] = embedded
        OPENAPI.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert document["components"]["schemas"]["Metric"] == embedded, (
        "schemas/metric.schema.json changed: UPDATE_OPENAPI=1 copies it into schemas/openapi.json")
    ingest = document["paths"]["/api/metrics"]["post"]["requestBody"]["content"]
    assert set(ingest) == {"application/json", "application/x-ndjson", "application/msgpack"}
    body = document["components"]["schemas"]["CanonicalBody"]
    assert {"$ref": "#/components/schemas/Metric"} in body["anyOf"]


def test_the_trigger_answers_the_document():
    from bridges.triggers.http import openapi_document

    response = openapi_document(func.HttpRequest("GET", "http://localhost/api/openapi.json", body=b""))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_body() == OPENAPI.read_bytes()


def test_get_api_openapi_json_serves_the_file_without_a_key(tmp_path):
    with running_bridge("--require-keys", env={"BRIDGE_STATE_DIR": str(tmp_path)}) as (base, _):
        answer = requests.get(f"{base}/api/openapi.json", timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("application/json")
        assert answer.content == OPENAPI.read_bytes()
        assert requests.post(f"{base}/api/metrics", json={}, timeout=10).status_code == 401
