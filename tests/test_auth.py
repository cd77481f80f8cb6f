"""Entra tokens through the real azure-identity code, against a local managed-identity endpoint."""
from __future__ import annotations

import time

import pytest

from bridges.delivery import auth
from bridges.delivery.auth import TokenError, TokenSource, custom_metrics_scope, prometheus_scope
from bridges.settings import load_settings

CUSTOM = "https://monitoring.azure.com/"
PROMETHEUS = "https://monitor.azure.com/"


def test_each_sink_asks_for_its_own_audience_by_construction():
    assert custom_metrics_scope("https://westeurope.monitoring.azure.com") == "https://monitoring.azure.com//.default"
    assert prometheus_scope("https://a.eastus-1.metrics.ingest.monitor.azure.com/x") == "https://monitor.azure.com//.default"
    assert custom_metrics_scope("https://usgovarizona.monitoring.azure.us") == "https://monitoring.azure.us//.default"
    assert prometheus_scope("https://a.chinaeast2-1.metrics.ingest.monitor.azure.cn/x") == "https://monitor.azure.cn//.default"


def test_one_token_request_per_audience_until_near_expiry(identity):
    credential = auth.process_credential(load_settings({}))
    assert auth.process_credential(load_settings({})) is credential  # one credential per process
    custom = TokenSource(credential, custom_metrics_scope("https://westeurope.monitoring.azure.com"))
    prom = TokenSource(credential, prometheus_scope("https://a.eastus-1.metrics.ingest.monitor.azure.com"))
    headers = [custom.header() for _ in range(5)] + [prom.header() for _ in range(5)]
    assert set(headers) == {f"Bearer mi-token.1.{CUSTOM}", f"Bearer mi-token.1.{PROMETHEUS}"}
    assert identity.requests_per_resource == {CUSTOM: 1, PROMETHEUS: 1}


def test_tokens_are_refreshed_when_they_near_expiry(identity, monkeypatch):
    now = [time.time()]
    source = TokenSource(auth.process_credential(load_settings({})), "https://monitoring.azure.com//.default",
                         clock=lambda: now[0])
    first = source.header()
    now[0] += 3000  # still more than five minutes left: reused
    assert source.header() == first
    now[0] += 2 * 3600  # past expiry for our cache, and for azure-identity's (it reads time.time)
    monkeypatch.setattr(time, "time", lambda: now[0])
    assert source.header() == f"Bearer mi-token.2.{CUSTOM}"
    assert identity.requests_per_resource[CUSTOM] == 2


def test_short_lived_tokens_are_fetched_again(identity):
    identity.lifetime = 120  # inside the five-minute refresh margin: never reused
    source = TokenSource(auth.process_credential(load_settings({})), "https://monitoring.azure.com//.default")
    source.header()
    source.header()
    assert identity.requests_per_resource[CUSTOM] == 2


def test_a_user_assigned_identity_is_asked_for_by_client_id(identity):
    settings = load_settings({"AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555"})
    TokenSource(auth.process_credential(settings), "https://monitor.azure.com//.default").header()
    assert identity.client_ids == ["11111111-2222-3333-4444-555555555555"]


def test_a_refused_token_request_is_a_token_error_without_secrets(identity, monkeypatch):
    monkeypatch.setenv("IDENTITY_HEADER", "wrong-secret")
    monkeypatch.setattr(auth, "_credential", None)
    source = TokenSource(auth.process_credential(load_settings({})), "https://monitoring.azure.com//.default")
    with pytest.raises(TokenError) as caught:
        source.header()
    assert "no Entra token for https://monitoring.azure.com//.default" in caught.value.reason
    assert identity.secret not in caught.value.reason


def test_a_service_principal_is_used_when_its_settings_are_complete():
    from azure.identity import ClientSecretCredential, ManagedIdentityCredential

    settings = load_settings({"AZURE_TENANT_ID": "contoso.onmicrosoft.com", "AZURE_CLIENT_ID": "app-id",
                              "AZURE_CLIENT_SECRET": "sp-secret-value"})
    assert isinstance(auth.build_credential(settings), ClientSecretCredential)
    assert isinstance(auth.build_credential(load_settings({})), ManagedIdentityCredential)
    assert "sp-secret-value" not in repr(settings)
