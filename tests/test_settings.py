"""Settings: validated at start-up with the setting's name, documented in docs/settings.md exactly as coded."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import ROOT

from bridges.settings import SETTINGS, SettingsError, load_settings


def readme_settings() -> dict[str, str]:
    text = (ROOT / "docs" / "settings.md").read_text()
    section = re.split(r"^#{1,2} Settings\s*$", text, maxsplit=1, flags=re.MULTILINE)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|\s*(.*?)\s*\|", section, re.MULTILINE)
    return {name: "" if default == "(none)" else default.strip("`") for name, default in rows}


def test_readme_table_matches_the_code():
    assert readme_settings() == {s.name: s.default for s in SETTINGS}


def test_defaults():
    settings = load_settings({})
    assert settings.max_body_bytes == 20 * 1024 * 1024
    assert settings.max_items == 100_000
    assert settings.outbox_dir == Path(".bridge/outbox")


@pytest.mark.parametrize(
    "name, value",
    [("BRIDGE_MAX_BODY_BYTES", "lots"), ("BRIDGE_MAX_BODY_BYTES", "-5"), ("BRIDGE_MAX_ITEMS", "0"), ("BRIDGE_MAX_ITEMS", "1.5")],
)
def test_a_bad_value_names_the_setting(name, value):
    with pytest.raises(SettingsError) as caught:
        load_settings({name: value})
    assert str(caught.value).startswith(name + ":")
    assert repr(value) in str(caught.value)


def test_an_unresolved_key_vault_reference_is_named():
    reference = "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/outbox/)"
    with pytest.raises(SettingsError) as caught:
        load_settings({"BRIDGE_OUTBOX_DIR": reference})
    assert "BRIDGE_OUTBOX_DIR" in str(caught.value)
    assert "did not resolve" in str(caught.value)
    assert "vault.azure.net" not in str(caught.value)


def test_local_settings_values_are_read_and_the_environment_wins(tmp_path):
    local = tmp_path / "local.settings.json"
    local.write_text(json.dumps({"IsEncrypted": False, "Values": {"BRIDGE_MAX_ITEMS": "7", "BRIDGE_MAX_BODY_BYTES": "999"}}))
    settings = load_settings({"BRIDGE_MAX_BODY_BYTES": "1234"}, local)
    assert (settings.max_items, settings.max_body_bytes) == (7, 1234)


def test_local_settings_are_ignored_in_azure(tmp_path):
    local = tmp_path / "local.settings.json"
    local.write_text(json.dumps({"Values": {"BRIDGE_MAX_ITEMS": "7"}}))
    assert load_settings({"WEBSITE_INSTANCE_ID": "abc"}, local).max_items == 100_000


def test_a_broken_local_settings_file_is_named(tmp_path):
    local = tmp_path / "local.settings.json"
    local.write_text("{not json")
    with pytest.raises(SettingsError, match="local.settings.json"):
        load_settings({}, local)


def test_a_bad_setting_never_stops_the_functions_from_indexing(tmp_path):
    """The host sees every function (health included) and each answers 503 naming the setting."""
    script = ("import json, function_app, azure.functions as func\n"
              "from bridges.triggers.http import health, ingest_metrics\n"
              "names = [f.get_function_name() for f in function_app.app.get_functions()]\n"
              "h = health(func.HttpRequest('GET', 'http://x/api/health', body=b''))\n"
              "m = ingest_metrics(func.HttpRequest('POST', 'http://x/api/metrics', body=b'{}'))\n"
              "print(json.dumps([names, h.status_code, json.loads(h.get_body()), m.status_code, json.loads(m.get_body())]))")
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_MAX_ITEMS": "many", "BRIDGE_STATE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names, health_status, health, ingest_status, ingest = json.loads(done.stdout)
    assert {"health", "ingest_metrics", "deliver_accepted", "retry_deliveries", "synthetic_checks"} <= set(names)
    problem = "BRIDGE_MAX_ITEMS: expected a positive whole number, got 'many'"
    assert (health_status, health["status"], health["problems"]) == (503, "misconfigured", [problem])
    assert ingest_status == 503 and problem in ingest["error"]
    assert problem in done.stderr  # and in the host's log


def test_the_local_runner_starts_on_a_bad_setting_and_every_function_names_it(tmp_path):
    from runner import running_bridge

    with running_bridge(env={"BRIDGE_MAX_BODY_BYTES": "0", "BRIDGE_STATE_DIR": str(tmp_path)}) as (base, lines):
        health = requests.get(f"{base}/api/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["problems"] == ["BRIDGE_MAX_BODY_BYTES: expected a positive whole number, got '0'"]


def test_start_up_names_a_partly_configured_sink_in_the_log():
    env = {"PATH": "/usr/bin:/bin", "DYNATRACE_URL": "https://abc.live.dynatrace.com"}
    done = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(); import function_app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "sink not enabled: dynatrace: DYNATRACE_API_TOKEN is not set" in done.stderr


def test_a_sink_named_in_bridge_sinks_must_be_complete():
    with pytest.raises(SettingsError, match="BETTERSTACK_SOURCE_TOKEN is not set"):
        load_settings({"BRIDGE_SINKS": "betterstack", "BETTERSTACK_URL": "https://in.logs.betterstack.com"})
    with pytest.raises(SettingsError, match="BRIDGE_SINKS: expected a comma list"):
        load_settings({"BRIDGE_SINKS": "dynatrace,elastic"})


def test_sinks_are_enabled_by_their_settings():
    assert load_settings({}).enabled_sinks == ("outbox",)
    env = {"DYNATRACE_URL": "https://a.live.dynatrace.com", "DYNATRACE_API_TOKEN": "dt0c01.X",
           "UNLEASH_URL": "https://u.example.com", "UNLEASH_API_TOKEN": "u-token"}
    assert load_settings(env).enabled_sinks == ("dynatrace", "unleash")
    assert load_settings({**env, "BRIDGE_SINKS": "outbox, dynatrace"}).enabled_sinks == ("outbox", "dynatrace")
    local = {"DYNATRACE_URL": "http://localhost:14499/metrics/ingest"}  # OneAgent: no token needed
    assert load_settings(local).enabled_sinks == ("dynatrace",)


def test_tokens_never_show_in_settings_or_their_errors():
    settings = load_settings({"UNLEASH_URL": "https://u", "UNLEASH_API_TOKEN": "very-secret-token"})
    assert "very-secret-token" not in repr(settings) + str(settings)
    assert settings.unleash_api_token.reveal() == "very-secret-token"


@pytest.mark.parametrize("name, url", [
    ("DYNATRACE_URL", "https://admin:pa55w0rd@abc.live.dynatrace.com"),
    ("BETTERSTACK_URL", "https://pa55w0rd@s1.eu-nbg-2.betterstackdata.com"),
    ("UNLEASH_URL", "https://admin:pa55w0rd@unleash.example.com"),
    ("AZURE_MONITOR_ENDPOINT", "https://u:pa55w0rd@usgovarizona.monitoring.azure.us"),
    ("PROMETHEUS_REMOTE_WRITE_URL", "https://u:pa55w0rd@dce.eastus-1.metrics.ingest.monitor.azure.com/x"),
])
def test_credentials_in_a_sink_url_are_refused_naming_the_setting_and_never_shown(tmp_path, name, url):
    from bridges.core import Bridge

    sink_settings = {"DYNATRACE_API_TOKEN": "dt0c01.X", "BETTERSTACK_SOURCE_TOKEN": "bs-token", "UNLEASH_API_TOKEN": "ul",
                     "AZURE_MONITOR_RESOURCE_ID": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Web/sites/a"}
    env = {**sink_settings, name: url, "BRIDGE_OUTBOX_DIR": str(tmp_path)}
    settings = load_settings(env)
    [problem] = [p for p in settings.sink_problems if name in p]
    assert f"{name}: expected a URL without credentials" in problem
    health = json.dumps(Bridge(settings).health().body)
    assert "pa55w0rd" not in health + problem and "admin" not in health
    with pytest.raises(SettingsError, match=f"{name}: expected a URL without credentials") as caught:
        load_settings({**env, "BRIDGE_SINKS": problem.split(":", 1)[0]})
    assert "pa55w0rd" not in str(caught.value)


def test_render_refuses_a_sink_whose_url_holds_credentials():
    done = subprocess.run([sys.executable, "-m", "bridges", "render", "--sink", "dynatrace", "-"], cwd=ROOT,
                          input=b'{"name": "m", "gauge": {"value": 1}}', capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "DYNATRACE_URL": "https://admin:pa55w0rd@abc.live.dynatrace.com",
                               "DYNATRACE_API_TOKEN": "dt0c01.X"})
    assert done.returncode != 0
    assert b"DYNATRACE_URL: expected a URL without credentials" in done.stderr
    assert b"pa55w0rd" not in done.stdout + done.stderr


@pytest.mark.parametrize("target", ["/subscriptions/0000", "/subscriptions/0000/resourceGroups/rg"])
def test_resource_groups_and_subscriptions_cannot_receive_custom_metrics(target):
    env = {"AZURE_MONITOR_RESOURCE_ID": target, "AZURE_MONITOR_REGION": "westeurope"}
    with pytest.raises(SettingsError, match="AZURE_MONITOR_RESOURCE_ID: expected the id of an Azure resource"):
        load_settings({**env, "BRIDGE_SINKS": "azure_monitor"})
    assert load_settings(env).sink_problems[0].startswith("azure_monitor: AZURE_MONITOR_RESOURCE_ID: expected")


def test_azure_sinks_are_enabled_by_their_settings():
    resource = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Web/sites/app"
    url = ("https://dce.eastus-1.metrics.ingest.monitor.azure.com/dataCollectionRules/dcr-1/streams/"
           "Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24")
    settings = load_settings({"AZURE_MONITOR_RESOURCE_ID": resource, "AZURE_MONITOR_REGION": "westeurope",
                              "PROMETHEUS_REMOTE_WRITE_URL": url})
    assert settings.enabled_sinks == ("azure_monitor", "prometheus")
    assert settings.prometheus_remote_write_url == url
    sovereign = load_settings({"AZURE_MONITOR_RESOURCE_ID": resource,
                               "AZURE_MONITOR_ENDPOINT": "https://usgovarizona.monitoring.azure.us"})
    assert sovereign.enabled_sinks == ("azure_monitor",)  # the endpoint stands in for the region
    assert load_settings({"AZURE_MONITOR_RESOURCE_ID": resource}).sink_problems == (
        "azure_monitor: AZURE_MONITOR_REGION is not set",)


def test_default_dimensions_with_a_control_character_are_refused_at_start_up():
    env = {"DYNATRACE_URL": "https://abc.live.dynatrace.com", "DYNATRACE_API_TOKEN": "dt0c01.X",
           "DYNATRACE_DEFAULT_DIMENSIONS": "env=prod\nevil.injected 1"}
    assert load_settings(env).sink_problems == (
        "dynatrace: DYNATRACE_DEFAULT_DIMENSIONS: expected key=value pairs separated by commas, without control "
        "characters, got 'env=prod\\nevil.injected 1'",)


def test_the_example_local_settings_set_every_binding_setting():
    """`make run` copies it to local.settings.json: without these the host (and the local
    runner) would not run the functions whose bindings name them."""
    from bridges.settings import BINDING_SETTINGS, binding_defaults

    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert {k: v for k, v in values.items() if k in BINDING_SETTINGS} == binding_defaults()
    assert set(BINDING_SETTINGS) <= set(values)


def test_health_names_every_binding_setting_that_is_not_set(monkeypatch, tmp_path):
    from bridges.core import Bridge

    monkeypatch.delenv("CHECKS_SCHEDULE")
    monkeypatch.delenv("BRIDGE_DELIVERY_QUEUE")
    health = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path)})).health().body
    assert health["status"] == "degraded"
    named = [p for p in health["problems"] if "is not set: the host does not run" in p]
    assert len(named) == 2
    assert any(p.startswith("CHECKS_SCHEDULE") and "synthetic_checks" in p for p in named)
    assert any(p.startswith("BRIDGE_DELIVERY_QUEUE") and "deliver_accepted" in p for p in named)


def test_the_docs_name_every_sink_and_what_enables_it():
    """The sinks' list in the docs follows the registry: BRIDGE_SINKS's row names every sink, and
    the sinks page names the settings that enable each one."""
    from bridges.delivery.sinks import SINK_NAMES, SINKS

    row = next(line for line in (ROOT / "docs" / "settings.md").read_text().splitlines() if line.startswith("| `BRIDGE_SINKS`"))
    assert all(name in row for name in SINK_NAMES), row
    enabling = (ROOT / "docs" / "sinks.md").read_text().split("\n\n")[1]
    assert all(f"`{name}`" in enabling for sink in SINKS for name in sink.required), enabling
