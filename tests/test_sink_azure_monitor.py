"""The Azure Monitor custom metrics sink: exact documents (golden files), per-minute
aggregation, limits, every answer's outcome against a fake receiver that enforces the contract,
and Entra tokens from a real azure-identity credential against a local managed-identity endpoint."""
from __future__ import annotations

import gzip
import json
import logging
import time

import pytest
import requests
from azure.core.credentials import AccessToken
from fakes.azure_monitor import AUDIENCE, TIME_MESSAGE, FakeAzureMonitor, document_error
from fakes.identity import audience_of
from fakes.server import RESET, Scripted
from golden import cases, check_case
from support import NOW_NS, walk_status_table

from bridges.delivery import transport
from bridges.delivery.auth import process_credential
from bridges.delivery.deliver import Delivery
from bridges.delivery.sinks.azure_monitor.sink import MAX_BODY_BYTES, ROLE_HINT, AzureMonitorSink, metric_name
from bridges.delivery.sinks.base import Delivered, Drop, Resend, Retry
from bridges.model import Aggregate, AzureTarget, Gauge, Metric
from bridges.settings import load_settings

RESOURCE = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-bridge/providers/Microsoft.Web/sites/func-bridge"
OTHER = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-vm/providers/Microsoft.Compute/virtualMachines/vm1"


class StaticCredential:
    """A credential handing out one token (for tests that are not about tokens)."""

    def __init__(self, token: str = "mi-token.1." + AUDIENCE):
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes, **kwargs):
        self.scopes += scopes
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.mark.parametrize("case", cases("azure_monitor"), ids=lambda p: p.name)
def test_golden_requests(case):
    produced = check_case("azure_monitor", case)
    for request in produced["requests"]:  # and the fake's independent checks accept every document
        assert [document_error(d, NOW_NS / 1e9) for d in request["body"]] == [None] * len(request["body"])
        assert request["headers"] == {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}


@pytest.mark.parametrize("name, safe", [("cpu.load", "cpu_load"), ("Memory Bytes in Use", "Memory_Bytes_in_Use"),
                                        ("a-b/c", "a_b_c"), ("é", "_"), ("ok_Name_1", "ok_Name_1")])
def test_metric_names(name, safe):
    assert metric_name(name) == safe


def now_ns() -> int:
    return time.time_ns()


def gauges(count: int, now: int | None = None, tags: int = 1, width: int = 10) -> list[Metric]:
    now = now or now_ns()
    return [Metric("bridge.test", Gauge(i), now, tuple((f"tag{t}", f"{i:0{width}d}") for t in range(tags)))
            for i in range(count)]


def body_lines(request) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(request.body).decode().splitlines()]


def sink_for(url: str, credential=None, **options) -> AzureMonitorSink:
    return AzureMonitorSink(RESOURCE, None, credential or StaticCredential(), endpoint=url, **options)


def test_requests_stay_within_four_million_bytes_before_gzip_in_the_fewest():
    metrics = gauges(60_000, tags=10, width=12)  # one metric, one minute: its series split across documents
    encoded = sink_for("https://westeurope.monitoring.azure.com").encode(metrics, now_ns())
    sizes = [len(gzip.decompress(r.body)) for r in encoded.requests]
    assert len(sizes) > 1 and all(size <= MAX_BODY_BYTES for size in sizes)
    assert len(sizes) == -(-sum(sizes) // MAX_BODY_BYTES)
    assert sorted(i for r in encoded.requests for i in r.items) == list(range(60_000))
    assert all(gzip.decompress(r.body).endswith(b"}\n") for r in encoded.requests)
    series = [s for r in encoded.requests for d in body_lines(r) for s in d["data"]["baseData"]["series"]]
    assert len(series) == 60_000


def test_requests_are_grouped_per_resource_and_each_metric_is_in_one_document():
    now = now_ns()
    metrics = [Metric("a", Gauge(1), now), Metric("a", Gauge(2), now, azure=AzureTarget(OTHER, "eastus")),
               Metric("a", Gauge(3), now), Metric("b", Gauge(4), now, azure=AzureTarget(OTHER))]
    encoded = AzureMonitorSink(RESOURCE, "westeurope", StaticCredential()).encode(metrics, now)
    assert {r.url: r.items for r in encoded.requests} == {
        f"https://westeurope.monitoring.azure.com{RESOURCE}/metrics": (0, 2),
        f"https://eastus.monitoring.azure.com{OTHER}/metrics": (1,),
        f"https://westeurope.monitoring.azure.com{OTHER}/metrics": (3,),
    }


def test_authorize_adds_a_bearer_token_to_a_copy_and_encode_stays_pure():
    credential = StaticCredential()
    sink = AzureMonitorSink(RESOURCE, "westeurope", credential)
    [request] = sink.encode(gauges(1), now_ns()).requests
    assert credential.scopes == []  # encoding asked for nothing
    sent = sink.authorize(request)
    assert sent.headers["Authorization"] == "Bearer mi-token.1." + AUDIENCE
    assert "Authorization" not in request.headers and sent.items == request.items
    assert credential.scopes == ["https://monitoring.azure.com//.default"]
    status = json.dumps(sink.status())
    assert "westeurope.monitoring.azure.com" in status and RESOURCE in status and "mi-token" not in status


# --- answers --------------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeAzureMonitor() as receiver:
        yield receiver


def exchange(sink: AzureMonitorSink, metrics, now: int | None = None, timeout: float = 5.0, authorize: bool = True):
    [request] = sink.encode(metrics, now or now_ns()).requests
    sent = sink.authorize(request) if authorize else request
    with requests.Session() as session:
        return request, sink.classify(request, transport.send(session, sent, timeout))


def test_documents_reach_the_receiver(fake):
    now = now_ns()
    metrics = [Metric("cpu.load", Gauge(1.5), now, (("host", "a"),)), Metric("cpu.load", Gauge(2.5), now, (("host", "b"),)),
               Metric("cpu.load", Gauge(0.5), now, (("host", "a"),))]
    _, outcome = exchange(sink_for(fake.url), metrics, now)
    assert outcome == Delivered()
    [document] = fake.documents
    assert document["data"]["baseData"]["series"] == [
        {"dimValues": ["a"], "min": 0.5, "max": 1.5, "sum": 2.0, "count": 2},
        {"dimValues": ["b"], "min": 2.5, "max": 2.5, "sum": 2.5, "count": 1}]
    assert fake.received[0].path == f"{RESOURCE}/metrics"


def test_the_service_window_answer_is_a_drop_with_its_message(fake):
    old = now_ns() - 40 * 60 * 10**9  # encoded as if it were 40 minutes ago: the receiver refuses it
    _, outcome = exchange(sink_for(fake.url), gauges(1, old), old)
    assert outcome == Drop("Azure Monitor answered 400: " + TIME_MESSAGE.strip())


def test_region_mismatch_is_a_drop_that_marks_the_sink_misconfigured():
    with FakeAzureMonitor(serves="westus", region="eastus") as receiver:
        _, outcome = exchange(sink_for(receiver.url), gauges(1))
    assert isinstance(outcome, Drop) and outcome.misconfigured
    assert outcome.reason.startswith("Azure Monitor answered 400 RegionMismatch: This endpoint : westus.monitoring")


def test_a_token_for_another_audience_is_refused_with_the_role_hint(fake):
    _, outcome = exchange(sink_for(fake.url, StaticCredential("mi-token.1.https://monitor.azure.com/")), gauges(1))
    assert isinstance(outcome, Drop) and outcome.misconfigured
    assert "InvalidAudience" in outcome.reason and "Monitoring Metrics Publisher" in outcome.reason


def test_no_bearer_is_refused(fake):
    _, outcome = exchange(sink_for(fake.url), gauges(1), authorize=False)
    assert isinstance(outcome, Drop) and outcome.misconfigured and outcome.reason.startswith("Azure Monitor answered 401")


FORBIDDEN = (b'{"error":{"code":"AuthenticationFailed","message":"The Azure AD object \'0000\' does not have permissions '
             b'to perform action \'Microsoft.Insights/Metrics/write\' over scope \'/subscriptions/x\'. "}}')


@pytest.mark.parametrize(
    "script, expected",
    [
        (Scripted(429, {"Retry-After": "7"}), Retry("Azure Monitor answered 429", 7.0)),
        (Scripted(503, {"Retry-After": "120"}), Retry("Azure Monitor answered 503", 120.0)),
        (Scripted(500), Retry("Azure Monitor answered 500", None)),
        (Scripted(413), Resend("Azure Monitor answered 413: request too large", split=True)),
        (Scripted(404, body=b'{"error":{"code":"ResourceNotFound","message":"not found"}}'),
         Drop("Azure Monitor answered 404: no such resource or endpoint: check AZURE_MONITOR_RESOURCE_ID and "
              "AZURE_MONITOR_ENDPOINT: not found", misconfigured=True,
              hint="no such resource or endpoint: check AZURE_MONITOR_RESOURCE_ID and AZURE_MONITOR_ENDPOINT")),
    ],
    ids=["429", "503", "500", "413", "404"],
)
def test_status_table(fake, script, expected):
    fake.script(script)
    _, outcome = exchange(sink_for(fake.url), gauges(2))
    assert outcome == expected


def test_403_names_the_role_and_its_delay(fake):
    fake.script(Scripted(403, {"Content-Type": "application/json"}, FORBIDDEN))
    _, outcome = exchange(sink_for(fake.url), gauges(1))
    assert isinstance(outcome, Drop) and outcome.misconfigured
    assert "AuthenticationFailed" in outcome.reason and "Microsoft.Insights/Metrics/write" in outcome.reason
    assert "Monitoring Metrics Publisher role" in outcome.reason and "30 minutes" in outcome.reason


def test_connection_reset_and_timeout_retry(fake):
    fake.script(RESET)
    _, outcome = exchange(sink_for(fake.url), gauges(1))
    assert isinstance(outcome, Retry) and outcome.reason.startswith("no answer")
    fake.script(Scripted(slow=1.0))
    _, outcome = exchange(sink_for(fake.url), gauges(1), timeout=0.2)
    assert isinstance(outcome, Retry) and "Timeout" in outcome.reason


def test_status_table_covers_every_listed_status():
    sink = sink_for("https://westeurope.monitoring.azure.com")
    [request] = sink.encode(gauges(1), now_ns()).requests
    outcomes = walk_status_table(sink, request, b'{"error":{"code":"X","message":"m"}}', {"Retry-After": "3"})
    assert outcomes[400] == Drop("Azure Monitor answered 400: m")
    assert all(outcomes[s].misconfigured and outcomes[s].hint == ROLE_HINT for s in (401, 403))
    assert all(o.after == 3.0 for o in outcomes.values() if isinstance(o, Retry))


# --- tokens from the managed identity, through the delivery stage ----------------------------


class Handoff:
    def __init__(self):
        self.calls = []

    def hand_off(self, sink, metrics, reason, after, now_ns):
        self.calls.append((sink, len(metrics), reason))


def test_delivery_uses_one_token_per_audience_and_refreshes_it(identity, fake, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    settings = load_settings({"AZURE_MONITOR_RESOURCE_ID": RESOURCE, "AZURE_MONITOR_ENDPOINT": fake.url})
    sink = AzureMonitorSink(RESOURCE, None, process_credential(settings), endpoint=fake.url, clock=lambda: time.time())
    handoff = Handoff()
    delivery = Delivery([sink], handoff)
    reports = [delivery.deliver(gauges(3), now_ns()) for _ in range(3)]
    assert [r["azure_monitor"].delivered for r in reports] == [3, 3, 3]
    assert identity.requests_per_resource == {AUDIENCE: 1}
    assert {audience_of(t) for t in fake.tokens} == {AUDIENCE} and len(fake.tokens) == 3

    later = time.time() + 2 * 3600  # past the token's hour: azure-identity's cache and ours both expire it
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 2 * 3600)
    report = delivery.deliver(gauges(2, int(later * 1e9)), int(later * 1e9))
    assert report["azure_monitor"].delivered == 2
    assert identity.requests_per_resource == {AUDIENCE: 2}
    assert fake.tokens[-1] == "mi-token.2." + AUDIENCE
    assert handoff.calls == []

    shown = caplog.text + json.dumps([r["azure_monitor"].to_json() for r in reports + [report]])
    shown += json.dumps(delivery.status())
    assert "mi-token" not in shown


def test_no_token_leaves_the_metrics_pending(fake):
    from azure.core.exceptions import ClientAuthenticationError

    class Failing:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("ManagedIdentityCredential authentication unavailable")

    handoff = Handoff()
    report = Delivery([sink_for(fake.url, Failing())], handoff).deliver(gauges(2), now_ns())
    assert report["azure_monitor"].pending == 2 and fake.received == []
    assert "ManagedIdentityCredential authentication unavailable" in handoff.calls[0][2]


def test_without_any_region_a_metric_must_name_its_own():
    now = now_ns()
    sink = AzureMonitorSink(RESOURCE, None, StaticCredential())
    encoded = sink.encode([Metric("a", Gauge(1), now), Metric("a", Gauge(2), now, azure=AzureTarget(OTHER, "eastus"))], now)
    assert [r.url for r in encoded.requests] == [f"https://eastus.monitoring.azure.com{OTHER}/metrics"]
    assert [(r.index, r.reason.split(" (")[0]) for r in encoded.rejected] == [(0, "no Azure region for the resource")]
    assert sink.status()["endpoint"] == "monitoring.azure.com"


def test_a_sum_beyond_the_largest_number_is_refused_not_sent_as_infinity():
    """Found by tests/test_sink_roundtrip.py: two huge points of one series and minute summed to
    ``Infinity``, which is not JSON, so Azure would refuse the whole body."""
    now = now_ns()
    huge = [Metric("big", Gauge(1.7e308), now), Metric("big", Gauge(1.7e308), now), Metric("big", Gauge(-1.0), now)]
    encoded = AzureMonitorSink(RESOURCE, "westeurope", StaticCredential()).encode(huge, now)
    assert [(r.index, r.reason) for r in encoded.rejected] == [
        (1, "its sum with the other points of its series in this minute is too large for a number")]
    [document] = body_lines(encoded.requests[0])
    assert document["data"]["baseData"]["series"][0]["sum"] == 1.7e308 - 1.0
    assert encoded.requests[0].items == (0, 2)


def test_a_count_merged_beyond_64_bits_is_refused_not_sent():
    """Found by tests/test_sink_roundtrip.py once counts were bounded to 64 bits: two points of
    one series and minute, each within the bound, summed beyond it."""
    now = now_ns()
    half = Aggregate(1, 1, float(2**62), 2**62)
    points = [Metric("many", half, now), Metric("many", half, now), Metric("many", Aggregate(1, 1, 1, 1), now)]
    encoded = AzureMonitorSink(RESOURCE, "westeurope", StaticCredential()).encode(points, now)
    assert [(r.index, r.reason) for r in encoded.rejected] == [
        (1, "its count with the other points of its series in this minute is beyond a 64-bit integer")]
    [document] = body_lines(encoded.requests[0])
    assert document["data"]["baseData"]["series"][0]["count"] == 2**62 + 1
