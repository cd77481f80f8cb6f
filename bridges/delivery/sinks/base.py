"""The one interface every backend sink implements, and the outcomes it reports.

A sink is pure: ``encode(metrics, now_ns)`` turns canonical metrics into ready-to-send
``Request`` objects that respect its limits (and says which metrics it refused locally, and
which conversions lost information); ``classify(request, reply)`` turns what came back into an
``Outcome``. A sink never sleeps, loops, retries or queues: ``bridges.delivery.deliver`` does that for
every sink alike, as the OpenTelemetry Collector's exporter helper and Vector's sink driver do.

Outcomes:
- ``Delivered``: every metric of the request was taken.
- ``Partial(rejected)``: the backend took the request but refused some metrics (by index into
  the ``metrics`` given to ``encode``), with reasons; the rest are delivered and never resent.
- ``Retry(reason, after)``: nothing was taken, try again later (``after`` seconds if the
  backend said so).
- ``Drop(reason, misconfigured, hint)``: nothing was taken and trying again cannot help; when
  the cause is our configuration (a bad token), health reports the sink as misconfigured with
  the HTTP status and the hint (never the backend's own text, which may echo credentials).
- ``Resend(reason, split)``: send the same metrics again now, re-encoded: in halves when the
  backend found the request too large (``split``), or whole after the sink changed how it
  encodes (Unleash switching endpoints).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridges.model import Metric


@dataclass(frozen=True)
class Limits:
    """What one request to the backend may hold, and which points it accepts."""

    max_body_bytes: int
    max_items: int | None = None  # lines (Dynatrace) or series (Unleash) one request may hold
    max_dimensions: int | None = None
    max_age_seconds: float | None = None
    max_future_seconds: float | None = None
    max_requests_per_minute: int | None = None  # enforced by the delivery stage, per process


@dataclass
class Request:
    """One ready-to-send HTTP request. ``items`` are the indexes of the metrics it carries,
    each once; for line protocols ``lines`` gives, for each body line, the index of the metric
    it belongs to (None for lines that carry no metric, such as metadata)."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)  # they carry the credentials
    body: bytes = field(repr=False)
    items: tuple[int, ...] = ()
    lines: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class Rejection:
    index: int
    reason: str


@dataclass
class Encoded:
    """What ``encode`` produced: requests, metrics refused locally, and lossy conversions."""

    requests: list[Request] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    conversions: Counter = field(default_factory=Counter)


@dataclass
class Reply:
    """What the transport got back: a status, headers and body, or the exception instead."""

    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: BaseException | None = None


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Partial:
    """Some metrics refused: ``rejected`` names them; ``unidentified`` counts refusals the
    backend did not detail (Dynatrace lists only its first ten invalid lines)."""

    rejected: tuple[Rejection, ...]
    unidentified: int = 0


@dataclass(frozen=True)
class Retry:
    reason: str
    after: float | None = None


@dataclass(frozen=True)
class Drop:
    """``reason`` may quote the backend (masked, for the answer and the log); ``hint``, set when
    ``misconfigured``, is in our own words only, for the anonymous health page."""

    reason: str
    misconfigured: bool = False
    hint: str = ""


@dataclass(frozen=True)
class Resend:
    reason: str
    split: bool = True


Outcome = Delivered | Partial | Retry | Drop | Resend


class Sink(Protocol):
    """A backend. Sinks that need a fresh credential per request (Entra tokens) also have
    ``authorize(request) -> Request``, called by the delivery stage just before sending, so
    ``encode`` stays pure; it raises ``bridges.delivery.auth.TokenError`` when no token can be had."""

    name: str
    limits: Limits

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded: ...

    def classify(self, request: Request, reply: Reply) -> Outcome: ...


def retry_after_seconds(headers: Mapping[str, str], *names: str) -> float | None:
    """The first of these headers holding a number of seconds (Retry-After's date form is rare
    from these backends and is treated as absent)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names or ("retry-after",):
        value = lowered.get(name.lower(), "").strip()
        try:
            seconds = float(value)
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def transport_outcome(reply: Reply) -> Outcome | None:
    """What every sink says about a reply that never came (timeouts, refused connections)."""
    if reply.error is not None:
        return Retry(f"no answer: {type(reply.error).__name__}")
    return None
