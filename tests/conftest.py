"""Shared fixtures: a Bridge on a temporary outbox with a clock the test controls."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bridges import runtime  # noqa: E402
from bridges.core import Bridge  # noqa: E402
from bridges.settings import binding_defaults, load_settings  # noqa: E402

pytest_plugins = ["peers.unleash", "peers.prometheus", "peers.azurite", "peers.functions_worker"]  # real peers as fixtures

# 2026-11-22T10:00:00Z: the receipt time every test sees.
NOW_NS = 1_795_341_600 * 1_000_000_000


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path, monkeypatch):
    """Each test runs in an empty folder with no BRIDGE_* settings from the machine, and the
    settings the bindings name set to their defaults."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in binding_defaults().items():  # as the Bicep and local.settings.json set them
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    yield
    runtime.use(None)


@pytest.fixture
def settings_env(tmp_path):
    return {"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox")}


def use_bridge(settings: dict[str, str], now_ns: int = NOW_NS) -> Bridge:
    """Install, for the triggers, a Bridge built from these settings on a fixed clock."""
    instance = Bridge(load_settings(settings), clock=lambda: now_ns)
    runtime.use(instance)
    return instance


@pytest.fixture
def bridge(settings_env):
    """The process Bridge the triggers use, on a temporary outbox and a fixed clock."""
    return use_bridge(settings_env)


def drain(bridge: Bridge) -> list:
    """Run the delivery function over everything on the Bridge's delivery queue, as the host
    does (one message per invocation, deleted when it succeeded); the batches it delivered."""
    from bridges.queued import worker_for

    worker = worker_for(bridge)
    worker.linger_seconds = 0  # everything is on the queue already
    batches = []
    while messages := bridge.delivery_queue.receive(1, 60):
        batches.append(worker.process(messages[0].text))
        bridge.delivery_queue.delete(messages[0])
    return batches


def outbox_lines(bridge: Bridge) -> list[dict]:
    files = sorted(bridge.settings.outbox_dir.glob("*.ndjson"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.fixture
def identity(monkeypatch):
    """A local managed-identity token endpoint, wired in as App Service does (IDENTITY_ENDPOINT,
    IDENTITY_HEADER), with the process credential rebuilt for the test."""
    from bridges import auth
    from fakes.identity import FakeIdentityEndpoint

    with FakeIdentityEndpoint() as endpoint:
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", endpoint.secret)
        for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID",
                     "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(auth, "_credential", None)
        yield endpoint
