"""python -m bridges validate / functions, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import requests
from support import ROOT


def run(*args: str, stdin: bytes | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridges", *args], cwd=cwd, input=stdin, capture_output=True, timeout=60)


def test_validate_prints_canonical_ndjson_and_exits_0(tmp_path):
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps([{"name": "a", "counter": {"value": 3}, "dt": "2024-01-07 18:25:20+01:00"}]))
    done = run("validate", str(payload))
    assert done.returncode == 0, done.stderr
    assert [json.loads(l) for l in done.stdout.splitlines()] == [
        {"name": "a", "counter": {"value": 3, "temporality": "cumulative"}, "dt": "2024-01-07T17:25:20Z"}
    ]


def test_validate_reports_each_rejection_and_exits_1(tmp_path):
    payload = tmp_path / "payload.ndjson"
    payload.write_text('{"name":"a","gauge":{"value":1},"dt":0}\n{"name":"b","gauge":{"value":1},"tags":{"k":2}}\n')
    done = run("validate", str(payload))
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 1
    assert "rejected item 1 at /1/tags/k: 2 is not of type 'string'" in done.stderr.decode()
    assert "1 accepted, 1 rejected" in done.stderr.decode()


def test_validate_reads_msgpack_from_stdin():
    done = run("validate", "--format", "msgpack", "-", stdin=msgpack.packb({"name": "m", "gauge": {"value": 2}, "dt": 1}))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["dt"] == "1970-01-01T00:00:01Z"


def test_validate_malformed_and_missing_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"name": }]')
    done = run("validate", str(broken))
    assert done.returncode == 1
    assert "malformed JSON" in done.stderr.decode() and "position 10" in done.stderr.decode()
    missing = run("validate", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and b"no such file" in missing.stderr


def test_functions_lists_what_the_host_indexes():
    done = run("functions")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.decode().splitlines()]
    assert rows[0][0] == "NAME"
    assert ["ingest_metrics", "httpTrigger", "metrics", "[POST]", "function"] in rows
    assert ["health", "httpTrigger", "health", "[GET]", "anonymous"] in rows


def test_functions_shows_timers_with_their_schedule():
    env_run = subprocess.run(
        [sys.executable, "-m", "bridges", "functions", "--app", "tests.apps.sample_app"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert ["tick", "timerTrigger", "%SAMPLE_SCHEDULE%", "-"] in [l.split() for l in env_run.stdout.splitlines()]


def run_with(env: dict[str, str], *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    import os
    import tempfile

    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("BRIDGE_", "DYNATRACE_", "BETTERSTACK_", "UNLEASH_", "AZURE_", "PROMETHEUS_"))}
    state = tempfile.mkdtemp(prefix="bridge-cli-")  # queues and outbox stay out of the checkout
    environment.update({"BRIDGE_STATE_DIR": state, "BRIDGE_OUTBOX_DIR": os.path.join(state, "outbox")})
    return subprocess.run([sys.executable, "-m", "bridges", *args], cwd=ROOT, input=stdin, capture_output=True,
                          timeout=60, env={**environment, **env})


DT_ENV = {"DYNATRACE_URL": "https://abc.live.dynatrace.com", "DYNATRACE_API_TOKEN": "dt0c01.CLI-SECRET"}
PAYLOAD = b'[{"name": "cli.gauge", "gauge": {"value": 2}, "tags": {"host": "a b"}}, {"name": "cli.old", "gauge": {"value": 1}, "dt": 0}]'


def test_render_prints_what_dynatrace_would_get_with_the_token_masked():
    done = run_with(DT_ENV, "render", "--sink", "dynatrace", "-", stdin=PAYLOAD)
    assert done.returncode == 1  # one item would be refused
    request = json.loads(done.stdout)
    assert request["url"] == "https://abc.live.dynatrace.com/api/v2/metrics/ingest"
    assert request["headers"]["Authorization"] == "Api-Token ***"
    assert request["body"][0].startswith("cli.gauge,host=a\\ b gauge,2 ")
    assert "dynatrace would refuse item 1: outside Dynatrace's window" in done.stderr.decode()
    assert b"CLI-SECRET" not in done.stdout + done.stderr


def test_render_raw_writes_the_body_bytes():
    env = {"BETTERSTACK_URL": "https://in.logs.betterstack.com", "BETTERSTACK_SOURCE_TOKEN": "bs-secret"}
    payload = b'{"name": "cli.gauge", "gauge": {"value": 2}}'
    done = run_with(env, "render", "--sink", "betterstack", "--raw", "-", stdin=payload)
    assert done.returncode == 0, done.stderr
    [metric] = msgpack.unpackb(done.stdout)
    assert (metric["name"], metric["gauge"]) == ("cli.gauge", {"value": 2})


def test_render_names_the_missing_setting():
    done = run_with({}, "render", "--sink", "unleash", "-", stdin=PAYLOAD)
    assert done.returncode == 2
    assert "UNLEASH_URL is not set" in done.stderr.decode()


def test_send_delivers_and_summarizes_per_sink(tmp_path):
    from fakes.dynatrace import FakeDynatrace
    from fakes.server import Scripted

    with FakeDynatrace(token="dt0c01.CLI-SECRET") as fake:
        env = {**DT_ENV, "DYNATRACE_URL": fake.url, "BRIDGE_OUTBOX_DIR": str(tmp_path)}
        done = run_with(env, "send", "-", stdin=PAYLOAD.replace(b', "dt": 0', b""))
        assert done.returncode == 0, done.stderr
        assert "dynatrace: 2 delivered, 0 rejected, 0 pending" in done.stdout.decode()
        assert [line.rsplit(" ", 2)[0] for line in fake.accepted_lines] == ["cli.gauge,host=a\\ b", "cli.old"]
        fake.script(Scripted(503))
        failed = run_with(env, "send", "-", stdin=PAYLOAD.replace(b', "dt": 0', b""))
    assert failed.returncode == 1
    assert "dynatrace: 0 delivered, 0 rejected, 2 pending" in failed.stdout.decode()
    assert "pending: Dynatrace answered 503" in failed.stdout.decode()


def test_render_decodes_remote_write_and_raw_keeps_the_snappy_bytes():
    import cramjam

    url = ("https://dce.eastus-1.metrics.ingest.monitor.azure.com/dataCollectionRules/dcr-1/streams/"
           "Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24")
    payload = b'{"name": "up", "gauge": {"value": 1}, "tags": {"job": "x"}, "dt": "2026-11-22T10:00:00Z"}'
    shown = run_with({"PROMETHEUS_REMOTE_WRITE_URL": url}, "render", "--sink", "prometheus", "-", stdin=payload)
    [series] = json.loads(shown.stdout)["body"]["timeseries"]
    assert series["labels"] == {"__name__": "up", "job": "x"}
    assert series["samples"] == [{"value": 1.0, "timestamp": 1795341600000}]
    raw = run_with({"PROMETHEUS_REMOTE_WRITE_URL": url}, "render", "--sink", "prometheus", "--raw", "-", stdin=payload)
    assert bytes(cramjam.snappy.decompress_raw(raw.stdout)).startswith(b"\x0a")  # a WriteRequest's first series


def test_render_decodes_azure_monitor_gzip_ndjson():
    env = {"AZURE_MONITOR_RESOURCE_ID": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Web/sites/app",
           "AZURE_MONITOR_REGION": "westeurope"}
    shown = run_with(env, "render", "--sink", "azure_monitor", "-", stdin=b'{"name": "queue depth", "gauge": {"value": 4}}')
    request = json.loads(shown.stdout)
    assert request["url"] == "https://westeurope.monitoring.azure.com/subscriptions/0/resourceGroups/rg/providers/Microsoft.Web/sites/app/metrics"
    [document] = request["body"]
    assert document["data"]["baseData"]["metric"] == "queue_depth"
    assert document["data"]["baseData"]["series"] == [{"dimValues": [], "min": 4, "max": 4, "sum": 4, "count": 1}]


WEBHOOKS = ROOT / "tests" / "testdata" / "webhooks"


def test_render_source_prints_the_metrics_a_webhook_yields():
    done = run("render", "--source", "github", "-H", "X-GitHub-Event: workflow_run",
               str(WEBHOOKS / "github" / "workflow_run_failure.json"))
    assert done.returncode == 0, done.stderr
    metrics = {m["name"]: m for m in map(json.loads, done.stdout.splitlines())}
    assert metrics["github.workflow_run.duration"]["gauge"] == {"value": 272.0}
    assert metrics["github.workflow_runs"]["tags"]["conclusion"] == "failure"


def test_render_source_says_what_was_skipped_and_names_unknown_sources():
    done = run("render", "--source", "github", "-H", "X-GitHub-Event: star", str(WEBHOOKS / "github" / "ping.json"))
    assert done.returncode == 0 and done.stdout == b""
    assert "skipped: no rule matched: 1" in done.stderr.decode()
    done = run("render", "--source", "nobody", str(WEBHOOKS / "github" / "ping.json"))
    assert done.returncode == 1 and "known: alertmanager, azure-devops, azure-eventgrid, azure-monitor-alerts" in done.stderr.decode()


def test_mappings_check_accepts_the_built_in_rules_and_names_file_rule_and_field_of_a_bad_one(tmp_path):
    done = run("mappings", "check")
    assert done.returncode == 0, done.stderr
    assert "source github" in done.stdout.decode() and "source stripe" in done.stdout.decode()
    bad = tmp_path / "shop.yaml"
    bad.write_text("source: shop\nrules:\n  - name: orders\n    metrics:\n      - {name: shop.orders, type: histo}\n")
    done = run("mappings", "check", str(tmp_path))
    assert done.returncode == 1
    assert "shop.yaml: rule 'orders' at /rules/0/metrics/0/type:" in done.stderr.decode()


def test_a_bad_rule_file_in_the_mappings_folder_is_named_by_every_function(tmp_path):
    """A bad setting never stops indexing: the runner starts and each function answers 503
    naming the setting, the file, the rule and the field."""
    from runner import running_bridge

    folder = tmp_path / "rules"
    folder.mkdir()
    (folder / "shop.yaml").write_text("source: shop\nrules:\n  - name: orders\n    filter: 'a ==== b'\n"
                                      "    metrics: [{name: shop.orders, type: counter}]\n")
    env = {"BRIDGE_MAPPINGS_DIR": str(folder), "BRIDGE_STATE_DIR": str(tmp_path / "state")}
    with running_bridge(env=env) as (base, lines):
        answer = requests.post(f"{base}/api/webhooks/shop", json={"a": 1}, timeout=10)
    assert answer.status_code == 503
    message = answer.json()["error"]
    assert "BRIDGE_MAPPINGS_DIR" in message and "shop.yaml: rule 'orders' at /rules/0/filter" in message