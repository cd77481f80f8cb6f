"""The app in the real Azure Functions Python worker (4.34.0), driven over gRPC as the host
drives it (tests/peers/functions_worker.py), in specialized and in placeholder mode.

Indexing is compared with the local runner's view; every function is loaded and invoked with
real request data, and must answer what the local-runner tests assert. The last tests pin down
where the platform differs from the local runner: a bad setting, and an unset binding setting.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peers.functions_worker import (
    MODES,
    PEER_DIR,
    FunctionsHost,
    kept_files,
    names,
    parse_ignore,
    started,
)
from support import ROOT

# The binding settings as the deployment sets them (infra/bicep/main.bicep), so every function
# loads; the linger is 0 so a delivery does not wait for more messages.
SETTINGS = {
    "BRIDGE_DELIVERY_QUEUE": "bridge-deliver",
    "BRIDGE_RETRY_QUEUE": "bridge-retry",
    "CHECKS_SCHEDULE": "0 * * * * *",
    "SOURCES_SCHEDULE": "0 * * * * *",
    "BRIDGE_DELIVERY_LINGER_SECONDS": "0",
}
BINDING_SETTINGS = {"deliver_accepted": ["BRIDGE_DELIVERY_QUEUE"], "retry_deliveries": ["BRIDGE_RETRY_QUEUE"],
                    "synthetic_checks": ["CHECKS_SCHEDULE"], "polled_sources": ["SOURCES_SCHEDULE"]}
BINDING_SETTING_NAMES = [name for names_ in BINDING_SETTINGS.values() for name in names_]
GAUGE = {"name": "queue_depth", "gauge": {"value": 7}, "tags": {"queue": "orders"}}
RESOURCE = "subscriptions/0000/resourceGroups/rg/providers/Microsoft.Web/sites/shop"
TESTDATA = Path(__file__).parent / "testdata"
BASE = "https://bridge.azurewebsites.net/api"


# ------------------------------------------------------------------ .funcignore, as a build reads it


def test_funcignore_patterns_follow_gitignore(tmp_path):
    for name in ("app.py", "README.md", "docs/guide.md", "docs/keep.md", "pkg/tests/t.py", "tests/t.py",
                 "build/x.txt", "pkg/build/y.txt", "cache/a", "pkg/deep/cache/b", "logs/a.log", "logs/keep.log",
                 "data/raw/x.csv", "data/raw/sub/y.csv", "notes.txt", "lib/notes.txt", "x.pyc", "a[1].txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    rules = parse_ignore("""
        # a comment, then blank lines

        *.md
        !keep.md
        tests
        /build
        **/cache/
        logs/*.log
        !logs/keep.log
        data/**/*.csv
        /notes.txt
        *.py[co]
        a\\[1].txt
    """.replace("        ", ""))
    assert kept_files(tmp_path, rules) == sorted([
        "app.py", "docs/keep.md", "pkg/build/y.txt", "logs/keep.log", "lib/notes.txt",
    ])


def test_an_excluded_folder_cannot_be_brought_back(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert kept_files(tmp_path, parse_ignore("out/\n!out/keep.txt\n")) == []
    assert kept_files(tmp_path, parse_ignore("out/*\n!out/keep.txt\n")) == ["out/keep.txt"]


def test_the_deployed_package_is_what_funcignore_says():
    """.funcignore: "The app needs only function_app.py, host.json, requirements.txt, bridges/,
    schemas/ and mappings/" (and the build reads .funcignore itself)."""
    files = kept_files(ROOT)
    assert {"function_app.py", "host.json", "requirements.txt", "schemas/openapi.json"} <= set(files)
    assert any(f.startswith("bridges/triggers/") for f in files) and any(f.startswith("mappings/") for f in files)
    assert {f.split("/")[0] for f in files} <= {"function_app.py", "host.json", "requirements.txt", "bridges",
                                                "schemas", "mappings", ".funcignore"}
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc") or f.endswith(".md")]


# ------------------------------------------------------------------ the worker, in both modes


def local_view(settings: dict[str, str]) -> dict[str, list[dict]]:
    """Each function's bindings as the local runner indexes them (a fresh interpreter: the
    app's FunctionApp can be indexed once per process)."""
    code = ("import json; from bridges.local.indexing import index, load_app; "
            "print(json.dumps({f.name: f.bindings for f in index(load_app('function_app'))}))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_") and k not in BINDING_SETTING_NAMES}
    env.update(settings)
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def local_functions() -> dict[str, list[dict]]:
    return local_view(SETTINGS)


@pytest.fixture(scope="module", params=MODES)
def host(request, functions_worker) -> FunctionsHost:  # noqa: F811 - the fixture
    """One worker per mode on a fresh copy of the deployed package, indexed and loaded."""
    with started(functions_worker, request.param, SETTINGS) as running:
        running.metadata()
        running.load_all()
        yield running


def _trigger_view(bindings: list[dict]) -> dict:
    trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
    keys = ("type", "route", "authLevel", "queueName", "connection", "schedule")
    view = {k: trigger[k] for k in keys if k in trigger}
    view["methods"] = sorted(m.upper() for m in trigger.get("methods") or [])
    view["authLevel"] = str(view.get("authLevel", "")).upper()
    return view


def test_the_worker_indexes_what_the_local_runner_indexes(host, local_functions):
    indexed = {f.name: f.bindings for f in host.functions.values()}
    assert sorted(indexed) == sorted(local_functions)
    assert {n: _trigger_view(b) for n, b in indexed.items()} == {n: _trigger_view(b) for n, b in local_functions.items()}
    assert indexed == local_functions  # the whole binding JSON the host reads
    # Binding settings stay %NAME% in what the worker indexes: the host resolves them.
    assert {f.name: f.setting_references for f in host.functions.values() if f.setting_references} == BINDING_SETTINGS


def test_every_function_loads(host, local_functions):
    assert host.unloadable == {}
    assert sorted(host.loaded) == sorted(local_functions)


def test_each_mode_runs_the_protobuf_it_should(host):
    """Specialized: the app's packages come first, so the worker itself runs the app's protobuf.
    Placeholder: the worker's own protobuf 4.25 was imported before the app existed, and stays;
    so does its azure-functions 1.22.0b4 (the worker's reload of the app's fails, and it logs so)."""
    if host.mode == "placeholder":  # the app's azure-functions does not take over either
        reloads = [m for _, _, m in host.logs if "azure.functions" in m and "eload" in m]
        assert reloads and not [m for m in reloads if "now at" in m and ".python_packages" in m], reloads
    loaded = host.loaded_from("google/_upb/")
    if not loaded:
        pytest.skip("no /proc/<pid>/maps here to see which protobuf the worker loaded")
    # /proc shows real paths: the app's .python_packages is a link to the cached remote build.
    expected = PEER_DIR.resolve() / ("app-packages" if host.mode == "specialized" else "venv")
    assert all(path.startswith(f"{expected}/") for path in loaded), loaded


def _post(route: str, body: bytes, content_type: str, **headers: str) -> dict:
    return {"method": "POST", "url": f"{BASE}/{route}", "body": body,
            "headers": {"Content-Type": content_type, **headers}}


def _remote_write_body() -> bytes:
    from bridges.formats import remote_write

    now_ms = time.time_ns() // 1_000_000
    return remote_write.compress(remote_write.write_request([((("__name__", "queue_depth"), ("queue", "orders")),
                                                              7.0, now_ms)]))


def _azure_document() -> bytes:
    return gzip.compress(json.dumps({"time": "2026-11-22T09:59:00Z", "data": {"baseData": {
        "metric": "QueueDepth", "namespace": "Shop", "dimNames": ["Queue"],
        "series": [{"dimValues": ["orders"], "min": 1, "max": 9, "sum": 20, "count": 4}]}}}).encode())


def _check_metrics(answer) -> None:
    assert answer.status == 202, answer
    assert (answer.json()["accepted"], answer.json()["rejected"]) == (1, 1)
    assert answer.json()["errors"] == [{"index": 1, "pointer": "/1/gauge/value", "message": "'x' is not of type 'number'"}]
    assert answer.json()["delivery"] == {"queued": 1}


def _check_health(answer) -> None:
    assert answer.status == 200, answer
    assert answer.header("Content-Type").startswith("application/json")
    assert answer.json()["status"] == "ok"


def _check_openapi(answer) -> None:
    assert answer.status == 200, answer
    assert answer.header("Content-Type").startswith("application/json")
    assert answer.json()["openapi"].startswith("3.1") and "/api/metrics" in answer.json()["paths"]


def _check_status(status: int):
    def check(answer) -> None:
        assert answer.status == status, answer
    return check


def _check_empty(status: int):
    def check(answer) -> None:
        assert (answer.status, answer.body) == (status, b""), answer
    return check


def _check_dynatrace(answer) -> None:
    assert answer.status == 202, answer
    assert (answer.json()["linesOk"], answer.json()["linesInvalid"]) == (1, 0)


def _check_dynatrace_invalid(answer) -> None:
    assert answer.status == 400, answer
    assert (answer.json()["linesOk"], answer.json()["linesInvalid"]) == (2, 1)
    assert [line["line"] for line in answer.json()["error"]["invalidLines"]] == [2]


def _check_webhook(answer) -> None:
    assert answer.status == 202, answer


HTTP_CASES = {  # id -> (function, request, route parameters, check)
    "metrics": ("ingest_metrics", lambda: _post("metrics", json.dumps([GAUGE, {"name": "q", "gauge": {"value": "x"}}]).encode(),
                                                "application/json"), {}, _check_metrics),
    "health": ("health", lambda: {"method": "GET", "url": f"{BASE}/health"}, {}, _check_health),
    "openapi": ("openapi_document", lambda: {"method": "GET", "url": f"{BASE}/openapi.json"}, {}, _check_openapi),
    "dynatrace": ("ingest_dynatrace", lambda: _post("v2/metrics/ingest", b"shop.orders 1", "text/plain"), {},
                  _check_dynatrace),
    "dynatrace-invalid-line": (
        "ingest_dynatrace",
        lambda: _post("v2/metrics/ingest", b"shop.orders,currency=eur count,delta=3\nbad key! 1\n"
                                           b"#shop.orders count dt.meta.unit=Count\n", "text/plain; charset=utf-8"),
        {}, _check_dynatrace_invalid),
    "remote-write": ("ingest_remote_write", lambda: _post("v1/write", _remote_write_body(), "application/x-protobuf",
                                                          **{"Content-Encoding": "snappy",
                                                             "X-Prometheus-Remote-Write-Version": "0.1.0"}),
                     {}, _check_empty(204)),
    "unleash-custom": ("ingest_unleash_custom", lambda: _post("client/metrics/custom", json.dumps(
        {"metrics": [{"name": "checkout_clicks", "value": 4, "labels": {"env": "prod"}}]}).encode(), "application/json"),
        {}, _check_empty(202)),
    "unleash-client": ("ingest_unleash_client", lambda: _post(
        "client/metrics", (TESTDATA / "inputs" / "unleash" / "client_sdk_spec" / "request.json").read_bytes(),
        "application/json"), {}, _check_empty(202)),
    "azure-monitor": ("ingest_azure_monitor", lambda: _post(f"azure/{RESOURCE}/metrics", _azure_document(),
                                                            "application/json", **{"Content-Encoding": "gzip"}),
                      {"resourceId": f"{RESOURCE}/metrics"}, _check_empty(200)),
    "otlp": ("ingest_otlp", lambda: _post("v1/metrics", (TESTDATA / "inputs" / "otlp" / "all_kinds.binpb").read_bytes(),
                                          "application/x-protobuf"), {}, _check_status(200)),
    "influx-v2": ("ingest_influx_v2", lambda: _post("v2/write", f"cpu,host=a usage=1.5 {time.time_ns()}".encode(),
                                                    "text/plain; charset=utf-8"), {}, _check_empty(204)),
    "influx-v1": ("ingest_influx_v1", lambda: _post("write", f"cpu,host=b usage=2i {time.time_ns()}".encode(),
                                                    "text/plain"), {}, _check_empty(204)),
    "webhook-alertmanager": ("webhook", lambda: _post(
        "webhooks/alertmanager", (TESTDATA / "webhooks" / "alertmanager" / "firing_and_resolved.json").read_bytes(),
        "application/json"), {"source": "alertmanager"}, _check_webhook),
}


@pytest.fixture(scope="module")
def local_answers() -> dict[str, tuple[int, str, bytes]]:
    """Each HTTP case as the local runner (python -m bridges serve) answers it over a socket:
    (status, Content-Type, body)."""
    import requests
    from runner import running_bridge

    answers = {}
    with running_bridge(env=SETTINGS) as (base, _):
        for case, (_, request, _, _) in HTTP_CASES.items():
            sent = request()
            reply = requests.request(sent["method"], sent["url"].replace(BASE, f"{base}/api"), data=sent.get("body"),
                                     headers=sent.get("headers", {}), timeout=30)
            answers[case] = (reply.status_code, reply.headers.get("Content-Type", ""), reply.content)
    return answers


@pytest.mark.parametrize("case", HTTP_CASES)
def test_http_functions_answer_as_on_the_local_runner(host, local_answers, case):
    function, request, params, check = HTTP_CASES[case]
    answer = host.invoke_http(function, params=params, query={"code": "a-function-key"}, **request())
    check(answer)
    status, content_type, body = local_answers[case]
    assert answer.status == status, (answer, local_answers[case])
    # The whole header: the worker's converter adds a charset to text/* only, and so does the
    # local runner (it used to send "application/json; charset=utf-8").
    assert answer.header("Content-Type") == content_type, (answer, content_type)
    if function != "health":  # health reports the runner's own state folders and queue depths
        assert answer.body == body, (answer, body)


def test_every_http_function_is_exercised(local_functions):
    http_functions = {n for n, b in local_functions.items() if b[0]["type"] == "httpTrigger"}
    assert http_functions == {function for function, *_ in HTTP_CASES.values()}


def _outbox(host: FunctionsHost) -> list[dict]:
    files = sorted((host.app_dir / ".bridge" / "outbox").glob("*.ndjson"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def _delivery_queue(host: FunctionsHost):
    from bridges.queues import LOCAL_FILE, SqliteQueue

    path = host.app_dir / ".bridge" / LOCAL_FILE
    assert path.is_file(), "the HTTP functions queued nothing in the app folder's BRIDGE_STATE_DIR"
    return SqliteQueue(path, SETTINGS["BRIDGE_DELIVERY_QUEUE"])


def test_the_delivery_function_delivers_what_an_http_function_queued(host):
    marker = {"name": f"worker_delivery_{host.mode}", "gauge": {"value": 1}, "tags": {"mode": host.mode}}
    answer = host.invoke_http("ingest_metrics", "POST", f"{BASE}/metrics", {"Content-Type": "application/json"},
                              json.dumps([marker]).encode())
    assert answer.status == 202 and answer.json()["delivery"] == {"queued": 1}, answer
    queue = _delivery_queue(host)
    messages = queue.receive(32, 60)  # everything queued so far, leased as the host's listener does
    assert messages
    for message in messages:
        invocation = host.invoke_queue("deliver_accepted", message.text, message_id=message.id,
                                       dequeue_count=message.dequeue_count)
        assert invocation.ok, invocation
        queue.delete(message)  # the host deletes a message whose invocation succeeded
    written = [{k: v for k, v in line.items() if k != "dt"} for line in _outbox(host)]
    assert marker in written
    assert not queue.receive(1, 1)


def test_the_retry_function_delivers_an_envelope(host):
    from bridges.model import Gauge, Metric
    from bridges.retry.envelopes import envelopes_for

    now_ns = time.time_ns()
    metric = Metric(f"worker_retry_{host.mode}", Gauge(2.5), now_ns, (("mode", host.mode),))
    [envelope] = envelopes_for("outbox", [metric], "HTTP 503", now_ns)
    invocation = host.invoke_queue("retry_deliveries", envelope.to_text())
    assert invocation.ok, invocation
    [written] = [line for line in _outbox(host) if line["name"] == metric.name]
    assert (written["gauge"], written["tags"]) == ({"value": 2.5}, {"mode": host.mode})


@pytest.mark.parametrize("function", ["synthetic_checks", "polled_sources"])
def test_timers_run_with_nothing_declared(host, function):
    invocation = host.invoke_timer(function)
    assert invocation.ok, invocation


def test_a_failing_message_fails_the_invocation(host):
    """What the host then retries and poisons: the worker reports the exception."""
    invocation = host.invoke_queue("retry_deliveries", "not an envelope")
    assert not invocation.ok
    assert "envelope" in invocation.exception.lower(), invocation


# ------------------------------------------------------------------ where the platform differs


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_setting_still_indexes_every_function_and_answers_503(functions_worker, local_functions, mode):
    """Issue 15, difference 2: one bad setting must not stop indexing (the host would see no
    functions, health included); each function answers 503 naming it, health reports it."""
    with started(functions_worker, mode, {**SETTINGS, "BRIDGE_MAX_ITEMS": "-1"}) as running:
        assert names(running.metadata()) == sorted(local_functions)
        assert running.load_all() == {}
        health = running.invoke_http("health", "GET", f"{BASE}/health")
        assert health.status == 503 and health.json()["status"] == "misconfigured", health
        assert health.header("Content-Type") == "application/json", health
        assert health.json()["problems"][0].startswith("BRIDGE_MAX_ITEMS: "), health
        answer = running.invoke_http("ingest_metrics", "POST", f"{BASE}/metrics", {"Content-Type": "application/json"},
                                     json.dumps([GAUGE]).encode())
        assert answer.status == 503, answer
        assert "BRIDGE_MAX_ITEMS" in answer.body.decode("utf-8", "replace"), answer


@pytest.mark.parametrize("mode", MODES)
def test_an_unset_binding_setting_leaves_its_function_out(functions_worker, local_functions, mode):
    """Issue 15, difference 1: the worker indexes %NAME% unresolved; the host resolves it from
    the app settings alone (no code defaults), so with the setting unset that function is not
    run at all, while the others are. Health must name every such missing setting."""
    settings = {k: v for k, v in SETTINGS.items() if k not in BINDING_SETTING_NAMES}
    with started(functions_worker, mode, settings) as running:
        assert names(running.metadata()) == sorted(local_functions)
        assert running.load_all() == BINDING_SETTINGS
        assert sorted(running.loaded) == sorted(set(local_functions) - set(BINDING_SETTINGS))
        health = running.invoke_http("health", "GET", f"{BASE}/health")
        assert health.status == 200 and health.json()["status"] == "degraded", health
        missing = [name for name in BINDING_SETTING_NAMES if name not in health.body.decode()]
        assert not missing, f"health does not name {missing}: {health}"


def test_health_knows_every_setting_a_binding_names():
    """bridges.settings.BINDING_SETTINGS (what health checks) is what the worker indexed above."""
    from bridges.settings import BINDING_SETTINGS as KNOWN

    assert {function: [name] for name, function in KNOWN.items()} == BINDING_SETTINGS
