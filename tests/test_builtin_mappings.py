"""The built-in rule files in ``mappings/`` against real provider payloads.

``tests/testdata/webhooks/<source>/<case>.json`` is a sample payload (where it came from:
README.md there), ``<case>.headers.json`` the headers the provider sends with it, and
``<case>.expected.json`` the metrics it must become, written by hand from reading the payload:
after normalization, each metric's canonical JSON without its description, in the order the
rules produce them; the skipped counts; the delivery id. Receipt time is support.NOW_NS.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from support import NOW_NS, load_file

from bridges.ingest.normalize import Normalizer
from bridges.webhooks.rule_files import BUILTIN_DIR
from bridges.webhooks.rules import NO_RULE_MATCHED

WEBHOOKS = Path(__file__).parent / "testdata" / "webhooks"
SOURCES = ("alertmanager", "azure-devops", "azure-eventgrid", "azure-monitor-alerts", "bitbucket", "github", "gitlab",
           "grafana", "pagerduty", "sentry", "stripe")
METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


def rules_of(source: str):
    return load_file(BUILTIN_DIR / f"{source}.yaml")


def payload_cases() -> list[Path]:
    return sorted(p for p in WEBHOOKS.glob("*/*.json") if not p.name.endswith((".headers.json", ".expected.json")))


def read_case(case: Path) -> tuple[object, dict, dict]:
    """(body, headers, expected) of one sample payload."""
    headers_file = case.with_name(case.stem + ".headers.json")
    headers = json.loads(headers_file.read_text()) if headers_file.exists() else {}
    expected = json.loads(case.with_name(case.stem + ".expected.json").read_text())
    return json.loads(case.read_text()), headers, expected


def metrics_of(source: str, body: object, headers: dict):
    """Apply a source's rules and normalize the items, as the webhook endpoint does."""
    decoded = rules_of(source).apply(body, headers, NOW_NS)
    normalized = Normalizer().normalize(decoded.items, NOW_NS)
    assert normalized.errors == [], normalized.errors
    return decoded, normalized.metrics


def without_description(metric) -> dict:
    doc = metric.to_json()
    doc.pop("description", None)
    return doc


def test_every_builtin_file_loads_and_names_its_source():
    found = {path.stem for path in BUILTIN_DIR.glob("*.yaml")}
    assert set(SOURCES) <= found
    for source in SOURCES:
        rules = rules_of(source)
        assert rules.source == source
        assert rules.description and rules.rule_names


@pytest.mark.parametrize(
    "source, scheme, secrets",
    [("github", "github", ["GITHUB_WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET_PREVIOUS"]),
     ("stripe", "stripe", ["STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PREVIOUS"]),
     ("pagerduty", "pagerduty", ["PAGERDUTY_WEBHOOK_SECRET", "PAGERDUTY_WEBHOOK_SECRET_PREVIOUS"]),
     ("sentry", "sentry", ["SENTRY_CLIENT_SECRET", "SENTRY_CLIENT_SECRET_PREVIOUS"]),
     ("bitbucket", "bitbucket", ["BITBUCKET_WEBHOOK_SECRET", "BITBUCKET_WEBHOOK_SECRET_PREVIOUS"]),
     ("azure-devops", "basic-auth", ["AZURE_DEVOPS_WEBHOOK_PASSWORD", "AZURE_DEVOPS_WEBHOOK_PASSWORD_PREVIOUS"]),
     ("gitlab", "header-token", ["GITLAB_WEBHOOK_TOKEN", "GITLAB_WEBHOOK_TOKEN_PREVIOUS"]),
     ("azure-eventgrid", "shared-secret", ["EVENTGRID_WEBHOOK_SECRET", "EVENTGRID_WEBHOOK_SECRET_PREVIOUS"])],
)
def test_signed_sources_name_their_scheme_and_secret_settings(source, scheme, secrets):
    signature = rules_of(source).signature
    assert (signature["scheme"], signature["secrets"]) == (scheme, secrets)


@pytest.mark.parametrize("source", ["alertmanager", "grafana", "azure-monitor-alerts"])
def test_unsigned_sources_have_no_signature_block(source):
    assert rules_of(source).signature is None


def test_every_sample_has_expected_metrics_and_a_recorded_origin():
    readme = (WEBHOOKS / "README.md").read_text()
    cases = payload_cases()
    assert {case.parent.name for case in cases} == set(SOURCES)
    for case in cases:
        assert case.with_name(case.stem + ".expected.json").exists(), case
        assert f"{case.parent.name}/{case.name}" in readme, f"{case} is not recorded in README.md"


@pytest.mark.parametrize("case", payload_cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sample_payload_becomes_the_expected_metrics(case):
    body, headers, expected = read_case(case)
    decoded, metrics = metrics_of(case.parent.name, body, headers)
    assert decoded.refused == []
    assert [without_description(m) for m in metrics] == expected["metrics"]
    assert decoded.skipped == expected.get("skipped", {})
    assert len(decoded.origins) == len(decoded.items)


@pytest.mark.parametrize("case", payload_cases(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_delivery_id_is_found_whatever_the_header_case(case):
    body, headers, expected = read_case(case)
    rules = rules_of(case.parent.name)
    assert rules.delivery_id(body, headers) == expected["delivery_id"]
    lower = {name.lower(): value for name, value in headers.items()}
    assert rules.delivery_id(body, lower) == expected["delivery_id"]


def test_gitlab_falls_back_to_the_event_uuid_without_an_idempotency_key():
    body, headers, _ = read_case(WEBHOOKS / "gitlab" / "pipeline_success.json")
    del headers["Idempotency-Key"]
    assert rules_of("gitlab").delivery_id(body, headers) == headers["X-Gitlab-Event-UUID"]


def test_metric_names_are_lower_case_dotted_and_described():
    seen = set()
    for case in payload_cases():
        body, headers, _ = read_case(case)
        _, metrics = metrics_of(case.parent.name, body, headers)
        for metric in metrics:
            assert METRIC_NAME.fullmatch(metric.name), metric.name
            assert metric.name.split(".")[0] in case.parent.name.replace("-", "_"), metric.name
            assert metric.description, metric.name
            if metric.kind == "counter":
                assert metric.point.temporality == "delta", metric.name
            seen.add(metric.name)
    assert {"github.workflow_run.duration", "github.workflow_runs", "alertmanager.alerts",
            "alertmanager.alert.firing", "stripe.events", "stripe.event.amount"} <= seen


# Payloads of other providers or other event kinds: the rules apply to none of them.
FOREIGN = [
    ("github", WEBHOOKS / "gitlab" / "push.json"),
    ("gitlab", WEBHOOKS / "github" / "push_new_branch.json"),
    ("alertmanager", WEBHOOKS / "stripe" / "invoice_paid.json"),
    ("grafana", WEBHOOKS / "azure-monitor-alerts" / "metric_alert_fired.json"),
    ("azure-monitor-alerts", WEBHOOKS / "grafana" / "firing.json"),
    ("stripe", WEBHOOKS / "github" / "ping.json"),
]


@pytest.mark.parametrize("source, case", FOREIGN, ids=[f"{s}<-{c.parent.name}/{c.stem}" for s, c in FOREIGN])
def test_other_payloads_are_skipped_not_refused(source, case):
    body, headers, _ = read_case(case)
    decoded = rules_of(source).apply(body, headers, NOW_NS)
    assert (decoded.items, decoded.refused, decoded.skipped) == ([], [], {NO_RULE_MATCHED: 1})


@pytest.mark.parametrize(
    "source, body, headers",
    [
        ("github", {"action": "created", "issue": {"number": 1}, "repository": {"full_name": "o/r"}},
         {"X-GitHub-Event": "issues"}),
        ("github", {"action": "in_progress", "workflow_run": {"status": "in_progress"}}, {"X-GitHub-Event": "workflow_run"}),
        ("gitlab", {"object_kind": "build", "build_status": "created"}, {"X-Gitlab-Event": "Job Hook"}),
        ("alertmanager", {"version": "4", "status": "firing"}, {}),
        ("grafana", {"receiver": "x", "status": "firing", "alerts": []}, {}),
        ("azure-monitor-alerts", {"schemaId": "Microsoft.Insights/activityLogs", "data": {"status": "Activated"}}, {}),
        ("stripe", {"id": "evt_1", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered"}, {}),
        ("stripe", [], {}),
    ],
)
def test_other_events_of_the_same_source_yield_nothing(source, body, headers):
    decoded = rules_of(source).apply(body, headers, NOW_NS)
    assert (decoded.items, decoded.refused, decoded.skipped) == ([], [], {NO_RULE_MATCHED: 1})


def stripe_event(type_: str, data_object: dict) -> dict:
    return {"id": "evt_1Example", "object": "event", "api_version": "2024-06-20", "created": 1795341540,
            "livemode": True, "type": type_, "data": {"object": data_object}}


@pytest.mark.parametrize(
    "type_, data_object, amount",
    [
        ("checkout.session.completed",
         {"id": "cs_test_1", "object": "checkout.session", "amount_subtotal": 2200, "amount_total": 2000, "currency": "jpy"},
         2000),
        ("invoice.created", {"id": "in_1", "object": "invoice", "amount_due": 900, "amount_paid": 0, "currency": "usd"}, 0),
        ("customer.balance_transaction.created",
         {"id": "cbtxn_1", "object": "customer_balance_transaction", "amount": -500, "currency": "usd"}, None),
    ],
)
def test_stripe_amount_is_the_paid_or_total_amount_and_never_negative(type_, data_object, amount):
    decoded, metrics = metrics_of("stripe", stripe_event(type_, data_object), {})
    amounts = [m for m in metrics if m.name == "stripe.event.amount"]
    if amount is None:
        assert amounts == [] and decoded.skipped == {"value is null": 1}
    else:
        [metric] = amounts
        assert (metric.point.value, metric.unit) == (amount, "minor_units")
        assert metric.tag_dict() == {"type": type_, "livemode": "true", "currency": data_object["currency"]}
    assert [m.name for m in metrics if m.name == "stripe.events"] == ["stripe.events"]
    assert decoded.refused == []
