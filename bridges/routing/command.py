"""``python -m bridges routes check [FILE]``: validate a routes declaration and summarize it, as
``mappings check`` does for rule files. Exit 0 when it is valid, 1 naming the file (or setting),
route and field when it is not."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridges.model import Metric


def add_routes_parser(commands) -> None:
    routes = commands.add_parser("routes", help="routes: which sinks get which metrics")
    routes_commands = routes.add_subparsers(dest="routes_command", required=True)
    check = routes_commands.add_parser(
        "check", help="validate a routes declaration and summarize it (default: BRIDGE_ROUTES_FILE or BRIDGE_ROUTES)")
    check.add_argument("file", nargs="?", help="a JSON or YAML routes file")


def explain(router, metrics: Sequence[Metric], route: str, origin_of: Callable[[int], object], now_ns: int) -> list[str]:
    """``render --explain``: per metric, where it came from, the routes that matched, the sinks it
    goes to and what each sink's processors did. Every sink counts as enabled: this shows what
    the declaration does, whichever sinks this machine has settings for."""
    from bridges.delivery.sinks import SINK_NAMES
    from bridges.routing import Origin

    routed = router.route(metrics, Origin.of_each(route, origin_of), SINK_NAMES, now_ns, explain=True)
    lines = []
    for index, (metric, explanation) in enumerate(zip(metrics, routed.explanations or (), strict=True)):
        tags = ",".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in metric.tags)
        lines.append(f"{metric.name}{{{tags}}}  from {origin_of(index)}")
        lines += [f"  {line}" for line in explanation.lines()]
    lines.append(f"{len(metrics)} metrics: {routed.unrouted} unrouted; "
                 + "; ".join(f"{sink} gets {len(share)}" for sink, share in routed.per_sink.items()) if metrics
                 else "no metrics")
    return lines


def routes_main(args: argparse.Namespace) -> int:
    from bridges.routing.declaration import RoutesError, load_routes, routes_of

    enabled = None
    try:
        if args.file:
            path = Path(args.file)
            if not path.is_file():
                raise FileNotFoundError(2, "no such file", str(path))
            router = load_routes(path, file_setting="")
        else:
            from bridges.settings import load_settings

            settings = load_settings()
            router, enabled = routes_of(settings), settings.enabled_sinks
    except RoutesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(router.describe()))
    for problem in router.problems(enabled) if enabled is not None else ():
        print(f"warning: {problem}", file=sys.stderr)
    return 0
