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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridges.delivery.sinks import SINK_NAMES, SINKS
from bridges.masking import Secret
from bridges.setting_rows import (
    EXPECTED,
    Refused,
    Setting,
    boolean,
    choice,
    folder,
    name_list,
    optional_file,
    optional_folder,
    optional_text,
    plain_text,
    positive_int,
    positive_number,
    queue_name,
    schedule_text,
    seconds_or_zero,
    table_name,
    token,
)

LOCAL_SETTINGS_FILE = "local.settings.json"
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("
BACKEND_SINKS = tuple(sink.name for sink in SINKS if sink.required)  # the outbox needs no settings


class SettingsError(ValueError):
    """A setting that cannot be used; the message starts with the setting's name."""


def _sink_list(text: str) -> tuple[str, ...] | None:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    if not names:
        return None
    if any(n not in SINK_NAMES for n in names):
        raise ValueError
    return names


EXPECTED[_sink_list] = f"a comma list of {', '.join(SINK_NAMES)}"
_DELIVERY_MODES = choice("queued", "inline")

SETTINGS: tuple[Setting, ...] = (
    Setting("BRIDGE_MAX_BODY_BYTES", "20971520", positive_int,
            "Largest request body accepted, in bytes, before and after gzip decompression; a larger one gets 413."),
    Setting("BRIDGE_MAX_ITEMS", "100000", positive_int, "Most metrics accepted in one request; more gets 413."),
    Setting("BRIDGE_OUTBOX_DIR", ".bridge/outbox", folder,
            "Folder where the outbox sink appends accepted metrics as canonical NDJSON, one file per UTC day."),
    Setting("BRIDGE_STATE_DIR", ".bridge", folder,
            "Folder for local state: the embedded SQLite queues (when AzureWebJobsStorage is not set) and the "
            "local runner's function key."),
    Setting("BRIDGE_SINKS", "", _sink_list,
            f"Comma list of sinks to deliver to ({', '.join(SINK_NAMES)}). "
            "Empty: every sink whose required settings are present, or the outbox when none is."),
    Setting("BRIDGE_HTTP_TIMEOUT_SECONDS", "10", positive_number,
            "Connect and read timeout, each, for every request to a backend."),
    Setting("BRIDGE_RETRY_QUEUE", "bridge-retry", plain_text,
            "Storage queue of retry envelopes (on AzureWebJobsStorage; an embedded SQLite queue locally)."),
    Setting("BRIDGE_DELIVERY", "queued", _DELIVERY_MODES,
            "queued: an HTTP function keeps accepted metrics on the delivery queue and answers at once; the "
            "delivery function sends them on in batches. inline: the answer waits for every sink and carries the "
            "per-sink report."),
    Setting("BRIDGE_DELIVERY_QUEUE", "bridge-deliver", queue_name,
            "Storage queue of accepted metrics waiting for the delivery function (on AzureWebJobsStorage; an "
            "embedded SQLite queue locally)."),
    Setting("BRIDGE_DELIVERY_BATCH", "32", positive_int,
            "Most delivery-queue messages one invocation of the delivery function merges into one delivery "
            "(its own and those it takes from the queue)."),
    Setting("BRIDGE_DELIVERY_LINGER_SECONDS", "1", seconds_or_zero,
            "How long the delivery function waits for more messages to merge before it delivers a batch that is "
            "not full: fewer, larger requests to every backend for at most this much more delay. 0: never wait."),
    Setting("BRIDGE_DEADLETTER_QUEUE", "bridge-deadletter", plain_text,
            "Storage queue of what can never be delivered, each with its reason; `python -m bridges deadletter`."),
    Setting("BRIDGE_RETRY_BASE_SECONDS", "5", positive_number, "Backoff base: attempt n waits up to base * 2^(n-1)."),
    Setting("BRIDGE_RETRY_CAP_SECONDS", "600", positive_number, "Longest backoff between two attempts."),
    Setting("BRIDGE_RETRY_MAX_ATTEMPTS", "10", positive_int, "Retries before an envelope is dead-lettered."),
    Setting("BRIDGE_RETRY_MAX_AGE_SECONDS", "86400", positive_number,
            "Time after the first failure before an envelope is dead-lettered."),
    Setting("BRIDGE_SELF_METRICS", "false", boolean,
            "Also send the bridge's own metrics (bridge_accepted_total, bridge_delivered_total, bridge_rejected_total, "
            "bridge_retried_total, bridge_dead_lettered_total, bridge_delivery_seconds, tagged by sink) to the sinks. "
            "They are always logged as structured records."),
    Setting("BRIDGE_DELIVERY_DEADLINE_SECONDS", "60", positive_number,
            "Time one delivery may spend per sink; requests not sent by then are kept as pending, so an HTTP "
            "answer never nears the Functions host's 230-second limit."),
    Setting("BRIDGE_MAPPINGS_DIR", "", optional_folder,
            "Folder of extra webhook mapping rule files (.yaml, .yml, .json); a file for a source that has built-in "
            "rules extends them: its rules are added, one named like a built-in rule replaces it (`disabled: true` "
            "removes it), its other blocks override key by key. Checked at start-up."),
    Setting("BRIDGE_IDEMPOTENCY_TTL_SECONDS", "259200", positive_number,
            "How long a webhook delivery id is remembered: a repeat within it is answered 200 `{\"duplicate\": true}` "
            "and not sent again (default 3 days, Stripe's retry window)."),
    Setting("BRIDGE_IDEMPOTENCY_TABLE", "bridgeidempotency", table_name,
            "Azure table of seen delivery ids (on AzureWebJobsStorage; an embedded SQLite file locally)."),
    Setting("BRIDGE_CHECKS_FILE", "", optional_file,
            "JSON or YAML file of synthetic checks (schemas/checks.schema.json)."),
    Setting("BRIDGE_CHECKS", "", plain_text, "The same checks as inline JSON, instead of a file."),
    Setting("CHECKS_SCHEDULE", "0 * * * * *", schedule_text,
            "NCRONTAB schedule of the synthetic checks function (UTC; default every minute)."),
    Setting("BRIDGE_SOURCES_FILE", "", optional_file,
            "JSON or YAML file of polled sources (schemas/sources.schema.json)."),
    Setting("BRIDGE_SOURCES", "", plain_text, "The same sources as inline JSON, instead of a file."),
    Setting("SOURCES_SCHEDULE", "0 * * * * *", schedule_text,
            "NCRONTAB schedule of the polling function; each run polls the sources whose own schedule is due."),
    Setting("BRIDGE_ROUTES_FILE", "", optional_file,
            "JSON or YAML file of routes (schemas/routes.schema.json): which sinks get which metrics, and what each "
            "sink's processors (keep/drop, rename, tags, cardinality guard) do to them. Empty: every sink gets every "
            "metric. Check one with `python -m bridges routes check`."),
    Setting("BRIDGE_ROUTES", "", plain_text, "The same routes as inline JSON, instead of a file."),
    Setting("BRIDGE_LOCATION", "", plain_text,
            "The location tag of check metrics (default: REGION_NAME, which Azure sets, else `local`)."),
    Setting("BRIDGE_OTLP_RESOURCE_ATTRIBUTES", "service.name,service.namespace,deployment.environment", name_list,
            "Comma list of OTLP resource attributes kept as tags on every data point of POST /api/v1/metrics (a data "
            "point attribute of the same name wins); other resource attributes are dropped."),
    *(setting for sink in SINKS for setting in sink.settings),
    Setting("AZURE_CLIENT_ID", "", optional_text,
            "Client id of the user-assigned managed identity (or of the service principal); empty: system-assigned."),
    Setting("AZURE_TENANT_ID", "", optional_text, "Tenant of the service principal (with AZURE_CLIENT_SECRET)."),
    Setting("AZURE_CLIENT_SECRET", "", token,
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


@dataclass(frozen=True)
class Settings:
    """Every setting, read and validated: one field per general setting (its name lower-cased,
    without ``BRIDGE_``); a sink's own settings, declared by the sink, are read the same way as
    attributes (``settings.dynatrace_url``) from ``sink_values``."""

    max_body_bytes: int
    max_items: int
    outbox_dir: Path
    state_dir: Path
    sinks: tuple[str, ...] | None  # as BRIDGE_SINKS says; see ``enabled_sinks``
    http_timeout_seconds: float
    retry_queue: str
    delivery: str
    delivery_queue: str
    delivery_batch: int
    delivery_linger_seconds: float
    deadletter_queue: str
    retry_base_seconds: float
    retry_cap_seconds: float
    retry_max_attempts: int
    retry_max_age_seconds: float
    self_metrics: bool
    delivery_deadline_seconds: float
    mappings_dir: Path | None
    idempotency_ttl_seconds: float
    idempotency_table: str
    checks_file: Path | None
    checks: str
    checks_schedule: str
    sources_file: Path | None
    sources: str
    sources_schedule: str
    routes_file: Path | None
    routes: str
    location: str
    otlp_resource_attributes: tuple[str, ...]
    azure_client_id: str | None
    azure_tenant_id: str | None
    azure_client_secret: Secret | None
    sink_values: Mapping[str, Any]  # field name -> value, for every sink's settings
    enabled_sinks: tuple[str, ...]
    sink_problems: tuple[str, ...]  # partly configured sinks, each naming the setting to fix

    def __getattr__(self, name: str) -> Any:
        """A sink's setting (only called for names that are not fields)."""
        try:
            return self.__dict__["sink_values"][name]
        except KeyError:
            raise AttributeError(name) from None


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
    except Refused as exc:
        raise SettingsError(f"{setting.name}: expected {exc}") from None
    except ValueError:
        shown = "" if setting.secret else f", got {text!r}"
        raise SettingsError(f"{setting.name}: expected {EXPECTED[setting.parse]}{shown}") from None


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
    sink_fields = {setting.field_name for sink in SINKS for setting in sink.settings}
    general = {name: value for name, value in parsed.items() if name not in sink_fields}
    # A sink setting that could not be read keeps its default; its sink stays off and is reported.
    sink_values = {setting.field_name: parsed.get(setting.field_name, setting.parse(setting.default))
                   for sink in SINKS for setting in sink.settings}
    return Settings(**general, sink_values=sink_values, enabled_sinks=enabled, sink_problems=problems)


def _choose_sinks(parsed: dict[str, Any], broken: dict[str, list[str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    requested = parsed["sinks"]
    problems: list[str] = []
    complete = []
    for sink in SINKS:
        if not sink.required:
            continue  # the outbox: the fallback, or named in BRIDGE_SINKS
        mentioned = any(parsed.get(name.lower()) is not None for name in sink.required) or sink.name in broken
        unreadable = broken.get(sink.name, [])  # those settings keep no value, and are not "not set"
        reasons = unreadable + [f"{name} is not set" for name in sink.missing(parsed) if name.lower() in parsed]
        if not reasons:
            complete.append(sink.name)
        elif requested and sink.name in requested:
            raise SettingsError(f"{reasons[0]} (BRIDGE_SINKS names {sink.name})")
        elif mentioned:
            problems.extend(f"{sink.name}: {reason}" for reason in reasons)
    if requested:
        return tuple(requested), tuple(problems)
    fallback = next(sink.name for sink in SINKS if not sink.required)
    return tuple(complete) or (fallback,), tuple(problems)
