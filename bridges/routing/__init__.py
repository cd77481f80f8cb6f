"""Routing and per-sink processing: which enabled sinks get which metrics, shaped for each.

A declaration (schemas/routes.schema.json, from BRIDGE_ROUTES_FILE or BRIDGE_ROUTES) is read
and compiled once (``routes_of``, ``load_routes``) into a ``Router``, whose ``route`` is pure
apart from the state it keeps (decisions memoized, the cardinality guards, counters): metrics,
where they came from (``Origin``), the enabled sinks and the time in; each sink's processed
metrics out. ``router`` says how routes match, ``processing`` the order processors apply in.
No declaration: ``Router.none()``, every sink gets every metric.
"""
from bridges.routing.declaration import RoutesError, load_routes, parse_routes, routes_of
from bridges.routing.origin import INPUTS, Origin
from bridges.routing.router import Explanation, Routed, Router

__all__ = ["INPUTS", "Explanation", "Origin", "Routed", "Router", "RoutesError", "load_routes", "parse_routes",
           "routes_of"]
