"""Rule files: reading, checking and compiling each source's declarative webhook rules.

One file per source (``mappings/<source>.yaml`` built in, a folder named by the settings for
local ones) says, with JMESPath expressions over
``{"body": payload, "headers": {lower-case name: value}, "event": current event, "source": name}``,
which metrics a delivery becomes. ``schemas/mapping.schema.json`` states the shape; what a schema
cannot say (expressions compile, functions exist with the right number of arguments, templates
are balanced, rule names are unique, strptime patterns are usable) is checked here at load, so a
bad file stops start-up naming the file, the rule and the field (``MappingError``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridges.ingest.normalize import SCHEMA_DIR, json_pointer
from bridges.webhooks.expressions import Expression, compile_expression, parse_template
from bridges.webhooks.rules import CompiledMetric, CompiledRule, SourceRules
from bridges.webhooks.values import TIMESTAMP_FORMATS, check_strptime

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "mappings"
MAPPING_SCHEMA = SCHEMA_DIR / "mapping.schema.json"
RULE_FILE_SUFFIXES = (".yaml", ".yml", ".json")
SIGNATURE_DEFAULTS: dict[str, dict[str, object]] = {
    "hmac-sha256": {"prefix": "", "encoding": "hex"},
    "stripe": {"tolerance_seconds": 300},
    "slack": {"tolerance_seconds": 300},
    "standard-webhooks": {"tolerance_seconds": 300},
}


class MappingError(Exception):
    """A rule file that cannot be used: where (file, rule, JSON pointer in the file) and why."""

    def __init__(self, file: str, message: str, rule: str | None = None, field: str | None = None):
        self.file = str(file)
        self.rule = rule
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.file}: "
        if self.rule is not None:
            text += f"rule '{self.rule}' "
        if self.field:
            text += f"at {self.field}: "
        elif self.rule is not None:
            text = text[:-1] + ": "
        return text + self.message


# ---------------------------------------------------------------------------------------------
# Loading and checking files


def check_paths(paths: Sequence[Path]) -> tuple[list[SourceRules], list[MappingError]]:
    """Every error of every file; a path is a rule file or a folder of them."""
    loaded: list[SourceRules] = []
    errors: list[MappingError] = []
    for path in map(Path, paths):
        if path.is_dir():
            found, folder_errors = _check_folder(path)
            loaded.extend(found.values())
            errors.extend(folder_errors)
        elif path.is_file():
            rules, file_errors = _check_file(path)
            errors.extend(file_errors)
            if rules is not None:
                loaded.append(rules)
        else:
            errors.append(MappingError(str(path), "no such file or folder"))
    return loaded, errors


def load_sources(dirs: Sequence[Path]) -> dict[str, SourceRules]:
    """Each folder's rules by source; a later folder's file replaces an earlier one's for its source."""
    sources: dict[str, SourceRules] = {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise MappingError(str(folder), "no such folder of rule files")
        found, errors = _check_folder(folder)
        if errors:
            raise errors[0]
        sources.update(found)
    return sources


def rule_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RULE_FILE_SUFFIXES and p.is_file())


def _check_folder(folder: Path) -> tuple[dict[str, SourceRules], list[MappingError]]:
    found: dict[str, SourceRules] = {}
    errors: list[MappingError] = []
    for path in rule_files(folder):
        rules, file_errors = _check_file(path)
        errors.extend(file_errors)
        if rules is None:
            continue
        if rules.source in found:
            errors.append(MappingError(
                str(path), f"source '{rules.source}' is also described by {found[rules.source].path}; "
                "one file per source", field="/source"))
            continue
        found[rules.source] = rules
    return found, errors


_VALIDATORS: dict = {}


def _validator(explaining: bool):
    """jsonschema-rs says whether a file is valid (cheap to import, at start-up); jsonschema,
    imported only for an invalid file, says why in readable words with paths."""
    if explaining not in _VALIDATORS:
        schema = json.loads(MAPPING_SCHEMA.read_text(encoding="utf-8"))
        if explaining:
            from bridges.ingest.jsonschemas import explaining_validator  # lazy: jsonschema only for a bad file

            _VALIDATORS[explaining] = explaining_validator(schema)
        else:
            import jsonschema_rs  # lazy: loaded with the first rule file, not at every cold start

            _VALIDATORS[explaining] = jsonschema_rs.Draft202012Validator(schema)
    return _VALIDATORS[explaining]


def _check_file(path: Path) -> tuple[SourceRules | None, list[MappingError]]:
    try:
        document = read_document(path)
    except MappingError as exc:
        return None, [exc]
    return check_document(document, path)


def check_document(document: Any, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
    """Validate and compile one source's rules already read (from a file, or inline in a polled
    source's declaration, ``path`` then naming where); every error found, or none."""
    name = str(path)
    errors = _key_errors(document, name, [], document)
    if errors:
        return None, errors
    try:
        valid = _validator(explaining=False).is_valid(document)
    except Exception:  # values JSON cannot hold (YAML dates...): let jsonschema explain
        valid = False
    if not valid:
        errors = [_schema_error(error, name, document) for error in _sorted_schema_errors(document)]
        if errors:
            return None, errors
    return _compile_file(document, path)


def read_document(path: Path) -> object:
    """A JSON or YAML file as data; MappingError (naming the file and the line) when unreadable."""
    name = str(path)
    suffix = path.suffix.lower()
    if suffix not in RULE_FILE_SUFFIXES:
        raise MappingError(name, "the file must end in .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MappingError(name, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise MappingError(name, f"cannot be read: {exc.strerror or exc}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise MappingError(name, f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    import yaml  # lazy: only a YAML rule file pays for importing it

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "unreadable"
        raise MappingError(name, f"YAML syntax error{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise MappingError(name, f"YAML error: {exc}") from None


def _key_errors(value: object, name: str, path: list, document: object) -> list[MappingError]:
    """YAML allows keys that are not text (1, true, dates); JSON Schema cannot check those."""
    errors = []
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                errors.append(MappingError(
                    name, f"the key {key!r} must be text (quote it)", _rule_of(document, path), json_pointer(path)))
            else:
                errors.extend(_key_errors(child, name, path + [key], document))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            errors.extend(_key_errors(child, name, path + [index], document))
    return errors


def _sorted_schema_errors(document: object) -> list:
    def position(error):
        return tuple((p, "") if isinstance(p, int) else (-1, str(p)) for p in error.absolute_path)

    return sorted(_validator(explaining=True).iter_errors(document), key=position)


def _schema_error(error, name: str, document: object) -> MappingError:
    path = list(error.absolute_path)
    message = error.message
    if path[:2] == ["signature", "secrets"]:
        # Whatever was written there may be a secret pasted by mistake: never repeat it.
        message = ("secrets are one or two distinct NAMES of settings that hold the secret "
                   "(^[A-Z][A-Z0-9_]*$), never the secret itself")
    elif error.validator == "not" and isinstance(error.schema, dict) and error.schema.get("description"):
        message = error.schema["description"]
    elif not path and error.validator == "type" and document is None:
        message = "the file is empty; it describes one source: source, rules, ..."
    return MappingError(name, message, _rule_of(document, path), json_pointer(path))


def _rule_of(document: object, path: list) -> str | None:
    """The name of the rule a path is inside, when there is one."""
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int) and isinstance(document, dict):
        rules = document.get("rules")
        if isinstance(rules, list) and path[1] < len(rules) and isinstance(rules[path[1]], dict):
            rule_name = rules[path[1]].get("name")
            if isinstance(rule_name, str):
                return rule_name
    return None


def _compile_file(document: dict, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
    """Compile a schema-valid document; collects every error a schema cannot find."""
    name = str(path)
    errors: list[MappingError] = []

    def compiled(text: str, where: list, rule: str | None = None) -> Expression | None:
        try:
            return compile_expression(text)
        except ValueError as exc:
            errors.append(MappingError(name, str(exc), rule, json_pointer(where)))
            return None

    def compiled_tags(tags: dict, where: list, rule: str | None = None) -> dict:
        return {tag: compiled(text, where + [tag], rule) for tag, text in tags.items()}

    idempotency = document.get("idempotency")
    delivery_expression = None
    if idempotency and "expression" in idempotency:
        delivery_expression = compiled(idempotency["expression"], ["idempotency", "expression"])
    defaults = document.get("defaults", {})
    default_tags = compiled_tags(defaults.get("tags", {}), ["defaults", "tags"])

    seen: dict[str, int] = {}
    rules = []
    for r, spec in enumerate(document["rules"]):
        rule_name = spec["name"]
        at = ["rules", r]
        if rule_name in seen:
            errors.append(MappingError(
                name, f"the rule name is also used at /rules/{seen[rule_name]}; names are unique in a file",
                rule_name, json_pointer(at + ["name"])))
        seen.setdefault(rule_name, r)
        events = compiled(spec["events"], at + ["events"], rule_name) if "events" in spec else None
        filter_ = compiled(spec["filter"], at + ["filter"], rule_name) if "filter" in spec else None
        timestamp, time_format = None, "auto"
        if "timestamp" in spec:
            timestamp = compiled(spec["timestamp"]["field"], at + ["timestamp", "field"], rule_name)
            time_format = spec["timestamp"].get("format", "auto")
            if time_format not in TIMESTAMP_FORMATS:
                try:
                    check_strptime(time_format)
                except ValueError as exc:
                    errors.append(MappingError(name, str(exc), rule_name, json_pointer(at + ["timestamp", "format"])))
        rule_tags = {**default_tags, **compiled_tags(spec.get("tags", {}), at + ["tags"], rule_name)}
        namespace = spec.get("namespace", defaults.get("namespace"))
        metrics = []
        for m, metric_spec in enumerate(spec["metrics"]):
            where = at + ["metrics", m]
            try:
                parts = parse_template(metric_spec["name"])
            except ValueError as exc:
                errors.append(MappingError(name, f"name template {metric_spec['name']!r}: {exc}", rule_name,
                                           json_pointer(where + ["name"])))
                parts = []
            value = compiled(metric_spec["value"], where + ["value"], rule_name) if "value" in metric_spec else None
            metric_tags = compiled_tags(metric_spec.get("tags", {}), where + ["tags"], rule_name)
            metrics.append((metric_spec, namespace, parts, value, metric_tags))
        rules.append((rule_name, events, filter_, timestamp, time_format, rule_tags, metrics))
    if errors:
        return None, errors
    built = tuple(
        CompiledRule(rule_name, events, filter_, timestamp, time_format, tuple(rule_tags.items()),
              tuple(CompiledMetric(spec, namespace, parts, value, tuple(tags.items()))
                    for spec, namespace, parts, value, tags in metrics))
        for rule_name, events, filter_, timestamp, time_format, rule_tags, metrics in rules
    )
    signature = document.get("signature")
    if signature is not None:
        signature = {**SIGNATURE_DEFAULTS.get(signature["scheme"], {}), **signature,
                     "secrets": tuple(signature["secrets"])}
    return SourceRules(
        source=document["source"],
        path=path,
        description=document.get("description"),
        _signature=signature,
        _idempotency=dict(idempotency) if idempotency else None,
        _rules=built,
        _delivery_expression=delivery_expression,
    ), []
