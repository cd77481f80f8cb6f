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
- Items come in rule order, event by event; consecutive rules with the same ``events`` read them
  once and take each event in turn (Event Grid's rules over ``body``: an event's metrics come
  together, in the order of the events).
- Tags merge defaults < rule < metric by *definition*: a metric's tag expression replaces the
  rule's, and when it gives null the tag is left out. Rule tags are evaluated once per event, so
  a rule tag that cannot be read refuses the whole event.
- A value of null skips that metric (counted in ``skipped["value is null"]``). A timestamp of null
  is refused rather than silently replaced by the time of receipt.
- Origins name the rule, the 0-based event index and the metric's name template as written.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jmespath import exceptions as jmespath_errors

from bridges.formats import Decoded, Refused
from bridges.timestamps import TimestampError
from bridges.webhooks.expressions import Expression, PythonSource
from bridges.webhooks.values import Refuse, as_number, as_text, delivery_text, kind_of, preview, timestamp_reader

NO_RULE_MATCHED = "no rule matched"
VALUE_IS_NULL = "value is null"


# ---------------------------------------------------------------------------------------------
# Compiled rules


class CompiledMetric:
    """One metric of a rule, as checked at load: its name template's parts (text and
    expressions), kind, value and tag expressions, and what it writes as written."""

    __slots__ = ("extras", "kind", "origin", "parts", "tags", "template", "temporality", "value")

    def __init__(self, spec: dict, namespace: str | None, parts: list, value: Expression | None, tags: tuple):
        self.template = spec["name"]
        self.parts = parts
        self.kind = spec["type"]
        self.temporality = spec.get("temporality", "delta") if self.kind == "counter" else None
        self.value = value
        extras = {"namespace": spec.get("namespace", namespace), "unit": spec.get("unit"),
                  "description": spec.get("description")}
        self.extras = {key: text for key, text in extras.items() if text is not None}
        self.tags = tags
        self.origin = f" metric '{self.template}'"


class CompiledRule:
    """One rule as checked at load; ``tags`` are the file's defaults merged with the rule's."""

    __slots__ = ("events", "filter", "metrics", "name", "origin", "tags", "time", "time_format")

    def __init__(self, name: str, events: Expression | None, filter_: Expression | None,
                 timestamp: Expression | None, time_format: str | list[str], tags: tuple, metrics: tuple):
        self.name = name
        self.origin = f"rule '{name}'"
        self.events = events
        self.filter = filter_
        self.time = timestamp
        self.time_format = time_format
        self.tags = tags
        self.metrics = metrics


@dataclass(frozen=True, eq=False)
class SourceRules:
    """One source's compiled rules. Immutable: ``signature`` and ``idempotency`` are copies."""

    source: str
    path: Path | str  # the rule file, or where a polled source declared its mapping inline
    description: str | None
    _signature: dict | None
    _idempotency: dict | None
    _rules: tuple[CompiledRule, ...]
    _delivery_expression: Expression | None
    _apply: Callable[[object, Mapping[str, str]], Decoded] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_apply", _RulesFunction(self.source, self._rules).build())

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
        return self._apply(body, headers)

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


# ---------------------------------------------------------------------------------------------
# A source's rules as one Python function


def _error_text(exc: Exception) -> str:
    if isinstance(exc, (Refuse, TimestampError, jmespath_errors.JMESPathError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _lower_headers(headers: Mapping[str, str] | None) -> dict:
    if not headers:
        return {}
    return {str(name).lower(): value for name, value in headers.items()}


class _Stated(Refuse):
    """A refusal whose message is whole (a null timestamp, an empty name), not a step's failure."""


def _refusal(steps: tuple[str, ...], step: int, exc: Exception) -> str:
    """Why a step of an event or a metric failed: the step (``tag 'x' event.y``), and the error."""
    if isinstance(exc, _Stated):
        return str(exc)
    return f"{steps[step]}: {_error_text(exc)}"


def _not_an_array(text: str, events: object) -> str:
    return f"events {text} gave {kind_of(events)}, not an array: {preview(events)}"


def _decoded(items: list, origins: list, refused: list, nulls: int, applied: bool) -> Decoded:
    skipped = {}
    if not applied:
        skipped[NO_RULE_MATCHED] = 1
    if nulls:
        skipped[VALUE_IS_NULL] = nulls
    return Decoded(items, origins=origins, refused=refused, skipped=skipped)


_ENGINE = {"Refused": Refused, "_Stated": _Stated, "_refusal": _refusal, "_error_text": _error_text,
           "_not_an_array": _not_an_array, "_decoded": _decoded, "_lower_headers": _lower_headers, "_as_text": as_text,
           "_as_number": as_number}


class _RulesFunction:
    """Writes one source's rules as the Python function ``apply(body, headers) -> Decoded``: each
    rule in turn over each of its events (consecutive rules over the same events: each event
    through each of them), every expression written inline (``PythonSource``),
    with the delivery's ``body``, ``headers`` and current ``event`` held in local variables.
    One function instead of a call per rule, event, expression and tag makes a delivery several
    times cheaper. Each event, and each metric, is one ``try`` block: ``step`` says which
    expression is being evaluated, so a failure is refused naming it, and the next event or
    metric goes on."""

    def __init__(self, source: str, rules: tuple[CompiledRule, ...]):
        self.code = PythonSource(fields=("body", "event", "headers"))
        self.code.names.update(_ENGINE)
        self.source, self.rules = source, rules
        self.lines: list[str] = []

    def build(self) -> Callable[[object, Mapping[str, str]], Decoded]:
        for _, rules in itertools.groupby(self.rules, key=lambda rule: rule.events and rule.events.text):
            self._rules_over(list(rules))
        # The headers are copied lower-cased for every delivery only when an expression may read
        # them (by name, or through the whole context: ``@``, a node left to the interpreter).
        headers = "_lower_headers(headers)" if self.code.reads & {"headers", "*"} else "{}"
        self.lines[:0] = [f"headers = {headers}",
                          f'context = {{"body": body, "headers": headers, "event": body, "source": {self._name(self.source)}}}',
                          "items, origins, refused = [], [], []",
                          "nulls, applied = 0, False"]
        self._write(0, "return _decoded(items, origins, refused, nulls, applied)")
        return self.code.function("apply", "body, headers", "\n".join(self.lines))

    def _write(self, depth: int, *lines: str) -> None:
        self.lines.extend("    " * depth + line for line in lines)

    def _name(self, value: object) -> str:
        return self.code.constant(value)

    def _expression(self, expression: Expression) -> str:
        return self.code.expression(expression.node, "context")

    def _rules_over(self, rules: list[CompiledRule]) -> None:
        """Consecutive rules that read the same events: the events read once, then each event
        through each rule in turn."""
        self._write(0, "# " + ", ".join(rule.origin for rule in rules) if all(r.origin.isprintable() for r in rules)
                    else "# rules", 'event = context["event"] = body')
        events = rules[0].events
        if events is None:  # the delivery is the one event
            self._write(0, "index = 0")
            for rule in rules:
                self._guarded(rule, 0)
            return
        text = self._name(events.text)
        self._write(0, "try:")
        self._write(1, f"events = {self._expression(events)}")
        # Events that cannot be read are refused by each rule that reads them.
        unread = [f"refused.append(Refused({self._name(rule.origin)}, why))" for rule in rules]
        self._write(0, "except Exception as exc:")
        self._write(1, f'why = "events " + {text} + ": " + _error_text(exc)', *unread, "events = ()")
        self._write(0, "else:")
        self._write(1, "if events is None:")
        self._write(2, "events = ()")
        self._write(1, "elif not isinstance(events, list):")
        self._write(2, f"why = _not_an_array({text}, events)", *unread, "events = ()")
        self._write(0, "for index, event in enumerate(events):")
        self._write(1, 'context["event"] = event')
        for rule in rules:
            self._guarded(rule, 1)

    def _guarded(self, rule: CompiledRule, depth: int) -> None:
        self._write(depth, "try:")
        self._event(rule, depth + 1)
        self._write(depth, "except Exception as exc:  # a last guard: a rule that fails unexpectedly refuses itself")
        self._write(depth + 1, f'refused.append(Refused({self._name(rule.origin)}, "cannot be evaluated: " + _error_text(exc)))')

    def _event(self, rule: CompiledRule, depth: int) -> None:
        """The filter, timestamp and rule tags of one event, then its metrics when it passed."""
        where = self._name(rule.origin + " event ")
        steps: list[str] = []
        self._write(depth, "try:")
        inner = depth + 1
        if rule.filter is not None:
            steps.append(f"filter {rule.filter.text}")
            self._write(inner, "passed = False", "step = 0", f"if {self.code.test(rule.filter.node, 'context')}:")
            inner += 1
            self._write(inner, "passed = applied = True")
        else:
            self._write(inner, "applied = True")
        if rule.time is not None:
            self._step(inner, steps, f"timestamp {rule.time.text}", f"raw = {self._expression(rule.time)}")
            self._write(inner, f"if raw is None: raise _Stated({self._name(f'timestamp {rule.time.text} is null')})")
            self._step(inner, steps, f"timestamp {rule.time.text} ({rule.time_format})",
                       f"dt = {self._name(timestamp_reader(rule.time_format))}(raw)")
        self._write(inner, "base = {}")
        self._tags(inner, steps, rule.tags, "base", removable=False)
        self._write(depth, "except Exception as exc:")
        self._write(depth + 1, f"refused.append(Refused({where} + str(index), _refusal({self._name(tuple(steps))}, step, exc)))")
        self._write(depth, "else:")
        inner = depth + 1
        if rule.filter is not None:
            self._write(inner, "if passed:")
            inner += 1
        for number, metric in enumerate(rule.metrics):
            self._metric(metric, where, inner, last=number == len(rule.metrics) - 1, dated=rule.time is not None)

    def _metric(self, metric: CompiledMetric, where: str, depth: int, last: bool, dated: bool) -> None:
        steps: list[str] = []
        origin = self._name(metric.origin)
        self._write(depth, "try:")
        outer, depth = depth, depth + 1
        if metric.value is None:
            self._write(depth, "value = 1")
        else:
            self._step(depth, steps, f"value {metric.value.text}", f"raw = {self._expression(metric.value)}")
            self._write(depth, "if raw is None:")
            self._write(depth + 1, "nulls += 1")
            self._write(depth, "else:")
            depth += 1
            self._write(depth, "value = raw if raw.__class__ is int or raw.__class__ is float else _as_number(raw)")
        name = self._template(depth, steps, metric)
        if metric.tags:
            self._write(depth, "tags = dict(base)")
            self._tags(depth, steps, metric.tags, "tags", removable=True)
        else:
            self._write(depth, "tags = base" if last else "tags = dict(base)")
        point = "{\"value\": value}" if metric.temporality is None else \
            f"{{\"value\": value, \"temporality\": {metric.temporality!r}}}"
        fields = [f'"name": {name}', f"{metric.kind!r}: {point}"] + (['"dt": dt'] if dated else []) + \
            [f"{key!r}: {self._name(text)}" for key, text in metric.extras.items()]
        self._write(depth, f"item = {{{', '.join(fields)}}}", "if tags:")
        self._write(depth + 1, 'item["tags"] = tags')
        self._write(depth, "items.append(item)", f"origins.append({where} + str(index) + {origin})")
        self._write(outer, "except Exception as exc:")
        self._write(outer + 1, f"refused.append(Refused({where} + str(index) + {origin}, "
                               f"_refusal({self._name(tuple(steps))}, step, exc)))")

    def _template(self, depth: int, steps: list[str], metric: CompiledMetric) -> str:
        """The metric's name: a constant, or written from its parts into ``name``."""
        if all(isinstance(part, str) for part in metric.parts):
            return self._name("".join(metric.parts))
        pieces = []
        for part in metric.parts:
            if isinstance(part, str):
                pieces.append(self._name(part))
                continue
            self._step(depth, steps, f"name {{{part.text}}}", f"raw = {self._expression(part)}")
            self._write(depth, f"if raw is None: raise _Stated({self._name(f'name {{{part.text}}} is null')})")
            piece = self.code.temporary()
            self._write(depth, f"{piece} = raw if raw.__class__ is str else _as_text(raw)")
            pieces.append(piece)
        self._write(depth, f"name = {' + '.join(pieces)}", "if not name:")
        self._write(depth + 1, f"raise _Stated({self._name(f'the name {metric.template!r} is empty for this event')})")
        return "name"

    def _tags(self, depth: int, steps: list[str], tags: tuple, into: str, removable: bool) -> None:
        """Each tag's expression into ``into``; null leaves the tag out (removes one set before)."""
        for name, expression in tags:
            self._step(depth, steps, f"tag {name!r} {expression.text}", f"raw = {self._expression(expression)}")
            key = repr(name)
            self._write(depth, "if raw is not None:")
            self._write(depth + 1, f"{into}[{key}] = raw if raw.__class__ is str else _as_text(raw)")
            if removable:
                self._write(depth, "else:")
                self._write(depth + 1, f"{into}.pop({key}, None)")

    def _step(self, depth: int, steps: list[str], says: str, line: str) -> None:
        """A line that may fail, and what its failure says."""
        steps.append(says)
        self._write(depth, f"step = {len(steps) - 1}", line)


