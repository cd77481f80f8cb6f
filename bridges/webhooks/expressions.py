"""JMESPath as rule files use it: the custom functions, expressions compiled once, name templates.

Every expression of a rule file is JMESPath. The custom functions (``CUSTOM_FUNCTIONS``) give null
for a null argument, so a missing field still means "skip". jmespath finds an unknown function or
a wrong number of arguments only when the expression runs; ``compile_expression`` refuses them, so
a rule file is refused at load instead.

Expressions are compiled once, into Python closures for the node types webhook rules use almost
exclusively (field paths with indexes, literals, comparisons, ``&&``, ``||``, ``!``, function
calls); every other node is handed to jmespath's own interpreter. Each closure copies the
interpreter's semantics for its node (tests check this against ``jmespath.search``), so results are
identical and a plain path such as ``event.a.b`` costs a few dictionary lookups. (JMESPath reads
``!event.draft`` as ``(!event).draft``; rule writers want ``!(event.draft)``.)

A metric's name is a template (``parse_template``): literal text and ``{expression}`` parts.
"""
from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions
from jmespath.visitor import Options, TreeInterpreter

from bridges.timestamps import NS_PER_SECOND, TimestampError, parse_timestamp
from bridges.webhooks.values import Refuse, is_number, preview

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode  # the stubs' type of a parsed expression's nodes


# ---------------------------------------------------------------------------------------------
# Custom functions


def _seconds(value: object, function: str) -> float:
    try:
        return parse_timestamp(value) / NS_PER_SECOND
    except TimestampError as exc:
        raise Refuse(f"{function}(): {preview(value)} is not a timestamp: {exc}") from None


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
            raise Refuse(f"divide(): {preview(dividend)} divided by zero")
        return dividend / divisor


CUSTOM_FUNCTIONS = ("seconds_between", "epoch_seconds", "lower", "upper", "divide")
_FUNCTIONS = _Functions()
_OPTIONS = Options(custom_functions=_FUNCTIONS)
_INTERPRETER = TreeInterpreter(_OPTIONS)


# ---------------------------------------------------------------------------------------------
# Expressions: jmespath's semantics, compiled to closures where that is simple


def is_false(value: object) -> bool:
    """JMESPath falsiness: empty string, array or object, null and false."""
    return value is None or value is False or value == "" or value == [] or value == {}


def jmespath_equals(left: object, right: object) -> bool:
    """JMESPath equality: 0 and 1 never equal false and true."""
    if is_number(left) and left in (0, 1):
        if isinstance(right, bool):
            return False
    elif is_number(right) and right in (0, 1) and isinstance(left, bool):
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


@dataclass(frozen=True, slots=True)
class Guard:
    """What a filter first asks: does ``key`` give one of ``values``? (``key == 'push' && ...``,
    ``contains(['a', 'b'], key)``.) Rules over the same events often ask it of the same key, so
    it is evaluated once per event and a rule whose answer is no is passed over without running
    its filter, which would give false. When the answer is yes, what the filter asks besides is
    ``rest`` (None: nothing). ``shape`` is the key's parsed form: equal shapes, the same key."""

    shape: str
    key: Callable[[object], object]
    values: frozenset
    rest: Callable[[object], object] | None = None


def guard_of(text: str) -> Guard | None:
    """The guard of a filter that starts with a comparison of one key to string literals."""
    conjuncts = _conjuncts(jmespath.compile(text).parsed)
    node = conjuncts[0]
    key, values = None, None
    if node["type"] == "comparator" and node["value"] == "eq":
        right = node["children"][1]
        if right["type"] == "literal" and isinstance(right["value"], str):
            key, values = node["children"][0], [right["value"]]
    elif node["type"] == "function_expression" and node["value"] == "contains":
        values = _string_literals(node["children"][0])
        key = node["children"][1] if values is not None else None
    if key is None or values is None:
        return None
    evaluate, _ = _compile_node(key)
    rest = None
    if len(conjuncts) > 1:
        # ``(guard && a) && b`` with a true guard is ``a && b``: && gives its right side then.
        node = conjuncts[1]
        for right in conjuncts[2:]:
            node = {"type": "and_expression", "children": [node, right]}
        rest, _ = _compile_node(node)
    return Guard(json.dumps(key, sort_keys=True), evaluate, frozenset(values), rest)


def _conjuncts(node: _TreeNode) -> list:
    """``a && b && c`` (parsed as ``(a && b) && c``) as [a, b, c]."""
    if node["type"] == "and_expression":
        return [*_conjuncts(node["children"][0]), node["children"][1]]
    return [node]


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
    if kind == "multi_select_list":  # ``[a, 'b']``, e.g. the list of event types a filter looks in
        compiled = [_compile_node(child) for child in children]
        return _select_list([fn for fn, _ in compiled]), all(fast for _, fast in compiled)
    if kind == "function_expression" and node["value"] == "contains" and _string_literals(children[0]) is not None:
        (listed, _), (inner, fast) = _compile_node(children[0]), _compile_node(children[1])
        general = _call("contains", [listed, inner])
        return _contains_one_of(frozenset(_string_literals(children[0]) or ()), inner, general), fast
    if kind == "function_expression" and all(child["type"] != "expref" for child in children):
        compiled = [_compile_node(child) for child in children]
        return _call(node["value"], [fn for fn, _ in compiled]), all(fast for _, fast in compiled)
    visit = _INTERPRETER.visit
    return (lambda value: visit(node, value)), False


def _string_literals(node: _TreeNode) -> list[str] | None:
    """The strings of a list written out as string literals (``['a', 'b']``), else None."""
    if node["type"] != "multi_select_list":
        return None
    values = [child.get("value") for child in node["children"] if child["type"] == "literal"]
    if len(values) != len(node["children"]) or not all(isinstance(value, str) for value in values):
        return None
    return values


def _contains_one_of(strings: frozenset, subject: Callable[[object], object],
                     general: Callable[[object], object]) -> Callable[[object], object]:
    """``contains(['a', 'b'], x)``, the filters' "one of these event types": a set lookup. Only
    a string can equal a string, so anything else is not contained (jmespath's answer too).
    Against null the list itself is null (a type error): the general call says so."""
    def contains(value):
        if value is None:
            return general(value)
        found = subject(value)
        return found in strings if isinstance(found, str) else False

    return contains


def _select_list(items: list[Callable[[object], object]]) -> Callable[[object], object]:
    """jmespath's multi_select_list: null for a null value, else each item's result."""
    def select(value):
        return None if value is None else [item(value) for item in items]

    return select


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
        if not ((is_number(a) or isinstance(a, str)) and (is_number(b) or isinstance(b, str))):
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
        if is_false(matched):
            return matched
        return right(value)

    return both


def _or(left, right):
    def either(value):
        matched = left(value)
        if is_false(matched):
            matched = right(value)
        return matched

    return either


def _not(inner):
    def negate(value):
        result = inner(value)
        if is_number(result) and result == 0:
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
