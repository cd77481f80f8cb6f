"""Webhook mapping rules: loading and checking rule files, and what a payload becomes."""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
from pathlib import Path

import jmespath
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import NOW_NS, load_file

from bridges.formats import Decoded
from bridges.ingest.normalize import Normalizer
from bridges.timestamps import parse_timestamp
from bridges.webhooks.expressions import compile_expression, is_false
from bridges.webhooks.rule_files import (
    BUILTIN_DIR,
    MappingError,
    check_paths,
    load_sources,
)

DATA = Path(__file__).parent / "testdata" / "mappings"
GOOD = DATA / "good"
BAD = DATA / "bad"
SECOND = 1_000_000_000


def _rules(tmp_path: Path, text: str, name: str = "rules.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_file(path)


def _one_rule(tmp_path: Path, rule: str, head: str = "source: test\n"):
    return _rules(tmp_path, head + "rules:\n" + rule)


def _workflow_run(**changes) -> dict:
    run = {
        "name": "CI",
        "team": "developers",
        "conclusion": "Success",
        "run_attempt": 2,
        "run_number": 41,
        "run_started_at": "2026-11-22T09:58:00Z",
        "updated_at": "2026-11-22T09:59:30Z",
    }
    run.update(changes)
    return {"action": "completed", "delivery": {"id": 77}, "repository": {"full_name": "acme/app"},
            "workflow_run": run, "queue_depth": 3}


CI_HEADERS = {"X-Event": "workflow_run", "Content-Type": "application/json"}


# --- loading good files ------------------------------------------------------------------------


def test_good_files_load_with_their_settings():
    ci = load_file(GOOD / "ci.yaml")
    assert ci.source == "ci"
    assert ci.description == "CI workflow runs"
    assert ci.path == GOOD / "ci.yaml"
    assert ci.signature == {"scheme": "hmac-sha256", "secrets": ["CI_WEBHOOK_SECRET", "CI_WEBHOOK_SECRET_PREVIOUS"],
                            "header": "X-Signature", "prefix": "", "encoding": "hex"}
    assert ci.idempotency == {"header": "X-Delivery", "expression": "body.delivery.id"}
    alerts = load_file(GOOD / "alerts.json")
    assert alerts.signature == {"scheme": "stripe", "secrets": ["ALERTS_SECRET"], "tolerance_seconds": 300}
    payments = load_file(GOOD / "payments.yml")
    assert payments.signature["tolerance_seconds"] == 600


def test_signature_defaults_only_for_the_schemes_that_use_them(tmp_path):
    rules = _rules(tmp_path, "source: gh\nsignature: {scheme: github, secrets: [GH_SECRET]}\n"
                             "rules: [{name: r, metrics: [{name: a, type: counter}]}]\n")
    assert rules.signature == {"scheme": "github", "secrets": ["GH_SECRET"]}
    bare = _rules(tmp_path, "source: bare\nrules: [{name: r, metrics: [{name: a, type: counter}]}]\n", "bare.yaml")
    assert bare.signature is None and bare.idempotency is None and bare.description is None


def test_source_rules_cannot_be_changed_after_load():
    ci = load_file(GOOD / "ci.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ci.source = "other"  # type: ignore[misc]
    ci.signature["secrets"].append("STOLEN")
    ci.idempotency["header"] = "X-Other"
    assert ci.signature["secrets"] == ["CI_WEBHOOK_SECRET", "CI_WEBHOOK_SECRET_PREVIOUS"]
    assert ci.idempotency["header"] == "X-Delivery"


def test_builtin_rule_files_all_load():
    if not BUILTIN_DIR.is_dir():
        pytest.skip("no built-in mappings folder yet")
    loaded, errors = check_paths([BUILTIN_DIR])
    assert [str(e) for e in errors] == []
    assert len({rules.source for rules in loaded}) == len(loaded)


# --- bad files: file, rule and field named -------------------------------------------------------

BAD_CASES = {
    # file: (rule, field, words in the message)
    "wrong_type.yaml": ("workflow runs", "/rules/0/metrics/1/type", "'histo' is not one of ['gauge', 'counter']"),
    "bad_value_expression.yaml": ("values", "/rules/0/metrics/0/value", "'event.a +' is not a valid JMESPath"),
    "bad_filter.yaml": ("filtered", "/rules/0/filter", "not a valid JMESPath expression"),
    "bad_events.yaml": ("per alert", "/rules/0/events", "not a valid JMESPath expression"),
    "bad_timestamp_field.yaml": ("timed", "/rules/0/timestamp/field", "not a valid JMESPath expression"),
    "bad_rule_tag.yaml": ("tagged", "/rules/0/tags/branch", "not a valid JMESPath expression"),
    "bad_metric_tag.yaml": ("tagged", "/rules/0/metrics/1/tags/kind", "not a valid JMESPath expression"),
    "bad_default_tag.yaml": (None, "/defaults/tags/repository", "not a valid JMESPath expression"),
    "bad_idempotency.yaml": (None, "/idempotency/expression", "not a valid JMESPath expression"),
    "unclosed_template.yaml": ("named", "/rules/0/metrics/0/name", "'{' at character 4 is never closed"),
    "stray_brace_template.yaml": ("named", "/rules/0/metrics/0/name", "'}' at character 8 closes nothing"),
    "nested_template.yaml": ("named", "/rules/0/metrics/0/name", "braces do not nest"),
    "bad_template_expression.yaml": ("named", "/rules/0/metrics/0/name", "'event.kind ==' is not a valid JMESPath"),
    "duplicate_rule_names.yaml": ("same", "/rules/1/name", "also used at /rules/0"),
    "unknown_function.yaml": ("computed", "/rules/0/metrics/0/value", "unknown function percent()"),
    "wrong_arity.yaml": ("computed", "/rules/0/metrics/0/value", "divide() takes 2 arguments, not 1"),
    "gauge_without_value.yaml": ("gauges", "/rules/0/metrics/0", "'value' is a required property"),
    "temporality_on_gauge.yaml": ("gauges", "/rules/0/metrics/0/temporality", "'temporality' is for counters only"),
    "misspelled_field.yaml": ("typo", "/rules/0/metrics/0", "'vaule' was unexpected"),
    "hmac_without_header.yaml": (None, "/signature", "'header' is a required property"),
    "tolerance_on_github.yaml": (None, "/signature/tolerance_seconds", "for the stripe, slack and standard-webhooks"),
    "inline_secret.yaml": (None, "/signature/secrets/0", "NAMES of settings"),
    "bad_time_format.yaml": ("timed", "/rules/0/timestamp/format", "'iso' is not one of"),
    "bad_strptime.yaml": ("timed", "/rules/0/timestamp/format", "'Q' is a bad directive"),
    "non_text_key.yaml": ("tagged", "/rules/0/tags", "the key 1 must be text"),
    "bad_source.yaml": (None, "/source", "'GitHub' does not match"),
    "date_value.yaml": (None, "/description", "datetime.date(2026, 11, 22) is not of type 'string'"),
    "no_rules.yaml": (None, "/rules", "should be non-empty"),
    "empty.yaml": (None, "", "the file is empty"),
    "yaml_syntax.yaml": (None, None, "YAML syntax error at line 7, column 8"),
    "json_syntax.json": (None, None, "JSON syntax error at line 4, column 69"),
}


def test_every_bad_file_has_a_case():
    assert sorted(p.name for p in BAD.iterdir()) == sorted([*BAD_CASES, "three_problems.yaml"])


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_file_names_file_rule_and_field(name):
    rule, field, words = BAD_CASES[name]
    with pytest.raises(MappingError) as caught:
        load_file(BAD / name)
    error = caught.value
    assert (error.file, error.rule, error.field) == (str(BAD / name), rule, field)
    assert words in error.message
    text = str(error)
    assert text.startswith(f"{BAD / name}: ") and text.endswith(error.message)
    assert (f"rule '{rule}' " in text) is (rule is not None)
    assert (f"at {field}: " in text) is bool(field)


def test_error_text_reads_like_the_documented_example(monkeypatch):
    monkeypatch.chdir(DATA)
    with pytest.raises(MappingError) as caught:
        load_file(Path("bad/wrong_type.yaml"))
    assert str(caught.value) == (
        "bad/wrong_type.yaml: rule 'workflow runs' at /rules/0/metrics/1/type: 'histo' is not one of ['gauge', 'counter']"
    )


def test_a_secret_written_inline_is_never_repeated():
    with pytest.raises(MappingError) as caught:
        load_file(BAD / "inline_secret.yaml")
    assert "whsec_live" not in str(caught.value)


def test_check_reports_every_error_of_every_file(tmp_path):
    loaded, errors = check_paths([BAD / "three_problems.yaml", GOOD, tmp_path / "missing"])
    assert sorted(rules.source for rules in loaded) == ["alerts", "ci", "payments"]
    assert [(e.rule, e.field) for e in errors] == [
        ("first", "/rules/0/filter"),
        ("first", "/rules/0/metrics/0/name"),
        ("first", "/rules/0/metrics/1/value"),
        (None, None),
    ]
    assert errors[-1].message == "no such file or folder"
    _, all_bad = check_paths([BAD])
    assert {Path(e.file).name for e in all_bad} == {p.name for p in BAD.iterdir()}


def test_a_file_that_is_not_yaml_or_json_is_refused(tmp_path):
    (tmp_path / "rules.toml").write_text("source = 'x'\n")
    with pytest.raises(MappingError, match="must end in .yaml, .yml or .json"):
        load_file(tmp_path / "rules.toml")


def test_later_folders_extend_earlier_sources():
    sources = load_sources([GOOD, DATA / "override"])
    assert sorted(sources) == ["alerts", "ci", "payments"]
    alerts = sources["alerts"]
    assert alerts.path == DATA / "override" / "alerts.yaml"
    assert alerts.rule_names == ("firing alerts", "groups", "every delivery")
    assert alerts.signature == load_file(GOOD / "alerts.json").signature
    assert alerts.idempotency == {"expression": "body.groupKey"}
    assert sources["ci"].path == GOOD / "ci.yaml"


def test_two_files_for_one_source_in_one_folder_stop_start_up():
    with pytest.raises(MappingError) as caught:
        load_sources([DATA / "duplicate-source"])
    assert caught.value.file == str(DATA / "duplicate-source" / "two.yaml")
    assert caught.value.field == "/source"
    assert "also described by" in caught.value.message


def test_a_bad_file_stops_start_up_and_a_missing_folder_too(tmp_path):
    with pytest.raises(MappingError) as caught:
        load_sources([GOOD, BAD])
    assert Path(caught.value.file).parent == BAD
    with pytest.raises(MappingError, match="no such folder"):
        load_sources([tmp_path / "nowhere"])


# --- a user's rule file extends the built-in one -------------------------------------------------

EXTEND = DATA / "extend"
GITHUB_CASES = Path(__file__).parent / "testdata" / "webhooks" / "github"
RECEIVED = "2026-11-22T10:00:00Z"  # support.NOW_NS: metrics without a timestamp of their own
BUILTIN_GITHUB = BUILTIN_DIR / "github.yaml"


def _with_builtin_github(*folders: Path) -> dict:
    """What start-up loads (``load_sources``: layers, the later extending the earlier) with the
    built-in github file alone as the first layer, so the other built-in files do not matter."""
    loaded, errors = check_paths([BUILTIN_GITHUB, *folders])
    if errors:
        raise errors[0]
    return {rules.source: rules for rules in loaded}


def _github_case(stem: str) -> tuple[object, dict, dict]:
    """(body, headers, expected) of a real GitHub delivery from tests/testdata/webhooks/github/."""
    case = GITHUB_CASES / f"{stem}.json"
    return (json.loads(case.read_text()), json.loads(case.with_name(f"{stem}.headers.json").read_text()),
            json.loads(case.with_name(f"{stem}.expected.json").read_text()))


def _metrics(rules, body, headers) -> list[dict]:
    decoded = rules.apply(body, headers, NOW_NS)
    assert decoded.refused == []
    normalized = Normalizer().normalize(decoded.items, NOW_NS)
    assert normalized.errors == []
    return [{k: v for k, v in m.to_json().items() if k != "description"} for m in normalized.metrics]


def test_a_user_rule_is_added_and_the_built_in_github_rules_still_work_on_real_payloads():
    builtin = load_file(BUILTIN_GITHUB)
    github = _with_builtin_github(EXTEND / "adds")["github"]
    assert github.rule_names == (*builtin.rule_names, "webhook pings")
    assert (github.signature, github.idempotency) == (builtin.signature, builtin.idempotency)
    cases = sorted(p.name.removesuffix(".expected.json") for p in GITHUB_CASES.glob("*.expected.json"))
    assert "push_new_branch" in cases and "workflow_run_completed" in cases
    for stem in cases:
        body, headers, expected = _github_case(stem)
        metrics = _metrics(github, body, headers)
        if stem == "ping":
            # the added rule; the built-in defaults (the repository tag) apply to it
            assert metrics == [*expected["metrics"], {
                "name": "github.webhook_pings", "counter": {"value": 1, "temporality": "delta"},
                "tags": {"repository": "Octocoders/Hello-World", "hook": "109948940"}, "dt": RECEIVED}]
        else:
            assert metrics == expected["metrics"], stem
        assert github.delivery_id(body, headers) == expected["delivery_id"]


def test_a_same_named_rule_replaces_in_place_disabled_removes_and_blocks_merge_key_by_key():
    github = _with_builtin_github(EXTEND / "overrides")["github"]
    builtin_names = load_file(BUILTIN_DIR / "github.yaml").rule_names
    assert github.rule_names == tuple(name for name in builtin_names if name != "pull requests")  # disabled
    assert github.signature == {"scheme": "github", "secrets": ["ACME_GITHUB_SECRET"]}
    assert github.idempotency == {"header": "X-GitHub-Delivery"}  # not given: the built-in one
    body, headers, expected = _github_case("push_new_branch")
    assert _metrics(github, body, headers) == [{
        "name": "github.pushes", "counter": {"value": 1, "temporality": "delta"},
        "tags": {"repository": "Codertocat/Hello-World", "team": "platform", "pusher": "Codertocat"},
        "dt": RECEIVED}]  # the replacing rule reads no timestamp
    body, headers, expected = _github_case("workflow_run_completed")  # a built-in rule, with the user's default tag
    assert _metrics(github, body, headers) == [
        {**metric, "tags": {**metric["tags"], "team": "platform"}} for metric in expected["metrics"]]
    body, headers, expected = _github_case("pull_request_merged")  # 'pull requests' is gone, 'merged' stays
    assert [m["name"] for m in expected["metrics"]] == [
        "github.pull_requests", "github.pull_requests.merged", "github.pull_request.time_to_merge"]
    assert [m["name"] for m in _metrics(github, body, headers)] == [
        "github.pull_requests.merged", "github.pull_request.time_to_merge"]


def test_a_signature_of_another_scheme_replaces_the_block_and_other_keys_merge(tmp_path):
    (tmp_path / "github.yaml").write_text("""
source: github
description: GitHub, through our proxy
signature: {scheme: hmac-sha256, secrets: [PROXY_SECRET], header: X-Proxy-Signature}
idempotency: {expression: body.hook_id}
defaults: {namespace: acme}
rules:
  - {name: webhook pings, metrics: [{name: github.webhook_pings, type: counter}]}
""")
    github = _with_builtin_github(tmp_path)["github"]
    assert github.description == "GitHub, through our proxy"
    assert github.signature == {"scheme": "hmac-sha256", "secrets": ["PROXY_SECRET"], "header": "X-Proxy-Signature",
                                "prefix": "", "encoding": "hex"}
    assert github.idempotency == {"header": "X-GitHub-Delivery", "expression": "body.hook_id"}
    body, headers, _ = _github_case("ping")
    [ping] = github.apply(body, headers, NOW_NS).items
    assert ping["namespace"] == "acme" and ping["tags"] == {"repository": "Octocoders/Hello-World"}


def test_a_bad_user_rule_is_named_by_the_user_file_rule_and_field():
    with pytest.raises(MappingError) as caught:
        _with_builtin_github(EXTEND / "bad-rule")
    error = caught.value
    assert (error.file, error.rule, error.field) == (
        str(EXTEND / "bad-rule" / "github.yaml"), "commit sizes", "/rules/1/metrics/0/value")
    assert "not a valid JMESPath expression" in error.message


def test_disabling_a_rule_the_built_in_file_does_not_have_is_an_error():
    with pytest.raises(MappingError) as caught:
        _with_builtin_github(EXTEND / "disable-unknown")
    error = caught.value
    assert (error.file, error.rule, error.field) == (str(EXTEND / "disable-unknown" / "github.yaml"), "push",
                                                     "/rules/0/disabled")
    assert f"no rule of this name is in {BUILTIN_GITHUB}" in error.message
    assert "'pushes'" in error.message  # the names it could have meant


def test_a_disabled_rule_has_only_its_name_and_nothing_to_disable_without_a_built_in_file(tmp_path):
    (tmp_path / "github.yaml").write_text(
        "source: github\nrules:\n  - {name: pushes, disabled: true, filter: body.ref}\n")
    with pytest.raises(MappingError) as caught:
        _with_builtin_github(tmp_path)
    assert (caught.value.rule, caught.value.field) == ("pushes", "/rules/0/filter")
    assert "has only 'name' and 'disabled'" in caught.value.message
    (tmp_path / "github.yaml").write_text("source: github\nrules:\n  - {name: pushes, disabled: false}\n")
    with pytest.raises(MappingError, match="'metrics' is a required property"):
        _with_builtin_github(tmp_path)
    (tmp_path / "github.yaml").unlink()
    (tmp_path / "shop.yaml").write_text("source: shop\nrules:\n  - {name: orders, disabled: true}\n")
    with pytest.raises(MappingError) as caught:
        _with_builtin_github(tmp_path)
    assert (caught.value.file, caught.value.field) == (str(tmp_path / "shop.yaml"), "/rules/0/disabled")
    assert "no built-in rule file" in caught.value.message


def test_a_user_file_for_a_source_without_a_built_in_file_is_used_as_written():
    sources = _with_builtin_github(EXTEND / "new-source")
    assert sources["shop"].path == EXTEND / "new-source" / "shop.yaml"
    assert sources["shop"].rule_names == ("orders",)
    assert sources["github"].rule_names == load_file(BUILTIN_GITHUB).rule_names


def test_a_signed_github_delivery_through_the_webhook_route_meets_the_merged_rules(settings_env, monkeypatch, tmp_path):
    """End to end as a user sees it: BRIDGE_MAPPINGS_DIR holds overrides/github.yaml, GitHub
    signs a real push with the secret the user's file names, the outbox gets the merged rules'
    metrics."""
    import hashlib
    import hmac

    import azure.functions as func
    from support import drain, outbox_lines, use_bridge

    from bridges.triggers.http import webhook
    from bridges.webhooks import rule_files

    builtin_dir = tmp_path / "mappings"  # the built-in github file alone: the others are not what this is about
    builtin_dir.mkdir()
    (builtin_dir / "github.yaml").write_text(BUILTIN_GITHUB.read_text())
    monkeypatch.setattr(rule_files, "BUILTIN_DIR", builtin_dir)
    secret = "acme-github-secret-0123456789"
    monkeypatch.setenv("ACME_GITHUB_SECRET", secret)
    bridge = use_bridge({**settings_env, "BRIDGE_MAPPINGS_DIR": str(EXTEND / "overrides"),
                         "BRIDGE_STATE_DIR": str(tmp_path / "state")})

    def deliver(stem: str, key: str) -> int:
        raw = (GITHUB_CASES / f"{stem}.json").read_bytes()
        headers = json.loads((GITHUB_CASES / f"{stem}.headers.json").read_text())
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()
        request = func.HttpRequest("POST", "http://localhost/api/webhooks/github", headers=headers, body=raw,
                                   route_params={"source": "github"})
        return webhook(request).status_code

    assert deliver("push_new_branch", "the-built-in-secret-setting-is-not-named-any-more") == 401
    assert deliver("push_new_branch", secret) == 202
    assert deliver("workflow_run_completed", secret) == 202
    drain(bridge)
    written = [(m["name"], m.get("tags", {})) for m in outbox_lines(bridge)]
    assert ("github.pushes", {"repository": "Codertocat/Hello-World", "team": "platform", "pusher": "Codertocat"}) in written
    assert "github.commits" not in [name for name, _ in written]  # the replacing rule has one metric
    assert {name for name, tags in written if tags.get("team") == "platform"} >= {
        "github.workflow_run.duration", "github.workflow_runs"}  # built-in rules, with the user's default tag


def test_mappings_check_shows_each_merged_source_and_keeps_its_exit_codes(capsys, monkeypatch, tmp_path):
    from bridges.__main__ import main
    from bridges.webhooks import rule_files

    builtin_dir = tmp_path / "mappings"  # two of the built-in files: the others are not what this is about
    builtin_dir.mkdir()
    for name in ("github.yaml", "stripe.yaml"):
        (builtin_dir / name).write_text((BUILTIN_DIR / name).read_text())
    monkeypatch.setattr(rule_files, "BUILTIN_DIR", builtin_dir)
    user = EXTEND / "overrides" / "github.yaml"
    builtin = builtin_dir / "github.yaml"
    how = {"pushes": f"replaced by {user}", "pull requests": f"disabled by {user}"}
    builtin_names = load_file(builtin).rule_names
    merged = [
        f"ok: source github ({len(builtin_names) - 1} rules): {builtin} extended by {user}",
        *(f"  rule '{name}': {how.get(name, f'from {builtin}')}" for name in builtin_names),
        f"  signature, defaults: overridden by {user}",
    ]
    # a folder given is checked on top of the built-in files, as start-up does; only what it touches is shown
    assert main(["mappings", "check", str(EXTEND / "overrides")]) == 0
    assert capsys.readouterr().out.splitlines() == merged
    # by default, the built-in files and BRIDGE_MAPPINGS_DIR: every source, github merged
    monkeypatch.setenv("BRIDGE_MAPPINGS_DIR", str(EXTEND / "overrides"))
    assert main(["mappings", "check"]) == 0
    out = capsys.readouterr().out
    assert "\n".join(merged) in out and f"ok: {builtin_dir / 'stripe.yaml'} (source stripe, " in out
    # an added rule, and a source of its own, unmerged
    assert main(["mappings", "check", str(EXTEND / "adds"), str(EXTEND / "new-source")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"  rule 'webhook pings': added by {EXTEND / 'adds' / 'github.yaml'}" in lines
    assert f"ok: {EXTEND / 'new-source' / 'shop.yaml'} (source shop, 1 rules)" in lines
    # errors name the user's file and exit 1
    assert main(["mappings", "check", str(EXTEND / "bad-rule"), str(EXTEND / "new-source")]) == 1
    out, err = capsys.readouterr()
    assert "source github" not in out and "source shop" in out
    assert f"error: {EXTEND / 'bad-rule' / 'github.yaml'}: rule 'commit sizes' at /rules/1/metrics/0/value:" in err
    # the built-in folder given: checked as it is, nothing added
    assert main(["mappings", "check", str(builtin_dir)]) == 0
    assert f"ok: {builtin} (source github, " in capsys.readouterr().out


# --- what a payload becomes ----------------------------------------------------------------------


def test_workflow_run_becomes_metrics_with_merged_tags_and_types():
    ci = load_file(GOOD / "ci.yaml")
    decoded = ci.apply(_workflow_run(), CI_HEADERS, NOW_NS)
    dt = 1_795_341_570 * SECOND  # 2026-11-22T09:59:30Z
    base_tags = {"repository": "acme/app", "team": "developers", "workflow": "CI", "attempt": "2"}
    assert decoded.items == [
        {"name": "ci.workflow_run.duration", "gauge": {"value": 90.0}, "tags": base_tags, "dt": dt,
         "namespace": "ci", "unit": "s", "description": "Time from start to completion of a workflow run"},
        {"name": "ci.workflow_run.success", "counter": {"value": 1, "temporality": "delta"},
         "tags": {"repository": "acme/app", "team": "release", "attempt": "2"}, "dt": dt, "namespace": "ci"},
        {"name": "ci.queue.{depth}", "gauge": {"value": 3}, "tags": base_tags, "dt": dt, "namespace": "ci-queue"},
        {"name": "ci.workflow_run.number", "counter": {"value": 41, "temporality": "cumulative"}, "tags": base_tags,
         "dt": dt, "namespace": "ci"},
    ]
    assert decoded.origins == [
        "rule 'workflow runs' event 0 metric 'ci.workflow_run.duration'",
        "rule 'workflow runs' event 0 metric 'ci.workflow_run.{lower(event.workflow_run.conclusion)}'",
        "rule 'workflow runs' event 0 metric 'ci.queue.{{depth}}'",
        "rule 'workflow runs' event 0 metric 'ci.workflow_run.number'",
    ]
    assert decoded.refused == [] and decoded.skipped == {}


def test_items_pass_the_normalizer():
    decoded = load_file(GOOD / "ci.yaml").apply(_workflow_run(), CI_HEADERS, NOW_NS)
    normalized = Normalizer().normalize(decoded.items, NOW_NS)
    assert normalized.errors == [] and len(normalized.metrics) == 4
    duration = normalized.metrics[0]
    assert (duration.name, duration.point.value, duration.tag_dict()["workflow"]) == ("ci.workflow_run.duration", 90.0, "CI")


def test_tag_defaults_are_overridden_by_rule_then_metric(tmp_path):
    rules = _rules(tmp_path, """
source: t
defaults: {tags: {a: "'default'", b: "'default'", c: "'default'"}}
rules:
  - name: r
    tags: {b: "'rule'", c: "'rule'"}
    metrics:
      - {name: m, type: counter, tags: {c: "'metric'"}}
      - {name: n, type: counter}
""")
    items = rules.apply({}, {}, NOW_NS).items
    assert [item["tags"] for item in items] == [{"a": "default", "b": "rule", "c": "metric"},
                                                {"a": "default", "b": "rule", "c": "rule"}]


def test_tag_values_become_text_and_null_leaves_the_tag_out(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    tags: {flag: event.flag, count: event.count, ratio: event.ratio, text: event.text, gone: event.gone}
    metrics: [{name: m, type: counter}]
""")
    decoded = rules.apply({"flag": True, "count": 3, "ratio": 0.5, "text": "x", "gone": None}, {}, NOW_NS)
    assert decoded.items[0]["tags"] == {"flag": "true", "count": "3", "ratio": "0.5", "text": "x"}
    nothing = rules.apply({}, {}, NOW_NS)
    assert "tags" not in nothing.items[0]


def test_a_tag_that_is_an_object_is_refused(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    tags: {labels: event.labels}
    metrics: [{name: m, type: counter}, {name: n, type: counter, tags: {kind: event.kind}}]
""")
    decoded = rules.apply({"labels": {"a": 1}}, {}, NOW_NS)
    assert decoded.items == []
    assert [(r.origin, r.message) for r in decoded.refused] == [
        ("rule 'r' event 0", 'tag \'labels\' event.labels: {"a": 1} is an object, not text')]
    metric_tag = rules.apply({"kind": [1, 2]}, {}, NOW_NS)
    assert [i["name"] for i in metric_tag.items] == ["m"]
    assert [(r.origin, r.message) for r in metric_tag.refused] == [
        ("rule 'r' event 0 metric 'n'", "tag 'kind' event.kind: [1, 2] is an array, not text")]


@pytest.mark.parametrize(
    "raw, value",
    [(3, 3), (2.5, 2.5), (True, 1), (False, 0), ("42", 42), (" -1.5e3 ", -1500.0), ("7.", 7.0), (0, 0)],
)
def test_values_are_numbers_booleans_or_numeric_strings(tmp_path, raw, value):
    rules = _one_rule(tmp_path, "  - {name: r, metrics: [{name: m, type: gauge, value: event.v}]}\n")
    item = rules.apply({"v": raw}, {}, NOW_NS).items[0]
    assert item["gauge"] == {"value": value} and type(item["gauge"]["value"]) is type(value)


@pytest.mark.parametrize("raw", ["abc", "", "1,5", "0x10", "nan", {"a": 1}, [1]])
def test_values_of_the_wrong_type_are_refused(tmp_path, raw):
    rules = _one_rule(tmp_path, "  - {name: r, metrics: [{name: m, type: gauge, value: event.v}]}\n")
    decoded = rules.apply({"v": raw}, {}, NOW_NS)
    assert decoded.items == []
    assert [r.origin for r in decoded.refused] == ["rule 'r' event 0 metric 'm'"]
    assert decoded.refused[0].message.startswith("value event.v: ") and "not a number" in decoded.refused[0].message


def test_null_values_are_skipped_and_counted(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    events: body.list
    metrics: [{name: m, type: gauge, value: event.v}, {name: c, type: counter}]
""")
    decoded = rules.apply({"list": [{"v": None}, {}, {"v": 1}]}, {}, NOW_NS)
    assert [(i["name"], o) for i, o in zip(decoded.items, decoded.origins, strict=True)] == [
        ("c", "rule 'r' event 0 metric 'c'"), ("c", "rule 'r' event 1 metric 'c'"),
        ("m", "rule 'r' event 2 metric 'm'"), ("c", "rule 'r' event 2 metric 'c'")]
    assert decoded.skipped == {"value is null": 2} and decoded.refused == []


def test_counter_temporality_defaults_to_delta_and_value_to_one(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    metrics:
      - {name: a, type: counter}
      - {name: b, type: counter, temporality: cumulative, value: event.total}
      - {name: c, type: counter, value: event.total}
""")
    items = rules.apply({"total": 12}, {}, NOW_NS).items
    assert [item["counter"] for item in items] == [
        {"value": 1, "temporality": "delta"}, {"value": 12, "temporality": "cumulative"},
        {"value": 12, "temporality": "delta"}]


def test_events_array_gives_one_event_per_element():
    alerts = load_file(GOOD / "alerts.json")
    body = {"version": "4", "receiver": "ops", "groupKey": "g1", "alerts": [
        {"status": "firing", "startsAt": "2026-11-22T09:00:00Z", "labels": {"alertname": "Disk", "severity": "high"},
         "value": 93.5},
        {"status": "resolved", "startsAt": "2026-11-22T08:00:00Z", "labels": {"alertname": "CPU"}},
        {"status": "firing", "startsAt": 1_795_334_400, "labels": {"alertname": "CPU"}},
    ]}
    decoded = alerts.apply(body, {}, NOW_NS)
    assert [(o, i.get("tags"), i.get("dt")) for i, o in zip(decoded.items, decoded.origins, strict=True)] == [
        ("rule 'firing alerts' event 0 metric 'alerts.firing'", {"alertname": "Disk", "severity": "high"},
         1_795_338_000 * SECOND),
        ("rule 'firing alerts' event 0 metric 'alerts.value'", {"alertname": "Disk", "severity": "high"},
         1_795_338_000 * SECOND),
        ("rule 'firing alerts' event 2 metric 'alerts.firing'", {"alertname": "CPU"}, 1_795_334_400 * SECOND),
        ("rule 'groups' event 0 metric 'alerts.{body.receiver}.size'", None, None),
    ]
    assert decoded.items[-1] == {"name": "alerts.ops.size", "gauge": {"value": 3}}
    assert decoded.skipped == {"value is null": 1}


def test_events_that_are_not_an_array_are_refused_and_missing_ones_do_not_apply():
    alerts = load_file(GOOD / "alerts.json")
    decoded = alerts.apply({"alerts": {"status": "firing"}}, {}, NOW_NS)
    assert [(r.origin, r.message) for r in decoded.refused] == [
        ("rule 'firing alerts'", 'events body.alerts gave an object, not an array: {"status": "firing"}')]
    missing = alerts.apply({"something": "else"}, {}, NOW_NS)
    assert (missing.items, missing.refused, missing.skipped) == ([], [], {"no rule matched": 1})


def test_filters_choose_the_rules_that_apply(tmp_path):
    ci = load_file(GOOD / "ci.yaml")
    push = ci.apply({"ref": "refs/heads/main", "commits": [{}, {}]}, {"x-event": "push"}, NOW_NS)
    assert push.items == [{"name": "ci.push.commits", "counter": {"value": 2, "temporality": "delta"},
                           "tags": {"team": "platform", "branch": "refs/heads/main"}, "namespace": "ci"}]
    other = ci.apply(_workflow_run(), {"X-Event": "check_run"}, NOW_NS)
    assert (other.items, other.refused, other.skipped) == ([], [], {"no rule matched": 1})
    truthy = _one_rule(tmp_path, "  - {name: r, filter: event.labels, metrics: [{name: m, type: counter}]}\n")
    assert len(truthy.apply({"labels": {"a": "b"}}, {}, NOW_NS).items) == 1
    assert truthy.apply({"labels": {}}, {}, NOW_NS).skipped == {"no rule matched": 1}


def test_a_filter_that_fails_at_run_time_is_a_refusal(tmp_path):
    rules = _one_rule(tmp_path, "  - {name: r, filter: \"lower(event.kind) == 'x'\", metrics: [{name: m, type: counter}]}\n")
    decoded = rules.apply({"kind": 5}, {}, NOW_NS)
    assert [r.origin for r in decoded.refused] == ["rule 'r' event 0"]
    assert decoded.refused[0].message.startswith("filter lower(event.kind) == 'x': In function lower()")


def test_name_templates(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    metrics: [{name: "svc.{event.kind}.{event.code}.{{literal}}", type: counter}]
""")
    assert rules.apply({"kind": "push", "code": 200}, {}, NOW_NS).items[0]["name"] == "svc.push.200.{literal}"
    refusals = {
        "null": ({"code": 1}, "name {event.kind} is null"),
        "object": ({"kind": {}, "code": 1}, "name {event.kind}: {} is an object, not text"),
    }
    for body, reason in refusals.values():
        decoded = rules.apply(body, {}, NOW_NS)
        assert decoded.items == [] and [r.message for r in decoded.refused] == [reason]
    empty = _one_rule(tmp_path, "  - {name: r, metrics: [{name: \"{event.kind}\", type: counter}]}\n")
    assert [r.message for r in empty.apply({"kind": ""}, {}, NOW_NS).refused] == [
        "the name '{event.kind}' is empty for this event"]


@pytest.mark.parametrize(
    "form, raw, expected",
    [
        ("auto", "2026-11-22T09:59:30Z", 1_795_341_570 * SECOND),
        ("auto", 1_795_341_570, 1_795_341_570 * SECOND),
        ("auto", 1_795_341_570_123, 1_795_341_570_123_000_000),
        ("rfc3339", "2026-11-22T10:59:30.5+01:00", 1_795_341_570_500_000_000),
        ("unix", 1_795_341_570, 1_795_341_570 * SECOND),
        ("unix", 1_795_341_570.123456, 1_795_341_570_123_456_000),
        ("unix", "1795341570.5", 1_795_341_570_500_000_000),
        ("unix_ms", 1_795_341_570_123, 1_795_341_570_123_000_000),
        ("unix_ms", "1795341570123", 1_795_341_570_123_000_000),
        ("unix_us", 1_795_341_570_123_456, 1_795_341_570_123_456_000),
        ("unix_ns", 1_795_341_570_123_456_789, 1_795_341_570_123_456_789),
        ("unix_ns", "1795341570123456789", 1_795_341_570_123_456_789),
        ("'%d/%m/%Y %H:%M:%S'", "22/11/2026 09:59:30", 1_795_341_570 * SECOND),
        ("'%d/%m/%Y %H:%M:%S %z'", "22/11/2026 10:59:30 +0100", 1_795_341_570 * SECOND),
        ("'%Y%m%d'", 20261122, 1_795_305_600 * SECOND),
    ],
)
def test_timestamps_in_every_format(tmp_path, form, raw, expected):
    rules = _one_rule(tmp_path, f"""
  - name: r
    timestamp: {{field: event.t, format: {form}}}
    metrics: [{{name: m, type: counter}}]
""")
    decoded = rules.apply({"t": raw}, {}, NOW_NS)
    assert decoded.refused == [] and decoded.items[0]["dt"] == expected


@pytest.mark.parametrize(
    "form, raw, words",
    [
        ("auto", "yesterday", "not an RFC 3339 timestamp"),
        ("auto", "2026-11-22T09:59:30", "not an RFC 3339 timestamp"),
        ("auto", True, "not a boolean"),
        ("rfc3339", 1_795_341_570, "the rfc3339 format reads strings"),
        ("unix", -5, "outside 1970-01-01"),
        ("unix", "soon", "is not a number of unix epoch time"),
        ("unix_ms", True, "is not a number of unix_ms epoch time"),
        ("'%d/%m/%Y'", "2026-11-22", "does not match '%d/%m/%Y'"),
        ("auto", None, "is null"),
    ],
)
def test_unreadable_timestamps_refuse_the_event(tmp_path, form, raw, words):
    rules = _one_rule(tmp_path, f"""
  - name: r
    timestamp: {{field: event.t, format: {form}}}
    metrics: [{{name: m, type: counter}}]
""")
    decoded = rules.apply({"t": raw}, {}, NOW_NS)
    assert decoded.items == []
    assert [r.origin for r in decoded.refused] == ["rule 'r' event 0"]
    assert decoded.refused[0].message.startswith("timestamp event.t") and words in decoded.refused[0].message


@pytest.mark.parametrize("raw, expected", [
    ("2021-02-23T02:41:37.886Z", "2021-02-23T02:41:37.886Z"),  # GitLab's JSON time
    ("2016-08-12 15:23:28 UTC", "2016-08-12T15:23:28Z"),  # Ruby's Time#to_s in UTC
    ("2021-04-28 21:50:00 +0200", "2021-04-28T19:50:00Z"),  # and with the server's offset
])
def test_a_list_of_formats_reads_a_field_written_in_several_forms(tmp_path, raw, expected):
    rules = _one_rule(tmp_path, """
  - name: r
    timestamp: {field: event.t, format: [auto, "%Y-%m-%d %H:%M:%S UTC", "%Y-%m-%d %H:%M:%S %z"]}
    metrics: [{name: m, type: counter}]
""")
    decoded = rules.apply({"t": raw}, {}, NOW_NS)
    assert decoded.refused == []
    assert Normalizer().normalize(decoded.items, NOW_NS).metrics[0].time_ns == parse_timestamp(expected)


def test_a_time_no_format_of_the_list_reads_refuses_the_event_naming_them(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    timestamp: {field: event.t, format: [unix, "%d.%m.%Y"]}
    metrics: [{name: m, type: counter}]
""")
    decoded = rules.apply({"t": "yesterday"}, {}, NOW_NS)
    assert decoded.items == [] and "matches none of the formats 'unix', '%d.%m.%Y'" in decoded.refused[0].message


def test_a_bad_pattern_in_a_list_of_formats_is_named_by_its_place(tmp_path):
    with pytest.raises(MappingError) as caught:
        _one_rule(tmp_path, """
  - name: r
    timestamp: {field: event.t, format: [auto, "%Q"]}
    metrics: [{name: m, type: counter}]
""")
    assert caught.value.field == "/rules/0/timestamp/format/1" and "'Q' is a bad directive" in caught.value.message


def test_without_a_timestamp_the_time_of_receipt_applies(tmp_path):
    rules = _one_rule(tmp_path, "  - {name: r, metrics: [{name: m, type: counter}]}\n")
    item = rules.apply({}, {}, NOW_NS).items[0]
    assert "dt" not in item
    assert Normalizer().normalize([item], NOW_NS).metrics[0].time_ns == NOW_NS


def test_custom_functions(tmp_path):
    payments = load_file(GOOD / "payments.yml")
    body = {"id": "evt_1", "type": "charge.succeeded", "created": 1_795_341_570, "livemode": False,
            "data": {"object": {"amount": 1999, "currency": "eur"}}}
    decoded = payments.apply(body, {}, NOW_NS)
    assert decoded.items[0] == {"name": "payments.charge.amount", "gauge": {"value": 19.99},
                                "tags": {"currency": "EUR", "livemode": "false"}, "dt": 1_795_341_570 * SECOND,
                                "description": "Charge amount in major currency units"}
    rules = _one_rule(tmp_path, """
  - name: r
    metrics:
      - {name: since, type: gauge, value: "seconds_between(event.a, event.b)"}
      - {name: epoch, type: gauge, value: "epoch_seconds(event.b)"}
      - {name: "{upper(event.s)}", type: gauge, value: "divide(event.n, `4`)"}
""")
    items = rules.apply({"a": 1_795_341_500, "b": "2026-11-22T09:59:30.25Z", "s": "up", "n": 2}, {}, NOW_NS).items
    assert [(i["name"], i["gauge"]["value"]) for i in items] == [
        ("since", 70.25), ("epoch", 1_795_341_570.25), ("UP", 0.5)]


def test_custom_functions_skip_on_null_and_refuse_wrong_input(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    metrics:
      - {name: since, type: gauge, value: "seconds_between(event.a, event.b)"}
      - {name: ratio, type: gauge, value: "divide(event.n, event.d)"}
""")
    assert rules.apply({}, {}, NOW_NS).skipped == {"value is null": 2}
    decoded = rules.apply({"a": "then", "b": 5, "n": 1, "d": 0}, {}, NOW_NS)
    assert [r.message for r in decoded.refused] == [
        "value seconds_between(event.a, event.b): seconds_between(): \"then\" is not a timestamp: "
        "not an RFC 3339 timestamp: expected e.g. 2024-01-07T18:25:20Z or 2024-01-07 18:25:20.123+02:00 "
        "(a time zone is required)",
        "value divide(event.n, event.d): divide(): 1 divided by zero",
    ]
    wrong_type = rules.apply({"n": "1", "d": 2}, {}, NOW_NS)
    assert "invalid type for value: 1, expected one of: ['number', 'null']" in wrong_type.refused[0].message


def test_expressions_see_body_headers_event_and_source(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    events: body.items
    tags: {src: source, agent: "headers.\\"user-agent\\"", whole: "to_string(length(body.items))", item: event}
    metrics: [{name: m, type: counter}]
""", head="source: seen\n")
    decoded = rules.apply({"items": ["x"]}, {"User-Agent": "Hook/1"}, NOW_NS)
    assert decoded.items[0]["tags"] == {"src": "seen", "agent": "Hook/1", "whole": "1", "item": "x"}


# --- delivery ids --------------------------------------------------------------------------------


def test_delivery_id_from_the_header_in_any_case_then_the_expression():
    ci = load_file(GOOD / "ci.yaml")
    assert ci.delivery_id({"delivery": {"id": 77}}, {"x-DELIVERY": "d-1"}) == "d-1"
    assert ci.delivery_id({"delivery": {"id": 77}}, {"X-Delivery": ""}) == "77"
    assert ci.delivery_id({"delivery": {"id": {"b": 1, "a": 2}}}, {}) == '{"a":2,"b":1}'
    assert ci.delivery_id({"delivery": {"id": ""}}, {}) is None
    assert ci.delivery_id([1, 2], {}) is None
    assert ci.delivery_id({"delivery": {"id": True}}, {}) == "true"


def test_delivery_id_without_idempotency_settings_is_none(tmp_path):
    rules = _one_rule(tmp_path, "  - {name: r, metrics: [{name: m, type: counter}]}\n")
    assert rules.delivery_id({"id": 1}, {"X-Request-Id": "x"}) is None
    alerts = load_file(GOOD / "alerts.json")
    assert alerts.delivery_id({"groupKey": "{}:{alertname=\"x\"}"}, {}) == "{}:{alertname=\"x\"}"


# --- the fast path is the interpreter's twin -----------------------------------------------------

KEYS = ["a", "b", "x-y", "0", "é", ""]
_scalars = st.none() | st.booleans() | st.sampled_from([0, 1, -1, 0.0, 1.0, 2.5]) | st.integers() | st.sampled_from(KEYS)
_json = st.recursive(
    _scalars | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=2), inner,
                                                                max_size=4),
    max_leaves=20,
)


def _identifier(key: str) -> str:
    if key and (key[0].isalpha() or key[0] == "_") and key.isascii() and key.replace("_", "a").isalnum():
        return key
    return json.dumps(key)


@st.composite
def _paths(draw) -> str:
    text = _identifier(draw(st.sampled_from(KEYS) | st.text(max_size=3)))
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            text += "." + _identifier(draw(st.sampled_from(KEYS)))
        else:
            text += f"[{draw(st.integers(-3, 3))}]"
    return text


_literals = st.sampled_from(["`0`", "`1`", "`true`", "`false`", "`null`", "'a'", "''", "`[]`", "`{}`", "`2.5`",
                             "`\"b\"`", "@"])


def _expressions(base=None):
    base = base if base is not None else _paths() | _literals
    return st.recursive(
        base,
        lambda inner: st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner,
                                st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "&&", "||"]), inner)
        | inner.map(lambda e: f"!({e})")
        | st.builds(lambda f, e: f"{f}({e})", st.sampled_from(["lower", "upper", "length", "epoch_seconds", "abs",
                                                               "to_string", "type"]), inner)
        | st.builds(lambda a, b: f"divide({a}, {b})", inner, inner)
        | st.builds(lambda a, b: f"[{a}, {b}]", inner, inner)
        | st.builds(lambda a, b: f"contains([{a}, 'a'], {b})", inner, inner)
        | inner.map(lambda e: f"contains(['a', '', 'b'], {e})")  # string literals only: a set lookup
        | st.builds(lambda a, b: f"{a}.{b}", _paths(), _paths())
        | _paths().map(lambda p: f"{p}[*].a")
        | st.builds(lambda a, b, c: f"{a}[?{b}].{c}", _paths(), inner, _paths())
        | st.builds(lambda a, b: f"({a})[?{b}]", inner, inner)
        | inner.map(lambda e: f"({e})[]")
        | st.builds(lambda a, b: f"({a}).*.{b}", inner, _paths()),
        max_leaves=6,
    )


def _outcome(evaluate, document):
    try:
        result = evaluate(document)
    except Exception as exc:  # the twin must fail where the original fails, the same way
        return ("error", type(exc).__name__)
    return ("value", type(result).__name__, json.dumps(result, sort_keys=True, default=repr))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions(), _json)
def test_compiled_expressions_give_what_jmespath_gives(text, document):
    from bridges.webhooks.expressions import _OPTIONS

    compiled = compile_expression(text)
    reference = jmespath.compile(text)
    assert _outcome(compiled.evaluate, document) == _outcome(lambda d: reference.search(d, options=_OPTIONS), document)


@settings(max_examples=500, deadline=None)
@given(_paths(), _json)
def test_plain_paths_take_the_fast_path(text, document):
    compiled = compile_expression(text)
    assert compiled.fast
    assert _outcome(compiled.evaluate, document) == _outcome(lambda d: jmespath.search(text, d), document)


def test_fast_path_covers_the_usual_rule_expressions():
    for text in ["event.a.b", 'headers."x-github-event"', "body.alerts[0].labels.alertname",
                 "headers.\"x-event\" == 'push' && body.action == 'completed'", "!event.draft || event.merged",
                 "seconds_between(event.start, event.end)", "`1`", "contains(['a', 'b'], event.type || event.eventType)"]:
        assert compile_expression(text).fast, text
    assert compile_expression("body.alerts[?status == 'firing'] | length(@)").fast
    assert not compile_expression("sort_by(body.alerts, &startsAt)[0:2]").fast


# --- fuzzing: any JSON body and headers give a Decoded ------------------------------------------

RULE_SETS = [load_file(path) for path in sorted(GOOD.iterdir())]
_headers = st.dictionaries(st.sampled_from(["X-Event", "x-delivery", "User-Agent"]) | st.text(max_size=8),
                           st.sampled_from(["workflow_run", "push", ""]) | st.text(max_size=8), max_size=4)


@st.composite
def _shaped_bodies(draw):
    """Bodies with the keys the rules read, holding arbitrary values, so rules really run."""
    keys = ["action", "workflow_run", "name", "conclusion", "updated_at", "run_started_at", "run_number",
            "queue_depth", "commits", "ref", "alerts", "status", "startsAt", "labels", "value", "version", "receiver",
            "type", "created", "data", "object", "amount", "currency", "repository", "full_name", "team",
            "run_attempt", "delivery", "id", "livemode", "groupKey"]
    values = st.recursive(
        _scalars | st.sampled_from(["completed", "firing", "charge.succeeded", "4", "2026-11-22T09:59:30Z", "12.5"])
        | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(keys), inner, max_size=5),
        max_leaves=25,
    )
    return draw(st.dictionaries(st.sampled_from(keys), values, max_size=8))


def _check_decoded(decoded: Decoded) -> None:
    assert isinstance(decoded, Decoded)
    assert len(decoded.origins) == len(decoded.items)
    for item in decoded.items:
        assert isinstance(item["name"], str) and item["name"]
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in item.get("tags", {}).items())
        kind = "gauge" if "gauge" in item else "counter"
        value = item[kind]["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        assert isinstance(item.get("dt", 0), int)
    assert all(isinstance(r.message, str) for r in decoded.refused)


@settings(max_examples=300, deadline=None)
@given(_json, _headers)
def test_any_json_body_gives_a_decoded(body, headers):
    for rules in RULE_SETS:
        _check_decoded(rules.apply(body, headers, NOW_NS))
        delivery = rules.delivery_id(body, headers)
        assert delivery is None or (isinstance(delivery, str) and delivery)


@settings(max_examples=300, deadline=None)
@given(_shaped_bodies(), _headers)
def test_rule_shaped_bodies_with_any_values_give_a_decoded(body, headers):
    for rules in RULE_SETS:
        _check_decoded(rules.apply(body, headers, NOW_NS))


def test_extreme_values_are_refused_not_raised(tmp_path):
    rules = _one_rule(tmp_path, """
  - name: r
    timestamp: {field: event.t, format: unix_ms}
    tags: {big: event.big}
    metrics: [{name: m, type: gauge, value: event.v}, {name: "{event.v}", type: counter}]
""")
    decoded = rules.apply({"t": 1e300, "v": "1e999", "big": 10**40}, {}, NOW_NS)
    assert decoded.items == [] and len(decoded.refused) == 1
    for t in ["1e999999999", "9" * 100_000 + "x", 10**400]:
        refused = rules.apply({"t": t}, {}, NOW_NS).refused
        assert [r.origin for r in refused] == ["rule 'r' event 0"] and "timestamp event.t (unix_ms)" in refused[0].message
    long_value = rules.apply({"t": 1, "v": "9" * 100_000 + "x"}, {}, NOW_NS)
    assert len(long_value.refused) == 1 and "not a number" in long_value.refused[0].message
    infinite = rules.apply({"t": 1, "v": "1e999"}, {}, NOW_NS)
    assert math.isinf(infinite.items[0]["gauge"]["value"])
    assert Normalizer().normalize(infinite.items, NOW_NS).rejected >= 1


_PATTERN_PIECES = st.sampled_from(["%Y", "%m", "%d", "%H", "%M", "%S", "%f", "%z", "%%", "-", ":", " ", "  ", "T",
                                   "UTC", ".", "/", "%b", "%y"])


@settings(max_examples=800, deadline=None)
@given(st.lists(_PATTERN_PIECES, min_size=1, max_size=9).map("".join), st.datetimes(timezones=st.timezones()),
       st.text(alphabet="0123456789 :-+TZz.UTCutc/", max_size=30), st.booleans())
def test_numeric_patterns_read_times_as_strptime_does(form, moment, junk, written):
    """Patterns of numeric directives are read by a quicker reader than strptime; for any text,
    written by strftime or not, it gives the instant strptime gives (UTC for a time without a
    zone) or fails where strptime fails: in its words, or with None where it says the text does
    not match the format at all."""
    from bridges.webhooks.values import _numeric_strptime

    quick = _numeric_strptime(form)
    if quick is None:
        return  # strptime reads this pattern itself
    try:
        text = moment.strftime(form) if written else junk
    except ValueError:
        return

    def by_strptime(text: str) -> int:
        found = datetime.datetime.strptime(text, form)
        found = found if found.tzinfo else found.replace(tzinfo=datetime.UTC)
        delta = found - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return (delta.days * 86400 + delta.seconds) * SECOND + delta.microseconds * 1000

    def outcome(read):
        try:
            found = read(text)
        except ValueError as exc:
            if str(exc) == f"time data {text!r} does not match format {form!r}":
                return "refused", "does not match"
            return "refused", str(exc) if "match" in str(exc) or "unconverted" in str(exc) else "invalid"
        return ("refused", "does not match") if found is None else ("read", found)

    assert outcome(quick) == outcome(by_strptime)


# --- the rule engine's function is the plain reading of the rules --------------------------------

_ROOTED = st.sampled_from(["event", "body", "headers", "source"]).flatmap(lambda root: _paths().map(lambda p: f"{root}.{p}"))
_RULE_EXPRESSIONS = _expressions(_ROOTED | st.sampled_from(["event.a", "event.b", "body.a", "event", "`1`", "'2'", "@"]))


@st.composite
def _rule_documents(draw) -> dict:
    """Rule files of every shape the engine writes code for, with expressions that read, miss and
    fail on what they are given."""
    expression = _RULE_EXPRESSIONS
    rules = []
    for n in range(draw(st.integers(1, 3))):
        rule: dict = {"name": f"r{n}", "metrics": []}
        if draw(st.booleans()):
            rule["events"] = draw(st.sampled_from(["body", "body.a", "body.b", "`null`", "body[*].a", "body.a[0]"]) | expression)
        if draw(st.booleans()):
            rule["filter"] = draw(expression)
        if draw(st.booleans()):
            rule["timestamp"] = {"field": draw(expression), "format": draw(st.sampled_from(
                ["auto", "rfc3339", "unix", "unix_ms", "%Y-%m-%d", ["unix", "rfc3339"]]))}
        tags = draw(st.dictionaries(st.sampled_from(["a", "b", "c", "x'y"]), expression, max_size=2))
        if tags:
            rule["tags"] = tags
        for _ in range(draw(st.integers(1, 2))):
            metric = {"name": draw(st.sampled_from(["m", "m.{event.a}", "{event.b}", "x{body.a}y{event}", "{{m}}"])),
                      "type": draw(st.sampled_from(["gauge", "counter"]))}
            if metric["type"] == "gauge" or draw(st.booleans()):  # a counter without a value counts 1
                metric["value"] = draw(expression)
            if draw(st.booleans()):
                metric["unit"] = "s"
            metric_tags = draw(st.dictionaries(st.sampled_from(["a", "b", "d"]), expression, max_size=2))
            if metric_tags:
                metric["tags"] = metric_tags
            rule["metrics"].append(metric)
        rules.append(rule)
    document = {"source": "test", "rules": rules}
    defaults = draw(st.dictionaries(st.sampled_from(["a", "e"]), expression, max_size=1))
    if defaults:
        document["defaults"] = {"tags": defaults}
    return document


def _plain_reading(document: dict, body: object, headers: dict) -> tuple:
    """What the engine's documented semantics give, read plainly over jmespath's own interpreter,
    one rule, event, expression and tag at a time: the oracle the generated function is held to."""
    from bridges.timestamps import TimestampError
    from bridges.webhooks.expressions import _OPTIONS, parse_template
    from bridges.webhooks.values import Refuse, as_number, as_text, kind_of, preview, timestamp_reader

    def error_text(exc):
        known = (Refuse, TimestampError, jmespath.exceptions.JMESPathError)
        return str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"

    def read(says, text):
        try:
            return jmespath.compile(text).search(context, options=_OPTIONS)
        except Exception as exc:
            raise Refuse(f"{says}: {error_text(exc)}") from None

    def tag_into(tags, name, text):
        raw = read(f"tag {name!r} {text}", text)
        if raw is None:
            tags.pop(name, None)
            return
        try:
            tags[name] = as_text(raw)
        except Refuse as exc:
            raise Refuse(f"tag {name!r} {text}: {exc}") from None

    context = {"body": body, "headers": {k.lower(): v for k, v in headers.items()}, "event": body, "source": "test"}
    items, origins, refused, nulls, applied = [], [], [], 0, False
    # Consecutive rules with the same events read them once and take each event in turn.
    for text, group in itertools.groupby(document["rules"], key=lambda rule: rule.get("events")):
        group = list(group)
        context["event"] = body
        events = [body]
        if text is not None:
            try:
                events = read(f"events {text}", text)
            except Refuse as exc:
                refused.extend((f"rule '{rule['name']}'", str(exc)) for rule in group)
                continue
            if events is None:
                continue
            if not isinstance(events, list):
                refused.extend((f"rule '{rule['name']}'", f"events {text} gave {kind_of(events)}, not an array: "
                                f"{preview(events)}") for rule in group)
                continue
        for index, event, rule in [(index, event, rule) for index, event in enumerate(events) for rule in group]:
            origin = f"rule '{rule['name']}'"
            context["event"] = event
            where = f"{origin} event {index}"
            try:
                if "filter" in rule and is_false(read(f"filter {rule['filter']}", rule["filter"])):
                    continue
                applied = True
                dt = None
                if "timestamp" in rule:
                    text, form = rule["timestamp"]["field"], rule["timestamp"]["format"]
                    raw = read(f"timestamp {text}", text)
                    if raw is None:
                        raise Refuse(f"timestamp {text} is null")
                    try:
                        dt = timestamp_reader(form)(raw)
                    except Exception as exc:
                        raise Refuse(f"timestamp {text} ({form}): {error_text(exc)}") from None
                base: dict = {}
                for name, text in {**document.get("defaults", {}).get("tags", {}), **rule.get("tags", {})}.items():
                    tag_into(base, name, text)
            except Refuse as exc:
                refused.append((where, str(exc)))
                continue
            for metric in rule["metrics"]:
                try:
                    value = 1
                    if "value" in metric:
                        raw = read(f"value {metric['value']}", metric["value"])
                        if raw is None:
                            nulls += 1
                            continue
                        try:
                            value = as_number(raw)
                        except Refuse as exc:
                            raise Refuse(f"value {metric['value']}: {exc}") from None
                    name = ""
                    for part in parse_template(metric["name"]):
                        if isinstance(part, str):
                            name += part
                            continue
                        raw = read(f"name {{{part.text}}}", part.text)
                        if raw is None:
                            raise Refuse(f"name {{{part.text}}} is null")
                        try:
                            name += as_text(raw)
                        except Refuse as exc:
                            raise Refuse(f"name {{{part.text}}}: {exc}") from None
                    if not name:
                        raise Refuse(f"the name {metric['name']!r} is empty for this event")
                    tags = dict(base)
                    for tag, text in metric.get("tags", {}).items():
                        tag_into(tags, tag, text)
                except Refuse as exc:
                    refused.append((f"{where} metric '{metric['name']}'", str(exc)))
                    continue
                point = {"value": value, "temporality": "delta"} if metric["type"] == "counter" else {"value": value}
                item = {"name": name, metric["type"]: point, **({"tags": tags} if tags else {}),
                        **({"dt": dt} if dt is not None else {}), **({"unit": metric["unit"]} if "unit" in metric else {})}
                items.append(item)
                origins.append(f"{where} metric '{metric['name']}'")
    skipped = {**({"no rule matched": 1} if not applied else {}), **({"value is null": nulls} if nulls else {})}
    return items, origins, refused, skipped


_BODIES = (st.dictionaries(st.sampled_from(KEYS), _json, max_size=4)
           | st.lists(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(["a", "", "2026-11-22", 7, None]) | _json,
                                      max_size=4) | _json, max_size=3)
           | _json)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rule_documents(), _BODIES, _headers)
def test_the_rules_function_gives_what_the_plain_reading_gives(document, body, headers):
    """A source's rules run as one generated function: its items, origins, refusals (with their
    messages) and skips are those of the rules read one expression at a time by jmespath."""
    from bridges.webhooks.rule_files import check_document

    rules, errors = check_document(document, "test.yaml")
    assert not errors, errors
    decoded = rules.apply(body, headers, NOW_NS)
    found = (decoded.items, decoded.origins, [(r.origin, r.message) for r in decoded.refused], decoded.skipped)
    assert found == _plain_reading(document, body, headers)
