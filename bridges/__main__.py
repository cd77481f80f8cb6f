"""Command line: ``python -m bridges serve|validate|functions``.

Exit codes: 0 success, 1 something was rejected or failed, 2 bad usage or settings.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bridges.formats import BodyError
from bridges.settings import SettingsError

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
    validate.add_argument("file", help="payload file, or - for standard input")
    validate.add_argument("--format", choices=sorted(_FORMATS), help="json, ndjson or msgpack (default: from the file name, else json)")
    validate.add_argument("--content-encoding", help="e.g. gzip")

    functions = commands.add_parser("functions", help="list the functions the host would index")
    functions.add_argument("--app", default="function_app", help="module that defines the FunctionApp")
    return parser


def _validate(args: argparse.Namespace) -> int:
    from bridges.core import Bridge
    from bridges.formats.canonical import encode_ndjson
    from bridges.settings import load_settings

    if args.file == "-":
        body = sys.stdin.buffer.read()
        content_type = _FORMATS[args.format or "json"]
    else:
        path = Path(args.file)
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
        body = path.read_bytes()
        content_type = _FORMATS[args.format] if args.format else _CONTENT_TYPES.get(path.suffix.lower(), "application/json")
    bridge = Bridge(load_settings())
    try:
        result = bridge.parse(body, content_type, args.content_encoding)
    except BodyError as exc:
        where = ", ".join(f"{k} {v}" for k, v in exc.where.items())
        print(f"error: {exc.message}" + (f" ({where})" if where else ""), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(encode_ndjson(result.metrics))
    for error in result.errors:
        print(f"rejected item {error.index} at {error.pointer or '/'}: {error.message}", file=sys.stderr)
    if result.errors_not_shown:
        print(f"... and {result.errors_not_shown} more rejected items", file=sys.stderr)
    print(f"{len(result.metrics)} accepted, {result.rejected} rejected", file=sys.stderr)
    return 1 if result.rejected else 0


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
        if args.command == "validate":
            return _validate(args)
        return _functions(args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is in use
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
