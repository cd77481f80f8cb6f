"""POST /api/webhooks/{source}: rules, signatures, idempotency and answers, end to end through
the HTTP function as the host calls it."""
from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from pathlib import Path

import azure.functions as func
import pytest
from support import NOW_NS, drain, load_file, outbox_lines, use_bridge

from bridges import runtime
from bridges.core import Bridge
from bridges.delivery.deliver import DeliveryError
from bridges.queues import open_queue
from bridges.settings import load_settings
from bridges.triggers.http import health, webhook
from bridges.webhooks.handler import Webhooks
from bridges.webhooks.idempotency import SqliteStore

SECRET = "hook-secret-0123456789"
RULES = """
source: shop
signature: {scheme: github, secrets: [SHOP_SECRET, SHOP_SECRET_PREVIOUS]}
idempotency: {header: X-Delivery}
rules:
  - name: orders
    filter: "headers.\\"x-event\\" == 'order'"
    tags: {currency: event.currency}
    metrics:
      - {name: shop.orders, type: counter}
      - {name: shop.order.amount, type: gauge, value: event.amount}
"""
ORDER = {"id": "ord_1", "amount": 12.5, "currency": "eur"}


@pytest.fixture
def rules(tmp_path) -> dict:
    path = tmp_path / "shop.yaml"
    path.write_text(RULES)
    return {"shop": load_file(path)}


def install(bridge, rules, environ=None, store=None) -> Webhooks:
    store = store or SqliteStore(Path(bridge.settings.state_dir) / "idempotency.sqlite3", ttl_seconds=3600,
                                 clock=lambda: NOW_NS / 1e9)
    bridge.webhooks = Webhooks(bridge, sources=rules, store=store, environ={"SHOP_SECRET": SECRET} if environ is None else environ)
    return bridge.webhooks


def signed(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def call(source: str, body: bytes, **headers: str):
    request = func.HttpRequest("POST", f"http://localhost/api/webhooks/{source}", headers=headers, body=body,
                               route_params={"source": source})
    response = webhook(request)
    return response.status_code, json.loads(response.get_body())


def order(delivery: str = "d-1", payload: dict = ORDER, secret: str = SECRET, **headers: str):
    body = json.dumps(payload).encode()
    return call("shop", body, **{"X-Event": "order", "X-Delivery": delivery, "X-Hub-Signature-256": signed(body, secret),
                                 "Content-Type": "application/json", **headers})


def test_a_signed_webhook_becomes_metrics_in_every_sink(bridge, rules):
    install(bridge, rules)
    status, answer = order()
    assert status == 202
    assert (answer["accepted"], answer["rejected"], answer["errors"]) == (2, 0, [])
    assert answer["delivery"] == {"queued": 2}
    [batch] = drain(bridge)
    assert batch.reports["outbox"].delivered == 2
    written = {m["name"]: m for m in outbox_lines(bridge)}
    assert written["shop.orders"]["counter"] == {"value": 1, "temporality": "delta"}
    assert written["shop.order.amount"]["gauge"] == {"value": 12.5}
    assert written["shop.order.amount"]["tags"] == {"currency": "eur"}


@pytest.mark.parametrize("tamper", ["body", "signature", "missing", "wrong secret"])
def test_a_bad_signature_is_a_bare_401_and_nothing_is_sent(bridge, rules, tamper, caplog):
    install(bridge, rules)
    body = json.dumps(ORDER).encode()
    headers = {"X-Event": "order", "X-Delivery": "d-1", "X-Hub-Signature-256": signed(body)}
    if tamper == "body":
        body = body.replace(b"12.5", b"99.5")
    elif tamper == "signature":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"][:-1] + "0"
    elif tamper == "missing":
        del headers["X-Hub-Signature-256"]
    else:
        headers["X-Hub-Signature-256"] = signed(body, "not-the-secret")
    assert call("shop", body, **headers) == (401, {"error": "unauthorized"})
    assert drain(bridge) == [] and outbox_lines(bridge) == []
    assert SECRET not in caplog.text


def test_either_secret_is_accepted_during_a_rotation(bridge, rules):
    install(bridge, rules, environ={"SHOP_SECRET": "new-secret-abcdef", "SHOP_SECRET_PREVIOUS": SECRET})
    assert order("d-1", secret=SECRET)[0] == 202
    assert order("d-2", secret="new-secret-abcdef")[0] == 202
    assert order("d-3", secret="a-third-secret")[0] == 401


def test_without_its_secret_setting_a_source_relies_on_the_function_key_and_health_says_so(bridge, rules):
    install(bridge, rules, environ={})
    status, _ = call("shop", json.dumps(ORDER).encode(), **{"X-Event": "order", "X-Delivery": "d-9"})
    assert status == 202
    answer = json.loads(health(func.HttpRequest("GET", "http://localhost/api/health", body=b"")).get_body())
    assert answer["webhooks"]["shop"] == {"signature": "not checked: set SHOP_SECRET"}


def test_a_repeated_delivery_is_answered_duplicate_and_not_sent_twice(bridge, rules):
    install(bridge, rules)
    assert order("d-1")[0] == 202
    assert order("d-1") == (200, {"duplicate": True})
    assert order("d-2")[0] == 202
    drain(bridge)
    assert [m["name"] for m in outbox_lines(bridge)].count("shop.orders") == 2


def deliver_at_once(delivery: str, copies: int = 8) -> list[int]:
    """The statuses of ``copies`` deliveries of one id sent from as many threads at once."""
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(order(delivery)[0])) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_duplicates_deliver_once(bridge, rules):
    install(bridge, rules)
    results = deliver_at_once("same-id")
    assert results.count(202) == 1
    assert set(results) <= {202, 200, 409}
    drain(bridge)
    assert [m["name"] for m in outbox_lines(bridge)].count("shop.orders") == 1


class FailingOnce:
    """A delivery stage that can neither deliver nor keep the first request (disk full...)."""

    def __init__(self, real):
        self.real = real
        self.calls = 0

    def deliver(self, metrics, now_ns, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            raise DeliveryError("outbox", "no space left on device")
        return self.real.deliver(metrics, now_ns, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_delivery_that_could_not_be_kept_is_503_and_the_senders_retry_is_processed(settings_env, rules):
    bridge = use_bridge({**settings_env, "BRIDGE_DELIVERY": "inline"})  # the sinks are written before the answer
    install(bridge, rules)
    bridge.delivery = FailingOnce(bridge.delivery)
    status, answer = order("d-1")
    assert status == 503 and "send again" in answer["error"]
    assert order("d-1")[0] == 202
    assert [m["name"] for m in outbox_lines(bridge)].count("shop.orders") == 1


class UnwritableOnce:
    """A delivery queue whose first write fails (the storage account unreachable, the disk full...)."""

    def __init__(self, real):
        self.real = real
        self.sends = 0

    def send(self, text, *args, **kwargs):
        self.sends += 1
        if self.sends == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.send(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_delivery_queue_that_could_not_be_written_is_503_and_the_senders_retry_is_processed(settings_env, rules):
    settings = load_settings(settings_env)
    real = open_queue(settings.delivery_queue, {}, settings.state_dir)  # the embedded SQLite queue
    bridge = Bridge(settings, clock=lambda: NOW_NS, delivery_queue=UnwritableOnce(real))
    runtime.use(bridge)
    install(bridge, rules)
    body = json.dumps(ORDER).encode()
    headers = {"X-Event": "order", "X-Delivery": "d-1", "X-Hub-Signature-256": signed(body),
               "Content-Type": "application/json"}
    response = webhook(func.HttpRequest("POST", "http://localhost/api/webhooks/shop", headers=headers, body=body,
                                        route_params={"source": "shop"}))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    error = json.loads(response.get_body())["error"]
    assert "could not be written (OperationalError)" in error and "send again" in error
    assert drain(bridge) == []  # nothing was kept
    # The claim on d-1 was released: the sender's retry is processed, not answered as a duplicate.
    assert order("d-1") == (202, {"accepted": 2, "rejected": 0, "errors": [], "delivery": {"queued": 2}})
    drain(bridge)
    assert [m["name"] for m in outbox_lines(bridge)].count("shop.orders") == 1


def test_an_event_no_rule_maps_is_answered_200_with_the_reason(bridge, rules):
    install(bridge, rules)
    status, answer = order("d-1", **{"X-Event": "refund"})
    assert status == 200
    assert answer["accepted"] == 0 and answer["skipped"] == {"no rule matched": 1}
    assert drain(bridge) == [] and outbox_lines(bridge) == []


def test_metrics_a_rule_cannot_make_are_refused_by_name(bridge, rules):
    install(bridge, rules)
    status, answer = order("d-1", payload={**ORDER, "amount": "lots"})
    assert status == 202  # the counter is still good
    assert answer["accepted"] == 1 and answer["rejected"] == 1
    [error] = answer["errors"]
    assert "shop.order.amount" in error["origin"] and "lots" in error["message"]


def test_unknown_sources_and_bad_bodies_get_a_4xx_naming_the_problem(bridge, rules):
    install(bridge, rules)
    status, answer = call("nobody", b"{}")
    assert status == 404 and answer["sources"] == ["shop"]
    install(bridge, rules, environ={})
    status, answer = call("shop", b'{"amount": ', **{"X-Event": "order"})
    assert status == 400 and answer["error"].startswith("malformed JSON") and answer["position"] == 11
    status, answer = call("shop", b"", **{"X-Event": "order"})
    assert (status, answer) == (400, {"error": "the body is empty"})


def test_a_form_encoded_webhook_is_read_from_its_payload_field(bridge, rules):
    from urllib.parse import urlencode

    install(bridge, rules, environ={})
    body = urlencode({"payload": json.dumps(ORDER)}).encode()
    status, answer = call("shop", body, **{"X-Event": "order", "Content-Type": "application/x-www-form-urlencoded"})
    assert (status, answer["accepted"]) == (202, 2)


def test_concurrent_duplicates_deliver_once_with_the_azure_table_store(bridge, rules, azurite_table):
    """The store Azure uses (Table storage, here Azurite's table service), claimed by eight
    deliveries of the same id at once."""
    from bridges.webhooks.idempotency import TableStore

    store = TableStore.from_settings("webhookdupes", {"AzureWebJobsStorage": azurite_table.connection_string},
                                     ttl_seconds=3600)
    install(bridge, rules, store=store)
    results = deliver_at_once("azure-same-id")
    assert results.count(202) == 1 and set(results) <= {202, 200, 409}
    assert order("azure-same-id") == (200, {"duplicate": True})
    drain(bridge)
    assert [m["name"] for m in outbox_lines(bridge)].count("shop.orders") == 1


def test_health_lists_every_built_in_source_with_its_signature_status(tmp_path):
    """Each built-in rule file is a source in health: signed ones name the setting to set, or say
    they are checked once it is; unsigned ones say the function key is all that protects them."""
    from bridges.webhooks.rule_files import BUILTIN_DIR, load_sources

    builtin = load_sources([BUILTIN_DIR])
    bridge = Bridge(load_settings({"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox"), "BRIDGE_STATE_DIR": str(tmp_path)}))
    first_secrets = {name: rules.signature["secrets"][0] for name, rules in builtin.items() if rules.signature}
    bridge.webhooks = Webhooks(bridge, sources=builtin, environ={})
    unset = bridge.health().body["webhooks"]
    bridge.webhooks = Webhooks(bridge, sources=builtin, environ={setting: "s3cret-value" for setting in first_secrets.values()})
    checked = bridge.health().body["webhooks"]
    assert set(unset) == set(checked) == set(builtin)
    for name, rules in builtin.items():
        if rules.signature:
            assert unset[name] == {"signature": f"not checked: set {first_secrets[name]}"}
            assert checked[name] == {"signature": f"{rules.signature['scheme']}, checked"}
        else:
            assert unset[name] == checked[name] == {"signature": "none (the function key only)"}
    assert "s3cret-value" not in json.dumps(checked)
