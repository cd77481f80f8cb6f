"""Declarative rule files that turn any JSON webhook into canonical metric items.

One file per source (``mappings/<source>.yaml`` built in, a folder named by the settings for
local ones) says, with JMESPath expressions over
``{"body": payload, "headers": {lower-case name: value}, "event": current event, "source": name}``,
which metrics a delivery becomes. ``schemas/mapping.schema.json`` states the shape; what a schema
cannot say (expressions compile, functions exist with the right number of arguments, templates
are balanced, rule names are unique, strptime patterns are usable) is checked here at load, so a
bad file stops start-up naming the file, the rule and the field.

Evaluation choices, each written down because a user can notice it:

- Every rule applies to every event on its own (not first match wins): one delivery may feed
  several rules. ``events`` giving null means the payload has no such events (the rule does not
  apply); anything else that is not an array is refused.
- Tags merge defaults < rule < metric by *definition*: a metric's tag expression replaces the
  rule's, and when it gives null the tag is left out. Rule tags are evaluated once per event, so
  a rule tag that cannot be read refuses the whole event.
- A value of null skips that metric (counted in ``skipped["value is null"]``). A timestamp of null
  is refused rather than silently replaced by the time of receipt.
- The custom functions give null for a null argument, so a missing field still means "skip".
- Origins name the rule, the 0-based event index and the metric's name template as written.

Expressions are compiled once, into Python closures for the node types webhook rules use almost
exclusively (field paths with indexes, literals, comparisons, ``&&``, ``||``, ``!``, function
calls); every other node is handed to jmespath's own interpreter. Each closure copies the
interpreter's semantics for its node (tests check this against ``jmespath.search``), so results are
identical and a plain path such as ``event.a.b`` costs a few dictionary lookups. (JMESPath reads
``!event.draft`` as ``(!event).draft``; rule writers want ``!(event.draft)``.)
"""
from __future__ import annotations

import json
import math
import numbers
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions
from jmespath.visitor import Options, TreeInterpreter

from bridges.formats import Decoded, Refused
from bridges.ingest.normalize import SCHEMA_DIR, json_pointer
from bridges.timestamps import MAX_TIME_NS, NS_PER_SECOND, TimestampError, parse_timestamp

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode  # the stubs' type of a parsed expression's nodes

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "mappings"
MAPPING_SCHEMA = SCHEMA_DIR / "mapping.schema.json"
RULE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
TIMESTAMP_FORMATS = ("auto", "rfc3339", "unix", "unix_ms", "unix_us", "unix_ns")
SIGNATURE_DEFAULTS: dict[str, dict[str, object]] = {
    "hmac-sha256": {"prefix": "", "encoding": "hex"},
    "stripe": {"tolerance_seconds": 300},
    "slack": {"tolerance_seconds": 300},
    "standard-webhooks": {"tolerance_seconds": 300},
}
NO_RULE_MATCHED = "no rule matched"
VALUE_IS_NULL = "value is null"
_PREVIEW_CHARS = 60


class MappingError(Exception):
    """A rule file that cannot be used: where (file, rule, JSON pointer in the file) and why."""

    def __init__(self, file: str, message: str, rule: str | None = None, field: str | None = None):
        self.file = str(file)
        self.rule = rule
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.file}: "
        if self.rule is not None:
            text += f"rule '{self.rule}' "
        if self.field:
            text += f"at {self.field}: "
        elif self.rule is not None:
            text = text[:-1] + ": "
        return text + self.message


class _Refuse(Exception):
    """An event or metric that cannot become an item; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# Custom functions


def _seconds(value: object, function: str) -> float:
    try:
        return parse_timestamp(value) / NS_PER_SECOND
    except TimestampError as exc:
        raise _Refuse(f"{function}(): {_preview(value)} is not a timestamp: {exc}") from None


class _Functions(jmespath_functions.Functions):
    """The rule files' extra functions; each gives null for a null argument."""

    @jmespath_functions.signature({"types": ["string", "number", "null"]}, {"types": ["string", "number", "null"]})
    def _func_seconds_between(self, start, end):
        if start is None or end is None:
            return None
        return _seconds(end, "seconds_between") - _seconds(start, "seconds_between")

    @jmespath_functions.signature({"types": ["string", "number", "null"]})
    def _func_epoch_seconds(self, value):
        return None if value is None else _seconds(value, "epoch_seconds")

    @jmespath_functions.signature({"types": ["string", "null"]})
    def _func_lower(self, text):
        return None if text is None else text.lower()

    @jmespath_functions.signature({"types": ["string", "null"]})
    def _func_upper(self, text):
        return None if text is None else text.upper()

    @jmespath_functions.signature({"types": ["number", "null"]}, {"types": ["number", "null"]})
    def _func_divide(self, dividend, divisor):
        if dividend is None or divisor is None:
            return None
        if divisor == 0:
            raise _Refuse(f"divide(): {_preview(dividend)} divided by zero")
        return dividend / divisor


CUSTOM_FUNCTIONS = ("seconds_between", "epoch_seconds", "lower", "upper", "divide")
_FUNCTIONS = _Functions()
_OPTIONS = Options(custom_functions=_FUNCTIONS)
_INTERPRETER = TreeInterpreter(_OPTIONS)


# ---------------------------------------------------------------------------------------------
# Expressions: jmespath's semantics, compiled to closures where that is simple


def _is_false(value: object) -> bool:
    """JMESPath falsiness: empty string, array or object, null and false."""
    return value is None or value is False or value == "" or value == [] or value == {}


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Number)


def jmespath_equals(left: object, right: object) -> bool:
    """JMESPath equality: 0 and 1 never equal false and true."""
    if _is_number(left) and left in (0, 1):
        if isinstance(right, bool):
            return False
    elif _is_number(right) and right in (0, 1) and isinstance(left, bool):
        return False
    return left == right


_ORDERING = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: ``evaluate(context)``; ``fast`` when no node needs the interpreter."""

    text: str
    evaluate: Callable[[object], object]
    fast: bool


def compile_expression(text: str) -> Expression:
    """Compile once; raises ValueError with a one-line reason for an unusable expression."""
    try:
        parsed = jmespath.compile(text)
    except jmespath_errors.LexerError as exc:
        raise ValueError(f"{text!r} is not a valid JMESPath expression: {exc.message} at column {exc.lex_position}") from None
    except jmespath_errors.IncompleteExpressionError:
        raise ValueError(f"{text!r} is not a valid JMESPath expression: it ends too early") from None
    except jmespath_errors.ParseError as exc:
        raise ValueError(f"{text!r} is not a valid JMESPath expression: {exc.msg} at column {exc.lex_position}") from None
    except jmespath_errors.JMESPathError as exc:
        raise ValueError(f"{text!r} is not a valid JMESPath expression: {exc}") from None
    _check_functions(parsed.parsed, text)
    evaluate, fast = _compile_node(parsed.parsed)
    return Expression(text, evaluate, fast)


def _check_functions(node: _TreeNode, text: str) -> None:
    """jmespath finds unknown functions and wrong argument counts only when it runs; we say so at load."""
    if node.get("type") == "function_expression":
        name = node["value"]
        spec = _FUNCTIONS.FUNCTION_TABLE.get(name)
        if spec is None:
            raise ValueError(
                f"{text!r} calls unknown function {name}(); the custom ones are {', '.join(CUSTOM_FUNCTIONS)}"
            )
        wanted, given = spec["signature"], len(node["children"])
        variadic = bool(wanted) and wanted[-1].get("variadic")
        if given < len(wanted) or (given > len(wanted) and not variadic):
            plural = "" if len(wanted) == 1 else "s"
            more = " or more" if variadic else ""
            raise ValueError(f"{text!r}: {name}() takes {len(wanted)}{more} argument{plural}, not {given}")
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child, text)


def _compile_node(node: _TreeNode) -> tuple[Callable[[object], object], bool]:
    steps = _path_steps(node)
    if steps is not None:
        return _walker(steps), True
    kind = node["type"]
    children = node.get("children", [])
    if kind == "literal":
        constant = node["value"]
        return (lambda _value: constant), True
    if kind == "comparator":
        (left, left_fast), (right, right_fast) = _compile_node(children[0]), _compile_node(children[1])
        return _comparator(node["value"], left, right, children), left_fast and right_fast
    if kind in ("and_expression", "or_expression"):
        (left, left_fast), (right, right_fast) = _compile_node(children[0]), _compile_node(children[1])
        return (_and(left, right) if kind == "and_expression" else _or(left, right)), left_fast and right_fast
    if kind == "not_expression":
        inner, fast = _compile_node(children[0])
        return _not(inner), fast
    if kind in ("subexpression", "index_expression", "pipe"):
        # Each child reads what the one before it gave (e.g. ``(!a).b``, ``f(a).b``).
        compiled = [_compile_node(child) for child in children]
        return _chain([fn for fn, _ in compiled]), all(fast for _, fast in compiled)
    if kind == "function_expression" and all(child["type"] != "expref" for child in children):
        compiled = [_compile_node(child) for child in children]
        return _call(node["value"], [fn for fn, _ in compiled]), all(fast for _, fast in compiled)
    visit = _INTERPRETER.visit
    return (lambda value: visit(node, value)), False


def _path_steps(node: _TreeNode) -> list | None:
    """A plain path (fields, indexes, ``@``) as ('key', name) / ('index', n) steps, else None."""
    kind = node["type"]
    if kind == "field":
        return [("key", node["value"])]
    if kind == "index":
        return [("index", node["value"])]
    if kind in ("current", "identity"):
        return []
    if kind in ("subexpression", "index_expression"):
        steps = []
        for child in node["children"]:
            part = _path_steps(child)
            if part is None:
                return None
            steps.extend(part)
        return steps
    return None


def _walker(steps: Sequence) -> Callable[[object], object]:
    if not steps:
        return lambda value: value
    if all(kind == "key" for kind, _ in steps):
        keys = tuple(key for _, key in steps)
        if len(keys) == 1:
            (first,) = keys
            return lambda value: value.get(first) if isinstance(value, dict) else None
        if len(keys) == 2:
            first, second = keys

            def two(value):
                if isinstance(value, dict):
                    value = value.get(first)
                    if isinstance(value, dict):
                        return value.get(second)
                return None

            return two

        def walk_keys(value):
            for key in keys:
                if not isinstance(value, dict):
                    return None
                value = value.get(key)
            return value

        return walk_keys
    steps = tuple(steps)

    def walk(value):
        for kind, key in steps:
            if kind == "key":
                if not isinstance(value, dict):
                    return None
                value = value.get(key)
            else:
                if not isinstance(value, list):
                    return None
                try:
                    value = value[key]
                except IndexError:
                    return None
        return value

    return walk


def _comparator(op: str, left, right, children) -> Callable[[object], object]:
    if op in ("eq", "ne"):
        # Against a string literal, JMESPath equality is Python's (the 0/1-versus-boolean care
        # applies to numbers only).
        if children[1]["type"] == "literal" and isinstance(children[1]["value"], str):
            constant = children[1]["value"]
            if op == "eq":
                return lambda value: left(value) == constant
            return lambda value: left(value) != constant
        if op == "eq":
            return lambda value: jmespath_equals(left(value), right(value))
        return lambda value: not jmespath_equals(left(value), right(value))
    compare = _ORDERING[op]

    def ordered(value):
        a, b = left(value), right(value)
        if not ((_is_number(a) or isinstance(a, str)) and (_is_number(b) or isinstance(b, str))):
            return None
        return compare(a, b)

    return ordered


def _chain(steps: list):
    def chained(value):
        for step in steps:
            value = step(value)
        return value

    return chained


def _and(left, right):
    def both(value):
        matched = left(value)
        if _is_false(matched):
            return matched
        return right(value)

    return both


def _or(left, right):
    def either(value):
        matched = left(value)
        if _is_false(matched):
            matched = right(value)
        return matched

    return either


def _not(inner):
    def negate(value):
        result = inner(value)
        if _is_number(result) and result == 0:
            return False
        return not result

    return negate


def _call(name: str, arguments: list):
    """A function call. jmespath checks argument types on every call, slowly; for one or two
    arguments without array subtypes the same check (by type name, as jmespath does) is made
    here, and any argument that fails it goes to jmespath, which raises its usual error."""
    call = _FUNCTIONS.call_function
    spec = _FUNCTIONS.FUNCTION_TABLE[name]
    signature = spec["signature"]
    simple = len(arguments) == len(signature) in (1, 2) and not any(
        s.get("variadic") or any("-" in t for t in s["types"]) for s in signature)
    if not simple:
        return lambda value: call(name, [argument(value) for argument in arguments])
    function = spec["function"]
    allowed = [
        frozenset(n for t in s["types"] for n in jmespath_functions.REVERSE_TYPES_MAP[t]) if s["types"] else None
        for s in signature
    ]
    if len(arguments) == 1:
        (argument,), (ok,) = arguments, allowed

        def call_one(value):
            a = argument(value)
            if ok is None or type(a).__name__ in ok:
                return function(_FUNCTIONS, a)
            return call(name, [a])

        return call_one
    (first, second), (ok_first, ok_second) = arguments, allowed

    def call_two(value):
        a, b = first(value), second(value)
        if (ok_first is None or type(a).__name__ in ok_first) and (ok_second is None or type(b).__name__ in ok_second):
            return function(_FUNCTIONS, a, b)
        return call(name, [a, b])

    return call_two


# ---------------------------------------------------------------------------------------------
# Name templates


def parse_template(text: str) -> list:
    """Literal text and ``{expression}`` parts; ``{{`` and ``}}`` are literal braces.

    Raises ValueError (1-based character positions) for unbalanced or nested braces."""
    parts: list = []
    literal: list[str] = []
    i, size = 0, len(text)
    while i < size:
        char = text[i]
        if char == "{":
            if text.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            end = text.find("}", i + 1)
            if end < 0:
                raise ValueError(f"the '{{' at character {i + 1} is never closed (write {{{{ for a literal brace)")
            inner = text[i + 1:end]
            if "{" in inner:
                raise ValueError(f"the '{{' at character {i + 1} holds another '{{': braces do not nest")
            if not inner.strip():
                raise ValueError(f"the '{{}}' at character {i + 1} holds no expression")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(compile_expression(inner.strip()))
            i = end + 1
        elif char == "}":
            if text.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ValueError(f"the '}}' at character {i + 1} closes nothing (write }}}} for a literal brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


# ---------------------------------------------------------------------------------------------
# Values, tags and timestamps read from evaluated expressions

_INTEGER = re.compile(r"[+-]?\d{1,18}")
# Unambiguous, so a long string of digits is matched in linear time.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _preview(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        text = object.__repr__(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number" if isinstance(value, numbers.Number) else type(value).__name__


def _number(raw: object) -> object:
    """A metric value: numbers as they are, booleans as 1/0, numeric strings parsed."""
    kind = type(raw)
    if kind is int or kind is float:
        return raw
    if kind is bool:
        return 1 if raw else 0
    if isinstance(raw, str):
        text = raw.strip()
        if _INTEGER.fullmatch(text):
            return int(text)
        if _NUMBER.fullmatch(text):
            return float(text)
    elif _is_number(raw) and isinstance(raw, (int, float)):
        return raw
    raise _Refuse(f"{_preview(raw)} is {_kind(raw)}, not a number")


def _text(raw: object) -> str:
    """A tag value or name part: strings as they are, numbers and booleans as their JSON text."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, int):
        try:
            return str(raw)
        except ValueError:  # more digits than Python writes as text
            raise _Refuse("a number too long to write as text") from None
    if isinstance(raw, float):
        return repr(raw)
    raise _Refuse(f"{_preview(raw)} is {_kind(raw)}, not text")


_SCALES = {"unix": NS_PER_SECOND, "unix_ms": 1_000_000, "unix_us": 1000, "unix_ns": 1}


def _timestamp_reader(form: str) -> Callable[[object], int]:
    """Raw value -> epoch ns for a timestamp format; raises _Refuse or TimestampError."""
    if form == "auto":
        return parse_timestamp
    if form == "rfc3339":
        def rfc3339(raw):
            if not isinstance(raw, str):
                raise _Refuse(f"{_preview(raw)} is {_kind(raw)}; the rfc3339 format reads strings")
            return parse_timestamp(raw)

        return rfc3339
    if form in _SCALES:
        scale = _SCALES[form]

        def epoch(raw):
            time_ns: int | Decimal
            if isinstance(raw, int) and not isinstance(raw, bool):
                time_ns = raw * scale
            elif (isinstance(raw, float) and math.isfinite(raw)) or (isinstance(raw, str) and _NUMBER.fullmatch(raw.strip())):
                try:
                    time_ns = Decimal(repr(raw) if isinstance(raw, float) else raw.strip()) * scale
                except ArithmeticError:  # beyond what Decimal holds: far outside any valid time
                    time_ns = -1
            else:
                raise _Refuse(f"{_preview(raw)} is not a number of {form} epoch time")
            # Checked before rounding: "1e999999999" must not become a billion-digit integer.
            if not 0 <= time_ns <= MAX_TIME_NS:
                raise _Refuse(f"{_preview(raw)} as {form} is outside 1970-01-01 .. 9999-12-31")
            return round(time_ns)

        return epoch

    def pattern(raw):
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise _Refuse(f"{_preview(raw)} is {_kind(raw)}; the pattern {form!r} reads strings")
        try:
            moment = datetime.strptime(raw, form)
        except ValueError as exc:
            raise _Refuse(f"{_preview(raw)} does not match {form!r}: {exc}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return parse_timestamp(moment)

    return pattern


def _check_strptime(form: str) -> None:
    """A pattern is usable when it reads back what it writes (a bad directive fails here, at load)."""
    sample = datetime(2001, 2, 3, 4, 5, 6, 7000, tzinfo=UTC)
    try:
        datetime.strptime(sample.strftime(form), form)
    except ValueError as exc:
        raise ValueError(f"{form!r} is not a usable strptime pattern: {exc}") from None


def _delivery_text(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, (dict, list)):
        text = json.dumps(raw, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=repr)
    else:
        try:
            text = _text(raw)
        except (_Refuse, ValueError):
            text = str(raw)
    return text or None


# ---------------------------------------------------------------------------------------------
# Compiled rules


class _Metric:
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
        """The canonical item, or None when the value is null; raises _Refuse with the reason."""
        if self.value is None:
            value: object = 1
        else:
            try:
                raw = self.value(context)
            except Exception as exc:  # any failure of an expression is a refusal, never a crash
                raise _Refuse(f"value {self.value_text}: {_error_text(exc)}") from None
            if raw is None:
                return None
            try:
                value = _number(raw)
            except _Refuse as exc:
                raise _Refuse(f"value {self.value_text}: {exc}") from None
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
                raise _Refuse(f"name {{{part.text}}}: {_error_text(exc)}") from None
            if raw is None:
                raise _Refuse(f"name {{{part.text}}} is null")
            try:
                pieces.append(_text(raw))
            except _Refuse as exc:
                raise _Refuse(f"name {{{part.text}}}: {exc}") from None
        name = "".join(pieces)
        if not name:
            raise _Refuse(f"the name {self.template!r} is empty for this event")
        return name


def _evaluate_tags(tags: tuple, context: dict, into: dict) -> None:
    """Evaluate (name, expression) pairs into ``into``; null removes the tag."""
    for name, expression in tags:
        try:
            raw = expression.evaluate(context)
        except Exception as exc:
            raise _Refuse(f"tag {name!r} {expression.text}: {_error_text(exc)}") from None
        if raw is None:
            into.pop(name, None)
            continue
        try:
            into[name] = _text(raw)
        except _Refuse as exc:
            raise _Refuse(f"tag {name!r} {expression.text}: {exc}") from None


def _error_text(exc: Exception) -> str:
    if isinstance(exc, (_Refuse, TimestampError, jmespath_errors.JMESPathError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class _Rule:
    __slots__ = (
        "events",
        "events_text",
        "filter",
        "filter_text",
        "metrics",
        "name",
        "origin",
        "read_time",
        "tags",
        "time",
        "time_format",
        "time_text",
    )

    def __init__(self, name, events, filter_, timestamp, time_format, tags, metrics):
        self.name = name
        self.origin = f"rule '{name}'"
        self.events = events.evaluate if events else None
        self.events_text = events.text if events else None
        self.filter = filter_.evaluate if filter_ else None
        self.filter_text = filter_.text if filter_ else None
        self.time = timestamp.evaluate if timestamp else None
        self.time_text = timestamp.text if timestamp else None
        self.time_format = time_format
        self.read_time = _timestamp_reader(time_format) if timestamp else None
        self.tags = tags
        self.metrics = metrics

    def timestamp(self, context: dict) -> int | None:
        if self.time is None:
            return None
        try:
            raw = self.time(context)
        except Exception as exc:
            raise _Refuse(f"timestamp {self.time_text}: {_error_text(exc)}") from None
        if raw is None:
            raise _Refuse(f"timestamp {self.time_text} is null")
        assert self.read_time is not None  # set with self.time
        try:
            return self.read_time(raw)
        except Exception as exc:  # _Refuse, TimestampError, or anything a strange value provokes
            raise _Refuse(f"timestamp {self.time_text} ({self.time_format}): {_error_text(exc)}") from None


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
        context = {"body": body, "headers": _lower_headers(headers), "event": body, "source": self.source}
        result = _Result()
        for rule in self._rules:
            try:
                self._apply_rule(rule, body, context, result)
            except Exception as exc:  # a last guard: a rule that fails unexpectedly refuses itself
                result.refused.append(Refused(rule.origin, f"cannot be evaluated: {_error_text(exc)}"))
        skipped = {}
        if not result.applied:
            skipped[NO_RULE_MATCHED] = 1
        if result.nulls:
            skipped[VALUE_IS_NULL] = result.nulls
        return Decoded(result.items, origins=result.origins, refused=result.refused, skipped=skipped)

    def _apply_rule(self, rule: _Rule, body: object, base: dict, result: _Result) -> None:
        context = base
        if rule.events is None:
            events = (body,)
        else:
            try:
                events = rule.events(base)
            except Exception as exc:
                result.refused.append(Refused(rule.origin, f"events {rule.events_text}: {_error_text(exc)}"))
                return
            if events is None:
                return
            if not isinstance(events, list):
                result.refused.append(Refused(
                    rule.origin, f"events {rule.events_text} gave {_kind(events)}, not an array: {_preview(events)}"))
                return
        for index, event in enumerate(events):
            if rule.events is not None:
                context = {**base, "event": event}
            where = f"{rule.origin} event {index}"
            try:
                if rule.filter is not None:
                    try:
                        if _is_false(rule.filter(context)):
                            continue
                    except Exception as exc:
                        raise _Refuse(f"filter {rule.filter_text}: {_error_text(exc)}") from None
                result.applied = True
                dt = rule.timestamp(context)
                base_tags: dict = {}
                _evaluate_tags(rule.tags, context, base_tags)
            except _Refuse as exc:
                result.refused.append(Refused(where, str(exc)))
                continue
            for metric in rule.metrics:
                try:
                    item = metric.item(context, base_tags, dt)
                except _Refuse as exc:
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
                    text = _delivery_text(value)
                    if text:
                        return text
        if self._delivery_expression is not None:
            context = {"body": body, "headers": _lower_headers(headers), "event": body, "source": self.source}
            try:
                return _delivery_text(self._delivery_expression.evaluate(context))
            except Exception:  # an id that cannot be read is no id; the delivery still counts
                return None
        return None


def _lower_headers(headers: Mapping[str, str] | None) -> dict:
    if not headers:
        return {}
    return {str(name).lower(): value for name, value in headers.items()}


# ---------------------------------------------------------------------------------------------
# Loading and checking files


def load_file(path: Path | str) -> SourceRules:
    """Read, validate and compile one rule file; raises the first MappingError."""
    rules, errors = _check_file(Path(path))
    if errors:
        raise errors[0]
    assert rules is not None  # no errors: compiled
    return rules


def check_paths(paths: Sequence[Path]) -> tuple[list[SourceRules], list[MappingError]]:
    """Every error of every file; a path is a rule file or a folder of them."""
    loaded: list[SourceRules] = []
    errors: list[MappingError] = []
    for path in map(Path, paths):
        if path.is_dir():
            found, folder_errors = _check_folder(path)
            loaded.extend(found.values())
            errors.extend(folder_errors)
        elif path.is_file():
            rules, file_errors = _check_file(path)
            errors.extend(file_errors)
            if rules is not None:
                loaded.append(rules)
        else:
            errors.append(MappingError(str(path), "no such file or folder"))
    return loaded, errors


def load_sources(dirs: Sequence[Path]) -> dict[str, SourceRules]:
    """Each folder's rules by source; a later folder's file replaces an earlier one's for its source."""
    sources: dict[str, SourceRules] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise MappingError(str(folder), "no such folder of rule files")
        found, errors = _check_folder(folder)
        if errors:
            raise errors[0]
        sources.update(found)
    return sources


def rule_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RULE_FILE_SUFFIXES and p.is_file())


def _check_folder(folder: Path) -> tuple[dict[str, SourceRules], list[MappingError]]:
    found: dict[str, SourceRules] = {}
    errors: list[MappingError] = []
    for path in rule_files(folder):
        rules, file_errors = _check_file(path)
        errors.extend(file_errors)
        if rules is None:
            continue
        if rules.source in found:
            errors.append(MappingError(
                str(path), f"source '{rules.source}' is also described by {found[rules.source].path}; "
                "one file per source", field="/source"))
            continue
        found[rules.source] = rules
    return found, errors


_VALIDATORS: dict = {}


def _validator(explaining: bool):
    """jsonschema-rs says whether a file is valid (cheap to import, at start-up); jsonschema,
    imported only for an invalid file, says why in readable words with paths."""
    if explaining not in _VALIDATORS:
        schema = json.loads(MAPPING_SCHEMA.read_text(encoding="utf-8"))
        if explaining:
            from bridges.ingest.jsonschemas import explaining_validator

            _VALIDATORS[explaining] = explaining_validator(schema)
        else:
            import jsonschema_rs

            _VALIDATORS[explaining] = jsonschema_rs.Draft202012Validator(schema)
    return _VALIDATORS[explaining]


def _check_file(path: Path) -> tuple[SourceRules | None, list[MappingError]]:
    try:
        document = read_document(path)
    except MappingError as exc:
        return None, [exc]
    return check_document(document, path)


def check_document(document: Any, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
    """Validate and compile one source's rules already read (from a file, or inline in a polled
    source's declaration, ``path`` then naming where); every error found, or none."""
    name = str(path)
    errors = _key_errors(document, name, [], document)
    if errors:
        return None, errors
    try:
        valid = _validator(explaining=False).is_valid(document)
    except Exception:  # values JSON cannot hold (YAML dates...): let jsonschema explain
        valid = False
    if not valid:
        errors = [_schema_error(error, name, document) for error in _sorted_schema_errors(document)]
        if errors:
            return None, errors
    return _compile_file(document, path)


def read_document(path: Path) -> object:
    """A JSON or YAML file as data; MappingError (naming the file and the line) when unreadable."""
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in RULE_FILE_SUFFIXES:
        raise MappingError(name, "the file must end in .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MappingError(name, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise MappingError(name, f"cannot be read: {exc.strerror or exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise MappingError(name, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "unreadable"
        raise MappingError(name, f"YAML syntax error{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise MappingError(name, f"YAML error: {exc}") from None


def _key_errors(value: object, name: str, path: list, document: object) -> list[MappingError]:
    """YAML allows keys that are not text (1, true, dates); JSON Schema cannot check those."""
    errors = []
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                errors.append(MappingError(
                    name, f"the key {key!r} must be text (quote it)", _rule_of(document, path), json_pointer(path)))
            else:
                errors.extend(_key_errors(child, name, path + [key], document))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            errors.extend(_key_errors(child, name, path + [index], document))
    return errors


def _sorted_schema_errors(document: object) -> list:
    def position(error):
        return tuple((p, "") if isinstance(p, int) else (-1, str(p)) for p in error.absolute_path)

    return sorted(_validator(explaining=True).iter_errors(document), key=position)


def _schema_error(error, name: str, document: object) -> MappingError:
    path = list(error.absolute_path)
    message = error.message
    if path[:2] == ["signature", "secrets"]:
        # Whatever was written there may be a secret pasted by mistake: never repeat it.
        message = ("secrets are one or two distinct NAMES of settings that hold the secret "
                   "(^[A-Z][A-Z0-9_]*$), never the secret itself")
    elif error.validator == "not" and isinstance(error.schema, dict) and error.schema.get("description"):
        message = error.schema["description"]
    elif not path and error.validator == "type" and document is None:
        message = "the file is empty; it describes one source: source, rules, ..."
    return MappingError(name, message, _rule_of(document, path), json_pointer(path))


def _rule_of(document: object, path: list) -> str | None:
    """The name of the rule a path is inside, when there is one."""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int) and isinstance(document, dict):
        rules = document.get("rules")
        if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
            rule_name = rules[path[1]].get("name")
            if isinstance(rule_name, str):
                return rule_name
    return None


def _compile_file(document: dict, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
    """Compile a schema-valid document; collects every error a schema cannot find."""
    name = str(path)
    errors: list[MappingError] = []

    def compiled(text: str, where: list, rule: str | None = None) -> Expression | None:
        try:
            return compile_expression(text)
        except ValueError as exc:
            errors.append(MappingError(name, str(exc), rule, json_pointer(where)))
            return None

    def compiled_tags(tags: dict, where: list, rule: str | None = None) -> dict:
        return {tag: compiled(text, where + [tag], rule) for tag, text in tags.items()}

    idempotency = document.get("idempotency")
    delivery_expression = None
    if idempotency and "expression" in idempotency:
        delivery_expression = compiled(idempotency["expression"], ["idempotency", "expression"])
    defaults = document.get("defaults", {})
    default_tags = compiled_tags(defaults.get("tags", {}), ["defaults", "tags"])

    seen: dict[str, int] = {}
    rules = []
    for r, spec in enumerate(document["rules"]):
        rule_name = spec["name"]
        at = ["rules", r]
        if rule_name in seen:
            errors.append(MappingError(
                name, f"the rule name is also used at /rules/{seen[rule_name]}; names are unique in a file",
                rule_name, json_pointer(at + ["name"])))
        seen.setdefault(rule_name, r)
        events = compiled(spec["events"], at + ["events"], rule_name) if "events" in spec else None
        filter_ = compiled(spec["filter"], at + ["filter"], rule_name) if "filter" in spec else None
        timestamp, time_format = None, "auto"
        if "timestamp" in spec:
            timestamp = compiled(spec["timestamp"]["field"], at + ["timestamp", "field"], rule_name)
            time_format = spec["timestamp"].get("format", "auto")
            if time_format not in TIMESTAMP_FORMATS:
                try:
                    _check_strptime(time_format)
                except ValueError as exc:
                    errors.append(MappingError(name, str(exc), rule_name, json_pointer(at + ["timestamp", "format"])))
        rule_tags = {**default_tags, **compiled_tags(spec.get("tags", {}), at + ["tags"], rule_name)}
        namespace = spec.get("namespace", defaults.get("namespace"))
        metrics = []
        for m, metric_spec in enumerate(spec["metrics"]):
            where = at + ["metrics", m]
            try:
                parts = parse_template(metric_spec["name"])
            except ValueError as exc:
                errors.append(MappingError(name, f"name template {metric_spec['name']!r}: {exc}", rule_name,
                                           json_pointer(where + ["name"])))
                parts = []
            value = compiled(metric_spec["value"], where + ["value"], rule_name) if "value" in metric_spec else None
            metric_tags = compiled_tags(metric_spec.get("tags", {}), where + ["tags"], rule_name)
            metrics.append((metric_spec, namespace, parts, value, metric_tags))
        rules.append((rule_name, events, filter_, timestamp, time_format, rule_tags, metrics))
    if errors:
        return None, errors
    built = tuple(
        _Rule(rule_name, events, filter_, timestamp, time_format, tuple(rule_tags.items()),
              tuple(_Metric(spec, namespace, parts, value, tuple(tags.items()))
                    for spec, namespace, parts, value, tags in metrics))
        for rule_name, events, filter_, timestamp, time_format, rule_tags, metrics in rules
    )
    signature = document.get("signature")
    if signature is not None:
        signature = {**SIGNATURE_DEFAULTS.get(signature["scheme"], {}), **signature,
                     "secrets": tuple(signature["secrets"])}
    return SourceRules(
        source=document["source"],
        path=path,
        description=document.get("description"),
        _signature=signature,
        _idempotency=dict(idempotency) if idempotency else None,
        _rules=built,
        _delivery_expression=delivery_expression,
    ), []
