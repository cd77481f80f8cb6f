"""Generic webhooks: ``POST /api/webhooks/{source}`` through the source's mapping rules.

The order is the one that keeps a sender's request safe to repeat: the signature first (a
bare 401 that says nothing about why), then the delivery id is claimed, so a repeat within
the TTL is answered ``{"duplicate": true}`` and concurrent repeats yield one delivery; the
payload is mapped, validated and delivered like every other input; the claim is completed
once the metrics were delivered or handed to the retry queue, and released when they could be
neither (503), so the sender's retry is processed again.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

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


def rule_dirs(settings) -> list:
    """Built-in rules first, then the user's folder, whose files replace them by source."""
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

    def handle(self, source: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        headers = {k.lower(): v for k, v in headers.items()}
        rules = self.sources.get(source.lower())
        if rules is None:
            return Reply(404, {"error": f"no mapping rules for source {source!r}", "sources": sorted(self.sources)})
        try:
            body = self.bridge.inflate(body, headers.get("content-encoding"))
        except BodyError as exc:
            return Reply(exc.status, exc.to_json())
        if not self._authentic(rules, headers, body):
            return Reply(401, {"error": "unauthorized"})
        try:
            payload = webhook_payload(body, headers.get("content-type"))
        except BodyError as exc:
            return Reply(exc.status, exc.to_json())
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

    def _authentic(self, rules: SourceRules, headers: Mapping[str, str], body: bytes) -> bool:
        if not rules.signature:
            return True
        secrets = self.secrets(rules)
        if not secrets:
            return True  # reported by health: "not checked: set <SETTING>"
        from bridges.webhooks.signatures import verify

        failure = verify(rules.signature, headers, body, [s.reveal() for s in secrets], self.bridge.clock() / 1e9)
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


def webhook_payload(body: bytes, content_type: str | None) -> object:
    """The webhook's JSON: the body, or the ``payload`` field of a form (GitHub's other format)."""
    if not body.strip():
        raise BodyError(400, "the body is empty")
    if media_type(content_type) == FORM_TYPE:
        fields = parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in fields:
            raise BodyError(400, "a form-encoded webhook needs its JSON in the 'payload' field")
        body = fields["payload"][0].encode("utf-8")
    return load_json(body)


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
