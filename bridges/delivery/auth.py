"""Entra tokens for the Azure sinks, from azure-identity (never hand-written token requests).

One credential per process: the function's managed identity (system-assigned, or the
user-assigned one named by ``AZURE_CLIENT_ID``), or a service principal when
``AZURE_TENANT_ID`` and ``AZURE_CLIENT_SECRET`` are set too. Each sink asks for tokens through a
``TokenSource`` bound to its own scope, which the sink derives from its own URL
(``custom_metrics_scope``, ``prometheus_scope``): a custom-metrics sink cannot ask for the
managed-Prometheus audience, or the other way round. A token is reused until five minutes
before it expires.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken

REFRESH_MARGIN_SECONDS = 300
_CLOUD_SUFFIXES = (".azure.us", ".azure.cn")  # sovereign clouds; everything else is public Azure


TOKEN_HINT = ("no Entra token: check that the app has a managed identity (AZURE_CLIENT_ID names a "
              "user-assigned one) or that AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET are right")


class TokenError(Exception):
    """No token could be had: the metrics wait (pending). ``reason`` holds azure-identity's own
    words (for the log), ``hint`` ours (for health)."""

    def __init__(self, reason: str, hint: str = TOKEN_HINT):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


def _cloud_suffix(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return next((suffix for suffix in _CLOUD_SUFFIXES if host.endswith(suffix)), ".azure.com")


def custom_metrics_scope(url: str) -> str:
    """Azure Monitor custom metrics: audience ``https://monitoring.azure.com/`` (trailing slash kept)."""
    return f"https://monitoring{_cloud_suffix(url)}//.default"


def prometheus_scope(url: str) -> str:
    """Managed Prometheus ingestion: audience ``https://monitor.azure.com/`` (as Prometheus asks)."""
    return f"https://monitor{_cloud_suffix(url)}//.default"


_credential = None
_credential_lock = threading.Lock()


def process_credential(settings):
    """The process's one credential, built on first use from the settings."""
    global _credential
    with _credential_lock:
        if _credential is None:
            _credential = build_credential(settings)
        return _credential


def build_credential(settings):
    from azure.identity import ClientSecretCredential, ManagedIdentityCredential

    client_id = settings.azure_client_id
    if settings.azure_tenant_id and settings.azure_client_secret is not None:
        return ClientSecretCredential(settings.azure_tenant_id, client_id, settings.azure_client_secret.reveal())
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


class TokenSource:
    """Bearer tokens for one scope, reused until near expiry."""

    def __init__(self, credential, scope: str, clock: Callable[[], float] = time.time):
        self.credential = credential
        self.scope = scope
        self.clock = clock
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    def header(self) -> str:
        """``Bearer <token>``; raises TokenError when the identity cannot give one."""
        with self._lock:
            if self._token is None or self._token.expires_on - REFRESH_MARGIN_SECONDS <= self.clock():
                self._token = self._fetch()
            return f"Bearer {self._token.token}"

    def authorize(self, request):
        """A copy of the request carrying a fresh bearer token (what the Azure sinks' ``authorize`` is)."""
        return dataclasses.replace(request, headers={**request.headers, "Authorization": self.header()})

    def _fetch(self):
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return self.credential.get_token(self.scope)
        except ClientAuthenticationError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TokenError(f"no Entra token for {self.scope}: {first_line[:200]}") from None
