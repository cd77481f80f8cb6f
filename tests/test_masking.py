"""Credentials never shown: a backend that echoes what it was sent, tokens obtained at run time,
credential-shaped text, and the anonymous health page that shows only our own words."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from fakes.azure_monitor import FakeAzureMonitor
from fakes.dynatrace import FakeDynatrace
from fakes.server import Answer, Received, Scripted
from support import ROOT, drain, use_bridge

from bridges.masking import Secret, remember, remember_headers, scrub

RESOURCE = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Web/sites/shop"
METRIC = {"name": "shop.orders", "gauge": {"value": 1}}


class EchoingAzureMonitor(FakeAzureMonitor):
    """Refuses every request with 401 and a body that repeats the request's headers, as some
    gateways do; keeps the bearer tokens it was sent."""

    def answer(self, request: Received) -> Answer:
        self.tokens.append(request.headers.get("authorization", "").partition(" ")[2])
        echo = {"error": {"code": "InvalidAuthenticationToken",
                          "message": f"token refused; request headers were {json.dumps(request.headers)}"}}
        return Answer(401, {"Content-Type": "application/json", "WWW-Authenticate": request.headers["authorization"]},
                      json.dumps(echo).encode())


def test_an_entra_token_echoed_by_azure_monitor_shows_nowhere(identity, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with EchoingAzureMonitor() as azure:
        env = {"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "AZURE_MONITOR_RESOURCE_ID": RESOURCE,
               "AZURE_MONITOR_ENDPOINT": azure.url}
        bridge = use_bridge({**env, "BRIDGE_DELIVERY": "inline"})  # the answer carries the sink's report
        answer = bridge.ingest(json.dumps(METRIC).encode(), "application/json")
        health = bridge.health()
        sent = subprocess.run([sys.executable, "-m", "bridges", "send", "-"], input=json.dumps(METRIC).encode(),
                              cwd=ROOT, capture_output=True, timeout=60, env={**os.environ, **env})
    tokens = set(azure.tokens)  # what the fake identity endpoint issued at run time, to both processes
    assert len(tokens) == 2 and all(token.startswith("mi-token.") for token in tokens)
    assert answer.status == 202 and answer.body["delivery"]["azure_monitor"]["rejected"] == 1
    assert "token refused" in json.dumps(answer.body)  # the backend's reason is still given, masked
    assert "1 rejected" in sent.stdout.decode()
    for shown in (json.dumps(answer.body), json.dumps(health.body), caplog.text, sent.stdout.decode(), sent.stderr.decode()):
        assert not any(token in shown for token in tokens)
        assert "mi-token" not in shown


def test_anonymous_health_shows_a_reason_code_and_our_hint_never_the_backends_text(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with FakeDynatrace(token="dt0c01.RIGHT") as fake:
        fake.script(Scripted(401, {}, b'{"error": {"code": 401, "message": "backend words: unknown token"}}'))
        bridge = use_bridge({"BRIDGE_OUTBOX_DIR": str(tmp_path), "DYNATRACE_URL": fake.url,
                             "DYNATRACE_API_TOKEN": "dt0c01.RIGHT"})
        assert bridge.ingest(json.dumps(METRIC).encode(), "application/json").status == 202
        drain(bridge)  # the delivery function meets the 401; health shows it
        health = bridge.health().body
    assert health["sinks"]["dynatrace"]["misconfigured"] == {"code": "http_401", "hint": "the token is wrong (misconfigured)"}
    assert health["problems"] == ["dynatrace: http_401: the token is wrong (misconfigured)"]
    assert "is misconfigured (http_401)" in caplog.text  # the detail goes to the log


def test_a_raw_token_sent_in_authorization_is_masked_once_sent(tmp_path):
    """Unleash tokens carry no scheme: only knowing what was sent can mask them."""
    remember_headers({"Authorization": "*:development.5f9e1c0d7b", "Content-Type": "application/json"})
    assert scrub('{"message": "token *:development.5f9e1c0d7b is not valid"}') == '{"message": "token *** is not valid"}'
    assert scrub("application/json") == "application/json"


@pytest.mark.parametrize("text, shown", [
    ("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwcyJ9.c2lnbmF0dXJl",
     "Authorization: Bearer ***"),
    ("header was Api-Token dt0c01.ABC.DEF, refused", "header was Api-Token ***, refused"),
    ("SharedAccessSignature sr=https%3A%2F%2Fns&sig=abc%2Bdef&se=1700000000&skn=send",
     "SharedAccessSignature ***"),
    ("GET https://acct.queue.core.windows.net/q?sv=2022&sig=AbC%2Fdef%3D&se=2026 failed",
     "GET https://acct.queue.core.windows.net/q?sv=2022&sig=***&se=2026 failed"),
    ("POST /api/metrics?code=Zm9vYmFyYmF6cXV4== gave 401", "POST /api/metrics?code=*** gave 401"),
    ("AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFl==;", "AccountName=devstoreaccount1;AccountKey=***;"),
    ('{"access_token": "abc.def", "token_type": "Bearer"}', '{"access_token": "***", "token_type": "Bearer"}'),
    ("a bare JWT eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "a bare JWT ***"),
    ('{"error": {"code": "RegionMismatch", "message": "wrong region"}}',
     '{"error": {"code": "RegionMismatch", "message": "wrong region"}}'),
])
def test_credential_shaped_text_is_masked_in_any_backend_message(text, shown):
    assert scrub(text) == shown


def test_known_secrets_are_masked_whole_even_inside_longer_ones():
    Secret("s3cr3t-part")
    remember("s3cr3t-part-and-more")
    assert scrub("x s3cr3t-part-and-more y s3cr3t-part z") == "x *** y *** z"
