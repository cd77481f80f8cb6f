"""The one place that speaks HTTP to backends: a shared, pooled ``requests.Session`` per process.

Every request has a timeout. A transport failure (refused, reset, timed out) comes back as a
``Reply`` carrying the exception, so sinks classify it like any answer. What a backend answers
to a failed request reaches the sinks with the credentials masked (``bridges.masking``).
"""
from __future__ import annotations

import threading

from bridges.delivery.sinks.base import Reply, Request
from bridges.masking import remember_headers, scrub, scrub_bytes

POOL_SIZE = 16
_session = None
_lock = threading.Lock()


def shared_session():
    """The process's Session: one connection pool (and TLS handshake) per backend host."""
    global _session
    with _lock:
        if _session is None:
            import requests
            from requests.adapters import HTTPAdapter

            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            _session = session
        return _session


def send(session, request: Request, timeout_seconds: float) -> Reply:
    """Send one request. The credentials it carries are remembered as secrets first, and an
    answer other than 2xx comes back with every known secret masked: backends echo requests."""
    import requests

    remember_headers(request.headers)
    try:
        response = session.request(
            request.method, request.url, headers=request.headers, data=request.body,
            timeout=(timeout_seconds, timeout_seconds), allow_redirects=False,
        )
    except requests.RequestException as exc:
        return Reply(None, error=exc)
    if 200 <= response.status_code < 300:
        return Reply(response.status_code, response.headers, response.content)
    headers = {name: scrub(value, shapes=False) for name, value in response.headers.items()}
    return Reply(response.status_code, headers, scrub_bytes(response.content, shapes=False))
