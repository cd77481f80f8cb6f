"""What webhook senders need before and besides a plain JSON POST: Slack's url_verification,
slash commands and interactivity; Event Grid's subscription validation and its array of events;
CloudEvents 1.0 in structured, batched and binary mode and the CloudEvents OPTIONS validation.
Requests are shaped as the vendors send them (headers and bodies from their documentation, see
bridges/webhooks/handler.py and tests/testdata/webhooks/README.md) and go through the HTTP
function, the Bridge and the delivery queue; OPTIONS also over the local runner."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import urlencode

import azure.functions as func
import pytest
import requests
from runner import running_bridge
from support import NOW_NS, drain, load_file, outbox_lines

from bridges.triggers.http import health, webhook
from bridges.webhooks.handler import Webhooks, webhook_payload
from bridges.webhooks.idempotency import SqliteStore
from bridges.webhooks.rule_files import BUILTIN_DIR

EVENTGRID = Path(__file__).parent / "testdata" / "webhooks" / "azure-eventgrid"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the example signing secret of Slack's documentation
SLACK_RULES = """
source: slack
signature: {scheme: slack, secrets: [SLACK_SIGNING_SECRET]}
rules:
  - name: slash commands
    filter: "body.command != null"
    tags: {command: body.command, team: body.team_domain, has_text: "body.text != ''"}
    metrics:
      - {name: slack.commands, type: counter}
  - name: interactions
    filter: "body.type == 'block_actions'"
    events: body.actions
    tags: {action: event.action_id, team: body.team.domain}
    metrics:
      - {name: slack.actions, type: counter}
"""
CLOUDEVENT_RULES = """
source: cloudevents
idempotency: {expression: "join(',', body[*].id)"}
rules:
  - name: every event
    events: body
    tags: {type: event.type, source: event.source, subject: event.subject, content: event.datacontenttype}
    metrics:
      - {name: ce.events, type: counter}
      - {name: ce.amount, type: gauge, value: event.data.amount}
"""
# Slack's documented url_verification request body (https://api.slack.com/events/url_verification).
URL_VERIFICATION = (b'{"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", '
                    b'"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}')
# The fields of Slack's slash command example (https://api.slack.com/interactivity/slash-commands).
SLASH_COMMAND = {
    "token": "gIkuvaNzQIHg97ATvDxqgjtO", "team_id": "T0001", "team_domain": "example", "enterprise_id": "E0001",
    "enterprise_name": "Globular Construct Inc", "channel_id": "C2147483705", "channel_name": "test",
    "user_id": "U2147483697", "user_name": "Steve", "command": "/weather", "text": "94070",
    "response_url": "https://hooks.slack.com/commands/1234/5678", "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    "api_app_id": "A123456",
}
# An interactivity payload (https://api.slack.com/interactivity/handling), abridged.
BLOCK_ACTIONS = {
    "type": "block_actions", "team": {"id": "T9TK3CUKW", "domain": "example"},
    "user": {"id": "UA8RXUSPL", "username": "jtorrance", "team_id": "T9TK3CUKW"}, "api_app_id": "AABA1ABCD",
    "token": "9s8d9as89d8as9d8as989", "trigger_id": "12466734323.1395872398",
    "actions": [{"action_id": "approve", "block_id": "=qXel", "text": {"type": "plain_text", "text": "Approve"},
                 "value": "click_me_123", "type": "button", "action_ts": "1548426417.840180"}],
}
NOW_S = NOW_NS // 1_000_000_000


@pytest.fixture
def hooks(bridge, tmp_path) -> Webhooks:
    (tmp_path / "slack.yaml").write_text(SLACK_RULES)
    (tmp_path / "cloudevents.yaml").write_text(CLOUDEVENT_RULES)
    sources = {"slack": load_file(tmp_path / "slack.yaml"), "cloudevents": load_file(tmp_path / "cloudevents.yaml"),
               "azure-eventgrid": load_file(BUILTIN_DIR / "azure-eventgrid.yaml")}
    store = SqliteStore(Path(bridge.settings.state_dir) / "idempotency.sqlite3", ttl_seconds=3600,
                        clock=lambda: NOW_NS / 1e9)
    bridge.webhooks = Webhooks(bridge, sources=sources, store=store, environ={"SLACK_SIGNING_SECRET": SLACK_SECRET})
    return bridge.webhooks


def send(source: str, body: bytes, headers: dict[str, str], method: str = "POST") -> func.HttpResponse:
    return webhook(func.HttpRequest(method, f"https://bridge.example/api/webhooks/{source}?code=function-key",
                                    headers=headers, body=body, route_params={"source": source},
                                    params={"code": "function-key"}))


def answer_of(response: func.HttpResponse) -> tuple[int, object]:
    body = response.get_body()
    return response.status_code, json.loads(body) if body else None


def slack_signed(body: bytes, timestamp: int = NOW_S, secret: str = SLACK_SECRET, **extra: str) -> dict[str, str]:
    """Slack's v0 signing (https://api.slack.com/authentication/verifying-requests-from-slack):
    v0= + hex HMAC-SHA256 of 'v0:<timestamp>:<body>'; slack_sdk is not installed here."""
    digest = hmac.new(secret.encode(), b"v0:" + str(timestamp).encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)", **extra}


def eventgrid_case(name: str) -> tuple[bytes, dict[str, str]]:
    body = (EVENTGRID / f"{name}.json").read_bytes()
    return body, json.loads((EVENTGRID / f"{name}.headers.json").read_text())


# --- Slack -----------------------------------------------------------------------------------


def test_slack_url_verification_is_answered_with_its_challenge_and_nothing_is_delivered(bridge, hooks):
    headers = slack_signed(URL_VERIFICATION, **{"Content-Type": "application/json"})
    response = send("slack", URL_VERIFICATION, headers)
    assert answer_of(response) == (200, {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    assert response.mimetype == "application/json"
    assert drain(bridge) == []


@pytest.mark.parametrize("tamper", ["secret", "timestamp", "unsigned"])
def test_slack_url_verification_is_checked_like_any_slack_request(bridge, hooks, tamper):
    headers = {"Content-Type": "application/json"}
    if tamper == "secret":
        headers |= slack_signed(URL_VERIFICATION, secret="not-the-signing-secret")
    elif tamper == "timestamp":  # signed correctly, but six minutes old: Slack's tolerance is five
        headers |= slack_signed(URL_VERIFICATION, timestamp=NOW_S - 360)
    assert answer_of(send("slack", URL_VERIFICATION, headers)) == (401, {"error": "unauthorized"})


def test_a_slash_command_is_read_from_its_form_fields(bridge, hooks):
    body = urlencode(SLASH_COMMAND).encode()
    headers = slack_signed(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, answer = answer_of(send("slack", body, headers))
    assert (status, answer["accepted"], answer["errors"]) == (202, 1, [])
    drain(bridge)
    [metric] = outbox_lines(bridge)
    assert metric["name"] == "slack.commands"
    assert metric["tags"] == {"command": "/weather", "team": "example", "has_text": "true"}


def test_a_slash_command_without_text_keeps_the_empty_field():
    fields = webhook_payload(urlencode({**SLASH_COMMAND, "text": ""}).encode(), "application/x-www-form-urlencoded")
    assert isinstance(fields, dict) and fields["text"] == "" and fields["command"] == "/weather"


def test_an_interactivity_payload_is_read_from_its_payload_field(bridge, hooks):
    body = urlencode({"payload": json.dumps(BLOCK_ACTIONS)}).encode()
    headers = slack_signed(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, answer = answer_of(send("slack", body, headers))
    assert (status, answer["accepted"]) == (202, 1)
    drain(bridge)
    [metric] = outbox_lines(bridge)
    assert (metric["name"], metric["tags"]) == ("slack.actions", {"action": "approve", "team": "example"})


def test_a_form_that_is_not_name_value_pairs_is_400(bridge, hooks):
    body = b'{"not": "a form"}'
    headers = slack_signed(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, answer = answer_of(send("slack", body, headers))
    assert status == 400 and "name=value" in answer["error"]


# --- Event Grid ------------------------------------------------------------------------------


def test_event_grid_subscription_validation_is_answered_with_the_validation_code(bridge, hooks):
    body, headers = eventgrid_case("subscription_validation")
    response = send("azure-eventgrid", body, headers)
    assert answer_of(response) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    assert drain(bridge) == []
    # Answered before the delivery id is claimed: Event Grid may send the validation again.
    assert answer_of(send("azure-eventgrid", body, headers))[0] == 200


def test_a_subscription_validation_request_without_the_validation_event_is_400(bridge, hooks):
    body, headers = eventgrid_case("blob_created")
    status, answer = answer_of(send("azure-eventgrid", body, {**headers, "aeg-event-type": "SubscriptionValidation"}))
    assert status == 400 and "validationCode" in answer["error"]


def test_event_grid_events_go_through_the_built_in_rules(bridge, hooks):
    body, headers = eventgrid_case("blob_created")
    status, answer = answer_of(send("azure-eventgrid", body, headers))
    assert (status, answer["accepted"], answer["rejected"]) == (202, 2, 0)
    assert answer_of(send("azure-eventgrid", body, headers)) == (200, {"duplicate": True})  # Event Grid's retry
    drain(bridge)
    written = {m["name"]: m for m in outbox_lines(bridge)}
    assert written["azure.storage.blobs.created_bytes"]["counter"]["value"] == 524288


def test_a_batch_of_event_grid_events_is_every_event(bridge, hooks):
    events = [json.loads(eventgrid_case(name)[0])[0]
              for name in ("blob_created", "blob_deleted", "key_vault_secret_near_expiry", "resource_write_failure")]
    _, headers = eventgrid_case("blob_created")
    status, answer = answer_of(send("azure-eventgrid", json.dumps(events).encode(), headers))
    assert (status, answer["accepted"]) == (202, 6)
    drain(bridge)
    assert sorted(m["name"] for m in outbox_lines(bridge)) == [
        "azure.keyvault.days_to_expiry", "azure.keyvault.expiry_events", "azure.resource.operations",
        "azure.storage.blobs.created", "azure.storage.blobs.created_bytes", "azure.storage.blobs.deleted"]


def test_health_lists_event_grid_as_protected_by_the_function_key_until_its_secret_is_set(bridge, hooks):
    answer = json.loads(health(func.HttpRequest("GET", "http://localhost/api/health", body=b"")).get_body())
    assert answer["webhooks"]["azure-eventgrid"] == {"signature": "not checked: set EVENTGRID_WEBHOOK_SECRET"}


# --- CloudEvents -----------------------------------------------------------------------------

PUSHED = json.loads((EVENTGRID / "acr_image_pushed_cloudevents.json").read_text())[0]
EXPIRED = json.loads((EVENTGRID / "key_vault_secret_expired_cloudevents.json").read_text())[0]


def test_a_structured_cloudevent_reaches_the_rules_as_one_event(bridge, hooks):
    body = json.dumps(PUSHED).encode()
    status, answer = answer_of(send("azure-eventgrid", body, {"Content-Type": "application/cloudevents+json; charset=utf-8"}))
    assert (status, answer["accepted"]) == (202, 2)
    drain(bridge)
    assert {m["name"]: m["tags"]["repository"] for m in outbox_lines(bridge)} == {
        "azure.container_registry.pushes": "aci-helloworld", "azure.container_registry.image.size": "aci-helloworld"}


def test_a_cloudevents_batch_is_every_event_and_may_be_empty(bridge, hooks):
    batch = "application/cloudevents-batch+json; charset=utf-8"
    status, answer = answer_of(send("azure-eventgrid", json.dumps([PUSHED, EXPIRED]).encode(), {"Content-Type": batch}))
    assert (status, answer["accepted"]) == (202, 4)
    status, answer = answer_of(send("azure-eventgrid", b"[]", {"Content-Type": batch}))
    assert (status, answer["accepted"], answer["skipped"]) == (200, 0, {"no rule matched": 1})


def test_a_binary_mode_cloudevent_has_its_attributes_from_the_ce_headers(bridge, hooks):
    headers = {  # the HTTP binding's binary-mode example, with a percent-encoded subject
        "ce-specversion": "1.0", "ce-type": "com.example.someevent", "ce-time": "2018-04-05T03:56:24Z",
        "ce-id": "1234-1234-1234", "ce-source": "/mycontext/subcontext", "ce-subject": "order%2042%20%E2%82%AC",
        "Content-Type": "application/json; charset=utf-8"}
    status, answer = answer_of(send("cloudevents", b'{"amount": 42.5}', headers))
    assert (status, answer["accepted"], answer["errors"]) == (202, 2, [])
    assert answer_of(send("cloudevents", b'{"amount": 42.5}', headers)) == (200, {"duplicate": True})  # by ce-id
    drain(bridge)
    written = {m["name"]: m for m in outbox_lines(bridge)}
    assert written["ce.amount"]["gauge"] == {"value": 42.5}
    assert written["ce.events"]["tags"] == {"type": "com.example.someevent", "source": "/mycontext/subcontext",
                                            "subject": "order 42 €", "content": "application/json; charset=utf-8"}


def test_binary_mode_keeps_every_attribute_and_reads_non_json_data_as_text():
    headers = {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": "1", "ce-partitionkey": '"a b"'}
    assert webhook_payload(b"plain words", "text/plain", headers) == [
        {"specversion": "1.0", "type": "t", "source": "/s", "id": "1", "partitionkey": "a b",
         "datacontenttype": "text/plain", "data": "plain words"}]
    assert webhook_payload(b"\xff\x00", "application/octet-stream", headers)[0]["data_base64"] == "/wA="
    assert "data" not in webhook_payload(b"", None, headers)[0]


@pytest.mark.parametrize("headers, words", [
    ({"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s"}, "ce-id header"),
    ({"ce-specversion": "1.0", "ce-type": "t", "ce-source": "/s", "ce-id": "%C0%A0"}, "not percent-encoded UTF-8"),
])
def test_a_malformed_binary_mode_cloudevent_is_400(bridge, hooks, headers, words):
    status, answer = answer_of(send("cloudevents", b"{}", {**headers, "Content-Type": "application/json"}))
    assert status == 400 and words in answer["error"]


@pytest.mark.parametrize("content_type, body", [
    ("application/cloudevents+json", b"[]"), ("application/cloudevents-batch+json", b"{}")])
def test_a_cloudevents_body_of_the_wrong_shape_is_400(bridge, hooks, content_type, body):
    status, answer = answer_of(send("cloudevents", body, {"Content-Type": content_type}))
    assert status == 400 and "CloudEvent" in answer["error"]


def test_the_cloudevents_validation_request_is_granted_by_the_http_function(bridge, hooks):
    response = send("azure-eventgrid", b"", {"WebHook-Request-Origin": "eventgrid.azure.net",
                                            "WebHook-Request-Rate": "120"}, method="OPTIONS")
    assert response.status_code == 200 and response.get_body() == b""
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["WebHook-Allowed-Rate"] == "*"
    assert "POST" in response.headers["Allow"].split(", ")
    plain = send("azure-eventgrid", b"", {}, method="OPTIONS")  # not a validation request: no grant
    assert plain.status_code == 204 and "WebHook-Allowed-Origin" not in plain.headers
    assert answer_of(send("nobody", b"", {"WebHook-Request-Origin": "eventgrid.azure.net"}, method="OPTIONS"))[0] == 404


def test_the_cloudevents_validation_request_over_the_local_runner(tmp_path):
    """OPTIONS reaches the function through the runner, with the key in the URL as Event Grid
    sends it; without the key it is refused like every keyed request."""
    with running_bridge("--require-keys", env={"BRIDGE_STATE_DIR": str(tmp_path)}) as (base, _):
        key = (tmp_path / "function-key").read_text().strip()
        url = f"{base}/api/webhooks/azure-eventgrid"
        ask = {"WebHook-Request-Origin": "eventgrid.azure.net"}
        assert requests.options(url, headers=ask, timeout=10).status_code == 401
        granted = requests.options(f"{url}?code={key}", headers=ask, timeout=10)
        assert granted.status_code == 200
        assert granted.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
        assert granted.headers["WebHook-Allowed-Rate"] == "*"
        assert "POST" in granted.headers["Allow"]
        body, headers = eventgrid_case("subscription_validation")
        validated = requests.post(f"{url}?code={key}", data=body, headers=headers, timeout=10)
        assert (validated.status_code, validated.json()) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})


# --- Event Grid's shared secret in the endpoint URL (the shared-secret scheme) ---------------------

EVENTGRID_SECRET = "eg-0123456789abcdef0123456789abcdef"
EVENTGRID_PREVIOUS = "eg-previous-fedcba9876543210"


@pytest.fixture
def guarded(bridge, hooks) -> Webhooks:
    """The built-in azure-eventgrid source with its secret settings set (a rotation: both)."""
    bridge.webhooks = Webhooks(bridge, sources=hooks.sources, store=hooks.store, environ={
        "EVENTGRID_WEBHOOK_SECRET": EVENTGRID_SECRET, "EVENTGRID_WEBHOOK_SECRET_PREVIOUS": EVENTGRID_PREVIOUS})
    return bridge.webhooks


def send_with_query(source: str, body: bytes, headers: dict[str, str], params: dict[str, str],
                    method: str = "POST") -> func.HttpResponse:
    """As Event Grid posts to a subscription's endpoint URL: every query parameter of that URL
    (the function key's code, and the shared secret) on every request."""
    return webhook(func.HttpRequest(method, f"https://bridge.example/api/webhooks/{source}?{urlencode(params)}",
                                    headers=headers, body=body, route_params={"source": source}, params=params))


def test_event_grid_with_the_secret_in_the_query_string_is_validated_and_delivered(bridge, guarded):
    params = {"code": "function-key", "secret": EVENTGRID_SECRET}
    body, headers = eventgrid_case("subscription_validation")
    assert answer_of(send_with_query("azure-eventgrid", body, headers, params)) == (
        200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    body, headers = eventgrid_case("blob_created")
    status, answer = answer_of(send_with_query("azure-eventgrid", body, headers, params))
    assert (status, answer["accepted"], answer["rejected"]) == (202, 2, 0)
    body, headers = eventgrid_case("key_vault_secret_near_expiry")  # the previous secret, during a rotation
    status, answer = answer_of(send_with_query("azure-eventgrid", body, headers, {"secret": EVENTGRID_PREVIOUS,
                                                                                  "code": "function-key"}))
    assert (status, answer["accepted"]) == (202, 2)
    answer = json.loads(health(func.HttpRequest("GET", "http://localhost/api/health", body=b"")).get_body())
    assert answer["webhooks"]["azure-eventgrid"] == {"signature": "shared-secret, checked"}


@pytest.mark.parametrize("params", [
    {"code": "function-key"},  # no secret
    {"code": "function-key", "secret": ""},
    {"code": "function-key", "secret": EVENTGRID_SECRET + "x"},
    {"code": "function-key", "secret": EVENTGRID_SECRET.upper()},
    {"code": EVENTGRID_SECRET},  # the function key's parameter is never the secret
    {"Code": EVENTGRID_SECRET, "code": "function-key"},
    {"code": "function-key", "secrets": EVENTGRID_SECRET},  # another parameter
], ids=["missing", "empty", "longer", "other-case", "as-code", "as-Code", "other-name"])
def test_event_grid_without_the_right_secret_is_401_and_nothing_is_delivered(bridge, guarded, params, caplog):
    for case in ("subscription_validation", "blob_created"):
        body, headers = eventgrid_case(case)
        with caplog.at_level("DEBUG"):
            assert answer_of(send_with_query("azure-eventgrid", body, headers, params)) == (401, {"error": "unauthorized"})
        # Nor is anything sent in the query string written to the log: not the secret, not the key.
        assert "signature check failed" in caplog.text
        for value in params.values():
            assert not value or value not in caplog.text
        assert EVENTGRID_SECRET not in caplog.text and "function-key" not in caplog.text
    assert drain(bridge) == []


def test_a_secret_in_a_header_is_not_the_query_parameter(bridge, guarded):
    """The rule reads ``?secret=``; the same value in a header (or in the body) proves nothing."""
    body, headers = eventgrid_case("blob_created")
    sent = send_with_query("azure-eventgrid", body, {**headers, "secret": EVENTGRID_SECRET},
                           {"code": "function-key"})
    assert answer_of(sent)[0] == 401


def test_the_query_parameter_name_is_read_case_insensitively(bridge, guarded):
    body, headers = eventgrid_case("blob_created")
    status, _ = answer_of(send_with_query("azure-eventgrid", body, headers, {"code": "k", "Secret": EVENTGRID_SECRET}))
    assert status == 202


def test_the_cloudevents_validation_request_passes_with_the_secret_in_the_url(bridge, guarded):
    """OPTIONS (CloudEvents schema) grants delivery and delivers nothing: it is answered before
    the secret check, so it passes whatever the query string; every POST is checked."""
    ask = {"WebHook-Request-Origin": "eventgrid.azure.net"}
    for params in ({"code": "function-key", "secret": EVENTGRID_SECRET}, {"code": "function-key"}):
        response = send_with_query("azure-eventgrid", b"", ask, params, method="OPTIONS")
        assert response.status_code == 200 and response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    body = json.dumps(PUSHED).encode()
    cloudevent = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    assert answer_of(send_with_query("azure-eventgrid", body, cloudevent, {"code": "function-key"}))[0] == 401
    status, answer = answer_of(send_with_query("azure-eventgrid", body, cloudevent,
                                               {"code": "function-key", "secret": EVENTGRID_SECRET}))
    assert (status, answer["accepted"]) == (202, 2)


def test_event_grid_with_the_key_and_the_secret_in_the_url_over_the_local_runner(tmp_path):
    """The runner passes the query parameters to the function as the Functions host does: the
    key in ``code`` is checked by the host, the secret by the bridge; neither is logged."""
    env = {"BRIDGE_STATE_DIR": str(tmp_path), "EVENTGRID_WEBHOOK_SECRET": EVENTGRID_SECRET}
    with running_bridge("--require-keys", env=env) as (base, lines):
        key = (tmp_path / "function-key").read_text().strip()
        url = f"{base}/api/webhooks/azure-eventgrid"
        body, headers = eventgrid_case("subscription_validation")
        validated = requests.post(f"{url}?{urlencode({'code': key, 'secret': EVENTGRID_SECRET})}", data=body,
                                  headers=headers, timeout=10)
        assert (validated.status_code, validated.json()) == (200, {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
        assert requests.post(f"{url}?{urlencode({'secret': EVENTGRID_SECRET})}", data=body, headers=headers,
                             timeout=10).status_code == 401  # no function key: the host refuses it
        for params in ({"code": key}, {"code": key, "secret": "not-the-secret"}):
            refused = requests.post(f"{url}?{urlencode(params)}", data=body, headers=headers, timeout=10)
            assert (refused.status_code, refused.json()) == (401, {"error": "unauthorized"})
        body, headers = eventgrid_case("blob_created")
        delivered = requests.post(f"{url}?code={key}&secret={EVENTGRID_SECRET}", data=body, headers=headers, timeout=10)
        assert (delivered.status_code, delivered.json()["accepted"]) == (202, 2)
    output = "\n".join(lines)
    assert EVENTGRID_SECRET not in output and key not in output
