"""Polled sources: JSON APIs fetched from local servers and read through mapping rules into metrics."""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone

import pytest
from fakes.server import Answer, FakeReceiver, refused_port
from support import NOW_NS, drain, outbox_lines, use_bridge

from bridges.__main__ import main
from bridges.core import Bridge
from bridges.scheduled.polling import Source, due
from bridges.scheduled.schedules import Schedule
from bridges.settings import SettingsError, load_settings

SECRET = "s3cr3t-status-token-6f1d"
UPDATED_AT_NS = NOW_NS - 60 * 1_000_000_000  # the page's updated_at: 2026-11-22T09:59:00Z
STATUS_PAGE = {
    "components": [{"name": "api", "status": "operational"}, {"name": "db", "status": "major_outage"}],
    "page": {"updated_at": "2026-11-22T09:59:00Z"},
}
# A component is up (1) or not (0), dated by the page; the page id comes from a response header.
RULES = {
    "defaults": {"tags": {"page": 'headers."x-page-id"', "feed": "source"}},
    "rules": [{
        "name": "components",
        "events": "body.components",
        "timestamp": {"field": "body.page.updated_at"},
        "tags": {"component": "event.name"},
        "metrics": [{"name": "statuspage.component.up", "type": "gauge",
                     "value": "event.status == 'operational' && `1` || `0`", "tags": {"status": "event.status"}}],
    }],
}
# Every value is text, never a number: the rules refuse every event.
REFUSING_RULES = {"rules": [{"name": "components", "events": "body.components",
                             "metrics": [{"name": "statuspage.component", "type": "gauge", "value": "event.name"}]}]}


class StatusServer(FakeReceiver):
    """A status page and its failure modes, by path; /private wants the bearer token."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()  # ends the slow answers when the test is over

    def answer(self, request) -> Answer:
        page = Answer(200, {"Content-Type": "application/json", "X-Page-Id": "p-42"}, json.dumps(STATUS_PAGE).encode())
        if request.path == "/summary.json":
            return page
        if request.path == "/private":
            return page if request.headers.get("authorization") == f"Bearer {SECRET}" else Answer(401)
        if request.path == "/echo":  # repeats the credential in a body that is not JSON
            return Answer(200, {"Content-Type": "text/plain"}, request.headers.get("authorization", "").encode())
        if request.path == "/html":
            return Answer(200, {"Content-Type": "text/html"}, b"<html>maintenance</html>")
        if request.path == "/slow":
            self.release.wait(10)
            return page
        return Answer(503, {}, b'{"error": "unavailable"}')


@pytest.fixture
def server():
    with StatusServer() as running:
        yield running
        running.release.set()


@pytest.fixture
def refused_url():
    return f"http://127.0.0.1:{refused_port()}/summary.json"


def sources_setting(*entries: dict) -> str:
    return json.dumps({"sources": list(entries)})


def source(name: str, url: str, mapping: object = None, **extra) -> dict:
    return {"name": name, "url": url, "mapping": RULES if mapping is None else mapping, **extra}


def polling_bridge(settings_env: dict, *entries: dict, **settings: str) -> Bridge:
    return use_bridge({**settings_env, "BRIDGE_SOURCES": sources_setting(*entries), **settings})


def view(metric) -> tuple:
    return metric.name, metric.point.value, metric.tag_dict(), metric.time_ns


def declared(env: dict) -> list[Source]:
    """The sources as the bridge loads them (SettingsError when the declaration is wrong)."""
    return Bridge(load_settings(env)).polled_sources


def poll_states(lines: list[dict]) -> dict[str, tuple]:
    """poll_up by source from the outbox: (value, reason tag)."""
    return {line["tags"]["source"]: (line["gauge"]["value"], line["tags"].get("reason"))
            for line in lines if line["name"] == "poll_up"}


# --- mapping rules -----------------------------------------------------------------------------


def test_inline_rules_turn_the_json_into_metrics(server, settings_env):
    bridge = polling_bridge(settings_env, source("status", server.url + "/summary.json"), BRIDGE_LOCATION="westeurope")
    polls, normalized = bridge.poll_sources(names=["status"], deliver=False)

    assert [(p.source.name, p.up, p.status, p.message) for p in polls] == [("status", True, 200, "2 metrics")]
    mapped = [view(m) for m in normalized.metrics if not m.name.startswith("poll_")]
    assert mapped == [
        ("statuspage.component.up", 1, {"component": "api", "feed": "status", "page": "p-42", "status": "operational"},
         UPDATED_AT_NS),
        ("statuspage.component.up", 0, {"component": "db", "feed": "status", "page": "p-42", "status": "major_outage"},
         UPDATED_AT_NS),
    ]
    own = {m.name: m for m in normalized.metrics if m.name.startswith("poll_")}
    assert view(own["poll_up"]) == ("poll_up", 1, {"source": "status", "location": "westeurope"}, NOW_NS)
    duration = own["poll_duration_seconds"]
    assert duration.tag_dict() == {"source": "status", "location": "westeurope"} and duration.unit == "s"
    assert duration.point.value > 0
    assert normalized.rejected == 0
    assert outbox_lines(bridge) == []  # deliver=False sends nothing
    assert [(r.method, r.path) for r in server.received] == [("GET", "/summary.json")]


def test_a_rule_file_named_by_the_source(server, settings_env, tmp_path):
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "statuspage.json").write_text(json.dumps({"source": "statuspage", **RULES}))
    bridge = polling_bridge(settings_env, source("vendor-status", server.url + "/summary.json", "statuspage"),
                            BRIDGE_MAPPINGS_DIR=str(rules_dir))
    polls, normalized = bridge.poll_sources(names=["vendor-status"], deliver=False)

    assert polls[0].up
    # The rules see their file's source; poll_up is tagged with the declared source's name.
    assert {(m.name, m.tag_dict().get("feed"), m.tag_dict().get("source")) for m in normalized.metrics} == {
        ("statuspage.component.up", "statuspage", None),
        ("poll_up", None, "vendor-status"),
        ("poll_duration_seconds", None, "vendor-status"),
    }


def test_the_rule_files_are_read_once_for_all_the_sources_that_name_one():
    """Reading every rule file costs tens of milliseconds: not once per source at start-up."""
    from bridges.scheduled.polling import load_sources
    from bridges.webhooks.handler import load_sources as load_rule_files

    settings = load_settings({"BRIDGE_SOURCES": sources_setting(
        *(source(f"feed-{n}", "http://127.0.0.1:9/", "grafana") for n in range(5)), source("inline", "http://127.0.0.1:9/"))})
    reads = []
    loaded = load_sources(settings, {}, lambda: reads.append(1) or load_rule_files(settings))
    assert [s.name for s in loaded] == ["feed-0", "feed-1", "feed-2", "feed-3", "feed-4", "inline"]
    assert len(reads) == 1


def test_an_unknown_rule_file_name_is_a_settings_error(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(json.dumps({"sources": [source("status", "http://127.0.0.1:9/", "grafana"),
                                            source("other", "http://127.0.0.1:9/", "nowhere")]}))
    with pytest.raises(SettingsError) as raised:
        declared({"BRIDGE_SOURCES_FILE": str(path)})
    message = str(raised.value)
    assert message.startswith(f"BRIDGE_SOURCES_FILE: {path}: at /sources/1/mapping:")
    assert "'nowhere'" in message and "grafana" in message  # the known names are listed


def test_a_secret_header_reaches_the_server_and_nowhere_else(server, settings_env, monkeypatch, caplog):
    monkeypatch.setenv("STATUS_PAGE_TOKEN", SECRET)
    auth = {"Authorization": {"setting": "STATUS_PAGE_TOKEN", "prefix": "Bearer "}}
    bridge = polling_bridge(
        settings_env,
        source("private", server.url + "/private", headers=auth),
        source("echo", server.url + "/echo", headers=auth),
        source("denied", server.url + "/private", headers={"Authorization": {"setting": "STATUS_PAGE_TOKEN"}}),
    )
    with caplog.at_level(logging.DEBUG):
        polls, normalized = bridge.poll_sources()
        drain(bridge)

    assert {p.source.name: (p.up, p.reason) for p in polls} == {
        "private": (True, None), "echo": (False, "json"), "denied": (False, "status")}
    assert {r.path: r.headers["authorization"] for r in server.received if r.path != "/private"} == {
        "/echo": f"Bearer {SECRET}"}
    assert f"Bearer {SECRET}" in [r.headers["authorization"] for r in server.received if r.path == "/private"]
    assert any(m.name == "statuspage.component.up" for m in normalized.metrics)
    assert "poll echo: json: the response is not JSON" in caplog.text  # the logs were captured
    shown = [caplog.text, repr(polls), repr(bridge.polled_sources), repr(normalized.metrics),
             json.dumps(outbox_lines(bridge)), *(p.message for p in polls)]
    assert not [text for text in shown if SECRET in text]


def test_a_secret_setting_that_is_not_set_is_named_without_a_value(monkeypatch):
    entry = source("private", "http://127.0.0.1:9/", headers={"Authorization": {"setting": "STATUS_PAGE_TOKEN"}})
    with pytest.raises(SettingsError, match=r"^STATUS_PAGE_TOKEN: BRIDGE_SOURCES: at /sources/0 sends it in the "
                                            r"Authorization header, but it is not set$"):
        declared({"BRIDGE_SOURCES": sources_setting(entry)})


def test_a_secret_a_header_cannot_carry_is_refused_without_repeating_it(monkeypatch):
    """A line break would fail every poll of the run, with the value in the error."""
    monkeypatch.setenv("STATUS_PAGE_TOKEN", "first-line\nsecond-line")
    entry = source("private", "http://127.0.0.1:9/", headers={"Authorization": {"setting": "STATUS_PAGE_TOKEN"}})
    with pytest.raises(SettingsError) as raised:
        declared({"BRIDGE_SOURCES": sources_setting(entry)})
    assert str(raised.value).startswith("STATUS_PAGE_TOKEN: BRIDGE_SOURCES: at /sources/0 sends it in the Authorization header")
    assert "first-line" not in str(raised.value) and "second-line" not in str(raised.value)


# --- failures ----------------------------------------------------------------------------------


def test_each_failure_has_its_reason_and_the_other_sources_are_still_delivered(server, settings_env, refused_url):
    bridge = polling_bridge(
        settings_env,
        source("healthy", server.url + "/summary.json"),
        source("broken", server.url + "/broken"),
        source("not-json", server.url + "/html"),
        source("refused", refused_url),
        source("slow", server.url + "/slow", timeout=0.5),
        source("refusing", server.url + "/summary.json", REFUSING_RULES),
    )
    polls, _ = bridge.poll_sources()
    drain(bridge)

    lines = outbox_lines(bridge)
    assert poll_states(lines) == {
        "healthy": (1, None), "broken": (0, "status"), "not-json": (0, "json"), "refused": (0, "connect"),
        "slow": (0, "timeout"), "refusing": (0, "mapping"),
    }
    assert {line["tags"]["source"] for line in lines if line["name"] == "poll_duration_seconds"} == set(poll_states(lines))
    assert [(line["tags"]["component"], line["gauge"]["value"]) for line in lines
            if line["name"] == "statuspage.component.up"] == [("api", 1), ("db", 0)]
    messages = {p.source.name: p.message for p in polls}
    assert messages["broken"] == "status 503, expected 200-299"
    assert messages["not-json"].startswith("the response is not JSON")
    assert messages["refusing"].startswith("rule 'components' event 0 metric 'statuspage.component': value event.name")


def test_rules_that_refuse_some_events_keep_the_source_up(server, settings_env, caplog):
    """A partial refusal is logged, not a failed poll: the other events' metrics still count."""
    rules = {"rules": [{"name": "components", "events": "body.components",
                        "metrics": [{"name": "statuspage.component.status", "type": "gauge",
                                     "value": "event.status == 'operational' && `1` || event.status"}]}]}
    bridge = polling_bridge(settings_env, source("status", server.url + "/summary.json", rules))
    with caplog.at_level(logging.WARNING):
        polls, _ = bridge.poll_sources()
        drain(bridge)

    assert polls[0].up
    assert poll_states(outbox_lines(bridge)) == {"status": (1, None)}
    assert [line["gauge"]["value"] for line in outbox_lines(bridge) if line["name"] == "statuspage.component.status"] == [1]
    assert "status rule 'components' event 1" in caplog.text


def test_a_response_no_rule_matches_is_a_mapping_failure(server, settings_env):
    """A status page that changed shape yields nothing: that is seen as a failed poll, not an up one."""
    rules = {"rules": [{"name": "incidents", "filter": "body.incidents != null", "metrics": [
        {"name": "statuspage.incidents", "type": "gauge", "value": "length(body.incidents)"}]}]}
    bridge = polling_bridge(settings_env, source("status", server.url + "/summary.json", rules))
    polls, _ = bridge.poll_sources()
    drain(bridge)

    assert (polls[0].reason, polls[0].message) == ("mapping", "no rule matched the response")
    assert poll_states(outbox_lines(bridge)) == {"status": (0, "mapping")}


def test_a_fault_in_one_poll_does_not_cost_the_others_theirs(server, settings_env):
    from bridges.scheduled.probe import fetch

    def faulty(url, **options):
        if url.endswith("/broken"):
            raise RuntimeError("a bug in the fetcher")
        return fetch(url, **options)

    bridge = polling_bridge(settings_env, source("healthy", server.url + "/summary.json"),
                            source("faulty", server.url + "/broken"))
    bridge.fetcher = faulty
    polls, _ = bridge.poll_sources()
    drain(bridge)

    assert poll_states(outbox_lines(bridge)) == {"healthy": (1, None), "faulty": (0, "connect")}
    assert polls[1].message == "unexpected failure: RuntimeError"


# --- schedules ---------------------------------------------------------------------------------


def at(minute: int, second: int = 0, microsecond: int = 0, hour: int = 12) -> datetime:
    return datetime(2026, 11, 22, hour, minute, second, microsecond, tzinfo=timezone.utc)


def scheduled(name: str, schedule: str | None = None) -> Source:
    return Source(name, "http://127.0.0.1:9/", rules=None, schedule=Schedule(schedule) if schedule else None)


def names(sources: list[Source]) -> list[str]:
    return [s.name for s in sources]


def test_due_sources_on_an_ncrontab_timer():
    every_minute = Schedule("0 * * * * *")
    sources = [scheduled("five", "0 */5 * * * *"), scheduled("always"), scheduled("finer", "*/10 * * * * *")]

    assert names(due(sources, every_minute, at(5, 0, 300_000))) == ["five", "always", "finer"]  # the 12:05 run, late
    assert names(due(sources, every_minute, at(5))) == ["five", "always", "finer"]  # exactly on time
    assert names(due(sources, every_minute, at(6, 0, 100_000))) == ["always", "finer"]
    assert names(due(sources, every_minute, at(9, 59, 400_000))) == ["always", "finer"]  # still the 12:09 run
    # A host clock a little ahead fires the 12:10 run just before 12:10: it is still that firing's run.
    assert names(due(sources, every_minute, at(9, 59, 800_000))) == ["five", "always", "finer"]


def test_a_firing_between_two_runs_is_polled_by_the_next_run():
    sources = [scheduled("half-past", "30 */5 * * * *")]
    every_minute = Schedule("0 * * * * *")

    assert names(due(sources, every_minute, at(5, 0, 200_000))) == []
    assert names(due(sources, every_minute, at(6, 0, 200_000))) == ["half-past"]
    assert names(due(sources, every_minute, at(7, 0, 200_000))) == []


def test_due_sources_on_a_timespan_timer():
    """A TimeSpan timer covers the interval before the run."""
    every_five_minutes = Schedule("00:05:00")
    sources = [scheduled("hourly", "0 0 * * * *"), scheduled("always")]

    assert names(due(sources, every_five_minutes, at(3, 0, 0))) == ["hourly", "always"]
    assert names(due(sources, every_five_minutes, at(0, 0, 0))) == ["hourly", "always"]
    assert names(due(sources, every_five_minutes, at(5, 0, 0))) == ["always"]
    assert names(due(sources, every_five_minutes, at(8, 0, 0))) == ["always"]


def test_a_run_polls_only_the_due_sources_and_delivers_to_the_outbox(server, settings_env):
    bridge = polling_bridge(
        settings_env,
        source("five", server.url + "/summary.json", schedule="0 */5 * * * *"),
        source("hourly", server.url + "/hourly", schedule="0 0 * * * *"),
        SOURCES_SCHEDULE="0 * * * * *",
    )
    polls, _ = bridge.poll_sources(now=at(5, 0, 300_000))
    assert [batch.metrics for batch in drain(bridge)] == [4]

    assert [p.source.name for p in polls] == ["five"]
    assert [r.path for r in server.received] == ["/summary.json"]
    lines = outbox_lines(bridge)
    assert poll_states(lines) == {"five": (1, None)}
    assert sorted(line["name"] for line in lines) == [
        "poll_duration_seconds", "poll_up", "statuspage.component.up", "statuspage.component.up"]

    polls, normalized = bridge.poll_sources(now=at(6, 0, 100_000))
    assert polls == [] and normalized.metrics == [] and drain(bridge) == []
    assert len(server.received) == 1 and len(outbox_lines(bridge)) == len(lines)


# --- declaration errors ------------------------------------------------------------------------


@pytest.mark.parametrize("entries, expected", [
    ([source("ok", "http://127.0.0.1:9/"), source("bad", "http://127.0.0.1:9/", {"rules": [
        {"name": "components", "events": "body.components[", "metrics": [{"name": "x", "type": "counter"}]}]})],
     "BRIDGE_SOURCES: at /sources/1/mapping: rule 'components' at /rules/0/events: "),
    ([source("bad", "http://127.0.0.1:9/", {"rules": [{"name": "r", "metrics": [{"name": "x", "type": "gauge"}]}]})],
     "BRIDGE_SOURCES: at /sources/0/mapping: rule 'r' at /rules/0/metrics/0: 'value' is a required property"),
    ([source("bad", "http://127.0.0.1:9/", schedule="every five minutes")], "BRIDGE_SOURCES: at /sources/0/schedule: "),
    # A TimeSpan has no firings of its own: the source would be polled every run, or never.
    ([source("bad", "http://127.0.0.1:9/", schedule="00:05:00")],
     "BRIDGE_SOURCES: at /sources/0/schedule: '00:05:00': a source's schedule is NCRONTAB"),
    ([source("bad", "http://127.0.0.1:9/", headers={"Accept": "text/€"})],
     "BRIDGE_SOURCES: at /sources/0/headers/Accept: a control character or one beyond Latin-1 cannot be sent"),
    ([source("twice", "http://127.0.0.1:9/"), source("twice", "http://127.0.0.1:9/")],
     "BRIDGE_SOURCES: at /sources/1/name: the name 'twice' is also used at /sources/0"),
    ([source("bad", "http://127.0.0.1:9/", headers={"X-Api-Key": "written-here"})],
     "BRIDGE_SOURCES: at /sources/0/headers/X-Api-Key: the X-Api-Key header carries a credential"),
])
def test_inline_declaration_errors_name_the_setting_and_the_field(entries, expected):
    with pytest.raises(SettingsError) as raised:
        declared({"BRIDGE_SOURCES": sources_setting(*entries)})
    assert str(raised.value).startswith(expected)
    assert "written-here" not in str(raised.value)


def test_a_schema_error_in_the_file_names_the_setting_the_file_and_the_field(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text("sources:\n  - name: status\n    url: ftp://status.example.com/summary.json\n    mapping: grafana\n")
    with pytest.raises(SettingsError) as raised:
        declared({"BRIDGE_SOURCES_FILE": str(path)})
    assert str(raised.value).startswith(f"BRIDGE_SOURCES_FILE: {path}: at /sources/0/url: ")


def test_a_file_and_inline_sources_together_are_refused(tmp_path):
    path = tmp_path / "sources.json"
    path.write_text(sources_setting(source("a", "http://127.0.0.1:9/")))
    with pytest.raises(SettingsError) as raised:
        declared({"BRIDGE_SOURCES_FILE": str(path), "BRIDGE_SOURCES": sources_setting(source("b", "http://127.0.0.1:9/"))})
    assert "BRIDGE_SOURCES_FILE" in str(raised.value) and "not both" in str(raised.value)


# --- python -m bridges poll --------------------------------------------------------------------


@pytest.fixture
def poll_env(server, monkeypatch, tmp_path):
    """Two sources, one failing, declared as a user would: in the environment."""
    outbox = tmp_path / "outbox"
    monkeypatch.setenv("BRIDGE_OUTBOX_DIR", str(outbox))
    # The CLI polls every source, due or not: this one's schedule fires once a year.
    monkeypatch.setenv("BRIDGE_SOURCES", sources_setting(
        source("status", server.url + "/summary.json", schedule="0 0 0 1 1 *"), source("broken", server.url + "/broken")))
    return outbox


def test_poll_prints_ndjson_and_a_line_per_source(poll_env, capsys):
    assert main(["poll", "--name", "status"]) == 0
    out, err = capsys.readouterr()
    printed = [json.loads(line) for line in out.splitlines()]
    assert [(m["name"], m["tags"].get("component")) for m in printed] == [
        ("statuspage.component.up", "api"), ("statuspage.component.up", "db"), ("poll_up", None),
        ("poll_duration_seconds", None)]
    assert err.splitlines() == ["status: up: 2 metrics"]
    assert not poll_env.exists()  # printed, not sent


def test_poll_exits_1_when_a_source_fails_and_send_delivers(poll_env, capsys):
    assert main(["poll", "--send"]) == 1
    out, err = capsys.readouterr()
    assert "broken: DOWN (status): status 503, expected 200-299" in err.splitlines()
    printed = [json.loads(line) for line in out.splitlines()]
    assert poll_states(printed) == {"status": (1, None), "broken": (0, "status")}
    sent = [json.loads(line) for f in poll_env.glob("*.ndjson") for line in f.read_text().splitlines()]
    assert poll_states(sent) == poll_states(printed)


def test_poll_with_an_unknown_name_or_no_sources_exits_2(poll_env, capsys, monkeypatch):
    assert main(["poll", "--name", "nothing"]) == 2
    assert "no source named 'nothing'" in capsys.readouterr().err
    monkeypatch.delenv("BRIDGE_SOURCES")
    assert main(["poll"]) == 2
    assert "BRIDGE_SOURCES_FILE" in capsys.readouterr().err


# --- format: prometheus (scrapes) ---------------------------------------------------------------

TEXT_EXPOSITION = b"""# HELP jobs_processed_total Jobs done.
# TYPE jobs_processed_total counter
jobs_processed_total{queue="mail"} 42 1795000000000
jobs_processed_total{queue="sms",empty=""} 7
# HELP queue_depth Waiting jobs.
# TYPE queue_depth gauge
queue_depth 3
queue_depth{queue="broken"} NaN
# TYPE legacy_thing untyped
legacy_thing 1.5
# HELP latency_seconds Request latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le="0.1"} 2
latency_seconds_bucket{le="1"} 5
latency_seconds_bucket{le="+Inf"} 6
latency_seconds_sum 4.5
latency_seconds_count 6
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.5"} 0.2
rpc_seconds{quantile="0.9"} NaN
rpc_seconds_sum 10
rpc_seconds_count 40
"""
OPENMETRICS_BODY = b"""# TYPE build info
build_info{version="1.2"} 1
# TYPE wait_seconds histogram
# UNIT wait_seconds seconds
# HELP wait_seconds Time waited.
wait_seconds_bucket{le="0.5"} 1 1795000000.250
wait_seconds_bucket{le="+Inf"} 3 1795000000.250
wait_seconds_count 3 1795000000.250
wait_seconds_sum 2.5 1795000000.250
wait_seconds_created 1794000000.0 1795000000.250
# TYPE sent_bytes counter
# UNIT sent_bytes bytes
sent_bytes_total 1024
sent_bytes_created 1794000000.0
# EOF
"""
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class ExpositionServer(FakeReceiver):
    def answer(self, request) -> Answer:
        if request.path == "/metrics":
            return Answer(200, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, TEXT_EXPOSITION)
        if request.path == "/openmetrics":
            return Answer(200, {"Content-Type": OPENMETRICS_TYPE}, OPENMETRICS_BODY)
        if request.path == "/broken-openmetrics":  # no # EOF
            return Answer(200, {"Content-Type": OPENMETRICS_TYPE}, OPENMETRICS_BODY.replace(b"# EOF\n", b""))
        if request.path == "/garbage":
            return Answer(200, {"Content-Type": "text/plain"}, b"this is {not an exposition\n")
        return Answer(404)


@pytest.fixture
def exposition():
    with ExpositionServer() as running:
        yield running


def scrape(name: str, url: str, **extra) -> dict:
    return {"name": name, "url": url, "format": "prometheus", **extra}


def scraped_lines(settings_env: dict, *entries: dict) -> tuple[list, list[dict]]:
    bridge = polling_bridge(settings_env, *entries, BRIDGE_LOCATION="westeurope")
    polls, _ = bridge.poll_sources()
    drain(bridge)
    return polls, outbox_lines(bridge)


def by_name(lines: list[dict], source_metrics: bool = False) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for line in lines:
        if source_metrics or not line["name"].startswith("poll_"):
            found.setdefault(line["name"], []).append(line)
    return found


def test_a_text_exposition_is_scraped_with_every_kind(exposition, settings_env):
    polls, lines = scraped_lines(settings_env, scrape("app", exposition.url + "/metrics"))
    assert poll_states(lines) == {"app": (1, None)}
    assert exposition.received[0].headers["accept"] == (
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    metrics = by_name(lines)
    assert sorted(metrics) == ["jobs_processed_total", "latency_seconds", "legacy_thing", "queue_depth", "rpc_seconds"]
    jobs = {m["tags"]["queue"]: m for m in metrics["jobs_processed_total"]}
    assert jobs["mail"]["counter"] == {"value": 42, "temporality": "cumulative"}
    assert jobs["mail"]["dt"].startswith("2026-11-18T11:06:40")  # the sample's own timestamp (ms)
    assert metrics["queue_depth"][0]["dt"] != jobs["mail"]["dt"]  # no timestamp: the poll's time
    assert jobs["mail"]["description"] == "Jobs done."
    assert jobs["sms"]["tags"] == {"queue": "sms"}  # an empty label is no label
    assert [m["gauge"]["value"] for m in metrics["queue_depth"]] == [3]  # the NaN one is left out
    assert metrics["legacy_thing"][0]["gauge"] == {"value": 1.5}
    assert metrics["latency_seconds"][0]["histogram"] == {
        "count": 6, "sum": 4.5, "buckets": [{"upper_limit": 0.1, "count": 2}, {"upper_limit": 1.0, "count": 3}]}
    assert metrics["rpc_seconds"][0]["summary"] == {"count": 40, "sum": 10.0,
                                                    "quantiles": [{"quantile": 0.5, "value": 0.2}]}


def test_an_openmetrics_body_keeps_units_and_timestamps_in_seconds(exposition, settings_env):
    polls, lines = scraped_lines(settings_env, scrape("om", exposition.url + "/openmetrics"))
    assert poll_states(lines) == {"om": (1, None)}
    metrics = by_name(lines)
    assert sorted(metrics) == ["build_info", "sent_bytes_total", "wait_seconds"]
    wait = metrics["wait_seconds"][0]
    assert (wait["unit"], wait["description"]) == ("seconds", "Time waited.")
    assert wait["histogram"] == {"count": 3, "sum": 2.5, "buckets": [{"upper_limit": 0.5, "count": 1}]}
    assert wait["dt"] == "2026-11-18T11:06:40.250Z"  # the samples' own timestamp, in seconds
    assert metrics["sent_bytes_total"][0]["counter"]["value"] == 1024
    assert metrics["sent_bytes_total"][0]["unit"] == "bytes"
    assert metrics["build_info"][0]["tags"] == {"version": "1.2"}


def test_keep_and_drop_choose_families_by_fnmatch_pattern(exposition, settings_env):
    _, lines = scraped_lines(settings_env,
                             scrape("app", exposition.url + "/metrics", keep=["*_seconds", "jobs_processed_total"],
                                    drop=["rpc_*"]))
    assert sorted(by_name(lines)) == ["jobs_processed_total", "latency_seconds"]


def test_a_broken_exposition_is_a_parse_failure(exposition, settings_env):
    polls, lines = scraped_lines(settings_env, scrape("garbage", exposition.url + "/garbage"),
                                 scrape("no-eof", exposition.url + "/broken-openmetrics"),
                                 scrape("fine", exposition.url + "/metrics"))
    assert poll_states(lines) == {"garbage": (0, "parse"), "no-eof": (0, "parse"), "fine": (1, None)}
    messages = {p.source.name: p.message for p in polls}
    assert messages["garbage"].startswith("the response is not a Prometheus exposition")
    assert "EOF" in messages["no-eof"]


def test_a_scrape_needs_no_mapping_and_keep_needs_a_scrape(exposition):
    env = {"BRIDGE_SOURCES": sources_setting(scrape("app", exposition.url + "/metrics"))}
    assert declared(env)[0].rules is None
    with pytest.raises(SettingsError):
        declared({"BRIDGE_SOURCES": sources_setting(source("status", exposition.url, keep=["x"]))})
    with pytest.raises(SettingsError):
        declared({"BRIDGE_SOURCES": sources_setting(scrape("app", exposition.url, mapping=RULES))})


def test_the_real_prometheus_own_metrics_are_scraped(prometheus_peer, settings_env):
    polls, lines = scraped_lines(settings_env, scrape("prometheus", prometheus_peer.url + "/metrics"))
    assert poll_states(lines) == {"prometheus": (1, None)}, polls[0].message
    metrics = by_name(lines)
    requests = metrics["prometheus_http_requests_total"]
    assert all("counter" in m for m in requests)
    assert requests[0]["description"].startswith("Counter of HTTP requests")
    durations = metrics["prometheus_http_request_duration_seconds"]
    assert any(m["histogram"]["buckets"] for m in durations)


def exposed(body: bytes, content_type: str) -> list[dict]:
    """One scrape read with prometheus_client's parser alone, as the lines a sink should get: one per
    series (a histogram's or summary's per label set), HELP as description, no sample timestamps."""
    if content_type.split(";")[0].strip() == "application/openmetrics-text":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    lines: dict[tuple, dict] = {}
    for family in text_string_to_metric_families(body.decode()):
        help_ = {"description": family.documentation} if family.documentation else {}
        for sample in family.samples:
            assert sample.timestamp is None
            tags = {k: v for k, v in sample.labels.items() if k not in ("le", "quantile") and v}
            if family.type in ("counter", "gauge", "untyped", "unknown"):
                if sample.name.endswith("_created") and family.type == "counter":
                    continue
                point = ({"counter": {"value": sample.value, "temporality": "cumulative"}} if family.type == "counter"
                         else {"gauge": {"value": sample.value}})
                lines[sample.name, tuple(sorted(tags.items()))] = {"name": sample.name, "tags": tags, **point, **help_}
                continue
            assert family.type in ("histogram", "summary"), family.type
            line = lines.setdefault((family.name, tuple(sorted(tags.items()))),
                                    {"name": family.name, "tags": tags, family.type: {"parts": []}, **help_})
            suffix = sample.name.removeprefix(family.name)
            if suffix in ("_sum", "_count"):
                line[family.type][suffix[1:]] = sample.value
            elif suffix == "_bucket":
                line[family.type]["parts"].append((float(sample.labels["le"]), sample.value))
            else:
                line[family.type]["parts"].append((float(sample.labels["quantile"]), sample.value))
    for line in lines.values():
        if "histogram" in line:  # cumulative le buckets to per-bucket counts, +Inf being the count
            parts, previous, buckets = sorted(line["histogram"].pop("parts")), 0, []
            for le, cumulative in parts[:-1]:
                buckets.append({"upper_limit": le, "count": cumulative - previous})
                previous = cumulative
            line["histogram"]["buckets"] = buckets
        if "summary" in line:
            line["summary"]["quantiles"] = [{"quantile": q, "value": v} for q, v in sorted(line["summary"].pop("parts"))]
    return sorted(lines.values(), key=series_key)


def series_key(line: dict) -> tuple:
    return line["name"], sorted(line["tags"].items())


@pytest.mark.parametrize("accept", [None, "text/plain;version=0.0.4"], ids=["negotiated", "text-0.0.4"])
def test_node_exporter_metrics_reach_the_sink_as_it_exposed_them(node_exporter_peer, settings_env, accept):
    """The bridge's Accept prefers OpenMetrics (node_exporter 1.5 answers 0.0.4 text to it all the
    same); an Accept header declared on the source asks for 0.0.4. Either way, what reaches the sink is
    what prometheus_client's own parser reads in that very scrape: every family, HELP, types."""
    from bridges.scheduled.probe import fetch

    scrapes = []

    def recording(url, **options):
        response = fetch(url, **options)
        scrapes.append((options["headers"], response))
        return response

    entry = scrape("node", node_exporter_peer.metrics_url, **({"headers": {"Accept": accept}} if accept else {}))
    bridge = polling_bridge(settings_env, entry)
    bridge.fetcher = recording
    polls, _ = bridge.poll_sources()
    drain(bridge)
    lines = outbox_lines(bridge)
    assert poll_states(lines) == {"node": (1, None)}, polls[0].message

    [(sent, response)] = scrapes
    assert sent["Accept"] == accept or "application/openmetrics-text" in sent["Accept"]
    scraped = [line for line in lines if not line["name"].startswith("poll_")]
    assert {line["dt"] for line in scraped} == {by_name(lines, True)["poll_up"][0]["dt"]}  # no own timestamps
    kept = ("name", "tags", "counter", "gauge", "histogram", "summary", "description", "unit")
    got = sorted(({"tags": {}, **{k: v for k, v in line.items() if k in kept}} for line in scraped), key=series_key)
    expected = exposed(response.body, response.headers.get("content-type", ""))
    assert [line["name"] for line in got] == [line["name"] for line in expected]
    assert got == expected

    metrics = by_name(lines)  # what a user of node_exporter looks for
    assert metrics["node_context_switches_total"][0]["counter"]["temporality"] == "cumulative"
    assert metrics["node_load1"][0]["description"] == "1m load average."
    [gc] = metrics["go_gc_duration_seconds"]
    assert [q["quantile"] for q in gc["summary"]["quantiles"]] == [0, 0.25, 0.5, 0.75, 1]
    waits = {m["tags"]["queue"]: m["histogram"] for m in metrics["batch_wait_seconds"]}  # the textfile collector's
    assert waits == {"mail": {"count": 6, "sum": 4.5, "buckets": [{"upper_limit": 0.1, "count": 2},
                                                                  {"upper_limit": 1.0, "count": 3}]},
                     "sms": {"count": 1, "sum": 0.5, "buckets": [{"upper_limit": 0.1, "count": 0},
                                                                 {"upper_limit": 1.0, "count": 1}]}}
