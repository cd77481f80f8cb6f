"""Credentials never shown: what the process knows to be secret, and masking of outside text.

Backends echo what they were sent (an Authorization header in a 401 body, a signed URL in a
redirect), so every text from outside is masked before anyone sees it: in replies, outcomes,
logs, health and command output. Two mechanisms together:

- Known values: every ``Secret`` read from the settings and every credential the process sends
  (each credential header of each request, Entra tokens included: ``remember_headers``, called
  by the transport before sending) is replaced by ``***`` wherever it appears.
- Credential-shaped text is masked even when its value was never seen here: ``Bearer ...``,
  ``Basic ...``, ``Api-Token ...``, ``SharedAccessSignature ...``, JWTs, and ``sig=``, ``code=``,
  ``token=``, ``key=``-like parameters (query strings, connection strings).
"""
from __future__ import annotations

import re
import threading

CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "api-key", "x-api-key", "x-functions-key")
MASK = "***"
MIN_SECRET_CHARS = 4  # a configured secret shorter than this would mask ordinary words
MIN_RUNTIME_SECRET_CHARS = 12  # what is sent or obtained at run time: real tokens are longer
MAX_RUNTIME_SECRETS = 1024  # tokens obtained at run time; the oldest are forgotten (they expire in an hour)

_configured: set[str] = set()  # from the settings: kept for the life of the process
_runtime: dict[str, None] = {}  # insertion-ordered: the oldest go first
_known: tuple[str, ...] = ()  # both, longest first (a secret that contains another is masked whole)
_lock = threading.Lock()
_CREDENTIAL_TEXT = re.compile(
    r"(?i)\b(bearer|basic|api-token|sharedaccesssignature)(\s+)[^\s\"',;<>]+"
    r"|\b(sig|code|signature|token|access_token|refresh_token|client_secret|password|pwd|api[-_]?key|"
    r"accountkey|sharedaccesskey)(=)[^\s\"'&,;<>]+"
    r"|(\"(?:authorization|token|access_token|refresh_token|client_secret|password|api[-_]?key|x-functions-key))"
    r"(\"\s*:\s*\")(?:[^\"\\]|\\.)+"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
)


class Secret:
    """A token that prints as *** wherever it ends up (logs, reprs, error messages)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value
        if len(value) >= MIN_SECRET_CHARS and value not in _configured:
            with _lock:
                _configured.add(value)
                _sort_known()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def remember(value: str) -> None:
    """A credential the process obtained or sent at run time: masked from now on."""
    if len(value) < MIN_RUNTIME_SECRET_CHARS or value in _configured or value in _runtime:
        return
    with _lock:
        _runtime[value] = None
        while len(_runtime) > MAX_RUNTIME_SECRETS:
            del _runtime[next(iter(_runtime))]
        _sort_known()


def _sort_known() -> None:
    """Called with the lock held, when a secret is added: ``scrub`` only reads the result."""
    global _known
    _known = tuple(sorted({*_configured, *_runtime}, key=len, reverse=True))


def remember_headers(headers: dict[str, str]) -> None:
    """Every credential a request carries (the whole header value and the part after a scheme)."""
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            remember(value)
            remember(value.partition(" ")[2].strip())


def scrub(text: str, shapes: bool = True) -> str:
    """Outside text with every known secret masked and, with ``shapes``, every credential-shaped
    value too (without: a reply body stays readable for the sink that classifies it)."""
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    return _CREDENTIAL_TEXT.sub(_masked_match, text) if shapes else text


def scrub_bytes(data: bytes, shapes: bool = True) -> bytes:
    """``scrub`` for a body whose encoding is unknown: bytes that are not UTF-8 pass through."""
    return scrub(data.decode("utf-8", "surrogateescape"), shapes).encode("utf-8", "surrogateescape")


def masked_headers(headers: dict[str, str]) -> dict[str, str]:
    """Header values that carry credentials become their scheme and ***; the others are scrubbed."""
    shown = {}
    for name, value in headers.items():
        if name.lower() in CREDENTIAL_HEADERS:
            scheme, _, secret = value.partition(" ")
            shown[name] = f"{scheme} {MASK}" if secret else MASK
        else:
            shown[name] = scrub(value)
    return shown


def _masked_match(match: re.Match) -> str:
    """The name or scheme kept, the value masked."""
    for name, separator in ((1, 2), (3, 4), (5, 6)):
        if match.group(name):
            return f"{match.group(name)}{match.group(separator)}{MASK}"
    return MASK  # a JWT
