"""Is a webhook authentic? Checks the `signature` block of a rule file against one request.

`verify(spec, headers, body, secrets, now_s)` answers None when a signature made with one of
the active secrets (one, or two during a rotation) matches, else a short reason for the log.
A reason names headers and the tolerance only: never a secret, the expected signature or the
received one. The HTTP layer turns any reason into a bare 401.

Wire formats (checked against each provider's documentation and official libraries):

| scheme            | header(s)                                   | signed bytes             | digest     |
| ----------------- | ------------------------------------------- | ------------------------ | ---------- |
| github            | X-Hub-Signature-256: sha256=<hex>           | body                     | hex        |
| stripe            | Stripe-Signature: t=<unix>,v1=<hex>[,...]   | "<t>.<body>"             | hex        |
| slack             | X-Slack-Signature: v0=<hex>,                | "v0:<ts>:<body>"         | hex        |
|                   | X-Slack-Request-Timestamp: <unix>           |                          |            |
| standard-webhooks | webhook-id, webhook-timestamp,              | "<id>.<ts>.<body>"       | base64     |
|                   | webhook-signature: "v1,<b64> v1,<b64> ..."  |                          |            |
| shopify           | X-Shopify-Hmac-Sha256: <base64>             | body                     | base64     |
| hmac-sha256       | spec["header"]: spec["prefix"] + digest     | body                     | hex/base64 |

All are HMAC-SHA256. The key is the secret's UTF-8 bytes, except for standard-webhooks, where
the secret is "whsec_" + base64 of the key. A standard-webhooks secret without that prefix is
read as the bare base64 key, as the Standard Webhooks reference libraries (Python, Go) do;
one that is not base64 cannot sign anything and is reported as such.

Timestamps (stripe, slack, standard-webhooks) are whole unix seconds and must lie within
`tolerance_seconds` of `now_s` in both directions: replays and clocks far ahead both fail.
The timestamp is checked before the signature, as the providers' own libraries do.

Every received signature is decoded to bytes and compared with every expected digest through
hmac.compare_digest, without stopping at the first match. Hex is read case-insensitively.
Headers are parsed defensively: anything malformed is a reason, never an exception.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DEFAULT_TOLERANCE_SECONDS = 300
DIGEST_BYTES = 32  # SHA-256

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only; str.isdigit() would take '²' or '٣'
_WHSEC = "whsec_"

NO_MATCH = "no signature matched"


def verify(spec: Mapping[str, Any], headers: Mapping[str, str], body: bytes, secrets: Sequence[str],
           now_s: float) -> str | None:
    """None when the request is signed with one of `secrets`, else a reason that reveals nothing.

    Raises ValueError for a spec the loader should have refused (unknown scheme or encoding,
    hmac-sha256 without a header): that is a programming error, not a bad request.
    """
    scheme = spec.get("scheme")
    check = _CHECKS.get(scheme) if isinstance(scheme, str) else None
    if check is None:
        raise ValueError(f"unknown signature scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    usable = [s for s in secrets if isinstance(s, str) and s]
    if not usable:
        return "no signing secret is configured"
    return check(spec, headers, bytes(body), usable, now_s)


# --- one check per scheme -------------------------------------------------------------------

def _github(spec, headers, body, secrets, now_s):
    value = _header(headers, "x-hub-signature-256")
    if value is None:
        return "X-Hub-Signature-256 header missing"
    received = _hex_digest(value, "sha256=")
    if received is None:
        return "X-Hub-Signature-256 header malformed"
    return _match(_hmacs(_utf8_keys(secrets), body), [received])


def _stripe(spec, headers, body, secrets, now_s):
    value = _header(headers, "stripe-signature")
    if value is None:
        return "Stripe-Signature header missing"
    timestamp, candidates = None, []
    for item in value.split(","):
        key, sep, text = item.strip().partition("=")
        if not sep:
            return "Stripe-Signature header malformed"
        if key == "t":
            if timestamp is not None or not _UNIX_SECONDS.fullmatch(text):
                return "Stripe-Signature header malformed"
            timestamp = text
        elif key == "v1":  # v0 and any future scheme are ignored, as Stripe's libraries do
            digest = _hex_digest(text)
            if digest is not None:
                candidates.append(digest)
    if timestamp is None:
        return "Stripe-Signature header has no timestamp"
    if not candidates:
        return "Stripe-Signature header has no v1 signature"
    late = _outside_tolerance(spec, timestamp, now_s)
    if late:
        return late
    return _match(_hmacs(_utf8_keys(secrets), timestamp.encode() + b"." + body), candidates)


def _slack(spec, headers, body, secrets, now_s):
    value = _header(headers, "x-slack-signature")
    if value is None:
        return "X-Slack-Signature header missing"
    timestamp = _header(headers, "x-slack-request-timestamp")
    if timestamp is None:
        return "X-Slack-Request-Timestamp header missing"
    if not _UNIX_SECONDS.fullmatch(timestamp):
        return "X-Slack-Request-Timestamp header malformed"
    received = _hex_digest(value, "v0=")
    if received is None:
        return "X-Slack-Signature header malformed"
    late = _outside_tolerance(spec, timestamp, now_s)
    if late:
        return late
    return _match(_hmacs(_utf8_keys(secrets), b"v0:" + timestamp.encode() + b":" + body), [received])


def _standard_webhooks(spec, headers, body, secrets, now_s):
    message_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    value = _header(headers, "webhook-signature")
    for name, present in (("webhook-id", message_id), ("webhook-timestamp", timestamp), ("webhook-signature", value)):
        if present is None:
            return f"{name} header missing"
    assert message_id is not None and timestamp is not None and value is not None  # the loop returned otherwise
    if not _UNIX_SECONDS.fullmatch(timestamp):
        return "webhook-timestamp header malformed"
    try:
        id_bytes = message_id.encode("utf-8")
    except UnicodeEncodeError:
        return "webhook-id header malformed"
    candidates = []
    for entry in value.split():
        version, sep, text = entry.partition(",")
        if sep and version == "v1":  # v1a (asymmetric) and other versions are not ours to check
            digest = _base64_digest(text)
            if digest is not None:
                candidates.append(digest)
    if not candidates:
        return "webhook-signature header has no v1 signature"
    keys = [key for key in map(_standard_webhooks_key, secrets) if key]
    if not keys:
        return "the signing secret is not a whsec_ base64 key"
    late = _outside_tolerance(spec, timestamp, now_s)
    if late:
        return late
    return _match(_hmacs(keys, id_bytes + b"." + timestamp.encode() + b"." + body), candidates)


def _shopify(spec, headers, body, secrets, now_s):
    value = _header(headers, "x-shopify-hmac-sha256")
    if value is None:
        return "X-Shopify-Hmac-Sha256 header missing"
    received = _base64_digest(value)
    if received is None:
        return "X-Shopify-Hmac-Sha256 header malformed"
    return _match(_hmacs(_utf8_keys(secrets), body), [received])


def _generic(spec, headers, body, secrets, now_s):
    name = spec.get("header")
    if not isinstance(name, str) or not name:
        raise ValueError("an hmac-sha256 signature needs the header that holds it")
    prefix = spec.get("prefix") or ""
    encoding = spec.get("encoding") or "hex"
    if encoding not in ("hex", "base64"):
        raise ValueError(f"unknown signature encoding {encoding!r}; expected hex or base64")
    value = _header(headers, name.strip().lower())
    if value is None:
        return f"{name} header missing"
    received = _hex_digest(value, prefix) if encoding == "hex" else _base64_digest(value, prefix)
    if received is None:
        return f"{name} header malformed"
    return _match(_hmacs(_utf8_keys(secrets), body), [received])


_CHECKS: dict[str, Callable[..., str | None]] = {
    "github": _github,
    "stripe": _stripe,
    "slack": _slack,
    "standard-webhooks": _standard_webhooks,
    "shopify": _shopify,
    "hmac-sha256": _generic,
}
SCHEMES = tuple(_CHECKS)  # github, stripe, slack, standard-webhooks, shopify, hmac-sha256


# --- shared pieces ----------------------------------------------------------------------------

def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The header's value, or None when it is absent, empty or not text."""
    value = headers.get(name)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def _hex_digest(value: str, prefix: str = "") -> bytes | None:
    """The 32 bytes of `prefix` + 64 hex digits (either case), or None."""
    if not value.startswith(prefix) or not _HEX.fullmatch(value[len(prefix):]):
        return None
    return bytes.fromhex(value[len(prefix):])


def _base64_digest(value: str, prefix: str = "") -> bytes | None:
    """The 32 bytes of `prefix` + standard, padded base64, or None."""
    if not value.startswith(prefix):
        return None
    try:
        digest = base64.b64decode(value[len(prefix):].encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    return digest if len(digest) == DIGEST_BYTES else None


def _standard_webhooks_key(secret: str) -> bytes | None:
    """The HMAC key of a Standard Webhooks secret ("whsec_" optional, padding optional)."""
    text = secret[len(_WHSEC):] if secret.startswith(_WHSEC) else secret
    text = text.strip().rstrip("=")
    try:
        key = base64.b64decode((text + "=" * (-len(text) % 4)).encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return None
    return key or None


def _utf8_keys(secrets: Sequence[str]) -> list[bytes]:
    return [s.encode("utf-8", "surrogatepass") for s in secrets]


def _hmacs(keys: Sequence[bytes], message: bytes) -> list[bytes]:
    return [hmac.new(key, message, hashlib.sha256).digest() for key in keys]


def _match(expected: Sequence[bytes], received: Sequence[bytes]) -> str | None:
    """Compare every pair in constant time, without stopping at the first match."""
    matched = False
    for theirs in received:
        for ours in expected:
            matched |= hmac.compare_digest(ours, theirs)
    return None if matched else NO_MATCH


def _outside_tolerance(spec: Mapping[str, Any], timestamp: str, now_s: float) -> str | None:
    tolerance = spec.get("tolerance_seconds")
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE_SECONDS
    if not abs(now_s - int(timestamp)) <= tolerance:  # written so that a NaN clock fails too
        return f"timestamp outside the {tolerance} s tolerance"
    return None
