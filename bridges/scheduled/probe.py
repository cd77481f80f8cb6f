"""One HTTP(S) request, timed phase by phase, under one deadline.

Synthetic checks need what an HTTP library hides: how long name resolution, the TCP connect,
the TLS handshake and the wait for the first byte took, and the server's certificate. So the
connection is opened here step by step (socket, ssl) and the request is spoken over it by the
standard library's http.client. Every blocking step gets only the time left before the
deadline, so a slow target costs at most its timeout. Polled sources use the same function.

Failures are ``FetchError`` with a reason a dashboard can group by: ``timeout``, ``dns``,
``connect`` or ``tls`` (``status`` and ``assertion`` are the checks' own).
"""
from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

from bridges import __version__

USER_AGENT = f"metrics-bridge/{__version__} (synthetic check)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_KEPT_BODY_BYTES = 1024 * 1024  # what assertions and mapping rules may read; the rest is counted
_CHUNK = 64 * 1024
# Header names that carry credentials: not sent on to another host when a redirect leads there
# (and, in declarations, never written as literal values).
CREDENTIAL_HEADER = re.compile(r"authorization|cookie|token|secret|password|api[-_]?key|signature", re.IGNORECASE)


@dataclass(frozen=True)
class TlsOptions:
    verify: bool = True  # the certificate chain must lead to a trusted root
    verify_hostname: bool = True  # and name the host
    ca_file: str | None = None  # trust this CA bundle (an internal CA) instead of the system's


@dataclass
class Certificate:
    not_after: float  # epoch seconds
    subject: str

    def days_left(self, now_s: float) -> float:
        return (self.not_after - now_s) / 86400


@dataclass
class Fetched:
    """The final response. ``phases`` are the last hop's, in seconds; ``first_byte`` counts
    from the start of that hop, so it includes the phases before it (as curl's does)."""

    url: str
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes  # at most MAX_KEPT_BODY_BYTES
    size: int  # body bytes received
    duration: float  # all hops
    phases: dict[str, float] = field(default_factory=dict)
    certificate: Certificate | None = None
    redirects: int = 0


class FetchError(Exception):
    """No response. ``phases`` and ``certificate`` hold what was measured before the failure."""

    def __init__(self, reason: str, message: str, duration: float, phases: dict | None = None,
                 certificate: Certificate | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.duration = duration
        self.phases = phases or {}
        self.certificate = certificate


class _Failed(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def fetch(
    url: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    redirects: int = 5,
    tls: TlsOptions = TlsOptions(),
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> Fetched:
    """Request ``url``, following up to ``redirects`` redirects; raises FetchError."""
    started = clock()
    deadline = started + timeout
    headers = dict(headers or {})
    hops = 0
    while True:
        hop = _Hop(clock, deadline, tls, wall_clock)
        try:
            response = hop.request(method, url, headers, body)
        except _Failed as failed:
            raise FetchError(failed.reason, failed.message, clock() - started, hop.phases, hop.certificate) from None
        location = response.headers.get("location")
        if response.status in REDIRECT_STATUSES and location and hops < redirects:
            hops += 1
            target = urljoin(url, location)
            if urlsplit(target).scheme not in ("http", "https"):
                raise FetchError("connect", f"redirected to {target!r}, which is not http or https",
                                 clock() - started, hop.phases, hop.certificate)
            here, there = urlsplit(url), urlsplit(target)
            # Another host, or the same one over plain HTTP, must not see (or expose) the credentials.
            if there.netloc != here.netloc or (here.scheme, there.scheme) == ("https", "http"):
                headers = {k: v for k, v in headers.items() if not CREDENTIAL_HEADER.search(k)}
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            url = target
            continue
        response.duration = clock() - started
        response.redirects = hops
        return response


class _Hop:
    """One request on its own connection (closed after), its phases recorded as they pass."""

    def __init__(self, clock, deadline: float, tls: TlsOptions, wall_clock) -> None:
        self.clock, self.deadline, self.tls, self.wall_clock = clock, deadline, tls, wall_clock
        self.phases: dict[str, float] = {}
        self.certificate: Certificate | None = None

    def remaining(self) -> float:
        left = self.deadline - self.clock()
        if left <= 0:
            raise _Failed("timeout", "no answer within the timeout")
        return left

    def request(self, method: str, url: str, headers: dict, body: bytes | None) -> Fetched:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Failed("connect", f"not an http or https URL: {url!r}")
        secure = parts.scheme == "https"
        try:
            port = parts.port or (443 if secure else 80)
        except ValueError:
            raise _Failed("connect", f"the URL's port is not a number: {url!r}") from None
        start = self.clock()
        addresses = self._resolve(parts.hostname, port)
        sock = self._connect(addresses)
        try:
            if secure:
                sock = self._handshake(sock, parts.hostname, port)
            return self._exchange(sock, start, parts, method, url, headers, body)
        finally:
            sock.close()

    def _resolve(self, host: str, port: int) -> list:
        began = self.clock()
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise _Failed("dns", f"cannot resolve {host!r}: {exc.strerror}") from None
        except UnicodeError:
            raise _Failed("dns", f"cannot resolve {host!r}: not a valid host name") from None
        self.phases["dns"] = self.clock() - began
        self.remaining()
        return addresses

    def _connect(self, addresses: list) -> socket.socket:
        began = self.clock()
        problem = "no address"
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.remaining())
                sock.connect(address)
            except TimeoutError:
                sock.close()
                raise _Failed("timeout", f"connecting to {address[0]} port {address[1]} timed out") from None
            except _Failed:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                problem = f"{address[0]} port {address[1]}: {exc.strerror or exc}"
                continue
            self.phases["connect"] = self.clock() - began
            return sock
        raise _Failed("connect", f"cannot connect: {problem}")

    def _context(self, verify: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls.ca_file)
        if not (verify and self.tls.verify_hostname):
            context.check_hostname = False
        if not verify:
            context.verify_mode = ssl.CERT_NONE
        return context

    def _handshake(self, sock: socket.socket, host: str, port: int) -> ssl.SSLSocket:
        began = self.clock()
        try:
            sock.settimeout(self.remaining())
            secured = self._context(self.tls.verify).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            self.certificate = self._unverified_certificate(host, port)
            raise _Failed("tls", f"certificate not accepted: {exc.verify_message or exc.reason}") from None
        except TimeoutError:
            raise _Failed("timeout", "the TLS handshake timed out") from None
        except (ssl.SSLError, OSError) as exc:
            raise _Failed("tls", f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}") from None
        self.phases["tls"] = self.clock() - began
        self.certificate = _certificate(secured.getpeercert(binary_form=True))
        return secured

    def _unverified_certificate(self, host: str, port: int) -> Certificate | None:
        """The certificate a failed verification refused, read again without verifying, so an
        expired one still reports its days left (negative). Best effort, within the deadline."""
        try:
            with (
                socket.create_connection((host, port), timeout=self.remaining()) as raw,
                self._context(verify=False).wrap_socket(raw, server_hostname=host) as secured,
            ):
                return _certificate(secured.getpeercert(binary_form=True))
        except (OSError, _Failed):
            return None

    def _exchange(self, sock, start: float, parts, method: str, url: str, headers: dict, body: bytes | None) -> Fetched:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        connection.sock = sock
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")  # non-ASCII as UTF-8 %XX; the rest as written
        # An international name as its ASCII (IDNA) form, as it was resolved.
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname.encode("idna").decode("ascii")
        sent = {"Host": host + (f":{parts.port}" if parts.port else ""), "User-Agent": USER_AGENT,
                "Connection": "close", **headers}
        try:
            sock.settimeout(self.remaining())
            connection.request(method, target, body=body, headers=sent)
            sock.settimeout(self.remaining())
            response = connection.getresponse()
            self.phases["first_byte"] = self.clock() - start
            kept, size = bytearray(), 0
            while True:
                sock.settimeout(self.remaining())
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if len(kept) < MAX_KEPT_BODY_BYTES:
                    kept += chunk[: MAX_KEPT_BODY_BYTES - len(kept)]
        except TimeoutError:
            raise _Failed("timeout", "no complete answer within the timeout") from None
        except (http.client.HTTPException, OSError) as exc:
            raise _Failed("connect", f"the connection failed during the exchange: {type(exc).__name__}: {exc}") from None
        return Fetched(
            url=url, status=response.status, reason=response.reason,
            headers={name.lower(): value for name, value in response.getheaders()},
            body=bytes(kept), size=size, duration=0.0, phases=self.phases, certificate=self.certificate,
        )


def _certificate(der: bytes | None) -> Certificate | None:
    if not der:
        return None
    from cryptography import x509

    try:
        parsed = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    return Certificate(parsed.not_valid_after_utc.timestamp(), parsed.subject.rfc4514_string())
