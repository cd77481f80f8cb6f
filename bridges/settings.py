"""App settings -> one typed, validated ``Settings``; the only module that reads them.

Settings come from the environment (app settings in Azure) and, when run locally, from the
``Values`` of ``local.settings.json``, as Core Tools does; the environment wins. Every setting
is declared once in ``SETTINGS`` with its default and meaning: the table in docs/settings.md is checked
against that list, and ``Settings`` has one field per setting (its name lower-cased, without
``BRIDGE_``). A bad value stops start-up with a message that names the setting and never
echoes a secret.

Sinks are enabled by their settings. With ``BRIDGE_SINKS`` unset, every sink whose required
settings are all present is enabled (the local outbox when none is); a sink that is only
partly configured is left out and reported, at start-up and by /api/health, with the name of
the setting to fix. A sink named in ``BRIDGE_SINKS`` must be complete, or start-up fails.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from bridges.masking import Secret
from bridges.scheduled.schedules import Schedule

LOCAL_SETTINGS_FILE = "local.settings.json"
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("
OUTBOX = "outbox"
BACKEND_SINKS = ("dynatrace", "betterstack", "unleash", "azure_monitor", "prometheus")


class SettingsError(ValueError):
    """A setting that cannot be used; the message starts with the setting's name."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    parse: Callable[[str], object]
    meaning: str
    sink: str | None = None  # the sink this setting configures, if any

    @property
    def secret(self) -> bool:
        return self.parse is _secret

    @property
    def field_name(self) -> str:
        return self.name.removeprefix("BRIDGE_").lower()


def _positive_int(text: str) -> int:
    value = int(text.strip().replace("_", ""))
    if value <= 0:
        raise ValueError
    return value


def _positive_number(text: str) -> float:
    value = float(text.strip())
    if not value > 0 or value == float("inf"):
        raise ValueError
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text.strip())
    if not 0 <= value < float("inf"):
        raise ValueError
    return value


def _folder(text: str) -> Path:
    if not text.strip():
        raise ValueError
    return Path(text.strip())


def _optional_folder(text: str) -> Path | None:
    return Path(text.strip()) if text.strip() else None


def _optional_file(text: str) -> Path | None:
    if not text.strip():
        return None
    path = Path(text.strip())
    if not path.is_file():
        raise ValueError
    return path


def _schedule(text: str) -> str:
    Schedule(text.strip())  # raises ScheduleError, a ValueError
    return text.strip()


_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")


def _table_name(text: str) -> str:
    if not _TABLE_NAME.fullmatch(text.strip()):
        raise ValueError
    return text.strip()


# Azure Storage queue names, with room for the host's "-poison" suffix (63 characters in all).
_QUEUE_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,54}[a-z0-9]")


def _queue_name(text: str) -> str:
    if not _QUEUE_NAME.fullmatch(text.strip()):
        raise ValueError
    return text.strip()


class _Refused(ValueError):
    """A value refused for a reason of its own; the value is never echoed (it may hold a password)."""


def _url(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text if "://" in text else "https://" + text)
    if parts.username is not None or parts.password is not None:
        # They would show wherever the URL does, and requests would send them as Basic auth
        # in place of the sink's own token.
        raise _Refused("a URL without credentials: user:password@ is refused; put the credential in the sink's "
                       "token setting")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError
    return parts.geturl().rstrip("/")


def _secret(text: str) -> Secret | None:
    return Secret(text.strip()) if text.strip() else None


def _text(text: str) -> str:
    return text.strip()


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError
    return lowered in ("true", "1", "yes")


def _dimensions(text: str) -> dict[str, str]:
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


def _region(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    if not _REGION.fullmatch(text):
        raise ValueError
    return text


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _optional_text(text: str) -> str | None:
    return text.strip() or None


class _Choice(Protocol):
    expected: str

    def __call__(self, text: str) -> str: ...


def _choice(*options: str) -> _Choice:
    def parse(text: str) -> str:
        if text.strip().lower() not in options:
            raise ValueError
        return text.strip().lower()

    choice = cast(_Choice, parse)
    choice.expected = "one of " + ", ".join(options)
    return choice


def _sink_list(text: str) -> tuple[str, ...] | None:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        return None
    if any(n not in (OUTBOX, *BACKEND_SINKS) for n in names):
        raise ValueError
    return names


_EXPECTED: dict[Callable[[str], object], str] = {
    _positive_int: "a positive whole number",
    _positive_number: "a positive number",
    _seconds_or_zero: "a number of seconds, 0 or more",
    _folder: "a folder path",
    _url: "an http(s) URL",
    _secret: "a token",
    _text: "text",
    _boolean: "true or false",
    _dimensions: "key=value pairs separated by commas, without control characters",
    _sink_list: f"a comma list of {', '.join((OUTBOX, *BACKEND_SINKS))}",
    resource_id: "the id of an Azure resource (/subscriptions/.../resourceGroups/.../providers/...), "
                  "not a resource group or subscription",
    _region: "a lower-case region short name such as westeurope",
    _names: "names separated by commas",
    _optional_text: "text",
    _optional_folder: "a folder path",
    _optional_file: "the path of an existing file",
    _schedule: "an NCRONTAB schedule (six fields, seconds first, e.g. '0 */5 * * * *') or a TimeSpan (00:05:00)",
    _table_name: "an Azure table name (a letter, then 2-62 letters or digits)",
    _queue_name: "an Azure queue name (3-56 lower-case letters, digits and single hyphens, not starting or "
                 "ending with a hyphen)",
}
_BETTERSTACK_FORMATS = _choice("msgpack", "json", "ndjson")
_UNLEASH_APIS = _choice("auto", "custom", "impact")
_DELIVERY_MODES = _choice("queued", "inline")

SETTINGS: tuple[Setting, ...] = (
    Setting("BRIDGE_MAX_BODY_BYTES", "20971520", _positive_int,
            "Largest request body accepted, in bytes, before and after gzip decompression; a larger one gets 413."),
    Setting("BRIDGE_MAX_ITEMS", "100000", _positive_int, "Most metrics accepted in one request; more gets 413."),
    Setting("BRIDGE_OUTBOX_DIR", ".bridge/outbox", _folder,
            "Folder where the outbox sink appends accepted metrics as canonical NDJSON, one file per UTC day."),
    Setting("BRIDGE_STATE_DIR", ".bridge", _folder,
            "Folder for local state: the embedded SQLite queues (when AzureWebJobsStorage is not set) and the "
            "local runner's function key."),
    Setting("BRIDGE_SINKS", "", _sink_list,
            "Comma list of sinks to deliver to (outbox, dynatrace, betterstack, unleash, azure_monitor, prometheus). "
            "Empty: every sink whose required settings are present, or the outbox when none is."),
    Setting("BRIDGE_HTTP_TIMEOUT_SECONDS", "10", _positive_number,
            "Connect and read timeout, each, for every request to a backend."),
    Setting("BRIDGE_RETRY_QUEUE", "bridge-retry", _text,
            "Storage queue of retry envelopes (on AzureWebJobsStorage; an embedded SQLite queue locally)."),
    Setting("BRIDGE_DELIVERY", "queued", _DELIVERY_MODES,
            "queued: an HTTP function keeps accepted metrics on the delivery queue and answers at once; the "
            "delivery function sends them on in batches. inline: the answer waits for every sink and carries the "
            "per-sink report."),
    Setting("BRIDGE_DELIVERY_QUEUE", "bridge-deliver", _queue_name,
            "Storage queue of accepted metrics waiting for the delivery function (on AzureWebJobsStorage; an "
            "embedded SQLite queue locally)."),
    Setting("BRIDGE_DELIVERY_BATCH", "32", _positive_int,
            "Most delivery-queue messages one invocation of the delivery function merges into one delivery "
            "(its own and those it takes from the queue)."),
    Setting("BRIDGE_DELIVERY_LINGER_SECONDS", "1", _seconds_or_zero,
            "How long the delivery function waits for more messages to merge before it delivers a batch that is "
            "not full: fewer, larger requests to every backend for at most this much more delay. 0: never wait."),
    Setting("BRIDGE_DEADLETTER_QUEUE", "bridge-deadletter", _text,
            "Storage queue of what can never be delivered, each with its reason; `python -m bridges deadletter`."),
    Setting("BRIDGE_RETRY_BASE_SECONDS", "5", _positive_number, "Backoff base: attempt n waits up to base * 2^(n-1)."),
    Setting("BRIDGE_RETRY_CAP_SECONDS", "600", _positive_number, "Longest backoff between two attempts."),
    Setting("BRIDGE_RETRY_MAX_ATTEMPTS", "10", _positive_int, "Retries before an envelope is dead-lettered."),
    Setting("BRIDGE_RETRY_MAX_AGE_SECONDS", "86400", _positive_number,
            "Time after the first failure before an envelope is dead-lettered."),
    Setting("BRIDGE_SELF_METRICS", "false", _boolean,
            "Also send the bridge's own metrics (bridge_accepted_total, bridge_delivered_total, bridge_rejected_total, "
            "bridge_retried_total, bridge_dead_lettered_total, bridge_delivery_seconds, tagged by sink) to the sinks. "
            "They are always logged as structured records."),
    Setting("BRIDGE_DELIVERY_DEADLINE_SECONDS", "60", _positive_number,
            "Time one delivery may spend per sink; requests not sent by then are kept as pending, so an HTTP "
            "answer never nears the Functions host's 230-second limit."),
    Setting("BRIDGE_MAPPINGS_DIR", "", _optional_folder,
            "Folder of extra webhook mapping rule files (.yaml, .yml, .json); a file for a source that has built-in "
            "rules replaces them. Checked at start-up."),
    Setting("BRIDGE_IDEMPOTENCY_TTL_SECONDS", "259200", _positive_number,
            "How long a webhook delivery id is remembered: a repeat within it is answered 200 `{\"duplicate\": true}` "
            "and not sent again (default 3 days, Stripe's retry window)."),
    Setting("BRIDGE_IDEMPOTENCY_TABLE", "bridgeidempotency", _table_name,
            "Azure table of seen delivery ids (on AzureWebJobsStorage; an embedded SQLite file locally)."),
    Setting("BRIDGE_CHECKS_FILE", "", _optional_file,
            "JSON or YAML file of synthetic checks (schemas/checks.schema.json)."),
    Setting("BRIDGE_CHECKS", "", _text, "The same checks as inline JSON, instead of a file."),
    Setting("CHECKS_SCHEDULE", "0 * * * * *", _schedule,
            "NCRONTAB schedule of the synthetic checks function (UTC; default every minute)."),
    Setting("BRIDGE_SOURCES_FILE", "", _optional_file,
            "JSON or YAML file of polled sources (schemas/sources.schema.json)."),
    Setting("BRIDGE_SOURCES", "", _text, "The same sources as inline JSON, instead of a file."),
    Setting("SOURCES_SCHEDULE", "0 * * * * *", _schedule,
            "NCRONTAB schedule of the polling function; each run polls the sources whose own schedule is due."),
    Setting("BRIDGE_LOCATION", "", _text,
            "The location tag of check metrics (default: REGION_NAME, which Azure sets, else `local`)."),
    Setting("DYNATRACE_URL", "", _url,
            "Metrics ingest URL: `https://<env>.live.dynatrace.com/api/v2/metrics/ingest`, a Managed or ActiveGate "
            "`.../e/<env>/api/v2/metrics/ingest`, or the OneAgent local `http://localhost:14499/metrics/ingest` "
            "(no token). A bare host or environment URL gets `/api/v2/metrics/ingest` appended.", "dynatrace"),
    Setting("DYNATRACE_API_TOKEN", "", _secret, "API token with the `metrics.ingest` scope.", "dynatrace"),
    Setting("DYNATRACE_METRIC_PREFIX", "", _text, "Prefix put before every metric key (a dot is added).", "dynatrace"),
    Setting("DYNATRACE_DEFAULT_DIMENSIONS", "", _dimensions,
            "Dimensions added to every line (`key=value,key2=value2`); a metric's own tags win.", "dynatrace"),
    Setting("DYNATRACE_METADATA", "true", _boolean,
            "Send `#key gauge dt.meta.unit=...,dt.meta.description=...` lines for metrics with a unit or description.",
            "dynatrace"),
    Setting("BETTERSTACK_URL", "", _url,
            "The source's ingesting host (`https://s1234567.eu-nbg-2.betterstackdata.com`) or the older "
            "`https://in.logs.betterstack.com`; `/metrics` is appended when the URL has no path.", "betterstack"),
    Setting("BETTERSTACK_SOURCE_TOKEN", "", _secret, "The metrics source's token.", "betterstack"),
    Setting("BETTERSTACK_FORMAT", "msgpack", _BETTERSTACK_FORMATS, "Body encoding: msgpack, json or ndjson.",
            "betterstack"),
    Setting("BETTERSTACK_MAX_REQUESTS_PER_MINUTE", "500", _positive_int,
            "Client-side rate limit per process (Better Stack allows 500 requests a minute per IP).", "betterstack"),
    Setting("UNLEASH_URL", "", _url, "Base URL of the Unleash server (`https://unleash.example.com`).", "unleash"),
    Setting("UNLEASH_API_TOKEN", "", _secret, "A client or backend API token, sent raw in `Authorization`.",
            "unleash"),
    Setting("UNLEASH_API", "auto", _UNLEASH_APIS,
            "custom: `/api/client/metrics/custom` (Unleash 7.0-8.0); impact: impact metrics in `/api/client/metrics` "
            "(8.1+); auto: custom, switching to impact for the process on a 404.", "unleash"),
    Setting("UNLEASH_APP_NAME", "metrics-bridge", _text, "appName reported with impact metrics.", "unleash"),
    Setting("AZURE_MONITOR_RESOURCE_ID", "", resource_id,
            "Default Azure resource the custom metrics belong to (a metric's `azure.resource_id` overrides it). "
            "Grant the app's identity Monitoring Metrics Publisher on it.", "azure_monitor"),
    Setting("AZURE_MONITOR_REGION", "", _region,
            "That resource's region (`westeurope`): metrics go to `https://<region>.monitoring.azure.com`.",
            "azure_monitor"),
    Setting("AZURE_MONITOR_ENDPOINT", "", _url,
            "Endpoint override for sovereign clouds (`https://usgovarizona.monitoring.azure.us`); replaces the "
            "regional URL.", "azure_monitor"),
    Setting("AZURE_MONITOR_NAMESPACE", "Bridge", _text, "Namespace for metrics that name none.", "azure_monitor"),
    Setting("AZURE_MONITOR_DIMENSION_PRIORITY", "", _names,
            "Tag names to keep first when a metric has more than 10 (comma list); the rest in key order.",
            "azure_monitor"),
    Setting("PROMETHEUS_REMOTE_WRITE_URL", "", _url,
            "The data collection rule's full ingestion URL, `https://<dce>.<region>-1.metrics.ingest.monitor.azure.com/"
            "dataCollectionRules/<dcr-id>/streams/Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24`. "
            "Grant the identity Monitoring Metrics Publisher on the data collection rule.", "prometheus"),
    Setting("PROMETHEUS_MAX_SAMPLES_PER_REQUEST", "2000", _positive_int, "Samples per remote-write request.",
            "prometheus"),
    Setting("AZURE_CLIENT_ID", "", _optional_text,
            "Client id of the user-assigned managed identity (or of the service principal); empty: system-assigned."),
    Setting("AZURE_TENANT_ID", "", _optional_text, "Tenant of the service principal (with AZURE_CLIENT_SECRET)."),
    Setting("AZURE_CLIENT_SECRET", "", _secret,
            "Service principal secret (a Key Vault reference in Azure); with AZURE_TENANT_ID and AZURE_CLIENT_ID the "
            "Azure sinks use it instead of the managed identity."),
)
# The app settings the functions' bindings name as %SETTING%, with the function each feeds. The
# host does not run a function whose binding names an unset setting (no fallback to the default
# below), so each must be set (the Bicep does); health names every one that is not.
BINDING_SETTINGS = {"BRIDGE_DELIVERY_QUEUE": "deliver_accepted", "BRIDGE_RETRY_QUEUE": "retry_deliveries",
                    "CHECKS_SCHEDULE": "synthetic_checks", "SOURCES_SCHEDULE": "polled_sources"}


def binding_defaults() -> dict[str, str]:
    """The binding settings at their defaults: what local.settings.json and the Bicep set."""
    return {setting.name: setting.default for setting in SETTINGS if setting.name in BINDING_SETTINGS}


def unset_bindings(environ: Mapping[str, str]) -> list[str]:
    """A problem per binding setting that is not set, naming the function the host will not run."""
    return [f"{name} is not set: the host does not run {function} (its binding names %{name}%); "
            f"set it, e.g. to {binding_defaults()[name]!r}"
            for name, function in BINDING_SETTINGS.items() if not str(environ.get(name, "")).strip()]


_EXPECTED[_BETTERSTACK_FORMATS] = _BETTERSTACK_FORMATS.expected
_EXPECTED[_UNLEASH_APIS] = _UNLEASH_APIS.expected
_EXPECTED[_DELIVERY_MODES] = _DELIVERY_MODES.expected
_REQUIRED = {
    "dynatrace": ("DYNATRACE_URL", "DYNATRACE_API_TOKEN"),
    "betterstack": ("BETTERSTACK_URL", "BETTERSTACK_SOURCE_TOKEN"),
    "unleash": ("UNLEASH_URL", "UNLEASH_API_TOKEN"),
    "azure_monitor": ("AZURE_MONITOR_RESOURCE_ID", "AZURE_MONITOR_REGION"),
    "prometheus": ("PROMETHEUS_REMOTE_WRITE_URL",),
}


@dataclass(frozen=True)
class Settings:
    max_body_bytes: int = 20 * 1024 * 1024
    max_items: int = 100_000
    outbox_dir: Path = Path(".bridge/outbox")
    state_dir: Path = Path(".bridge")
    sinks: tuple[str, ...] | None = None  # as BRIDGE_SINKS says; see ``enabled_sinks``
    http_timeout_seconds: float = 10.0
    delivery_deadline_seconds: float = 60.0
    self_metrics: bool = False
    retry_queue: str = "bridge-retry"
    delivery: str = "queued"
    delivery_queue: str = "bridge-deliver"
    delivery_batch: int = 32
    delivery_linger_seconds: float = 1.0
    deadletter_queue: str = "bridge-deadletter"
    retry_base_seconds: float = 5.0
    retry_cap_seconds: float = 600.0
    retry_max_attempts: int = 10
    retry_max_age_seconds: float = 86400.0
    mappings_dir: Path | None = None
    idempotency_ttl_seconds: float = 259200.0
    idempotency_table: str = "bridgeidempotency"
    checks_file: Path | None = None
    checks: str = ""
    checks_schedule: str = "0 * * * * *"
    sources_file: Path | None = None
    sources: str = ""
    sources_schedule: str = "0 * * * * *"
    location: str = "local"
    dynatrace_url: str | None = None
    dynatrace_api_token: Secret | None = None
    dynatrace_metric_prefix: str = ""
    dynatrace_default_dimensions: dict = field(default_factory=dict)
    dynatrace_metadata: bool = True
    betterstack_url: str | None = None
    betterstack_source_token: Secret | None = None
    betterstack_format: str = "msgpack"
    betterstack_max_requests_per_minute: int = 500
    unleash_url: str | None = None
    unleash_api_token: Secret | None = None
    unleash_api: str = "auto"
    unleash_app_name: str = "metrics-bridge"
    azure_monitor_resource_id: str | None = None
    azure_monitor_region: str | None = None
    azure_monitor_endpoint: str | None = None
    azure_monitor_namespace: str = "Bridge"
    azure_monitor_dimension_priority: tuple = ()
    prometheus_remote_write_url: str | None = None
    prometheus_max_samples_per_request: int = 2000
    azure_client_id: str | None = None
    azure_tenant_id: str | None = None
    azure_client_secret: Secret | None = None
    enabled_sinks: tuple[str, ...] = (OUTBOX,)
    sink_problems: tuple[str, ...] = ()  # partly configured sinks, each naming the setting to fix


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


def _parse(setting: Setting, text: str) -> object:
    if text.startswith(KEY_VAULT_PREFIX):
        raise SettingsError(
            f"{setting.name}: the Key Vault reference did not resolve (check the vault, the secret "
            "name, and the app's identity and its 'Key Vault Secrets User' role)"
        )
    try:
        return setting.parse(text)
    except _Refused as exc:
        raise SettingsError(f"{setting.name}: expected {exc}") from None
    except ValueError:
        shown = "" if setting.secret else f", got {text!r}"
        raise SettingsError(f"{setting.name}: expected {_EXPECTED[setting.parse]}{shown}") from None


def load_settings(environ: Mapping[str, str] | None = None, local_file: Path | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad one."""
    values = environment(environ, local_file)
    parsed: dict[str, Any] = {}
    broken: dict[str, list[str]] = {}
    for setting in SETTINGS:
        text = values.get(setting.name, "")
        if not text.strip():
            text = setting.default
        try:
            parsed[setting.field_name] = _parse(setting, text)
        except SettingsError as exc:
            if setting.sink is None:
                raise
            broken.setdefault(setting.sink, []).append(str(exc))
    parsed["location"] = parsed["location"] or values.get("REGION_NAME", "").strip() or "local"
    enabled, problems = _choose_sinks(parsed, broken)
    # A setting that could not be read keeps its default; its sink stays off and is reported.
    return Settings(**parsed, enabled_sinks=enabled, sink_problems=problems)


def _missing(sink: str, parsed: dict[str, Any]) -> list[str]:
    required = list(_REQUIRED[sink])
    if sink == "dynatrace" and _is_oneagent_local(parsed.get("dynatrace_url")):
        required.remove("DYNATRACE_API_TOKEN")
    if sink == "azure_monitor" and parsed.get("azure_monitor_endpoint"):
        required.remove("AZURE_MONITOR_REGION")  # the endpoint override names the regional host
    return [name for name in required if parsed.get(name.lower()) is None]


def _is_oneagent_local(url: object) -> bool:
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.hostname in ("localhost", "127.0.0.1", "::1") and parts.path.rstrip("/") == "/metrics/ingest"


def _choose_sinks(parsed: dict[str, Any], broken: dict[str, list[str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    requested = parsed["sinks"]
    problems: list[str] = []
    complete = []
    for sink in BACKEND_SINKS:
        missing = _missing(sink, parsed)
        mentioned = any(parsed.get(name.lower()) is not None for name in _REQUIRED[sink]) or sink in broken
        reasons = broken.get(sink, []) + [f"{name} is not set" for name in missing if name.lower() in parsed]
        if not reasons:
            complete.append(sink)
        elif requested and sink in requested:
            raise SettingsError(f"{reasons[0]} (BRIDGE_SINKS names {sink})")
        elif mentioned:
            problems.extend(f"{sink}: {reason}" for reason in reasons)
    if requested:
        return tuple(requested), tuple(problems)
    return tuple(complete) or (OUTBOX,), tuple(problems)
