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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
    """Every error of every file; a path is a rule file or a folder of them. Later paths extend
    earlier ones source by source, as ``BRIDGE_MAPPINGS_DIR`` extends ``mappings/``."""
    merged, errors = check_layers(paths)
    return [source.rules for source in merged], errors


def check_layers(paths: Sequence[Path], base: Path | None = None) -> tuple[list[MergedSource], list[MappingError]]:
    """Each source's merged rules, with where each rule came from, and every error of every file.

    With ``base`` (the built-in folder, for ``mappings check PATH...``) the paths are checked as
    extending it, as start-up does; the sources that come from ``base`` alone are left out. It is
    not added when one of the paths is that folder or inside it."""
    paths = [Path(p) for p in paths]
    if base is not None and not any(_is_within(p, base) for p in paths):
        merged, errors = _merge_layers([base, *paths])
        return [m for m in merged.values() if not all(_is_within(Path(f), base) for f in m.files)], errors
    merged, errors = _merge_layers(paths)
    return list(merged.values()), errors


def load_sources(dirs: Sequence[Path]) -> dict[str, SourceRules]:
    """Each source's rules: a later folder's file for a source extends the earlier ones' (see
    ``merge_documents``); raises the first MappingError."""
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise MappingError(str(folder), "no such folder of rule files")
    merged, errors = _merge_layers(dirs)
    if errors:
        raise errors[0]
    return {source: m.rules for source, m in merged.items()}


def rule_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RULE_FILE_SUFFIXES and p.is_file())


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


class _Checked(NamedTuple):
    """One file that passed its own checks: the document as written and its compiled rules."""

    path: Path
    document: dict
    rules: SourceRules


def _check_layer(path: Path) -> tuple[dict[str, _Checked], list[MappingError], set[str]]:
    """The good files of a folder (or one file) by source, every error, and the sources of the
    bad files (when they can be read)."""
    if path.is_dir():
        return _check_folder(path)
    if path.is_file():
        return _check_folder(path, [path])
    return {}, [MappingError(str(path), "no such file or folder")], set()


def _check_folder(folder: Path, paths: Sequence[Path] | None = None) -> tuple[dict[str, _Checked], list[MappingError], set[str]]:
    found: dict[str, _Checked] = {}
    errors: list[MappingError] = []
    bad: set[str] = set()
    for path in rule_files(folder) if paths is None else paths:
        checked, file_errors, source = _check_file(path)
        errors.extend(file_errors)
        if checked is None:
            if source is not None:
                bad.add(source)
            continue
        assert source is not None  # a good file has one
        if source in found:
            errors.append(MappingError(
                str(path), f"source '{source}' is also described by {found[source].path}; "
                "one file per source", field="/source"))
            continue
        found[source] = checked
    return found, errors, bad


# ---------------------------------------------------------------------------------------------
# Extending a source's rules with a later file


BUILT_IN, REPLACED, ADDED, DISABLED = "from", "replaced by", "added by", "disabled by"


@dataclass(frozen=True)
class MergedSource:
    """One source's rules after its files were layered (``files``: the base first, then each file
    that extends it), and how: ``rules_from`` lists each rule name in order with how it got
    there (``"from"`` the base file, ``"replaced by"``, ``"added by"`` or ``"disabled by"`` a later
    file) and that file; ``overridden`` the top-level blocks a later file changed, and which."""

    rules: SourceRules
    files: tuple[str, ...]
    rules_from: tuple[tuple[str, str, str], ...]
    overridden: tuple[tuple[str, str], ...] = ()

    def describe(self) -> list[str]:
        """What ``mappings check`` prints: one line for a source from one file, else the merge."""
        rules = self.rules
        if len(self.files) == 1:
            return [f"ok: {rules.path} (source {rules.source}, {len(rules.rule_names)} rules)"]
        lines = [f"ok: source {rules.source} ({len(rules.rule_names)} rules): {self.files[0]} extended by "
                 + ", then ".join(self.files[1:])]
        lines += [f"  rule '{name}': {how} {file}" for name, how, file in self.rules_from]
        by_file: dict[str, list[str]] = {}
        for key, file in self.overridden:
            by_file.setdefault(file, []).append(key)
        lines += [f"  {', '.join(keys)}: overridden by {file}" for file, keys in by_file.items()]
        return lines


class _Layered:
    """A source's document being merged, and where each of its rules was written."""

    def __init__(self, checked: _Checked):
        self.checked = checked
        self.path = checked.path  # the last file merged: the merged rules' path
        self.document = checked.document
        self.files = [str(checked.path)]
        # For each rule of the document: (file, its index in that file), to name it in errors.
        self.written_at = [(str(checked.path), i) for i in range(len(checked.document["rules"]))]
        self.rules_from = [[rule["name"], BUILT_IN, str(checked.path)] for rule in checked.document["rules"]]
        self.overridden: list[tuple[str, str]] = []


def _merge_layers(paths: Sequence[Path]) -> tuple[dict[str, MergedSource], list[MappingError]]:
    layered: dict[str, _Layered] = {}
    failed: set[str] = set()  # sources with a bad file: a later file cannot be merged into them
    errors: list[MappingError] = []
    for path in map(Path, paths):
        found, layer_errors, bad = _check_layer(path)
        errors.extend(layer_errors)
        failed |= bad
        for source in bad:
            layered.pop(source, None)
        for source, checked in found.items():
            if source in failed:
                continue
            if source not in layered:
                merge_errors = _nothing_to_disable(checked.document, str(checked.path))
                if merge_errors:
                    errors.extend(merge_errors)
                    failed.add(source)
                else:
                    layered[source] = _Layered(checked)
                continue
            merge_errors = _extend(layered[source], checked)
            if merge_errors:
                errors.extend(merge_errors)
                failed.add(source)
                del layered[source]
    merged: dict[str, MergedSource] = {}
    for source, layers in layered.items():
        rules: SourceRules | None = layers.checked.rules
        if len(layers.files) > 1:
            rules, compile_errors = _compile_file(layers.document, layers.path, layers.written_at)
            errors.extend(compile_errors)  # each file compiled on its own: only a last guard
        if rules is not None:
            rules_from = tuple((name, how, file) for name, how, file in layers.rules_from)
            merged[source] = MergedSource(rules, tuple(layers.files), rules_from, tuple(layers.overridden))
    return merged, errors


def merge_documents(base: dict, top: dict) -> dict:
    """``top`` extending ``base`` (both valid rule documents of one source).

    Rules: a rule of ``top`` whose name is one of ``base``'s replaces it in place; with
    ``disabled: true`` it removes it; any other is added after ``base``'s rules, in ``top``'s
    order. Every other top-level key given in ``top`` overrides ``base``'s: objects
    (``idempotency``, ``defaults`` and its ``tags``) key by key, at every depth; text and lists
    (``description``, ``signature.secrets``) whole; and a ``signature`` naming another scheme
    replaces the whole block (its other keys belong to the scheme)."""
    merged = {key: value for key, value in base.items() if key != "rules"}
    for key, value in top.items():
        if key == "rules":
            continue
        if key == "signature" and isinstance(base.get(key), dict) and base[key].get("scheme") != value.get("scheme"):
            merged[key] = value
        else:
            merged[key] = _override(base.get(key), value)
    rules = list(base["rules"])
    where = {rule["name"]: i for i, rule in enumerate(rules)}
    for rule in top["rules"]:
        if rule["name"] in where:
            rules[where[rule["name"]]] = None if rule.get("disabled") is True else rule
        elif rule.get("disabled") is not True:
            rules.append(rule)
    merged["rules"] = [rule for rule in rules if rule is not None]
    return merged


def _override(base: object, top: object) -> object:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{key: _override(base.get(key), value) for key, value in top.items()}}
    return top


def _extend(layers: _Layered, checked: _Checked) -> list[MappingError]:
    """Merge ``checked`` into the source's layers; the errors naming ``checked``'s file."""
    name = str(checked.path)
    top = checked.document
    current = {rule["name"]: i for i, rule in enumerate(layers.document["rules"])}
    errors = []
    for j, rule in enumerate(top["rules"]):
        if rule.get("disabled") is True and rule["name"] not in current:
            known = ", ".join(f"'{n}'" for n in current) or "none"
            errors.append(MappingError(
                name, f"disabled, but no rule of this name is in {', '.join(layers.files)} to remove "
                f"(its rules: {known})", rule["name"], json_pointer(["rules", j, "disabled"])))
    if errors:
        return errors
    rules_from = layers.rules_from
    active = [entry for entry in rules_from if entry[1] != DISABLED]
    written_at = dict(zip(current, layers.written_at, strict=True))
    for j, rule in enumerate(top["rules"]):
        rule_name = rule["name"]
        if rule_name in current:
            entry = next(e for e in active if e[0] == rule_name)
            entry[1:] = [DISABLED if rule.get("disabled") is True else REPLACED, name]
            if rule.get("disabled") is True:
                active.remove(entry)
                del written_at[rule_name]
            else:
                written_at[rule_name] = (name, j)
        else:
            rules_from.append([rule_name, ADDED, name])
            written_at[rule_name] = (name, j)
    layers.document = merge_documents(layers.document, top)
    layers.written_at = [written_at[rule["name"]] for rule in layers.document["rules"]]
    layers.files.append(name)
    layers.path = checked.path
    layers.overridden += [(key, name) for key in top if key not in ("source", "rules")]
    return []


def _nothing_to_disable(document: dict, name: str) -> list[MappingError]:
    """A file that extends nothing (no built-in file for its source, an inline mapping) has no
    rule to disable."""
    return [MappingError(name, f"disabled, but source '{document['source']}' has no built-in rule file "
                         "whose rule it could remove", rule["name"], json_pointer(["rules", j, "disabled"]))
            for j, rule in enumerate(document["rules"]) if rule.get("disabled") is True]


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


def _check_file(path: Path) -> tuple[_Checked | None, list[MappingError], str | None]:
    """The file checked on its own (a disabled rule is left for the merge to judge), its errors,
    and its source when that can be read."""
    try:
        document = read_document(path)
    except MappingError as exc:
        return None, [exc], None
    rules, errors = _check_document(document, path)
    if rules is None:
        source = document.get("source") if isinstance(document, dict) else None
        return None, errors, source if isinstance(source, str) else None
    assert isinstance(document, dict)  # the schema says so
    return _Checked(path, document, rules), [], rules.source


def check_document(document: Any, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
    """Validate and compile one source's rules already read (from a file, or inline in a polled
    source's declaration, ``path`` then naming where); every error found, or none. It extends no
    built-in file, so it has no rule to disable."""
    rules, errors = _check_document(document, path)
    if rules is not None:
        errors = _nothing_to_disable(document, str(path))
    return (None, errors) if errors else (rules, [])


def _check_document(document: Any, path: Path | str) -> tuple[SourceRules | None, list[MappingError]]:
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


def _compile_file(document: dict, path: Path | str,
                  written_at: Sequence[tuple[str, int]] | None = None) -> tuple[SourceRules | None, list[MappingError]]:
    """Compile a schema-valid document; collects every error a schema cannot find. A merged
    document says with ``written_at`` in which file, at which index, each of its rules was
    written, so that an error names that file and place. A rule with ``disabled: true`` is not
    compiled (the merge removes the rule it names)."""
    name = str(path)
    errors: list[MappingError] = []

    def compiled(text: str, where: list, rule: str | None = None, file: str = name) -> Expression | None:
        try:
            return compile_expression(text)
        except ValueError as exc:
            errors.append(MappingError(file, str(exc), rule, json_pointer(where)))
            return None

    def compiled_tags(tags: dict, where: list, rule: str | None = None, file: str = name) -> dict:
        return {tag: compiled(text, where + [tag], rule, file) for tag, text in tags.items()}

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
        file, index = written_at[r] if written_at is not None else (name, r)
        at = ["rules", index]
        if rule_name in seen:
            errors.append(MappingError(
                file, f"the rule name is also used at /rules/{seen[rule_name]}; names are unique in a file",
                rule_name, json_pointer(at + ["name"])))
        seen.setdefault(rule_name, r)
        if spec.get("disabled") is True:
            errors.extend(MappingError(
                file, f"a disabled rule removes the rule of its name from the file it extends: it has only "
                f"'name' and 'disabled', not '{key}'", rule_name, json_pointer(at + [key]))
                for key in spec if key not in ("name", "disabled"))
            continue
        events = compiled(spec["events"], at + ["events"], rule_name, file) if "events" in spec else None
        filter_ = compiled(spec["filter"], at + ["filter"], rule_name, file) if "filter" in spec else None
        timestamp, time_format = None, "auto"
        if "timestamp" in spec:
            timestamp = compiled(spec["timestamp"]["field"], at + ["timestamp", "field"], rule_name, file)
            time_format = spec["timestamp"].get("format", "auto")
            forms = time_format if isinstance(time_format, list) else [time_format]
            for index, form in enumerate(forms):
                if form not in TIMESTAMP_FORMATS:
                    try:
                        check_strptime(form)
                    except ValueError as exc:
                        pointer = at + ["timestamp", "format"] + ([index] if isinstance(time_format, list) else [])
                        errors.append(MappingError(file, str(exc), rule_name, json_pointer(pointer)))
        rule_tags = {**default_tags, **compiled_tags(spec.get("tags", {}), at + ["tags"], rule_name, file)}
        namespace = spec.get("namespace", defaults.get("namespace"))
        metrics = []
        for m, metric_spec in enumerate(spec["metrics"]):
            where = at + ["metrics", m]
            try:
                parts = parse_template(metric_spec["name"])
            except ValueError as exc:
                errors.append(MappingError(file, f"name template {metric_spec['name']!r}: {exc}", rule_name,
                                           json_pointer(where + ["name"])))
                parts = []
            value = compiled(metric_spec["value"], where + ["value"], rule_name, file) if "value" in metric_spec else None
            metric_tags = compiled_tags(metric_spec.get("tags", {}), where + ["tags"], rule_name, file)
            metrics.append((metric_spec, namespace, parts, value, metric_tags))
        rules.append((rule_name, events, filter_, timestamp, time_format, rule_tags, metrics))
    if errors:
        return None, errors
    built: tuple[CompiledRule, ...] = tuple(
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
