"""Declarations read from a file or an inline setting and validated by a JSON Schema: the
synthetic checks (BRIDGE_CHECKS_FILE / BRIDGE_CHECKS), the polled sources
(BRIDGE_SOURCES_FILE / BRIDGE_SOURCES) and the routes (BRIDGE_ROUTES_FILE / BRIDGE_ROUTES, read by
``bridges.routing``).

Every problem is a SettingsError naming the setting, the file and the field (a JSON pointer),
so start-up stops with a message that says what to fix. Secret header values are named by
setting and looked up here; a literal value for a header that carries credentials is refused.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridges.ingest.normalize import SCHEMA_DIR, json_pointer
from bridges.masking import Secret
from bridges.scheduled.probe import CREDENTIAL_HEADER, TlsOptions
from bridges.settings import KEY_VAULT_PREFIX, SettingsError

# What http.client cannot send in a header value (it would raise, with the value, mid-run).
_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]|[^\x00-\xff]")


def load_declared(file_setting: str, path: Path | None, inline_setting: str, inline: str, schema_name: str,
                  key: str) -> tuple[list[dict], str]:
    """The entries under ``key`` of the file or of the inline JSON (both set is an error: one
    would be ignored), and where they come from, for messages."""
    document, where = read_declaration(file_setting, path, inline_setting, inline)
    if not where:
        return [], ""
    validate_declaration(document, schema_name, where)
    declared = document[key]
    _unique_names(declared, key, where)
    return declared, where


def read_declaration(file_setting: str, path: Path | None, inline_setting: str, inline: str) -> tuple[Any, str]:
    """The document of the file or of the inline JSON, not yet validated, and where it comes
    from (``file_setting: path``, the path alone when ``file_setting`` is "", or
    ``inline_setting``); where is "" when neither is set."""
    if path is not None and inline.strip():
        raise SettingsError(f"{inline_setting}: set {file_setting} or {inline_setting}, not both")
    if path is not None:
        from bridges.webhooks.rule_files import MappingError, read_document

        named = f"{file_setting}: " if file_setting else ""
        try:
            return read_document(path), f"{named}{path}"
        except MappingError as exc:
            raise SettingsError(f"{named}{exc}") from None
    if inline.strip():
        try:
            return json.loads(inline), inline_setting
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{inline_setting}: not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    return None, ""


def validate_declaration(document: object, schema_name: str, where: str,
                         place: Callable[[Sequence], str] = lambda path: "") -> None:
    """SettingsError ``{where}: {place}at {pointer}: {message}`` for the first schema error;
    ``place(path)`` may name the entry the path is in (e.g. ``route 2 'flags' ``)."""
    from referencing import Registry, Resource

    from bridges.ingest.jsonschemas import explaining_validator

    schemas = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in SCHEMA_DIR.glob("*.schema.json")}
    # One schema may use another's definitions (the sources use the checks' headers).
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values() if "$id" in schema)
    validator = explaining_validator(schemas[schema_name], registry=registry)
    try:
        errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    except TypeError:  # YAML keys that are not text
        raise SettingsError(f"{where}: every key must be text (quote it)") from None
    if errors:
        error = errors[0]
        message = error.schema.get("description") if error.validator == "not" else None
        pointer = json_pointer(error.absolute_path) or "/"
        raise SettingsError(f"{where}: {place(list(error.absolute_path))}at {pointer}: {message or error.message}")


def _unique_names(declared: list[dict], key: str, where: str) -> None:
    seen: dict[str, int] = {}
    for index, entry in enumerate(declared):
        if entry["name"] in seen:
            raise SettingsError(f"{where}: at /{key}/{index}/name: the name {entry['name']!r} is also used at "
                                f"/{key}/{seen[entry['name']]}; names are unique")
        seen[entry["name"]] = index


def resolve_headers(headers: Mapping[str, Any], environ: Mapping[str, str], where: str) -> dict[str, object]:
    """Header name -> text, or a Secret read from the named setting (with its prefix).
    ``where`` is the entry's place, e.g. ``BRIDGE_CHECKS_FILE: checks.yaml: at /checks/0``."""
    resolved: dict[str, object] = {}
    for name, value in headers.items():
        if isinstance(value, str):
            if CREDENTIAL_HEADER.search(name):
                raise SettingsError(f"{where}/headers/{name}: the {name} header carries a credential: name the "
                                    'setting that holds it, {"setting": "NAME"}, instead of writing it here')
            if _UNSENDABLE.search(value):
                raise SettingsError(f"{where}/headers/{name}: a control character or one beyond Latin-1 "
                                    "cannot be sent in a header")
            resolved[name] = value
            continue
        setting = value["setting"]
        text = environ.get(setting, "").strip()
        if not text:
            raise SettingsError(f"{setting}: {where} sends it in the {name} header, but it is not set")
        if text.startswith(KEY_VAULT_PREFIX):
            raise SettingsError(f"{setting}: the Key Vault reference did not resolve (check the vault, the secret "
                                "name, and the app's identity and its 'Key Vault Secrets User' role)")
        if _UNSENDABLE.search(value.get("prefix", "") + text):  # never show the value
            raise SettingsError(f"{setting}: {where} sends it in the {name} header, but it holds a line break, "
                                "another control character or one beyond Latin-1, which cannot be sent")
        resolved[name] = Secret(value.get("prefix", "") + text)
    return resolved


def request_body(body: object, headers: dict) -> bytes | None:
    """A declared body as bytes: text as UTF-8, an object or array as JSON (and its Content-Type
    added to ``headers`` unless one is there)."""
    if isinstance(body, (dict, list)):
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode()
    return body.encode() if isinstance(body, str) else None


def tls_options(tls: Mapping[str, Any], where: str) -> TlsOptions:
    """A declaration's ``tls`` object; its CA file must exist."""
    ca_file = tls.get("ca_file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise SettingsError(f"{where}/tls/ca_file: no such file: {ca_file}")
    return TlsOptions(tls.get("verify", True), tls.get("verify_hostname", True), ca_file)


def reveal_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """The headers to send, secrets revealed (only at the moment of sending)."""
    return {name: value.reveal() if isinstance(value, Secret) else value for name, value in headers.items()}
