"""The rule engine: one source's compiled rules, applied to a delivery.

``SourceRules.apply`` turns a delivery into canonical metric items, each with the rule, event and
metric it came from, and says what was refused and skipped and why; ``SourceRules.delivery_id``
reads the id used for de-duplication. ``bridges.webhooks.rule_files`` builds ``SourceRules`` from
checked rule files. Expressions are evaluated against
``{"body": payload, "headers": {lower-case name: value}, "event": current event, "source": name}``.

Evaluation choices, each written down because a user can notice it:

- Every rule applies to every event on its own (not first match wins): one delivery may feed
  several rules. ``events`` giving null means the payload has no such events (the rule does not
  apply); anything else that is not an array is refused.
- Tags merge defaults < rule < metric by *definition*: a metric's tag expression replaces the
  rule's, and when it gives null the tag is left out. Rule tags are evaluated once per event, so
  a rule tag that cannot be read refuses the whole event.
- A value of null skips that metric (counted in ``skipped["value is null"]``). A timestamp of null
  is refused rather than silently replaced by the time of receipt.
- Origins name the rule, the 0-based event index and the metric's name template as written.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jmespath import exceptions as jmespath_errors

from bridges.formats import Decoded, Refused
from bridges.timestamps import TimestampError
from bridges.webhooks.expressions import Expression, Guard, is_false
from bridges.webhooks.values import Refuse, as_number, as_text, delivery_text, kind_of, preview, timestamp_reader

NO_RULE_MATCHED = "no rule matched"
VALUE_IS_NULL = "value is null"


# ---------------------------------------------------------------------------------------------
# Compiled rules


class CompiledMetric:
    __slots__ = ("extras", "kind", "origin", "parts", "tags", "template", "temporality", "value", "value_text")

    def __init__(self, spec: dict, namespace: str | None, parts: list, value: Expression | None, tags: tuple):
        self.template = spec["name"]
        self.parts = parts
        self.kind = spec["type"]
        self.temporality = spec.get("temporality", "delta") if self.kind == "counter" else None
        self.value = value.evaluate if value is not None else None
        self.value_text = value.text if value is not None else None
        extras = {"namespace": spec.get("namespace", namespace), "unit": spec.get("unit"),
                  "description": spec.get("description")}
        self.extras = {key: text for key, text in extras.items() if text is not None}
        self.tags = tags
        self.origin = f" metric '{self.template}'"

    def item(self, context: dict, base_tags: dict, dt: int | None) -> dict | None:
        """The canonical item, or None when the value is null; raises Refuse with the reason."""
        if self.value is None:
            value: object = 1
        else:
            try:
                raw = self.value(context)
            except Exception as exc:  # any failure of an expression is a refusal, never a crash
                raise Refuse(f"value {self.value_text}: {_error_text(exc)}") from None
            if raw is None:
                return None
            try:
                value = as_number(raw)
            except Refuse as exc:
                raise Refuse(f"value {self.value_text}: {exc}") from None
        body = {"value": value} if self.temporality is None else {"value": value, "temporality": self.temporality}
        item: dict[str, object] = {"name": self._name(context), self.kind: body}
        tags = base_tags
        if self.tags:
            tags = dict(base_tags)
            _evaluate_tags(self.tags, context, tags)
        if tags:
            item["tags"] = tags if tags is not base_tags else dict(tags)
        if dt is not None:
            item["dt"] = dt
        if self.extras:
            item.update(self.extras)
        return item

    def _name(self, context: dict) -> str:
        parts = self.parts
        if len(parts) == 1 and isinstance(parts[0], str):
            return parts[0]
        pieces = []
        for part in parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            try:
                raw = part.evaluate(context)
            except Exception as exc:
                raise Refuse(f"name {{{part.text}}}: {_error_text(exc)}") from None
            if raw is None:
                raise Refuse(f"name {{{part.text}}} is null")
            try:
                pieces.append(as_text(raw))
            except Refuse as exc:
                raise Refuse(f"name {{{part.text}}}: {exc}") from None
        name = "".join(pieces)
        if not name:
            raise Refuse(f"the name {self.template!r} is empty for this event")
        return name


def _evaluate_tags(tags: tuple, context: dict, into: dict) -> None:
    """Evaluate (name, expression) pairs into ``into``; null removes the tag."""
    for name, expression in tags:
        try:
            raw = expression.evaluate(context)
        except Exception as exc:
            raise Refuse(f"tag {name!r} {expression.text}: {_error_text(exc)}") from None
        if raw is None:
            into.pop(name, None)
            continue
        try:
            into[name] = as_text(raw)
        except Refuse as exc:
            raise Refuse(f"tag {name!r} {expression.text}: {exc}") from None


def _error_text(exc: Exception) -> str:
    if isinstance(exc, (Refuse, TimestampError, jmespath_errors.JMESPathError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class CompiledRule:
    __slots__ = (
        "asks",
        "events",
        "events_text",
        "filter",
        "filter_text",
        "guard",
        "metrics",
        "name",
        "origin",
        "read_time",
        "tags",
        "time",
        "time_format",
        "time_text",
    )

    def __init__(self, name, events, filter_, timestamp, time_format, tags, metrics, guard: Guard | None = None):
        self.name = name
        self.guard = guard
        self.asks = (events.text if events else None, guard.shape if guard else None)  # see _event_keys
        self.origin = f"rule '{name}'"
        self.events = events.evaluate if events else None
        self.events_text = events.text if events else None
        self.filter = filter_.evaluate if filter_ else None
        self.filter_text = filter_.text if filter_ else None
        self.time = timestamp.evaluate if timestamp else None
        self.time_text = timestamp.text if timestamp else None
        self.time_format = time_format
        self.read_time = timestamp_reader(time_format) if timestamp else None
        self.tags = tags
        self.metrics = metrics

    def timestamp(self, context: dict) -> int | None:
        if self.time is None:
            return None
        try:
            raw = self.time(context)
        except Exception as exc:
            raise Refuse(f"timestamp {self.time_text}: {_error_text(exc)}") from None
        if raw is None:
            raise Refuse(f"timestamp {self.time_text} is null")
        assert self.read_time is not None  # set with self.time
        try:
            return self.read_time(raw)
        except Exception as exc:  # Refuse, TimestampError, or anything a strange value provokes
            raise Refuse(f"timestamp {self.time_text} ({self.time_format}): {_error_text(exc)}") from None


class _Result:
    __slots__ = ("applied", "items", "nulls", "origins", "refused")

    def __init__(self):
        self.items: list = []
        self.origins: list = []
        self.refused: list = []
        self.nulls = 0
        self.applied = False


@dataclass(frozen=True, eq=False)
class SourceRules:
    """One source's compiled rules. Immutable: ``signature`` and ``idempotency`` are copies."""

    source: str
    path: Path | str  # the rule file, or where a polled source declared its mapping inline
    description: str | None
    _signature: dict | None
    _idempotency: dict | None
    _rules: tuple
    _delivery_expression: Expression | None
    _reads_headers: bool = True
    # The distinct guards of the rules that read the delivery as one event (no ``events``):
    # their keys are evaluated once per delivery and such a rule whose guard says no is passed
    # over without a call (e.g. GitHub's nine rules, each asking X-GitHub-Event first).
    _delivery_guards: tuple[Guard, ...] = ()

    @property
    def signature(self) -> dict | None:
        """The file's signature object with defaults filled for its scheme (setting names only)."""
        if self._signature is None:
            return None
        return {**self._signature, "secrets": list(self._signature["secrets"])}

    @property
    def idempotency(self) -> dict | None:
        return None if self._idempotency is None else dict(self._idempotency)

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self._rules)

    def __repr__(self) -> str:
        return f"SourceRules(source={self.source!r}, path={str(self.path)!r}, rules={len(self._rules)})"

    def apply(self, body: object, headers: Mapping[str, str], now_ns: int) -> Decoded:
        """Every rule over every event. Never raises: what cannot be read becomes a refusal.

        ``now_ns`` is not needed here: items without a timestamp carry no ``dt`` so the
        Normalizer's time of receipt applies."""
        lowered = _lower_headers(headers) if self._reads_headers else {}
        # One context for the whole delivery: "event" is set to each event in turn (expressions
        # keep no reference to it) and back to the body before each rule's events expression.
        context = {"body": body, "headers": lowered, "event": body, "source": self.source}
        result = _Result()
        guards: dict = {}
        keys = {}
        for guard in self._delivery_guards:
            try:
                keys[guard.shape] = guard.key(context)
            except Exception:  # the rules' filters then say what is wrong
                continue
        asked: dict = {}  # (events expression, guard key) -> the keys of all those events
        for rule in self._rules:
            guard = rule.guard
            passed = False  # the guard said yes: only the rest of the filter is left to ask
            if guard is not None and rule.events is None and guard.shape in keys:
                key = keys[guard.shape]
                if not (isinstance(key, str) and key in guard.values):
                    continue
                passed = True
            elif guard is not None and rule.events is not None:
                found = asked.get(rule.asks, _UNSET)
                if found is _UNSET:
                    context["event"] = body
                    found = asked[rule.asks] = _event_keys(rule, guard, context, guards)
                if found is not None and found.isdisjoint(guard.values):
                    continue  # no event of the delivery passes the guard
            context["event"] = body
            try:
                self._apply_rule(rule, body, context, result, guards, passed)
            except Exception as exc:  # a last guard: a rule that fails unexpectedly refuses itself
                result.refused.append(Refused(rule.origin, f"cannot be evaluated: {_error_text(exc)}"))
        skipped = {}
        if not result.applied:
            skipped[NO_RULE_MATCHED] = 1
        if result.nulls:
            skipped[VALUE_IS_NULL] = result.nulls
        return Decoded(result.items, origins=result.origins, refused=result.refused, skipped=skipped)

    def _apply_rule(self, rule: CompiledRule, body: object, context: dict, result: _Result, guards: dict,
                    passed: bool) -> None:
        if rule.events is None:
            events = (body,)
        else:
            try:
                events = rule.events(context)
            except Exception as exc:
                result.refused.append(Refused(rule.origin, f"events {rule.events_text}: {_error_text(exc)}"))
                return
            if events is None:
                return
            if not isinstance(events, list):
                result.refused.append(Refused(
                    rule.origin, f"events {rule.events_text} gave {kind_of(events)}, not an array: {preview(events)}"))
                return
        for index, event in enumerate(events):
            context["event"] = event
            test = rule.filter
            if rule.guard is not None:
                if rule.events is not None:
                    verdict = _guard_says(rule.guard, event, context, guards)
                    if verdict is False:
                        continue
                    passed = verdict is True
                if passed:
                    test = rule.guard.rest
            try:
                if test is not None:
                    try:
                        if is_false(test(context)):
                            continue
                    except Exception as exc:
                        raise Refuse(f"filter {rule.filter_text}: {_error_text(exc)}") from None
                result.applied = True
                dt = rule.timestamp(context)
                base_tags: dict = {}
                _evaluate_tags(rule.tags, context, base_tags)
            except Refuse as exc:
                result.refused.append(Refused(f"{rule.origin} event {index}", str(exc)))
                continue
            where = f"{rule.origin} event {index}"
            for metric in rule.metrics:
                try:
                    item = metric.item(context, base_tags, dt)
                except Refuse as exc:
                    result.refused.append(Refused(where + metric.origin, str(exc)))
                    continue
                if item is None:
                    result.nulls += 1
                    continue
                result.items.append(item)
                result.origins.append(where + metric.origin)

    def delivery_id(self, body: object, headers: Mapping[str, str]) -> str | None:
        """The delivery's id for de-duplication: the header (any case) first, then the expression."""
        if self._idempotency is None:
            return None
        name = self._idempotency.get("header")
        if name and headers:
            wanted = name.lower()
            for key, value in headers.items():
                if str(key).lower() == wanted:
                    text = delivery_text(value)
                    if text:
                        return text
        if self._delivery_expression is not None:
            context = {"body": body, "headers": _lower_headers(headers), "event": body, "source": self.source}
            try:
                return delivery_text(self._delivery_expression.evaluate(context))
            except Exception:  # an id that cannot be read is no id; the delivery still counts
                return None
        return None


_UNSET = object()


def _event_keys(rule: CompiledRule, guard: Guard, context: dict, guards: dict) -> frozenset | None:
    """The guard's key of every event the rule's ``events`` gives (the text ones), worked out
    once per delivery for all the rules that share both expressions (``rule.asks``: Event Grid's
    six rules over ``body``); None when an expression fails or gives no array: the rule itself
    then says so. Each event's key is kept in ``guards`` for ``_guard_says``."""
    found: frozenset | None = None
    assert rule.events is not None  # the caller asks only for rules with events
    try:
        events = rule.events(context)
        if isinstance(events, list):
            keys = set()
            for event in events:
                context["event"] = event
                key = _answers(event, guards)[guard.shape] = guard.key(context)
                if isinstance(key, str):
                    keys.add(key)
            found = frozenset(keys)
    except Exception:  # noqa: BLE001 - the rule's own evaluation reports it
        found = None
    return found


def _guard_says(guard: Guard, event: object, context: dict, guards: dict) -> bool | None:
    """False when the rule's filter would be false by its guard, True when the guard holds (the
    rest of the filter decides), None when its key cannot be evaluated (the whole filter then
    says what is wrong). The key is evaluated once per event for every rule that asks it
    (``guards``: id of the event -> the event, kept so the id stays its own, and the answers)."""
    answers = _answers(event, guards)
    value = answers.get(guard.shape, _UNSET)
    if value is _UNSET:
        try:
            value = guard.key(context)
        except Exception:
            return None
        answers[guard.shape] = value
    return isinstance(value, str) and value in guard.values


def _answers(event: object, guards: dict) -> dict:
    """The guards' answers for this event so far, by key (kept with the event, so its id stays
    its own while the delivery is read)."""
    seen = guards.get(id(event))
    if seen is None:
        seen = guards[id(event)] = (event, {})
    return seen[1]


def _lower_headers(headers: Mapping[str, str] | None) -> dict:
    if not headers:
        return {}
    return {str(name).lower(): value for name, value in headers.items()}
