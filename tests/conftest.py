"""Fixtures only (shared helpers are in support.py): each test in its own folder, a Bridge on a
temporary outbox with a clock the test controls, the identity endpoint, the real peers."""
from __future__ import annotations

import os

import pytest
from support import use_bridge  # first: it puts the repository on sys.path

from bridges import runtime  # noqa: E402
from bridges.formats import remote_write  # noqa: E402
from bridges.settings import binding_defaults  # noqa: E402

pytest_plugins = ["peers.unleash", "peers.prometheus", "peers.node_exporter", "peers.azurite", "peers.functions_worker"]  # real peers as fixtures


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
    remote_write.KNOWN.clear()  # remote-write metadata is remembered per process: not from test to test


@pytest.fixture
def settings_env(tmp_path):
    return {"BRIDGE_OUTBOX_DIR": str(tmp_path / "outbox")}


@pytest.fixture
def bridge(settings_env):
    """The process Bridge the triggers use, on a temporary outbox and a fixed clock."""
    return use_bridge(settings_env)


@pytest.fixture
def identity(monkeypatch):
    """A local managed-identity token endpoint, wired in as App Service does (IDENTITY_ENDPOINT,
    IDENTITY_HEADER), with the process credential rebuilt for the test."""
    from fakes.identity import FakeIdentityEndpoint

    from bridges.delivery import auth

    with FakeIdentityEndpoint() as endpoint:
        monkeypatch.setenv("IDENTITY_ENDPOINT", endpoint.endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", endpoint.secret)
        for name in ("MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT", "IDENTITY_SERVER_THUMBPRINT", "AZURE_CLIENT_ID",
                     "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(auth, "_credential", None)
        yield endpoint
