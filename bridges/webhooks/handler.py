"""Generic webhooks: ``POST /api/webhooks/{source}`` through the source's mapping rules.

The order is the one that keeps a sender's request safe to repeat: the signature first (a
bare 401 that says nothing about why), then the delivery id is claimed, so a repeat within
the TTL is answered ``{"duplicate": true}`` and concurrent repeats yield one delivery; the
payload is mapped, validated and delivered like every other input; the claim is completed
once the metrics were delivered or handed to the retry queue, and released when they could be
neither (503), so the sender's retry is processed again.

Handshakes, answered after the signature check and before any delivery id is claimed (each fact
with its source):

- Slack Events API URL verification (https://api.slack.com/events/url_verification): a signed
  JSON body ``{"token", "challenge", "type": "url_verification"}``; Slack expects 200 with the
  challenge as text/plain, form ``challenge=`` or JSON ``{"challenge"}``; we answer the JSON.
  Slack wants a 2xx within 3 seconds for events, slash commands and interactivity, and retries an
  event it timed out on (Slack's developer blog, "Keep the lights on: error handling for Slack
  apps", https://slack.dev/?p=20146; the retry headers X-Slack-Retry-Num/-Reason are known from
  secondary sources only: ../shared/CONTRACTS.md 12.5). This route answers once the delivery is on
  the queue, before any sink is called.
- Event Grid subscription validation
  (https://learn.microsoft.com/azure/event-grid/webhook-event-delivery): header
  ``aeg-event-type: SubscriptionValidation`` and an array holding a
  ``Microsoft.EventGrid.SubscriptionValidationEvent`` whose ``data.validationCode`` must come back
  as 200 ``{"validationResponse": code}`` (202 is not accepted; 30 s to answer).
- CloudEvents webhook validation (cloudevents/spec ``cloudevents/http-webhook.md`` section 4,
  which Event Grid uses for subscriptions with the CloudEvents 1.0 schema:
  https://learn.microsoft.com/azure/event-grid/end-point-validation-cloud-events-schema): an
  ``OPTIONS`` request with ``WebHook-Request-Origin`` is granted with ``WebHook-Allowed-Origin``
  (the origin itself), ``WebHook-Allowed-Rate: *`` (MUST when ``WebHook-Request-Rate`` was
  sent, SHOULD otherwise; ``*`` is no limit) and ``Allow`` naming POST. The status code is no
  consent in that protocol; the headers are.

What the rules see (``webhook_payload``):

- JSON: the body. A form (``application/x-www-form-urlencoded``): the JSON in its ``payload``
  field (GitHub, Slack interactivity: https://api.slack.com/interactivity/handling), or else the
  fields themselves as an object of strings (Slack slash commands: ``command``, ``text``,
  ``team_id``, ``user_id``...: https://docs.slack.dev/tools/bolt-js/reference/interfaces/SlashCommand).
- CloudEvents 1.0 over HTTP (cloudevents/spec ``cloudevents/bindings/http-protocol-binding.md``
  section 3): always a JSON array of events in the structured form, so a rule reads them with
  ``events: body`` whatever the mode. Structured mode (``application/cloudevents+json``, one
  event object) becomes an array of one; batched mode (``application/cloudevents-batch+json``,
  an array, possibly empty) is as sent; binary mode (``ce-specversion`` and the other ``ce-*``
  headers, percent-decoded, carry the attributes; the body is the data in its own
  Content-Type) becomes an array of one event with those attributes, ``datacontenttype`` from
  Content-Type, and ``data`` (JSON parsed when the type is JSON, else text, else
  ``data_base64``). Event Grid's own schema is a JSON array already
  (https://learn.microsoft.com/azure/event-grid/event-schema).
"""
from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, unquote

from bridges.formats import BodyError, Decoded, Outcome, media_type
from bridges.formats.canonical import load_json, may_hold_surrogates
from bridges.masking import Secret
from bridges.replies import RETRY_AFTER_SECONDS, Reply
from bridges.settings import KEY_VAULT_PREFIX, Settings, environment

if TYPE_CHECKING:
    from bridges.webhooks.idempotency import IdempotencyStore
    from bridges.webhooks.rules import SourceRules

log = logging.getLogger(__name__)
IDEMPOTENCY_HEADER = "idempotency-key"
FORM_TYPE = "application/x-www-form-urlencoded"
CLOUDEVENT_TYPE = "application/cloudevents+json"
CLOUDEVENTS_BATCH_TYPE = "application/cloudevents-batch+json"
CLOUDEVENT_HEADER_PREFIX = "ce-"
CLOUDEVENT_REQUIRED = ("id", "source", "specversion", "type")  # the four required attributes of CloudEvents 1.0
EVENTGRID_VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
ALLOWED_METHODS = "OPTIONS, POST"
_ORIGIN = re.compile(r"[\x21-\x7e]{1,253}")  # a host name such as eventgrid.azure.net, or another visible token


def rule_dirs(settings) -> list:
    """Built-in rules first, then the user's folder, whose files extend them by source."""
    from bridges.webhooks.rule_files import BUILTIN_DIR

    return [BUILTIN_DIR] + ([settings.mappings_dir] if settings.mappings_dir else [])


def load_sources(settings) -> dict[str, SourceRules]:
    """Every source's rules; raises MappingError naming the file, rule and field."""
    from bridges.webhooks.rule_files import load_sources as load

    return load(rule_dirs(settings))


class Processing(Protocol):
    """What webhooks need of the request stage (``bridges.core.Bridge``): its settings and clock,
    the one body reader, and validation plus delivery of what the rules decoded."""

    settings: Settings
    clock: Callable[[], int]

    def inflate(self, body: bytes, content_encoding: str | None) -> bytes: ...

    def process(self, decoded: Decoded, route: str) -> Outcome | Reply: ...


class Webhooks:
    def __init__(self, bridge: Processing, sources: Mapping[str, SourceRules] | None = None,
                 store: IdempotencyStore | None = None, environ: Mapping[str, str] | None = None):
        self.bridge = bridge
        self._sources = sources
        self._store = store
        self._environ = environ

    @cached_property
    def sources(self) -> Mapping[str, SourceRules]:
        return self._sources if self._sources is not None else load_sources(self.bridge.settings)

    @cached_property
    def environ(self) -> Mapping[str, str]:
        return self._environ if self._environ is not None else environment()

    @cached_property
    def store(self) -> IdempotencyStore:
        if self._store is not None:
            return self._store
        from bridges.webhooks.idempotency import open_store

        settings = self.bridge.settings
        return open_store(settings.idempotency_table, settings.idempotency_ttl_seconds, self.environ,
                          settings.state_dir)

    def secrets(self, rules: SourceRules) -> list[Secret]:
        """The source's active signing secrets (one, or two during a rotation)."""
        names = rules.signature["secrets"] if rules.signature else []
        values = [self.environ.get(name, "").strip() for name in names]
        return [Secret(value) for value in values if value and not value.startswith(KEY_VAULT_PREFIX)]

    def status(self) -> dict:
        """Per source: whether signatures are checked, for /api/health (names, never values)."""
        answer = {}
        for name, rules in sorted(self.sources.items()):
            if not rules.signature:
                answer[name] = {"signature": "none (the function key only)"}
            elif self.secrets(rules):
                answer[name] = {"signature": f"{rules.signature['scheme']}, checked"}
            else:
                setting = rules.signature["secrets"][0]
                answer[name] = {"signature": f"not checked: set {setting}"}
        return answer

    def handle(self, source: str, body: bytes, headers: Mapping[str, str], method: str = "POST",
               params: Mapping[str, str] | None = None) -> Reply:
        """``params``, the query parameters, reach the signature check only (shared-secret's
        ``query`` form); none of them, the function key's ``code`` above all, is ever logged."""
        headers = {k.lower(): v for k, v in headers.items()}
        rules = self.sources.get(source.lower())
        if rules is None:
            return Reply(404, {"error": f"no mapping rules for source {source!r}", "sources": sorted(self.sources)})
        if method.upper() == "OPTIONS":
            return webhook_options(headers)
        try:
            body = self.bridge.inflate(body, headers.get("content-encoding"))
        except BodyError as exc:
            return Reply(exc.status, exc.to_json())
        if not self._authentic(rules, headers, body, params or {}):
            return Reply(401, {"error": "unauthorized"})
        try:
            payload = webhook_payload(body, headers.get("content-type"), headers)
        except BodyError as exc:
            return Reply(exc.status, exc.to_json())
        answer = handshake(payload, headers)
        if answer is not None:
            log.info("webhook %s: handshake answered (%s)", rules.source, next(iter(answer.body or {}), "error"))
            return answer
        delivery_id = rules.delivery_id(payload, headers) or headers.get(IDEMPOTENCY_HEADER) or None
        if delivery_id is None:
            return self._deliver(rules, body, payload, headers)
        from bridges.webhooks.idempotency import DUPLICATE, IN_PROGRESS

        claim = self.store.claim(rules.source, delivery_id)
        if claim == DUPLICATE:
            log.info("webhook %s: delivery %r seen before; not sent again", rules.source, delivery_id[:80])
            return Reply(200, {"duplicate": True})
        if claim == IN_PROGRESS:
            return Reply(409, {"duplicate": True, "in_progress": True,
                               "error": "this delivery is being processed; send again later"},
                         {"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            reply = self._deliver(rules, body, payload, headers)
        except BaseException:
            self.store.release(rules.source, delivery_id)
            raise
        if reply.status >= 500:
            self.store.release(rules.source, delivery_id)
        else:
            self.store.complete(rules.source, delivery_id)
        return reply

    def _authentic(self, rules: SourceRules, headers: Mapping[str, str], body: bytes,
                   params: Mapping[str, str]) -> bool:
        if not rules.signature:
            return True
        secrets = self.secrets(rules)
        if not secrets:
            return True  # reported by health: "not checked: set <SETTING>"
        from bridges.webhooks.signatures import verify

        failure = verify(rules.signature, headers, body, [s.reveal() for s in secrets], self.bridge.clock() / 1e9,
                         params)
        if failure:
            log.warning("webhook %s: signature check failed: %s", rules.source, failure)
            return False
        return True

    def _deliver(self, rules: SourceRules, body: bytes, payload: object, headers: Mapping[str, str]) -> Reply:
        decoded = rules.apply(payload, headers, self.bridge.clock())
        form = media_type(headers.get("content-type")) == FORM_TYPE  # its escapes are %-encoded
        decoded.may_hold_surrogates = form or may_hold_surrogates(body)
        outcome = self.bridge.process(decoded, f"webhook {rules.source}")
        if isinstance(outcome, Reply):
            return outcome
        return Reply(_status(outcome), _answer(outcome))


def webhook_payload(body: bytes, content_type: str | None, headers: Mapping[str, str] | None = None) -> object:
    """What the rules read as ``body`` (see the module's docstring): the JSON; a form's ``payload``
    field, or its fields; CloudEvents (``headers``, lower-case, say whether it is binary mode) as
    an array of events in the structured form."""
    kind = media_type(content_type)
    if headers and CLOUDEVENT_HEADER_PREFIX + "specversion" in headers and kind not in (
            CLOUDEVENT_TYPE, CLOUDEVENTS_BATCH_TYPE):
        return [binary_cloudevent(body, content_type, kind, headers)]
    if not body.strip():
        raise BodyError(400, "the body is empty")
    if kind == FORM_TYPE:
        return _form(body)
    payload = load_json(body)
    if kind == CLOUDEVENT_TYPE:
        if not isinstance(payload, dict):
            raise BodyError(400, f"a structured-mode CloudEvent ({CLOUDEVENT_TYPE}) is a JSON object")
        return [payload]
    if kind == CLOUDEVENTS_BATCH_TYPE and not isinstance(payload, list):
        raise BodyError(400, f"a CloudEvents batch ({CLOUDEVENTS_BATCH_TYPE}) is a JSON array")
    return payload


def _form(body: bytes) -> object:
    """A form's ``payload`` field as JSON (GitHub, Slack interactivity), else its fields (Slack
    slash commands), each the first of its values, empty ones kept (``text=`` is a command
    without text)."""
    text = body.decode("utf-8", "replace")
    if any("=" not in pair for pair in text.strip().split("&") if pair):
        raise BodyError(400, "a form-encoded webhook is name=value pairs joined by '&'")
    fields = parse_qs(text.strip(), keep_blank_values=True)
    if "payload" in fields:
        return load_json(fields["payload"][0].encode("utf-8"))
    return {name: values[0] for name, values in fields.items()}


def binary_cloudevent(body: bytes, content_type: str | None, kind: str, headers: Mapping[str, str]) -> dict:
    """A binary-mode CloudEvent in the structured form: every ``ce-*`` header (percent-decoded,
    as the HTTP binding's section 3.1.3.2 asks) is an attribute, Content-Type is
    ``datacontenttype`` and the body is ``data``."""
    event: dict[str, object] = {}
    for name, value in headers.items():
        if name.startswith(CLOUDEVENT_HEADER_PREFIX) and len(name) > len(CLOUDEVENT_HEADER_PREFIX):
            event[name[len(CLOUDEVENT_HEADER_PREFIX):]] = _attribute(name, str(value))
    missing = [f"ce-{name}" for name in CLOUDEVENT_REQUIRED if not event.get(name)]
    if missing:
        raise BodyError(400, f"a binary-mode CloudEvent needs the {', '.join(missing)} header"
                             + ("s" if len(missing) > 1 else ""))
    if content_type and content_type.strip():
        event["datacontenttype"] = content_type.strip()
    if not body:
        return event
    if not kind or kind == "application/json" or kind.endswith("+json"):
        event["data"] = load_json(body)
    else:
        try:
            event["data"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["data_base64"] = base64.b64encode(body).decode("ascii")
    return event


def _attribute(name: str, value: str) -> str:
    """A ``ce-*`` header's attribute value (HTTP binding 3.1.3.2): a double-quoted string is
    unescaped first (older senders), then one round of percent-decoding; bytes that are not
    UTF-8 (an overlong encoding too) are refused, as the binding says."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise BodyError(400, f"the {name} header is not percent-encoded UTF-8") from None


def handshake(payload: object, headers: Mapping[str, str]) -> Reply | None:
    """The answer to a sender's subscription handshake (Slack URL verification, Event Grid
    subscription validation), or None when the request is a delivery."""
    if (isinstance(payload, dict) and payload.get("type") == "url_verification"
            and isinstance(payload.get("challenge"), str)):
        return Reply(200, {"challenge": payload["challenge"]})
    if str(headers.get("aeg-event-type", "")).strip().lower() == "subscriptionvalidation":
        for event in payload if isinstance(payload, list) else [payload]:
            if isinstance(event, dict) and event.get("eventType") == EVENTGRID_VALIDATION_EVENT:
                data = event.get("data")
                code = data.get("validationCode") if isinstance(data, dict) else None
                if isinstance(code, str) and code:
                    return Reply(200, {"validationResponse": code})
        return Reply(400, {"error": f"aeg-event-type SubscriptionValidation needs a {EVENTGRID_VALIDATION_EVENT} "
                                    "with data.validationCode"})
    return None


def webhook_options(headers: Mapping[str, str]) -> Reply:
    """OPTIONS: the CloudEvents webhook validation when ``WebHook-Request-Origin`` is sent (the
    grant is the headers; there is no body), else the methods this route takes."""
    allow = {"Allow": ALLOWED_METHODS}
    origin = str(headers.get("webhook-request-origin", "")).strip()
    if not origin:
        return Reply(204, None, allow)
    if not _ORIGIN.fullmatch(origin):
        return Reply(400, {"error": "WebHook-Request-Origin must be a host name such as eventgrid.azure.net"}, allow)
    return Reply(200, None, {**allow, "WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})


def _status(outcome: Outcome) -> int:
    """202 when metrics were accepted; 200 when the payload rightly yields none (no rule for
    this event: the sender must not retry); 400 when every metric it yielded was refused."""
    if outcome.accepted:
        return 202
    return 400 if outcome.rejected else 200


def _answer(outcome: Outcome) -> dict:
    answer: dict = {"accepted": outcome.accepted, "rejected": outcome.rejected,
                    "errors": [{"origin": p.origin, "message": p.message} for p in outcome.problems]}
    if outcome.skipped:
        answer["skipped"] = outcome.skipped
    if outcome.delivery:
        answer["delivery"] = outcome.delivery
    return answer
