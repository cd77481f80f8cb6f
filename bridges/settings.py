"""App settings -> one typed, validated ``Settings``; the only module that reads them.

Settings come from the environment (app settings in Azure) and, when run locally, from the
``Values`` of ``local.settings.json``, as Core Tools does; the environment wins. Every setting
is declared once in ``SETTINGS`` with its default and meaning: the README table is checked
against that list. A bad value stops start-up with a message that names the setting and never
echoes a secret.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

LOCAL_SETTINGS_FILE = "local.settings.json"
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("


class SettingsError(ValueError):
    """A setting that cannot be used; the message starts with the setting's name."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], object]
    meaning: str
    secret: bool = False


def _positive_int(text: str) -> int:
    value = int(text.strip().replace("_", ""))
    if value <= 0:
        raise ValueError
    return value


def _folder(text: str) -> Path:
    if not text.strip():
        raise ValueError
    return Path(text.strip())


_EXPECTED = {_positive_int: "a positive whole number", _folder: "a folder path"}

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "BRIDGE_MAX_BODY_BYTES", "20971520", _positive_int,
        "Largest request body accepted, in bytes, before and after gzip decompression; a larger one gets 413.",
    ),
    Setting(
        "BRIDGE_MAX_ITEMS", "100000", _positive_int,
        "Most metrics accepted in one request; more gets 413.",
    ),
    Setting(
        "BRIDGE_OUTBOX_DIR", ".bridge/outbox", _folder,
        "Folder where the embedded outbox sink appends accepted metrics as canonical NDJSON, one file per UTC day.",
    ),
)


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int
    max_items: int
    outbox_dir: Path


def in_azure(environ: Mapping[str, str]) -> bool:
    return any(name in environ for name in ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME", "CONTAINER_NAME"))


def local_values(path: Path | None = None) -> dict[str, str]:
    """``Values`` of local.settings.json (empty when there is none)."""
    path = path or Path.cwd() / LOCAL_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (ValueError, AttributeError) as exc:
        raise SettingsError(f"{path}: not a valid local.settings.json ({exc})") from None
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object of setting names to strings")
    return {str(k): str(v) for k, v in values.items()}


def environment(environ: Mapping[str, str] | None = None, local_file: Path | None = None) -> dict[str, str]:
    """The settings in force: the environment over local.settings.json (the latter only outside Azure)."""
    environ = dict(os.environ if environ is None else environ)
    merged = {} if in_azure(environ) else local_values(local_file)
    merged.update(environ)
    return merged


def load_settings(environ: Mapping[str, str] | None = None, local_file: Path | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad one."""
    values = environment(environ, local_file)
    parsed = {}
    for setting in SETTINGS:
        text = values.get(setting.name, "")
        if not text.strip():
            text = setting.default
        if text.startswith(KEY_VAULT_PREFIX):
            raise SettingsError(
                f"{setting.name}: the Key Vault reference did not resolve (check the vault, the secret "
                "name and the app's identity and its 'Key Vault Secrets User' role)"
            )
        try:
            parsed[setting.name] = setting.parse(text)
        except ValueError:
            shown = "" if setting.secret else f", got {text!r}"
            raise SettingsError(f"{setting.name}: expected {_EXPECTED[setting.parse]}{shown}") from None
    return Settings(
        max_body_bytes=parsed["BRIDGE_MAX_BODY_BYTES"],
        max_items=parsed["BRIDGE_MAX_ITEMS"],
        outbox_dir=parsed["BRIDGE_OUTBOX_DIR"],
    )
