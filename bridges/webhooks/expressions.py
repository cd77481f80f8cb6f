"""JMESPath as rule files use it: the custom functions, expressions compiled once, name templates.

Every expression of a rule file is JMESPath. The custom functions (``CUSTOM_FUNCTIONS``) give null
for a null argument, so a missing field still means "skip". jmespath finds an unknown function or
a wrong number of arguments only when the expression runs; ``compile_expression`` refuses them, so
a rule file is refused at load instead.

Expressions are compiled once, into Python source (``PythonSource``) for the node types webhook
rules use almost exclusively; every other node is handed to jmespath's own interpreter. The text
written for each node copies the interpreter's semantics (tests check this against
``jmespath.search``), so results are identical and a plain path such as ``event.a.b`` costs a
few dictionary lookups.

A metric's name is a template (``parse_template``): literal text and ``{expression}`` parts.
"""
from __future__ import annotations

import functools
import operator
import textwrap
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
# Expressions: jmespath's semantics, compiled to Python source


def is_false(value: object) -> bool:
    """JMESPath falsiness: null, false, empty string, array and object (0 is true). The compiled
    ``&&`` and ``||`` write the same test inline."""
    return not value and value.__class__ is not int and value.__class__ is not float


def jmespath_equals(left: object, right: object) -> bool:
    """JMESPath equality: 0 and 1 never equal false and true."""
    if is_number(left) and left in (0, 1):
        if isinstance(right, bool):
            return False
    elif is_number(right) and right in (0, 1) and isinstance(left, bool):
        return False
    return left == right


_ORDERING = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


@dataclass(frozen=True, eq=False)
class Expression:
    """A checked expression. ``evaluate(context)`` is compiled when first used: the rule engine
    writes ``node``, the parsed form, into its own function instead, so most never need it."""

    text: str
    node: _TreeNode

    @functools.cached_property
    def evaluate(self) -> Callable[[object], object]:
        source = PythonSource()
        return source.function("evaluate", "value", f"return {source.expression(self.node, 'value')}")

    @property
    def fast(self) -> bool:
        """No node needs the interpreter."""
        source = PythonSource()
        source.expression(self.node, "value")
        return source.fast


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
    return Expression(text, parsed.parsed)


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


_INLINE_STEPS = 4  # longer paths are walked by _walk: each inline step nests the text deeper
# Python's tokenizer takes 200 nested brackets: a text with fewer in all compiles without a check.
_NESTING_CHECKED_FROM = 190


class PythonSource:
    """JMESPath expressions written as Python expressions, with jmespath's semantics (a test
    holds them to its interpreter), so that a path costs a few dictionary lookups instead of a
    call per node, and a rule file becomes one function (``bridges.webhooks.rules``).

    Written inline: field paths with indexes, literals, comparisons, ``&&``, ``||``, ``!``,
    multi-select lists, projections (``[*]``, ``[?...]``, ``.*``, ``[]``) and function calls;
    every other node (slices, ``&expression`` arguments, multi-select hashes...) is handed to
    jmespath's own interpreter. What the text needs besides builtins (literal objects,
    sets, callers, nodes for the interpreter) is kept in ``names``; temporaries are fresh local
    names (``_t1``...). ``fields``: keys of the subject named ``context`` that the caller holds in
    local variables of those names; ``reads`` collects those read, and "*" when an expression
    may read the context whole (``@``, a node left to the interpreter). (JMESPath reads
    ``!event.draft`` as ``(!event).draft``; rule writers want ``!(event.draft)``.)"""

    def __init__(self, fields: Sequence[str] = ()):
        self.names: dict[str, object] = dict(_RUNTIME)
        self.fast = True
        self._fields = frozenset(fields)
        self.reads: set[str] = set()
        self._temporaries = 0

    def expression(self, node: _TreeNode, subject: str) -> str:
        """``node`` read from ``subject`` (Python text, evaluated exactly once). A text too deeply
        nested for Python's compiler is left to the interpreter whole."""
        text = self._emit(node, subject)
        if sum(map(text.count, "([{")) < _NESTING_CHECKED_FROM:  # cannot nest deeper than the compiler takes
            return text
        try:
            compile(text, "<jmespath>", "eval")
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            return self._interpreted(node, subject)
        return text

    def _interpreted(self, node: _TreeNode, subject: str) -> str:
        self.fast = False
        if subject == "context":
            self.reads.add("*")
        return f"_visit({self.constant(node)}, {subject})"

    def function(self, name: str, parameters: str, body: str) -> Callable:
        """Define ``def name(parameters): body`` (body indented as written) with the names kept."""
        namespace = dict(self.names)
        exec(f"def {name}({parameters}):\n{textwrap.indent(body, '    ')}\n", namespace)  # noqa: S102
        made = namespace[name]
        assert callable(made)
        return made

    def constant(self, value: object) -> str:
        name = f"_k{len(self.names)}"
        self.names[name] = value
        return name

    def _literal(self, value: object) -> str:
        """A value as Python text: written out when that is short and exact, else kept by name."""
        if value is None or isinstance(value, str) or (isinstance(value, int) and -2**63 < value < 2**63):
            return repr(value)
        return self.constant(value)

    def temporary(self) -> str:
        self._temporaries += 1
        return f"_t{self._temporaries}"

    def _bind(self, subject: str) -> tuple[str, str]:
        """(first use, later uses) of a subject read more than once: a plain name as it is, else a
        temporary assigned where it is read first, which must be where it is evaluated first."""
        if subject.isidentifier():
            return subject, subject
        name = self.temporary()
        return f"({name} := {subject})", name

    def _emit(self, node: _TreeNode, subject: str) -> str:
        steps = _path_steps(node)
        if steps is not None:
            return self._path(steps, subject)
        kind = node["type"]
        children = node.get("children", [])
        if kind == "literal":
            value = node["value"]
            text = self._literal(value)
            # What a literal follows is still evaluated (``f(a) | 'x'`` fails where f(a) fails).
            return text if subject.isidentifier() else f"({subject}, {text})[1]"
        if kind in ("subexpression", "index_expression", "pipe"):  # each child reads what the one before gave
            for child in children:
                subject = self._emit(child, subject)
            return subject
        if kind == "not_expression":
            return f"_negate({self._emit(children[0], subject)})"
        if kind == "flatten":
            return f"_flatten({self._emit(children[0], subject)})"
        if kind in ("projection", "filter_projection", "value_projection"):
            # [right(e) for each e of the left side (the values of an object for ``.*``) that
            # passes the filter, when right(e) is not null]; null when there is nothing to project.
            base, element, found = self.temporary(), self.temporary(), self.temporary()
            left, right = self._emit(children[0], subject), self._emit(children[1], element)
            test = f"not {self.false(self._emit(children[2], element))[0]} and " if kind == "filter_projection" else ""
            values, source = ("dict", f"{base}.values()") if kind == "value_projection" else ("list", base)
            return (f"([{found} for {element} in {source} if {test}({found} := {right}) is not None] "
                    f"if isinstance(({base} := {left}), {values}) else None)")
        if kind == "function_expression" and children and all(child["type"] != "expref" for child in children):
            first, later = self._bind(subject)
            listed = _string_literals(children[0]) if node["value"] == "contains" else None
            if listed is None:
                return self._call(node["value"], children, first, later)
            call = self._call(node["value"], children, later, later)
            # contains(['a', 'b'], x), the filters' "one of these": a set lookup. Only a string can
            # equal a string; against null the list itself is null, an error the call raises.
            found, strings = self.temporary(), self.constant(frozenset(listed))
            inner = self._emit(children[1], later)
            return f"({call} if {first} is None else ({found} in {strings} if isinstance(({found} := {inner}), str) else False))"
        if kind not in ("comparator", "and_expression", "or_expression", "multi_select_list"):
            return self._interpreted(node, subject)
        first, later = self._bind(subject)
        if kind == "multi_select_list":
            return f"(None if {first} is None else [{', '.join(self._emit(child, later) for child in children)}])"
        left = self._emit(children[0], first)
        op, right_node = node.get("value"), children[1]
        if kind == "comparator" and op in ("eq", "ne") and right_node["type"] == "literal" and isinstance(right_node["value"], str):
            # Against a string, JMESPath equality is Python's (the 0/1-versus-boolean care is for numbers).
            return f"({left} {'==' if op == 'eq' else '!='} {right_node['value']!r})"
        right = self._emit(right_node, later)
        if kind == "comparator":
            if op in ("eq", "ne"):
                return f"({'' if op == 'eq' else 'not '}_equals({left}, {right}))"
            return f"_order({self.constant(_ORDERING[op])}, {left}, {right})"
        if _boolean(children[0]):  # a boolean is false when it is False
            value = self.temporary()
            false = f"(not ({value} := {left}))"
        else:
            false, value = self.false(left)
        return f"({value} if {false} else {right})" if kind == "and_expression" else f"({right} if {false} else {value})"

    def test(self, node: _TreeNode, subject: str) -> str:
        """A Python condition true when ``node`` read from ``subject`` is true as JMESPath sees
        it: a comparison, ``&&``, ``||`` and ``!`` of such as Python's own, anything else by the
        ``false`` test."""
        kind, children = node["type"], node.get("children", [])
        if kind == "not_expression":
            return self.false(self._emit(children[0], subject))[0]
        if _boolean(node):
            return self._emit(node, subject)
        if kind in ("and_expression", "or_expression"):
            first, later = self._bind(subject)
            joined = " and " if kind == "and_expression" else " or "
            return f"({self.test(children[0], first)}{joined}{self.test(children[1], later)})"
        return f"not {self.false(self._emit(node, subject))[0]}"

    def false(self, text: str) -> tuple[str, str]:
        """``is_false`` of ``text`` inline, and the temporary that then holds its value."""
        value = self.temporary()
        return f"(not ({value} := {text}) and {value}.__class__ is not int and {value}.__class__ is not float)", value

    def _call(self, name: str, children: list, first: str, later: str) -> str:
        arguments = [self._emit(child, first if i == 0 else later) for i, child in enumerate(children)]
        return f"{self.constant(_caller(name, len(children)))}({', '.join(arguments)})"

    def _path(self, steps: list, subject: str) -> str:
        if subject == "context":
            if steps and steps[0][0] == "key" and steps[0][1] in self._fields:
                subject, steps = steps[0][1], steps[1:]
                self.reads.add(subject)
            elif not steps:  # @: the context itself
                self.reads.add("*")
        if len(steps) > _INLINE_STEPS:
            return f"_walk({subject}, {self.constant(tuple(steps))})"
        for kind, key in steps:
            first, later = self._bind(subject)
            if kind == "key":
                subject = f"({later}.get({key!r}) if isinstance({first}, dict) else None)"
            else:
                index = self._literal(key)
                subject = f"({later}[{index}] if isinstance({first}, list) and -len({later}) <= {index} < len({later}) else None)"
        return subject


def _boolean(node: _TreeNode) -> bool:
    """Whether a node always gives True or False (or fails): ==, !=, !, and the functions that test."""
    kind = node["type"]
    return ((kind == "comparator" and node["value"] in ("eq", "ne")) or kind == "not_expression"
            or (kind == "function_expression" and node["value"] in ("contains", "starts_with", "ends_with")))


def _string_literals(node: _TreeNode) -> list[str] | None:
    """The strings of a list written out as string literals (``['a', 'b']``), else None."""
    if node["type"] != "multi_select_list":
        return None
    values = [child.get("value") for child in node["children"] if child["type"] == "literal"]
    if len(values) != len(node["children"]) or not all(isinstance(value, str) for value in values):
        return None
    return values


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


def _walk(value: object, steps: tuple) -> object:
    """A long plain path, step by step."""
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


def _flatten(value: object) -> list | None:
    """``[]``: a list with the elements of its lists in their place."""
    if not isinstance(value, list):
        return None
    merged: list = []
    for element in value:
        if isinstance(element, list):
            merged.extend(element)
        else:
            merged.append(element)
    return merged


def _order(compare: Callable[[object, object], bool], left: object, right: object) -> bool | None:
    """<, <=, >, >=: null unless both sides are numbers or strings."""
    if not ((is_number(left) or isinstance(left, str)) and (is_number(right) or isinstance(right, str))):
        return None
    return compare(left, right)


def _negate(result: object) -> bool:
    """``!``: not 0 is false in JMESPath."""
    if is_number(result) and result == 0:
        return False
    return not result


@functools.cache
def _caller(name: str, count: int) -> Callable[..., object]:
    """A function called with its evaluated arguments. jmespath checks argument types on every
    call, slowly; for one or two arguments without array subtypes the same check (by type name,
    as jmespath does) is made here, and any argument that fails it goes to jmespath, which raises
    its usual error."""
    call = _FUNCTIONS.call_function
    spec = _FUNCTIONS.FUNCTION_TABLE[name]
    signature = spec["signature"]
    simple = count == len(signature) in (1, 2) and not any(
        s.get("variadic") or any("-" in t for t in s["types"]) for s in signature)
    if not simple:
        return lambda *arguments: call(name, list(arguments))
    function = spec["function"]
    allowed = [
        frozenset(n for t in s["types"] for n in jmespath_functions.REVERSE_TYPES_MAP[t]) if s["types"] else None
        for s in signature
    ]
    if count == 1:
        (ok,) = allowed

        def call_one(a):
            if ok is None or type(a).__name__ in ok:
                return function(_FUNCTIONS, a)
            return call(name, [a])

        return call_one
    ok_first, ok_second = allowed

    def call_two(a, b):
        if (ok_first is None or type(a).__name__ in ok_first) and (ok_second is None or type(b).__name__ in ok_second):
            return function(_FUNCTIONS, a, b)
        return call(name, [a, b])

    return call_two


_RUNTIME: dict[str, object] = {"_equals": jmespath_equals, "_order": _order, "_negate": _negate, "_walk": _walk,
                               "_flatten": _flatten, "_visit": _INTERPRETER.visit}


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
