"""The one interface every backend sink implements, and the outcomes it reports.

A sink is pure: ``encode(metrics, now_ns)`` turns canonical metrics into ready-to-send
``Request`` objects that respect its limits (and says which metrics it refused locally, and
which conversions lost information); ``classify(request, reply)`` turns what came back into an
``Outcome``, by one HTTP reading shared by every sink and a table of each sink's deviations.
A sink never sleeps, loops, retries or queues: ``bridges.delivery.deliver`` does that for every
sink alike, as the OpenTelemetry Collector's exporter helper and Vector's sink driver do.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

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


@dataclass(frozen=True)
class Misconfigured:
    """A status that means our settings are wrong: the request is dropped, and health shows
    ``hint`` (our words, naming the setting to fix)."""

    hint: str


# What a status means, as a sink's table says it: an outcome kind, Misconfigured(hint), or a
# function (sink, request, reply) -> Outcome for a status whose meaning depends on the body.
Rule = type[Delivered] | type[Retry] | type[Drop] | type[Resend] | Misconfigured | Callable[..., Outcome]

# The HTTP meaning every backend shares. A sink's table starts from it and states only its
# deviations; exact statuses first, then the class ("2xx"...); anything else is a Drop.
HTTP_OUTCOMES: Mapping[int | str, Rule] = MappingProxyType({
    "2xx": Delivered,
    "3xx": Misconfigured("redirected: set the sink's URL setting to the backend's own URL"),
    401: Misconfigured("the credential was refused"),
    403: Misconfigured("the credential may not write here"),
    404: Misconfigured("no such endpoint: check the sink's URL setting"),
    408: Retry,  # the backend timed out waiting for the request
    413: Resend,  # too large: resend in halves
    429: Retry,  # rate limited, honouring Retry-After
    "4xx": Drop,  # sending the same request again cannot help
    "5xx": Retry,  # honouring Retry-After
})
MAX_SAID_CHARS = 300


def outcomes_with(deviations: Mapping[int | str, Rule]) -> Mapping[int | str, Rule]:
    """A sink's status table: the shared HTTP meaning with its own deviations over it."""
    return MappingProxyType({**HTTP_OUTCOMES, **deviations})


class Sink:
    """A backend reached over HTTP. A sink is pure: ``encode`` makes requests, ``classify``
    reads what came back; the delivery stage sends, retries and queues for every sink alike.

    ``classify`` is shared: a sink states its deviations from ``HTTP_OUTCOMES`` in
    ``status_outcomes`` and says how to read its backend's error body in ``said``."""

    name: str
    limits: Limits
    title: str  # how reasons name the backend ("Dynatrace answered 503")
    status_outcomes: Mapping[int | str, Rule] = HTTP_OUTCOMES
    retry_after_headers: tuple[str, ...] = ("Retry-After",)

    def encode(self, metrics: Sequence[Metric], now_ns: int) -> Encoded:
        raise NotImplementedError

    def authorize(self, request: Request) -> Request:
        """The request as sent, called just before sending so ``encode`` stays pure: sinks that
        need a fresh credential per request (Entra tokens) add it here, and raise
        ``bridges.delivery.auth.TokenError`` when none can be had."""
        return request

    def status(self) -> dict:
        """What /api/health shows about this sink (never a credential)."""
        return {"configured": True}

    def said(self, body: bytes) -> str:
        """What the backend said in an answer body, short, for a reason ('' when nothing)."""
        return " ".join(body[:MAX_SAID_CHARS].decode("utf-8", "replace").split())

    def classify(self, request: Request, reply: Reply) -> Outcome:
        if reply.error is not None:
            return Retry(f"no answer: {type(reply.error).__name__}")
        status = reply.status
        assert status is not None  # a reply without a status carries the error
        rule = self.status_outcomes.get(status) or self.status_outcomes.get(f"{status // 100}xx", Drop)
        if not isinstance(rule, (type, Misconfigured)):
            return rule(self, request, reply)
        said = self.said(reply.body)
        also = f": {said}" if said else ""
        answered = f"{self.title} answered {status}"
        if rule is Delivered:
            return Delivered()
        if rule is Resend:
            return Resend(f"{answered}: request too large{also}", split=True)
        if rule is Retry:
            return Retry(f"{answered}{also}", retry_after_seconds(reply.headers, *self.retry_after_headers))
        if isinstance(rule, Misconfigured):
            return Drop(f"{answered}: {rule.hint}{also}", misconfigured=True, hint=rule.hint)
        return Drop(f"{answered}: {said or 'no details'}")


class LocalSink:
    """A sink on this machine (the outbox): it takes metrics at once, or raises OSError."""

    name: str

    def deliver(self, metrics: Sequence[Metric], now_ns: int) -> int:
        raise NotImplementedError

    def status(self) -> dict:
        return {"configured": True}


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
