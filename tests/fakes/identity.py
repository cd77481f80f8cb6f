"""A local token endpoint speaking the App Service managed-identity protocol (CONTRACTS 6.5).

azure-identity reaches it through ``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``, so tests run
the real credential code. It checks the secret header and the api-version, counts token
requests per resource, and issues tokens that name their audience (``mi-token.<n>.<resource>``)
so fake receivers can check they were given a token for the right one. ``lifetime`` sets how
long new tokens live; a short one makes clients come back (refresh).
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter

from fakes.server import Answer, FakeReceiver, Received

TOKEN_PREFIX = "mi-token."


def audience_of(token: str) -> str | None:
    """The resource a token from this endpoint was issued for, or None for a foreign token."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    return token.split(".", 2)[2]


class FakeIdentityEndpoint(FakeReceiver):
    def __init__(self, lifetime: int = 3600) -> None:
        super().__init__()
        self.secret = str(uuid.uuid4())
        self.lifetime = lifetime
        self.requests_per_resource: Counter = Counter()
        self.client_ids: list[str | None] = []

    @property
    def endpoint(self) -> str:
        return self.url + "/msi/token"

    def answer(self, request: Received) -> Answer:
        if request.path != "/msi/token" or request.method != "GET":
            return _json(404, {"error": "not found"})
        if request.headers.get("x-identity-header") != self.secret:
            return _json(401, {"error": "invalid_request", "error_description": "X-IDENTITY-HEADER is wrong"})
        if request.query.get("api-version") != ["2019-08-01"]:
            return _json(400, {"error": "invalid_request", "error_description": "api-version 2019-08-01 expected"})
        resource = (request.query.get("resource") or [""])[0]
        if not resource:
            return _json(400, {"error": "invalid_request", "error_description": "resource is required"})
        self.requests_per_resource[resource] += 1
        client_id = (request.query.get("client_id") or [None])[0]
        self.client_ids.append(client_id)
        number = self.requests_per_resource[resource]
        return _json(200, {
            "access_token": f"{TOKEN_PREFIX}{number}.{resource}",
            "expires_on": str(int(time.time()) + self.lifetime),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": client_id or "system-assigned",
        })


def _json(status: int, document: dict) -> Answer:
    return Answer(status, {"Content-Type": "application/json"}, json.dumps(document).encode())
