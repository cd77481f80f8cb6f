"""Setting rows and the parsers that read their values: what ``bridges.settings`` and each
sink's declaration (``bridges.delivery.sinks``) are written in. A parser raises ValueError for a
value it cannot use; ``EXPECTED`` says, for the error message, what it wanted instead."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from bridges.masking import Secret
from bridges.scheduled.schedules import Schedule


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], object]
    meaning: str
    sink: str | None = None  # the sink this setting configures, if any

    @property
    def secret(self) -> bool:
        return self.parse is token

    @property
    def field_name(self) -> str:
        return self.name.removeprefix("BRIDGE_").lower()


def positive_int(text: str) -> int:
    value = int(text.strip().replace("_", ""))
    if value <= 0:
        raise ValueError
    return value


def positive_number(text: str) -> float:
    value = float(text.strip())
    if not value > 0 or value == float("inf"):
        raise ValueError
    return value


def seconds_or_zero(text: str) -> float:
    value = float(text.strip())
    if not 0 <= value < float("inf"):
        raise ValueError
    return value


def folder(text: str) -> Path:
    if not text.strip():
        raise ValueError
    return Path(text.strip())


def optional_folder(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


def optional_file(text: str) -> Path | None:
    if not text.strip():
        return None
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError
    return path


def schedule_text(text: str) -> str:
    Schedule(text.strip())  # raises ScheduleError, a ValueError
    return text.strip()


_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")


def table_name(text: str) -> str:
    if not _TABLE_NAME.fullmatch(text.strip()):
        raise ValueError
    return text.strip()


# Azure Storage queue names, with room for the host's "-poison" suffix (63 characters in all).
_QUEUE_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,54}[a-z0-9]")


def queue_name(text: str) -> str:
    if not _QUEUE_NAME.fullmatch(text.strip()):
        raise ValueError
    return text.strip()


class Refused(ValueError):
    """A value refused for a reason of its own; the value is never echoed (it may hold a password)."""


def http_url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text if "://" in text else "https://" + text)
    if parts.username is not None or parts.password is not None:
        # They would show wherever the URL does, and requests would send them as Basic auth
        # in place of the sink's own token.
        raise Refused("a URL without credentials: user:password@ is refused; put the credential in the sink's "
                       "token setting")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    return parts.geturl().rstrip("/")


def token(text: str) -> Secret | None:
    return Secret(text.strip()) if text.strip() else None


def plain_text(text: str) -> str:
    return text.strip()


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError
    return lowered in ("true", "1", "yes")


def dimensions(text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not part.isprintable():  # a control character would reach every line
            raise ValueError
        pairs[key.strip()] = value.strip()
    return pairs


_REGION = re.compile(r"[a-z0-9]{2,40}")


def resource_id(text: str) -> str | None:
    """An Azure resource id as the canonical schema defines ``azure.resource_id`` (one grammar for
    this setting, the Azure route and every metric): a resource, not a resource group or
    subscription, and nothing that would change the URL it becomes part of."""
    text = text.strip().rstrip("/")
    if not text:
        return None
    if not _resource_id_validator().is_valid(text):
        raise ValueError
    return text


@cache
def _resource_id_validator():
    import jsonschema_rs

    from bridges.ingest.normalize import METRIC_SCHEMA

    schema = json.loads(METRIC_SCHEMA.read_text(encoding="utf-8"))
    return jsonschema_rs.validator_for(schema["$defs"]["azure"]["properties"]["resource_id"])


def region(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not _REGION.fullmatch(text):
        raise ValueError
    return text


def name_list(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def optional_text(text: str) -> str | None:
    return text.strip() or None


EXPECTED: dict[Callable[[str], object], str] = {
    positive_int: "a positive whole number",
    positive_number: "a positive number",
    seconds_or_zero: "a number of seconds, 0 or more",
    folder: "a folder path",
    http_url: "an http(s) URL",
    token: "a token",
    plain_text: "text",
    boolean: "true or false",
    dimensions: "key=value pairs separated by commas, without control characters",
    resource_id: "the id of an Azure resource (/subscriptions/.../resourceGroups/.../providers/...), "
                  "not a resource group or subscription",
    region: "a lower-case region short name such as westeurope",
    name_list: "names separated by commas",
    optional_text: "text",
    optional_folder: "a folder path",
    optional_file: "the path of an existing file",
    schedule_text: "an NCRONTAB schedule (six fields, seconds first, e.g. '0 */5 * * * *') or a TimeSpan (00:05:00)",
    table_name: "an Azure table name (a letter, then 2-62 letters or digits)",
    queue_name: "an Azure queue name (3-56 lower-case letters, digits and single hyphens, not starting or "
                 "ending with a hyphen)",
}


def choice(*options: str) -> Callable[[str], str]:
    """A parser taking one of these words, in any case."""

    def parse(text: str) -> str:
        if text.strip().lower() not in options:
            raise ValueError
        return text.strip().lower()

    EXPECTED[parse] = "one of " + ", ".join(options)
    return parse
