"""Command line: ``python -m bridges serve|validate|render|send|check|poll|mappings|routes|deadletter|functions``.

Exit codes: 0 success, 1 something was rejected or failed, 2 bad usage or settings.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bridges.delivery.deliver import DeliveryError
from bridges.formats import BodyError
from bridges.settings import BACKEND_SINKS, SettingsError
from bridges.webhooks.rule_files import MappingError

_CONTENT_TYPES = {
    ".json": "application/json",
    ".ndjson": "application/x-ndjson",
    ".jsonl": "application/x-ndjson",
    ".msgpack": "application/msgpack",
    ".mpk": "application/msgpack",
}
_FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson", "msgpack": "application/msgpack"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bridges", description="Webhook-to-metrics bridge for Azure Functions.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the function app locally, without Core Tools")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7071, help="port (default 7071, as Core Tools; 0 picks a free one)")
    serve.add_argument("--app", default="function_app", help="module that defines the FunctionApp (default function_app)")
    serve.add_argument("--require-keys", action="store_true", help="demand a function key (kept in .bridge/function-key)")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    validate = commands.add_parser("validate", help="print the canonical NDJSON of a payload and each rejection")
    _payload_arguments(validate)

    render = commands.add_parser(
        "render", help="print exactly what a sink would send for a payload, or the metrics a webhook payload yields")
    render.add_argument("--sink", choices=sorted(BACKEND_SINKS), help="the sink (its settings must be complete)")
    render.add_argument("--source", help="read FILE as a webhook of this source, through its mapping rules")
    render.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="a request header the rules read (with --source), e.g. 'X-GitHub-Event: push'")
    render.add_argument("--raw", action="store_true", help="write the request bodies' bytes instead of a readable form")
    render.add_argument("--explain", action="store_true",
                        help="print per metric which route matched, the sinks it goes to and what each sink's "
                             "processors did (BRIDGE_ROUTES_FILE or BRIDGE_ROUTES)")
    _payload_arguments(render)

    mappings = commands.add_parser("mappings", help="webhook mapping rules")
    mapping_commands = mappings.add_subparsers(dest="mappings_command", required=True)
    check = mapping_commands.add_parser("check", help="validate rule files and show each source merged (default: built-in and BRIDGE_MAPPINGS_DIR)")
    check.add_argument("paths", nargs="*", help="rule files or folders of them")

    from bridges.routing.command import add_routes_parser

    add_routes_parser(commands)

    check = commands.add_parser("check", help="run the synthetic checks once; print a table and their metrics")
    check.add_argument("--name", action="append", default=[], help="only this check (repeatable)")
    check.add_argument("--send", action="store_true", help="also deliver the metrics to the configured sinks")

    poll = commands.add_parser("poll", help="poll the sources once (all, due or not); print the metrics")
    poll.add_argument("--name", action="append", default=[], help="only this source (repeatable)")
    poll.add_argument("--send", action="store_true", help="also deliver the metrics to the configured sinks")

    send = commands.add_parser("send", help="deliver a payload with the configured sinks and print a per-sink summary")
    _payload_arguments(send)

    from bridges.retry.deadletter_command import add_deadletter_parser

    add_deadletter_parser(commands)

    functions = commands.add_parser("functions", help="list the functions the host would index")
    functions.add_argument("--app", default="function_app", help="module that defines the FunctionApp")
    return parser


def _payload_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("file", help="payload file, or - for standard input")
    command.add_argument("--format", choices=sorted(_FORMATS), help="json, ndjson or msgpack (default: from the file name, else json)")
    command.add_argument("--content-encoding", help="e.g. gzip")


def _read_payload(args: argparse.Namespace) -> tuple[bytes, str]:
    """The payload's bytes and Content-Type; OSError names a missing file."""
    if args.file == "-":
        return sys.stdin.buffer.read(), _FORMATS[args.format or "json"]
    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    content_type = _FORMATS[args.format] if args.format else _CONTENT_TYPES.get(path.suffix.lower(), "application/json")
    return path.read_bytes(), content_type


def _parse_payload(args: argparse.Namespace, bridge):
    """The normalized payload, with every rejection printed; None when the body is unusable."""
    body, content_type = _read_payload(args)
    try:
        result = bridge.parse(body, content_type, args.content_encoding)
    except BodyError as exc:
        where = ", ".join(f"{k} {v}" for k, v in exc.where.items())
        print(f"error: {exc.message}" + (f" ({where})" if where else ""), file=sys.stderr)
        return None
    for error in result.errors:
        print(f"rejected item {error.index} at {error.pointer or '/'}: {error.message}", file=sys.stderr)
    if result.errors_not_shown:
        print(f"... and {result.errors_not_shown} more rejected items", file=sys.stderr)
    return result


def _validate(args: argparse.Namespace) -> int:
    from bridges.core import Bridge
    from bridges.formats.canonical import encode_ndjson
    from bridges.settings import load_settings

    result = _parse_payload(args, Bridge(load_settings()))
    if result is None:
        return 1
    sys.stdout.buffer.write(encode_ndjson(result.metrics))
    print(f"{len(result.metrics)} accepted, {result.rejected} rejected", file=sys.stderr)
    return 1 if result.rejected else 0


def _render(args: argparse.Namespace) -> int:
    from bridges.core import Bridge
    from bridges.delivery.render import readable
    from bridges.delivery.sinks import build_sinks
    from bridges.delivery.sinks.base import Sink
    from bridges.formats.canonical import encode_ndjson
    from bridges.settings import environment, load_settings

    if not args.sink and not args.source and not args.explain:
        print("error: say --sink SINK, --source SOURCE, --explain, or --sink or --source with --explain", file=sys.stderr)
        return 2
    settings = load_settings({**environment(), "BRIDGE_SINKS": args.sink} if args.sink else None)
    bridge = Bridge(settings)
    if args.source:
        result, origin_of = _map_payload(args, bridge) or (None, None)
    else:
        result = _parse_payload(args, bridge)
        origin_of = result and (lambda i: f"item /{result.indexes[i]}")
    if result is None or origin_of is None:
        return 1
    if args.explain:
        from bridges.routing.command import explain

        route = f"webhook {args.source.lower()}" if args.source else "ingest"
        print("\n".join(explain(bridge.router, result.metrics, route, origin_of, bridge.clock())))
        return 1 if result.rejected else 0
    if not args.sink:
        sys.stdout.buffer.write(encode_ndjson(result.metrics))
        print(f"{len(result.metrics)} metrics", file=sys.stderr)
        return 1 if result.rejected else 0
    [sink] = build_sinks(settings)
    assert isinstance(sink, Sink)  # --sink offers the backends only
    encoded = sink.encode(result.metrics, bridge.clock())
    for request in encoded.requests:
        if args.raw:
            sys.stdout.buffer.write(request.body)
        else:
            print(json.dumps(readable(request), indent=2, ensure_ascii=False))
    for rejection in encoded.rejected:
        print(f"{args.sink} would refuse item {result.indexes[rejection.index]}: {rejection.reason}", file=sys.stderr)
    for conversion, count in sorted(encoded.conversions.items()):
        print(f"{args.sink}: {conversion}: {count}", file=sys.stderr)
    print(f"{len(encoded.requests)} requests, {sum(len(r.body) for r in encoded.requests)} bytes", file=sys.stderr)
    return 1 if result.rejected or encoded.rejected else 0


def _map_payload(args: argparse.Namespace, bridge):
    """A webhook payload through its source's rules, normalized, and each metric's origin (rule
    and event); refusals and skips printed. None when the payload or source is unusable."""
    from bridges.webhooks.handler import load_sources, webhook_payload

    sources = load_sources(bridge.settings)
    rules = sources.get(args.source.lower())
    if rules is None:
        print(f"error: no mapping rules for source {args.source!r}; known: {', '.join(sorted(sources))}", file=sys.stderr)
        return None
    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise SettingsError(f"--header {header!r}: expected 'NAME: VALUE'")
        headers[name.strip().lower()] = value.strip()
    body, _ = _read_payload(args)
    try:
        payload = webhook_payload(body, headers.get("content-type"))
    except BodyError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return None
    decoded = rules.apply(payload, headers, bridge.clock())
    result = bridge.normalizer.normalize(decoded.items, bridge.clock(), lambda i: "", check_unicode=True)
    for refused in decoded.refused:
        print(f"refused {refused.origin}: {refused.message}", file=sys.stderr)
    for error in result.errors:
        print(f"refused {decoded.origin(error.index)}: {error.pointer} {error.message}", file=sys.stderr)
    for reason, count in sorted(decoded.skipped.items()):
        print(f"skipped: {reason}: {count}", file=sys.stderr)
    result.rejected += len(decoded.refused)
    return result, lambda i: decoded.origin(result.indexes[i])


def _mappings(args: argparse.Namespace) -> int:
    from bridges.settings import load_settings
    from bridges.webhooks.handler import rule_dirs
    from bridges.webhooks.rule_files import BUILTIN_DIR, check_layers

    paths = [Path(p) for p in args.paths] or rule_dirs(load_settings())
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(2, "no such file or folder", str(missing[0]))
    # Given paths extend the built-in rules as BRIDGE_MAPPINGS_DIR does; each merged source
    # says which rules are built in, replaced, added or disabled.
    loaded, errors = check_layers(paths, base=BUILTIN_DIR if args.paths else None)
    for merged in loaded:
        print("\n".join(merged.describe()))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _inline_bridge():
    """A Bridge that delivers while the command waits, whatever BRIDGE_DELIVERY says: a person
    at a terminal wants each sink's outcome, not a queue message."""
    from dataclasses import replace

    from bridges.core import Bridge
    from bridges.settings import load_settings

    return Bridge(replace(load_settings(), delivery="inline"))


def _send(args: argparse.Namespace) -> int:
    body, content_type = _read_payload(args)
    reply = _inline_bridge().ingest(body, content_type, args.content_encoding)
    answer = reply.body
    if "error" in answer:
        print(f"error ({reply.status}): {answer['error']}", file=sys.stderr)
        return 1
    for error in answer["errors"]:
        print(f"rejected item {error['index']} at {error['pointer'] or '/'}: {error['message']}", file=sys.stderr)
    print(f"{answer['accepted']} accepted, {answer['rejected']} rejected")
    trouble = answer["rejected"]
    for sink, report in answer.get("delivery", {}).items():
        print(f"{sink}: {report['delivered']} delivered, {report['rejected']} rejected, {report['pending']} pending")
        for rejection in report.get("rejections", []):
            print(f"  item {rejection['index']}: {rejection['reason']}")
        for reason in report.get("pending_reasons", []):
            print(f"  pending: {reason}")
        trouble += report["rejected"] + report["pending"]
    return 1 if trouble or reply.status != 202 else 0


def _check(args: argparse.Namespace) -> int:
    from bridges.formats.canonical import encode_ndjson
    from bridges.scheduled.checks import table

    bridge = _inline_bridge()
    if not bridge.checks:
        print("error: no checks are declared: set BRIDGE_CHECKS_FILE or BRIDGE_CHECKS", file=sys.stderr)
        return 2
    results, metrics = bridge.run_checks(args.name, deliver=args.send)
    print(table(results))
    print()
    sys.stdout.flush()
    sys.stdout.buffer.write(encode_ndjson(metrics))
    return 0 if all(result.up for result in results) else 1


def _poll(args: argparse.Namespace) -> int:
    from bridges.formats.canonical import encode_ndjson

    bridge = _inline_bridge()
    if not bridge.polled_sources:
        print("error: no sources are declared: set BRIDGE_SOURCES_FILE or BRIDGE_SOURCES", file=sys.stderr)
        return 2
    names = args.name or [source.name for source in bridge.polled_sources]
    polls, normalized = bridge.poll_sources(names=names, deliver=args.send)
    for result in polls:
        state = "up" if result.up else f"DOWN ({result.reason})"
        print(f"{result.source.name}: {state}: {result.message}", file=sys.stderr)
        if result.decoded is not None:
            for refused in result.decoded.refused:
                print(f"  refused {refused.origin}: {refused.message}", file=sys.stderr)
    for error in normalized.errors:
        print(f"  refused item {error.index}: {error.pointer} {error.message}", file=sys.stderr)
    sys.stdout.buffer.write(encode_ndjson(normalized.metrics))
    troubled = any(not r.up or (r.decoded is not None and r.decoded.refused) for r in polls) or normalized.rejected
    return 1 if troubled else 0


def _functions(args: argparse.Namespace) -> int:
    from bridges.local.indexing import index, load_app

    rows = [("NAME", "TRIGGER", "ROUTE / SCHEDULE / QUEUE", "AUTH")]
    for function in index(load_app(args.app)):
        auth = function.auth_level.lower() if function.trigger_type == "httpTrigger" else "-"
        methods = ",".join(function.methods)
        target = function.describe() + (f" [{methods}]" if methods else "")
        rows.append((function.name, function.trigger_type, target, auth))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            from bridges.local.server import serve

            return serve(args.host, args.port, args.app, args.require_keys)
        if args.command == "routes":
            from bridges.routing.command import routes_main

            return routes_main(args)
        if args.command == "deadletter":
            from bridges.retry.deadletter_command import deadletter_main

            return deadletter_main(args)
        commands = {"validate": _validate, "render": _render, "send": _send, "functions": _functions,
                    "mappings": _mappings, "check": _check, "poll": _poll}
        return commands[args.command](args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except MappingError as exc:
        print(f"mapping rules error: {exc}", file=sys.stderr)
        return 2
    except DeliveryError as exc:
        print(f"error: the metrics could be neither delivered nor kept: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the port is in use, or no such payload file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
