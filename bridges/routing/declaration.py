"""The routes declaration (schemas/routes.schema.json), read from BRIDGE_ROUTES_FILE (JSON or
YAML) or the inline BRIDGE_ROUTES as checks and polled sources are (``scheduled.declared``),
then compiled into a ``Router``. Every problem is a RoutesError naming the setting (and file),
the route (index, and name when it has one) and the field as a JSON pointer; what the schema
cannot say (regular expressions compile, sink names exist, a replacement's groups exist) is
checked here, once, so nothing fails later."""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bridges.delivery.sinks import SINK_NAMES
from bridges.routing.matching import MatcherError, MetricMatcher, metric_matcher, origin_matcher
from bridges.routing.processing import CardinalityGuard, SinkProcessors
from bridges.routing.router import Route, Router, route_label
from bridges.settings import SettingsError

SCHEMA = "routes.schema.json"


class RoutesError(SettingsError):
    """A routes declaration that cannot be used; a SettingsError, so start-up reports it as one."""


def routes_of(settings: Any) -> Router:
    """The Router the settings declare (``Router.none()`` when they declare none)."""
    return load_routes(settings.routes_file, settings.routes)


def load_routes(path: Path | None, inline: str = "", file_setting: str = "BRIDGE_ROUTES_FILE",
                inline_setting: str = "BRIDGE_ROUTES") -> Router:
    """The routes of the file or of the inline JSON (not both), compiled."""
    from bridges.scheduled.declared import read_declaration

    try:
        document, where = read_declaration(file_setting, path, inline_setting, inline)
    except SettingsError as exc:
        raise RoutesError(str(exc)) from None
    return parse_routes(document, where) if where else Router.none()


def parse_routes(document: object, where: str) -> Router:
    """A declaration's document, validated and compiled; ``where`` starts every message."""
    from bridges.scheduled.declared import validate_declaration

    try:
        validate_declaration(document, SCHEMA, where, lambda path: _place(document, path))
    except SettingsError as exc:
        raise RoutesError(str(exc)) from None
    assert isinstance(document, dict)
    routes = [_route(index, entry, where) for index, entry in enumerate(document.get("routes", ()))]
    processors = {sink: _processors(sink, spec, where) for sink, spec in document.get("sinks", {}).items()}
    return Router(routes, processors, where)


def _place(document: object, path: Sequence) -> str:
    """``route 2 'flags' `` for a path within the third route, for messages."""
    if len(path) < 2 or path[0] != "routes" or not isinstance(path[1], int):
        return ""
    entry = document["routes"][path[1]]  # type: ignore[index]
    return route_label(path[1], entry.get("name") if isinstance(entry, dict) else None) + " "


def _route(index: int, entry: Mapping, where: str) -> Route:
    place = f"{where}: {route_label(index, entry.get('name'))} at /routes/{index}"
    match = entry.get("match", {})
    try:
        origin, metric = origin_matcher(match), metric_matcher(match)
    except MatcherError as exc:
        raise RoutesError(f"{place}/match{exc.pointer}: {exc}") from None
    for position, sink in enumerate(entry["sinks"]):
        _known_sink(sink, f"{place}/sinks/{position}")
    return Route(index, entry.get("name"), origin, metric, tuple(entry["sinks"]), entry.get("continue", False))


def _known_sink(sink: str, place: str) -> None:
    if sink not in SINK_NAMES:
        raise RoutesError(f"{place}: no sink is named {sink!r}; the sinks are {', '.join(SINK_NAMES)}")


def _processors(sink: str, spec: Mapping, where: str) -> SinkProcessors:
    place = f"{where}: at /sinks/{sink}"
    _known_sink(sink, place)
    keep, drop = (_matcher_of(spec, key, place) for key in ("keep", "drop"))
    rename = spec.get("rename", {})
    replace = _replacement(rename["replace"], f"{place}/rename/replace") if "replace" in rename else None
    tag_keys = spec.get("tag_keys", {})
    keep_keys = frozenset(tag_keys["keep"]) if "keep" in tag_keys else None
    if keep_keys is not None:
        lost = [key for key in spec.get("add_tags", {}) if key not in keep_keys]
        if lost:
            raise RoutesError(f"{place}/add_tags/{lost[0]}: tag_keys keeps only {', '.join(sorted(keep_keys))}, so "
                              f"the tag {lost[0]!r} it adds would be dropped (tag_keys applies after add_tags): "
                              "list it under tag_keys/keep")
    cardinality = spec.get("cardinality")
    guard = CardinalityGuard(cardinality["limit"], frozenset(cardinality["tags"]) if "tags" in cardinality else None) \
        if cardinality else None
    return SinkProcessors(sink, keep=keep, drop=drop, replace=replace, prefix=rename.get("prefix", ""),
                          add_tags=spec.get("add_tags"), keep_keys=keep_keys,
                          drop_keys=frozenset(tag_keys.get("drop", ())), guard=guard)


def _matcher_of(spec: Mapping, key: str, place: str) -> MetricMatcher | None:
    """The metric matcher ``spec[key]`` (keep or drop), compiled; None when it is not given."""
    if key not in spec:
        return None
    try:
        return metric_matcher(spec[key])
    except MatcherError as exc:
        raise RoutesError(f"{place}/{key}{exc.pointer}: {exc}") from None


def _replacement(spec: Mapping, place: str) -> tuple[re.Pattern, str]:
    try:
        pattern = re.compile(spec["regex"])
    except re.error as exc:
        raise RoutesError(f"{place}/regex: {json.dumps(spec['regex'])} is not a valid regular expression: {exc}") from None
    try:
        pattern.sub(spec["with"], "")  # compiles the template: group references and escapes
    except (re.error, IndexError) as exc:
        raise RoutesError(f"{place}/with: {json.dumps(spec['with'])} is not a valid replacement for /{spec['regex']}/: "
                          f"{exc}") from None
    return pattern, spec["with"]
