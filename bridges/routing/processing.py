"""One sink's processors. Whatever order a declaration lists them in, they apply in this one:

  1. keep / drop    keep only the metrics ``keep`` matches, then drop those ``drop`` matches
                    (name and tags, as a route's match does); counted per sink as dropped.
  2. rename         ``replace`` (``re.sub`` of a regular expression on the name; ``\\1`` or
                    ``\\g<name>`` in ``with``), then ``prefix``. A result that is not a valid metric
                    name (1-255 characters, no control character) leaves the name as it was, and
                    is counted as a rename refused.
  3. add_tags       static tags; a tag the metric already has keeps its own value.
  4. tag_keys       ``keep`` only the listed tag keys, or ``drop`` the listed ones (after
                    add_tags, so a keep list names the added keys it wants).
  5. cardinality    at most ``limit`` distinct sets of the guarded tags (``tags``, default all)
                    per metric name (as renamed) per minute for this sink. A set already seen this
                    minute passes; a new one beyond the limit is folded: its guarded tags read
                    ``other``, so the overflow is one series per combination of the other tags.
                    Counted per sink and metric name, as a conversion. The sets are each
                    process's own: N instances of the function app may send a sink up to N
                    times the limit (a shared store would cost a round trip per metric).

Steps 1-4 depend only on a metric's name and tags, so their outcome (a ``Plan``) is worked out
once per distinct (name, tags) and kept with the router's decision; a metric they leave as it is
stays the same object.

Memory is bounded: at most 50,000 renamed names per sink (then they are worked out afresh); the guard
keeps at most ``limit`` tag sets for each of at most 10,000 metric names per sink per minute, the
name first seen forgotten first (a forgotten name starts the minute afresh); folded counts are
kept for at most 1,000 names per sink, the others summed under ``(other names)``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache

from bridges.model import Metric
from bridges.routing.matching import MetricMatcher

FOLDED = "other"
MAX_NAMES = 50_000
MAX_GUARDED_NAMES = 10_000
MAX_REPORTED_NAMES = 1_000
OTHER_NAMES = "(other names)"
MINUTE_NS = 60_000_000_000


class Plan:
    """What steps 1-4 make of one (name, tags), and what folding would make of the result."""

    __slots__ = ("admitted", "changed", "dropped", "fold_note", "folded_tags", "guard_key", "minute", "name", "notes",
                 "rebuilt", "refused", "tags")

    def __init__(self, name: str, tags: tuple, notes: tuple[str, ...], dropped: bool = False,
                 changed: bool = False, refused: bool = False):
        self.name, self.tags, self.notes = name, tags, notes
        self.dropped, self.changed, self.refused = dropped, changed, refused
        self.guard_key: tuple | None = None  # the guarded tags; None: nothing to guard
        self.folded_tags: tuple = tags
        self.fold_note = ""
        # The guard's verdict on guard_key in ``minute``: it holds for the rest of that minute
        # (the sets only grow), so a plan asks the guard once per minute.
        self.minute = -1
        self.admitted = True
        # The common case, decided once: a new name or tags, nothing dropped, refused or guarded.
        self.rebuilt = changed and not dropped and not refused


class CardinalityGuard:
    """Distinct guarded tag sets per metric name in the current minute, for one sink."""

    def __init__(self, limit: int, tags: frozenset[str] | None):
        self.limit = limit
        self.tags = tags  # None: every tag
        self.minute = -1
        self._seen: dict[str, set] = {}

    def new_minute(self, minute: int) -> None:
        if minute > self.minute:  # a call with an older clock reading keeps the newer minute's sets
            self.minute = minute
            self._seen.clear()

    def admit(self, name: str, key: tuple) -> bool:
        """True when the set was seen this minute or fits under the limit (it is then kept)."""
        seen = self._seen.get(name)
        if seen is None:
            if len(self._seen) >= MAX_GUARDED_NAMES:
                del self._seen[next(iter(self._seen))]  # the name first seen this minute
            seen = self._seen[name] = set()
        if key in seen:
            return True
        if len(seen) < self.limit:
            seen.add(key)
            return True
        return False

    def describe(self) -> str:
        which = ", ".join(sorted(self.tags)) if self.tags else "all tags"
        return (f"cardinality: at most {self.limit} distinct sets of {which} per metric name per minute, "
                f"then those tags read {FOLDED}")


class SinkProcessors:
    """One sink's compiled processors, its plans, its guard and its counters."""

    def __init__(self, sink: str, *, keep: MetricMatcher | None = None, drop: MetricMatcher | None = None,
                 replace: tuple[re.Pattern, str] | None = None, prefix: str = "",
                 add_tags: Mapping[str, str] | None = None, keep_keys: frozenset[str] | None = None,
                 drop_keys: frozenset[str] = frozenset(), guard: CardinalityGuard | None = None):
        self.sink = sink
        self.keep, self.drop = keep, drop
        self.replace, self.prefix = replace, prefix
        self.add_tags = dict(add_tags or {})
        self.keep_keys, self.drop_keys = keep_keys, drop_keys
        self.guard = guard
        self._names: dict[str, tuple[str, bool, str]] = {}  # name -> what rename makes of it
        self.minute = -1  # the guard's minute
        # this call's counts (``begin`` resets them) and the totals since start
        self.dropped = self.folded = self.refused = 0
        self.totals = {"dropped": 0, "folded": 0, "renames_refused": 0}
        self.folded_by_name: dict[str, int] = {}  # since start (bounded)

    @property
    def _guard(self) -> CardinalityGuard:
        assert self.guard is not None  # only plans of a sink with a guard have a guard key
        return self.guard

    def _count_fold(self, name: str) -> None:
        """The first fold of a name since start (counted under OTHER_NAMES beyond MAX_REPORTED_NAMES)."""
        if len(self.folded_by_name) >= MAX_REPORTED_NAMES:
            name = OTHER_NAMES
        self.folded_by_name[name] = self.folded_by_name.get(name, 0) + 1

    def begin(self, minute: int) -> None:
        self.dropped = self.folded = self.refused = 0
        if self.guard is not None:
            self.guard.new_minute(minute)
            self.minute = self.guard.minute

    def end(self) -> None:
        self.totals["dropped"] += self.dropped
        self.totals["folded"] += self.folded
        self.totals["renames_refused"] += self.refused

    def plan(self, name: str, tags: tuple) -> Plan:
        """What steps 1-4 make of this name and tags (the router remembers it)."""
        values = dict(tags)
        if self.keep is not None and not self.keep(name, values):
            return Plan(name, tags, ("dropped: keep does not match it",), dropped=True)
        if self.drop is not None and self.drop(name, values):
            return Plan(name, tags, ("dropped by drop",), dropped=True)
        new_name, refused, renamed = self._renamed(name)
        notes = [renamed] if renamed else []
        added = [key for key in self.add_tags if key not in values]
        if added:
            values.update((key, self.add_tags[key]) for key in added)
            notes.append(f"added tags {', '.join(added)}")
        removed = [key for key in values if (self.keep_keys is not None and key not in self.keep_keys)
                   or key in self.drop_keys]
        if removed:
            for key in removed:
                del values[key]
            notes.append(f"dropped tag keys {', '.join(sorted(removed))}")
        new_tags = tuple(sorted(values.items())) if added or removed else tags
        plan = Plan(new_name, new_tags, tuple(notes), changed=new_name != name or new_tags != tags, refused=refused)
        if self.guard is not None:
            guarded = [key for key, _ in new_tags if self.guard.tags is None or key in self.guard.tags]
            if guarded:
                plan.rebuilt = False
                plan.guard_key = tuple(pair for pair in new_tags if pair[0] in guarded)
                plan.folded_tags = tuple((key, FOLDED if key in guarded else value) for key, value in new_tags)
                plan.fold_note = f"folded {', '.join(guarded)} -> {FOLDED} (limit {self.guard.limit})"
        return plan

    def apply(self, metric: Metric, plan: Plan, notes: list[str] | None) -> Metric | None:
        """The metric as this sink gets it (the same object when nothing changed), or None when
        keep/drop dropped it; ``plan`` is ``self.plan(metric.name, metric.tags)``. ``notes``
        (when given) gets what each processor did."""
        tags = plan.tags
        if not plan.rebuilt or notes is not None:  # else the common case: straight to the copy
            if notes is not None:
                notes.extend(plan.notes)
            if plan.dropped:
                self.dropped += 1
                return None
            if plan.refused:
                self.refused += 1
            if plan.guard_key is not None and plan.minute != self.minute:
                plan.minute = self.minute
                plan.admitted = self._guard.admit(plan.name, plan.guard_key)
            if not plan.admitted:
                tags = plan.folded_tags
                self.folded += 1
                try:
                    self.folded_by_name[plan.name] += 1
                except KeyError:
                    self._count_fold(plan.name)
                if notes is not None:
                    notes.append(plan.fold_note)
            elif not plan.changed:
                return metric
        return Metric(plan.name, metric.point, metric.time_ns, tags, metric.namespace, metric.unit,
                      metric.description, metric.azure)

    def _renamed(self, name: str) -> tuple[str, bool, str]:
        """The new name, whether a rename was refused (the name then stays), and what happened;
        remembered per name."""
        found = self._names.get(name)
        if found is None:
            if len(self._names) >= MAX_NAMES:
                self._names.clear()
            found = self._names[name] = self._new_name(name)
        return found

    def _new_name(self, name: str) -> tuple[str, bool, str]:
        if self.replace is None and not self.prefix:
            return name, False, ""
        new = self.prefix + (self.replace[0].sub(self.replace[1], name) if self.replace else name)
        problem = name_problem(new)
        if problem:
            return name, True, f"rename {name} -> {new!r} refused ({problem}): the name is kept"
        return new, False, f"renamed {name} -> {new}" if new != name else ""

    def describe(self) -> list[str]:
        """The processors in the order they apply."""
        lines = []
        if self.keep is not None:
            lines.append(f"keep: {self.keep.describe()}")
        if self.drop is not None:
            lines.append(f"drop: {self.drop.describe()}")
        if self.replace is not None:
            lines.append(f"rename: replace /{self.replace[0].pattern}/ with {self.replace[1]!r}")
        if self.prefix:
            lines.append(f"rename: prefix {self.prefix!r}")
        if self.add_tags:
            lines.append("add_tags: " + ", ".join(f"{key}={value!r}" for key, value in self.add_tags.items()))
        if self.keep_keys is not None:
            lines.append(f"tag_keys: keep only {', '.join(sorted(self.keep_keys)) or 'none'}")
        if self.drop_keys:
            lines.append(f"tag_keys: drop {', '.join(sorted(self.drop_keys))}")
        if self.guard is not None:
            lines.append(self.guard.describe())
        return lines


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid metric name by the canonical schema's rule, or None."""
    most, allowed = _name_rule()
    if not name:
        return "empty"
    if len(name) > most:
        return f"longer than {most} characters"
    if not allowed.fullmatch(name):  # not search: Python's $ also matches before a final newline
        return "a control character"
    return None


@cache
def _name_rule() -> tuple[int, re.Pattern]:
    """The name's longest length and pattern, from schemas/metric.schema.json (read at the first
    rename, not at start-up)."""
    from bridges.ingest.normalize import METRIC_SCHEMA

    rule = json.loads(METRIC_SCHEMA.read_text(encoding="utf-8"))["$defs"]["name"]
    return rule["maxLength"], re.compile(rule["pattern"])
