"""Where a metric came from, as routes match it: the input, and the webhook or polled source,
rule and check that made it.

``Origin.of`` reads what the bridge already has: the ``route`` text ``Bridge.process`` and
``Bridge._deliver`` are given ("ingest", "checks", "poll", "webhook github", a vendor format's
name) and a metric's origin text ("rule 'jobs' event 0 metric 'github.jobs'" from a webhook's
rules, "<source> rule '...' ..." or "<source> poll_up" from a polled source, "check <name>").
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

# What ``match.route`` names (schemas/routes.schema.json lists the same).
INPUTS = ("ingest", "webhook", "checks", "poll", "dynatrace", "prometheus", "azure_monitor", "unleash", "influx",
          "otlp")
# The names the vendor formats give Bridge.process, as routes call those inputs.
_FORMAT_INPUTS = {"remote_write": "prometheus", "influx_v1": "influx", "influx_v2": "influx",
                  "_Custom": "unleash", "_Client": "unleash", "unleash_custom": "unleash", "unleash_client": "unleash"}
# The routes whose origin texts name a source, rule or check (a format's name lines or items).
_WITH_ORIGINS = frozenset(["poll", "checks"])
# A mapping rule's origin (bridges/webhooks/rules.py): rule 'NAME' event N[ metric 'TEMPLATE'].
_RULE = re.compile(r"rule '(.*?)' event \d+(?: metric '|$)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Origin:
    route: str  # one of INPUTS (or the route text as given, for an input routes do not name)
    source: str | None = None  # the webhook's or polled source's name
    rule: str | None = None  # the mapping rule that made the metric
    check: str | None = None  # the synthetic check that made it

    @staticmethod
    def of(route: str, origin: str = "") -> Origin:
        """The origin of a metric from ``route`` (as Bridge.process is given it) whose origin
        text is ``origin`` (``Decoded.origin(i)``, or ``check NAME``); cached, so equal origins
        are the same object (the router tells a batch's repeated origins by identity)."""
        return _parsed(route, origin if _names_origins(route) else "")

    @staticmethod
    def of_each(route: str, origin_of: Callable[[int], object]) -> Origin | Callable[[int], Origin]:
        """The origins of a request's metrics: one for all when the route's origin texts name no
        source, rule or check (a vendor format's lines), else a function of the metric's index."""
        if not _names_origins(route):
            return _parsed(route, "")
        return lambda index: _parsed(route, str(origin_of(index)))


def _names_origins(route: str) -> bool:
    return route in _WITH_ORIGINS or route.startswith("webhook ")


@lru_cache(maxsize=4096)
def _parsed(route: str, origin: str) -> Origin:
    if route.startswith("webhook "):
        return Origin("webhook", route.removeprefix("webhook "), _rule(origin))
    if route == "poll":
        source, _, rest = origin.partition(" ")  # polled source names hold no space
        return Origin("poll", source or None, _rule(rest))
    if route == "checks":
        return Origin("checks", check=origin.removeprefix("check ") if origin.startswith("check ") else None)
    return Origin(_FORMAT_INPUTS.get(route, route))


def _rule(origin: str) -> str | None:
    found = _RULE.match(origin)
    return found.group(1) if found else None
