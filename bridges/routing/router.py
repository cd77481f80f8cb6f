"""The router: which enabled sinks get each metric, and each sink's processors applied.

Routes are tried in order; the first whose match holds decides, unless it says ``continue``:
then later routes are tried too and the sinks add up (Alertmanager's routing tree, flat). A
metric no route matches goes nowhere and is counted as unrouted; a route with ``sinks: []``
sends what it matches nowhere, deliberately. Without a declaration every enabled sink gets
every metric, unchanged (``Router.none()``, which costs a list copy per sink).

The route decision depends only on where a metric came from, its name and (when a route looks at
tags) its tags, so it is worked out once per origin and name (and tags) and reused; at most
50,000 decisions (each with its sinks' plans) and 4,096 origins are kept, then all are forgotten. ``route`` holds a lock: the cardinality
guards and counters are shared by every request of the process.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bridges.delivery.sinks import SINK_NAMES
from bridges.model import Metric
from bridges.routing.matching import MetricMatcher, OriginMatcher
from bridges.routing.origin import Origin
from bridges.routing.processing import MINUTE_NS, Plan, SinkProcessors

MAX_DECISIONS = 50_000
MAX_ORIGINS = 4_096  # distinct origins: few in practice (inputs x sources x rules x checks)


def route_label(index: int, name: object) -> str:
    """``route 2 'flags'``, or ``route 2`` for a route without a name."""
    return f"route {index}" + (f" '{name}'" if isinstance(name, str) else "")


class Route:
    __slots__ = ("carry_on", "index", "metric", "name", "origin", "sinks")

    def __init__(self, index: int, name: str | None, origin: OriginMatcher, metric: MetricMatcher,
                 sinks: tuple[str, ...], carry_on: bool = False):
        self.index, self.name, self.origin, self.metric = index, name, origin, metric
        self.sinks = sinks
        self.carry_on = carry_on  # "continue": later routes are tried too

    @property
    def label(self) -> str:
        return route_label(self.index, self.name)

    def describe(self) -> str:
        conditions = self.origin.describe() + ([self.metric.describe()] if self.metric.name or self.metric.tags else [])
        return (f"{self.label}: {', '.join(conditions) or 'everything'} -> {', '.join(self.sinks) or 'nowhere'}"
                + (" (continue)" if self.carry_on else ""))


@dataclass(frozen=True)
class Explanation:
    """What routing and processing did to one metric."""

    routes: tuple[str, ...]  # the routes that matched, by label
    sinks: tuple[str, ...]  # the enabled sinks it went to (before keep/drop)
    skipped: tuple[str, ...] = ()  # sinks its routes name that are not enabled
    steps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # sink -> what its processors did
    routed: bool = True  # False: no routes are declared, so every enabled sink gets every metric

    def lines(self) -> list[str]:
        if not self.routed:
            head = "no routes declared: every enabled sink"
        elif self.routes:
            head = f"{' and '.join(self.routes)} matched: " + (", ".join(self.sinks) or "delivered nowhere")
        else:
            head = "no route matched: unrouted, delivered nowhere"
        lines = [head] + [f"{sink}: not enabled, skipped" for sink in self.skipped]
        return lines + [f"{sink}: {'; '.join(self.steps.get(sink, ())) or 'unchanged'}" for sink in self.sinks]


@dataclass
class Routed:
    per_sink: dict[str, list[Metric]]  # each enabled sink's metrics, processed, in input order
    indexes: dict[str, list[int]] = field(default_factory=dict)  # per sink: each metric's place in the input
    unrouted: int = 0  # matched by no route
    dropped: dict[str, int] = field(default_factory=dict)  # by keep/drop, per sink
    folded: dict[str, int] = field(default_factory=dict)  # by the cardinality guard, per sink
    renames_refused: dict[str, int] = field(default_factory=dict)  # per sink
    explanations: list[Explanation] | None = None  # per metric, when asked for


class _Decision:
    """The routes that matched, and for each sink they name its processors' ``apply`` and their
    plan for this name and tags (None, None: the sink takes the metric as it is)."""

    __slots__ = ("routes", "targets")

    def __init__(self, routes: tuple[Route, ...], targets: tuple[tuple[str, Callable | None, Plan | None], ...]):
        self.routes, self.targets = routes, targets


class _Decider:
    """The routes one origin can match (None: no routes declared, every sink), and the
    decisions per name (and tags, when routes or processors look at them) so far."""

    __slots__ = ("by_name", "by_tags", "memo", "processors", "routes")

    def __init__(self, routes: tuple[Route, ...] | None, processors: Mapping[str, SinkProcessors]):
        self.routes, self.processors = routes, processors
        self.by_tags = bool(processors) or any(route.metric.tags for route in routes or ())
        self.memo: dict[object, _Decision] = {}
        self.by_name: dict[str, tuple[Route, ...]] = {}  # the routes whose name matcher takes the name

    def key(self, name: str, tags: tuple) -> object:
        return (name, tags) if self.by_tags else name

    def decide(self, key: object, name: str, tags: tuple) -> _Decision:
        """Work out the decision for this name and tags, and remember it under ``key``."""
        found = self.memo[key] = self._decided(name, tags)
        return found

    def forget(self) -> None:
        self.memo.clear()
        self.by_name.clear()

    def _decided(self, name: str, tags: tuple) -> _Decision:
        if self.routes is None:
            sinks: Iterable[str] = SINK_NAMES
            matched: tuple[Route, ...] = ()
        else:
            matched = self._matched(self._named(name), dict(tags))
            sinks = dict.fromkeys(sink for route in matched for sink in route.sinks)
        targets = []
        for sink in sinks:
            processors = self.processors.get(sink)
            targets.append((sink, processors.apply, processors.plan(name, tags)) if processors else (sink, None, None))
        return _Decision(matched, tuple(targets))

    def _named(self, name: str) -> tuple[Route, ...]:
        found = self.by_name.get(name)  # never more names than decisions: no bound of its own
        if found is None:
            found = self.by_name[name] = tuple(r for r in self.routes or () if r.metric.name_matches(name))
        return found

    @staticmethod
    def _matched(candidates: tuple[Route, ...], tags: dict[str, str]) -> tuple[Route, ...]:
        matched = []
        for route in candidates:
            if route.metric.tags_match(tags):
                matched.append(route)
                if not route.carry_on:
                    break
        return tuple(matched)


class Router:
    """The compiled declaration and what it remembers: decisions, the guards' tag sets, counts."""

    def __init__(self, routes: Sequence[Route] = (), processors: Mapping[str, SinkProcessors] | None = None,
                 where: str = ""):
        """``where`` names the declaration (setting and file) in problems."""
        self.routes = tuple(routes)
        self.processors = dict(processors or {})
        self.where = where
        self._deciders: dict[Origin | None, _Decider] = {}
        self._remembered = 0  # decisions, in all deciders
        self._lock = threading.Lock()
        self.unrouted = 0  # since start

    @classmethod
    def none(cls) -> Router:
        """No declaration: every enabled sink gets every metric."""
        return cls()

    @property
    def declared(self) -> bool:
        return bool(self.routes or self.processors)

    def route(self, metrics: Sequence[Metric], origins: Origin | Sequence[Origin] | Callable[[int], Origin],
              sinks: Sequence[str], now_ns: int, explain: bool = False) -> Routed:
        """Each enabled sink's metrics. ``origins``: one Origin for them all, one per metric, or
        a function of the metric's index; ``now_ns`` (epoch ns) says which minute the cardinality
        guards count in."""
        enabled = tuple(sinks)
        if not metrics:
            return Routed({}, explanations=[] if explain else None)
        if not self.declared:
            explained = [Explanation((), enabled, routed=False)] * len(metrics) if explain else None
            every = list(range(len(metrics)))
            return Routed({sink: list(metrics) for sink in enabled}, dict.fromkeys(enabled, every),
                          explanations=explained)
        origin_at = _origin_reader(origins)
        per_sink: dict[str, list[Metric]] = {sink: [] for sink in enabled}
        indexes: dict[str, list[int]] = {sink: [] for sink in enabled}
        appenders = {sink: (per_sink[sink].append, indexes[sink].append) for sink in enabled}
        explanations: list[Explanation] | None = [] if explain else None
        notes: list[str] | None = None
        steps: dict[str, tuple[str, ...]] = {}
        routed = bool(self.routes)
        with self._lock:
            processors = {sink: self.processors[sink] for sink in enabled if sink in self.processors}
            for each in processors.values():
                each.begin(now_ns // MINUTE_NS)
            # Without routes one decider serves every origin.
            last_origin = origin_at(0) if routed else None
            decider = self._decider(last_origin)
            per_metric = routed and not isinstance(origins, Origin)
            unrouted = 0
            for index, metric in enumerate(metrics):
                if per_metric:
                    origin = origin_at(index)
                    if origin is not last_origin:
                        decider, last_origin = self._decider(origin), origin
                key = (metric.name, metric.tags) if decider.by_tags else metric.name
                decision = decider.memo.get(key)
                if decision is None:
                    decision = self._decided(decider, key, metric)
                if routed and not decision.routes:
                    unrouted += 1
                for sink, apply, plan in decision.targets:
                    append = appenders.get(sink)
                    if append is None:
                        continue  # not enabled
                    if apply is None:
                        append[0](metric)
                        append[1](index)
                        continue
                    if explanations is not None:
                        notes = []
                    processed = apply(metric, plan, notes)
                    if processed is not None:
                        append[0](processed)
                        append[1](index)
                    if notes:
                        steps[sink] = tuple(notes)
                if explanations is not None:
                    explanations.append(self._explanation(decision, per_sink, steps))
                    steps = {}
            self.unrouted += unrouted
            for each in processors.values():
                each.end()
        return Routed(
            {sink: kept for sink, kept in per_sink.items() if kept},
            {sink: kept for sink, kept in indexes.items() if kept}, unrouted,
            {sink: p.dropped for sink, p in processors.items() if p.dropped},
            {sink: p.folded for sink, p in processors.items() if p.folded},
            {sink: p.refused for sink, p in processors.items() if p.refused}, explanations)

    def _explanation(self, decision: _Decision, enabled: Mapping[str, object], steps: dict) -> Explanation:
        sinks = [sink for sink, _, _ in decision.targets]
        return Explanation(tuple(route.label for route in decision.routes),
                           tuple(sink for sink in sinks if sink in enabled),
                           tuple(sink for sink in sinks if sink not in enabled) if self.routes else (), steps,
                           routed=bool(self.routes))

    def _decided(self, decider: _Decider, key: object, metric: Metric) -> _Decision:
        """A new decision, remembered: past MAX_DECISIONS in all, every decision is forgotten."""
        if self._remembered >= MAX_DECISIONS:
            self._forget()
        self._remembered += 1
        return decider.decide(key, metric.name, metric.tags)

    def _forget(self) -> None:
        for decider in self._deciders.values():
            decider.forget()
        self._remembered = 0

    def _decider(self, origin: Origin | None) -> _Decider:
        """The decider for this origin (None: for every origin, when no routes are declared)."""
        decider = self._deciders.get(origin)
        if decider is None:
            if len(self._deciders) >= MAX_ORIGINS:
                self._forget()
                self._deciders.clear()
            routes = tuple(r for r in self.routes if r.origin(origin)) if origin is not None else None
            decider = self._deciders[origin] = _Decider(routes, self.processors)
        return decider

    def problems(self, enabled_sinks: Sequence[str]) -> list[str]:
        """What in the declaration cannot take effect with these sinks enabled (for start-up
        and health): routes to sinks that are not enabled, processors for such sinks."""
        prefix = f"{self.where}: " if self.where else ""
        problems = [f"{prefix}{route.label} sends to {sink}, which is not enabled: what it matches does not go there"
                    for route in self.routes for sink in route.sinks if sink not in enabled_sinks]
        problems += [f"{prefix}sinks/{sink}: processors for {sink}, which is not enabled"
                     for sink in self.processors if sink not in enabled_sinks]
        return problems

    def describe(self) -> list[str]:
        """The routes in the order they are tried, then each sink's processors in the order they apply."""
        if not self.declared:
            return ["no routes declared: every enabled sink gets every metric"]
        lines = [route.describe() for route in self.routes] or ["no routes: every enabled sink gets every metric"]
        for sink, processor in self.processors.items():
            lines.append(f"sink {sink}, in the order they apply:")
            lines += [f"  {line}" for line in processor.describe()]
        return lines

    def health(self) -> dict:
        """Counts since start, for health: unrouted, and per sink dropped, renames refused and
        folded (with the metric names folded)."""
        with self._lock:
            sinks = {}
            for sink, processor in self.processors.items():
                report: dict = dict(processor.totals)
                if processor.folded_by_name:
                    report["folded_by_name"] = dict(processor.folded_by_name)
                sinks[sink] = report
            return {"routes": len(self.routes), "unrouted": self.unrouted, "sinks": sinks}


def _origin_reader(origins: Origin | Sequence[Origin] | Callable[[int], Origin]) -> Callable[[int], Origin]:
    if isinstance(origins, Origin):
        return lambda index: origins
    if callable(origins):
        return origins
    return origins.__getitem__
