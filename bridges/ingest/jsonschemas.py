"""The explaining JSON Schema validator, reading patterns as JSON Schema (and jsonschema-rs) do.

jsonschema-rs decides whether a document is valid; jsonschema, only for one that is not, says
why with readable messages and paths. The two must agree on every input, yet jsonschema's
``pattern`` uses Python's ``re``, which does not read a pattern as JSON Schema prescribes
(ECMA-262): its ``$`` also matches before a final newline (so ``"westeurope\\n"`` passed
``^[a-z0-9]{2,40}$`` and went into a URL), and its ``\\d``, ``\\w`` and ``\\s`` are Unicode classes.
Here ``pattern`` is read with regress, an ECMA-262 engine, like jsonschema-rs reads it; a test
compares both validators on generated strings for every pattern of our schemas.
"""
from __future__ import annotations

from functools import cache, lru_cache


def explaining_validator(schema: dict, **options):
    """A jsonschema Draft 2020-12 validator whose ``pattern`` follows ECMA-262."""
    return _validator_class()(schema, **options)


@cache
def _validator_class():
    import jsonschema
    from jsonschema.validators import extend

    return extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@lru_cache(maxsize=512)
def _compiled(pattern: str):
    import regress

    return regress.Regex(pattern)


def _pattern(validator, pattern: str, instance: object, schema: dict):
    from jsonschema.exceptions import ValidationError

    if not validator.is_type(instance, "string"):
        return
    try:
        found = _compiled(pattern).find(instance)
    except UnicodeEncodeError:  # lone surrogates: no pattern can read them, nor can any backend
        yield ValidationError("text must be valid Unicode (no lone surrogates)")
        return
    if found is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")
