"""Matchers, compiled once when the declaration is read: a text matcher is a glob (``*``, ``?``,
``[abc]``, case-sensitive, on the whole text, as ``fnmatch.fnmatchcase``), ``{"regex": "..."}``
(Python syntax, matching the whole text) or a list of these (any one). A metric matcher holds
a name matcher and tag matchers (a metric without one of those tags does not match); a route's
match adds where the metric came from (``Origin``). Plain slotted classes, not dataclasses: they
are defined at start-up, and a dataclass costs a fraction of a millisecond to define."""
from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping

from bridges.routing.origin import Origin


class MatcherError(ValueError):
    """A matcher that cannot be compiled; ``pointer`` is relative to the matcher's object."""

    def __init__(self, pointer: str, message: str):
        super().__init__(message)
        self.pointer = pointer


class TextMatcher:
    __slots__ = ("patterns", "text")

    def __init__(self, patterns: tuple[re.Pattern, ...], text: str):
        self.patterns = patterns
        self.text = text  # as declared, for summaries

    def __call__(self, value: str | None) -> bool:
        if value is None:
            return False
        if len(self.patterns) == 1:
            return self.patterns[0].fullmatch(value) is not None
        return any(pattern.fullmatch(value) for pattern in self.patterns)


def text_matcher(spec: object) -> TextMatcher:
    """A schema-valid matcher (text, ``{"regex": ...}`` or a list of them), compiled."""
    specs = spec if isinstance(spec, list) else [spec]
    patterns = []
    for index, one in enumerate(specs):
        if isinstance(one, str):
            patterns.append(re.compile(fnmatch.translate(one)))
            continue
        try:
            patterns.append(re.compile(one["regex"]))
        except re.error as exc:
            pointer = f"/{index}" if isinstance(spec, list) else ""
            raise MatcherError(pointer, f"{json.dumps(one)} is not a valid regular expression: {exc}") from None
    return TextMatcher(tuple(patterns), _shown(spec))


def _shown(spec: object) -> str:
    if isinstance(spec, list):
        return " or ".join(_shown(one) for one in spec)
    return spec if isinstance(spec, str) else f"/{spec['regex']}/"  # type: ignore[index]


class MetricMatcher:
    """A name matcher and tag matchers, all of which must hold."""

    __slots__ = ("name", "tags")

    def __init__(self, name: TextMatcher | None = None, tags: tuple[tuple[str, TextMatcher], ...] = ()):
        self.name, self.tags = name, tags

    def __call__(self, name: str, tags: Mapping[str, str]) -> bool:
        return self.name_matches(name) and self.tags_match(tags)

    def name_matches(self, name: str) -> bool:
        return self.name is None or self.name(name)

    def tags_match(self, tags: Mapping[str, str]) -> bool:
        return all(matcher(tags.get(key)) for key, matcher in self.tags)

    def describe(self) -> str:
        parts = [f"name {self.name.text}"] if self.name else []
        parts += [f"tag {key} {matcher.text}" for key, matcher in self.tags]
        return ", ".join(parts) or "everything"


def metric_matcher(spec: Mapping) -> MetricMatcher:
    """``{"name": ..., "tags": {key: ...}}``, compiled; MatcherError points within it."""
    tags = tuple((key, _compiled(spec["tags"], key, "/tags")) for key in spec.get("tags", {}))
    return MetricMatcher(_optional(spec, "name"), tags)


def _compiled(spec: Mapping, key: str, base: str = "") -> TextMatcher:
    try:
        return text_matcher(spec[key])
    except MatcherError as exc:
        raise MatcherError(f"{base}/{key}{exc.pointer}", str(exc)) from None


def _optional(spec: Mapping, key: str) -> TextMatcher | None:
    return _compiled(spec, key) if key in spec else None


class OriginMatcher:
    """Where the metric came from: the input (any of ``inputs``), source, rule and check."""

    __slots__ = ("check", "inputs", "rule", "source")

    def __init__(self, inputs: frozenset[str] | None = None, source: TextMatcher | None = None,
                 rule: TextMatcher | None = None, check: TextMatcher | None = None):
        self.inputs, self.source, self.rule, self.check = inputs, source, rule, check

    def __call__(self, origin: Origin) -> bool:
        return ((self.inputs is None or origin.route in self.inputs)
                and (self.source is None or self.source(origin.source))
                and (self.rule is None or self.rule(origin.rule))
                and (self.check is None or self.check(origin.check)))

    def describe(self) -> list[str]:
        parts = [f"route {' or '.join(sorted(self.inputs))}"] if self.inputs else []
        return parts + [f"{field} {matcher.text}" for field, matcher in
                        (("source", self.source), ("rule", self.rule), ("check", self.check)) if matcher]


def origin_matcher(spec: Mapping) -> OriginMatcher:
    inputs = spec.get("route")
    return OriginMatcher(
        frozenset([inputs] if isinstance(inputs, str) else inputs) if inputs is not None else None,
        _optional(spec, "source"), _optional(spec, "rule"), _optional(spec, "check"))
