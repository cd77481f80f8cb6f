"""The deployment (infra/bicep, azure.yaml, .funcignore) checked against the code it deploys.

No Bicep compiler or Azure subscription is reachable here, so the templates are parsed with the
tree-sitter Bicep grammar and their literal parts evaluated by a small interpreter: parameter
defaults, variables, strings, objects, arrays, ``empty``, ``union``, ``!`` and ``?:``. Anything
only Azure knows (a resource's id, a module output) stays an ``Unknown`` that renders as its
``${...}`` source text. The code's own declarations are the single source of truth: the settings
(``bridges.settings.SETTINGS``), the function bindings (``function_app.app.get_functions()``),
the metric names the bridge emits, the built-in webhook sources (``mappings/``) and the Python
version ``requirements.txt`` names.

The settings the template leaves unset are listed in docs/deploying.md, the "Deploy" section (under
"What the template leaves unset"); ``INFRA_TEST_README`` may name another copy of that page (or of a
README holding a "Deploy" section).
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_bicep
import yaml

from bridges.delivery import selfmetrics
from bridges.delivery.sinks.azure_monitor.sink import metric_name
from bridges.queues import SETTING as STORAGE_CONNECTION
from bridges.queues import poison_name, queue_client, storage_configured
from bridges.scheduled.checks import Check, CheckResult, metrics_of
from bridges.settings import SETTINGS, load_settings
from bridges.webhooks.idempotency import table_client

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra" / "bicep"
MODULES = INFRA / "modules"
MAIN = INFRA / "main.bicep"
WORKBOOK = INFRA / "bridge-workbook.json"
DEFAULTS = {s.name: s.default for s in SETTINGS}
DEPLOY_DOC = ROOT / "docs" / "deploying.md"
UNSET_HEADING = "What the template leaves unset"

# Built-in role definition ids, as ../shared/CONTRACTS.md lists them ("verified"):
# section 6.6 (storage), 6.7 (Key Vault) and 7 (all five, and Monitoring Metrics Publisher).
BUILTIN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",  # 6.6, 7
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # 6.6, 7
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # 6.6, 7
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",  # 6.7, 7
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",  # 7
}
# Which module grants which roles (the list; MMP on App Insights for Entra telemetry).
ROLES_BY_MODULE = {
    "rbac.bicep": set(BUILTIN_ROLES),
    "function-app.bicep": {"Monitoring Metrics Publisher"},  # the app itself: self-metrics target
    "prometheus.bicep": {"Monitoring Metrics Publisher"},  # on the data collection rule
    "metrics-publisher.bicep": {"Monitoring Metrics Publisher"},  # each resource in metricsResourceIds
}
# App settings Flex Consumption rejects or ignores: CONTRACTS.md section 7 ("Do not set on Flex"),
# and the rest of the app settings in the "Flex Consumption plan deprecations" table of Microsoft's
# Functions app settings reference (functions-app-settings.md, 2025-07).
FLEX_DO_NOT_SET = ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
                   "WEBSITE_CONTENTSHARE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
                   "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD", "WEBSITE_TIME_ZONE", "TZ",
                   # the deprecations table, beyond CONTRACTS.md's list
                   "FUNCTIONS_WORKER_RUNTIME_VERSION", "FUNCTIONS_MAX_HTTP_CONCURRENCY", "FUNCTIONS_WORKER_PROCESS_COUNT",
                   "FUNCTIONS_WORKER_DYNAMIC_CONCURRENCY_ENABLED", "WEBSITE_CONTENTOVERVNET", "WEBSITE_DNS_SERVER",
                   "WEBSITE_MAX_DYNAMIC_APPLICATION_SCALE_OUT", "WEBSITE_NODE_DEFAULT_VERSION",
                   "WEBSITE_SKIP_CONTENTSHARE_VALIDATION", "WEBSITE_VNET_ROUTE_ALL")
# Site properties (Microsoft.Web/sites properties or properties.siteConfig) a Flex Consumption app
# must not carry, with why. "deprecations": the same table, whose site-property rows all apply
# here; "51021": ARM refuses them on an FC1 site with error 51021 ("The following list of site
# configuration properties ... for Flex Consumption sites is invalid"), as the Azure Verified
# Modules web-site module's FC1 test records (region-dependent: older regions may ignore them).
FLEX_SITE_PROPERTIES_REJECTED = {
    "alwaysOn": "deprecations: not valid; Flex scales to zero, functionAppConfig.scaleAndConcurrency.alwaysReady "
                "keeps instances warm",
    "ftpsState": "deprecations: FTPS not supported; 51021",
    "use32BitWorkerProcess": "deprecations: 32-bit not supported; 51021",
    "linuxFxVersion": "deprecations: replaced by functionAppConfig.runtime; 51021",
    "windowsFxVersion": "deprecations: not valid (Flex is Linux); 51021",
    "netFrameworkVersion": "deprecations: replaced by functionAppConfig.runtime.version; 51021",
    "javaVersion": "deprecations: replaced by functionAppConfig.runtime.version; 51021",
    "powerShellVersion": "deprecations: replaced by functionAppConfig.runtime.version; 51021",
    "pythonVersion": "51021: the runtime is functionAppConfig.runtime",
    "nodeVersion": "51021: the runtime is functionAppConfig.runtime",
    "phpVersion": "51021: the runtime is functionAppConfig.runtime",
    "javaContainer": "51021: the runtime is functionAppConfig.runtime",
    "javaContainerVersion": "51021: the runtime is functionAppConfig.runtime",
    "functionAppScaleLimit": "deprecations: renamed scaleAndConcurrency.maximumInstanceCount; 51021",
    "preWarmedInstanceCount": "deprecations: renamed scaleAndConcurrency.alwaysReady; 51021",
    "functionsRuntimeScaleMonitoringEnabled": "51021: Flex scales per function itself",
    "containerSize": "deprecations: renamed scaleAndConcurrency.instanceMemoryMB",
    "reserved": "deprecations (isReserved): not valid on the site; the plan carries reserved: true",
    "isReserved": "deprecations: not valid",
    "isXenon": "deprecations: not valid",
    "vnetRouteAllEnabled": "deprecations: not used for networking in Flex Consumption",
    "vnetContentShareEnabled": "deprecations: not used for networking in Flex Consumption",
    "vnetImagePullEnabled": "deprecations: not used for networking in Flex Consumption",
    "vnetBackupRestoreEnabled": "deprecations: not used for networking in Flex Consumption",
}
# What the site's siteConfig does set, each one Flex takes (Flex's own Bicep samples set
# minTlsVersion; inbound access restrictions are supported on Flex).
FLEX_SITE_CONFIG_USED = {"minTlsVersion", "ipSecurityRestrictions", "ipSecurityRestrictionsDefaultAction"}
# Where the template departs, on purpose, from a setting's documented default.
RUNTIME_VALUES = {"AZURE_MONITOR_RESOURCE_ID", "AZURE_MONITOR_REGION", "AZURE_CLIENT_ID"}  # this deployment's
WRITABLE_FOLDERS = {"BRIDGE_OUTBOX_DIR", "BRIDGE_STATE_DIR"}  # the package folder is read-only in Azure
SELF_METRICS_ON = {"BRIDGE_SELF_METRICS": "true"}  # the workbook charts them


# --------------------------------------------------------------------------- a small Bicep reader

_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
_ESCAPES = {"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class Unknown:
    """A value only Azure knows; ``text`` is its source."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Unknown({self.text!r})"


def _named(node):
    return [c for c in node.named_children if c.type != "comment"]


def _text(node) -> str:
    return node.text.decode()


def _key(prop) -> str:
    key = prop.named_children[0]
    return _text(key) if key.type == "identifier" else _string_literal(key)


def _string_literal(node) -> str:
    assert node.type == "string" and not any(c.type == "interpolation" for c in node.children), _text(node)
    return _render(node, None)


def _render(node, evaluate) -> str:
    """A string node's text, escapes undone; each interpolation replaced by its value when
    ``evaluate`` gives a string, else kept as ``${...}``."""
    raw = node.text  # bytes: tree-sitter offsets are byte offsets
    if raw.startswith(b"'''"):
        return raw[3:-3].decode()
    out, position = [], 1
    for child in node.children:
        if child.type != "interpolation":
            continue
        inner = _named(child)[0]
        opening = raw.rindex(b"${", 0, inner.start_byte - node.start_byte)
        closing = raw.index(b"}", inner.end_byte - node.start_byte)
        out.append(_unescape(raw[position:opening].decode()))
        known = evaluate(inner)
        out.append(known if isinstance(known, str) else "${" + _text(inner) + "}")
        position = closing + 1
    out.append(_unescape(raw[position:-1].decode()))
    return "".join(out)


class Template:
    """One .bicep file: its declarations, and the values of the parts that are literal."""

    def __init__(self, path: Path):
        self.path = path
        self.source = path.read_bytes()
        self.root = _PARSER.parse(self.source).root_node
        self.params: dict[str, tuple[object, str]] = {}  # name -> (default node or None, decorators)
        self.vars: dict[str, object] = {}
        self.outputs: dict[str, object] = {}
        self.modules: dict[str, tuple[str, object]] = {}  # name -> (path, body object)
        self.resources: list[tuple[str, str, object]] = []  # (name, type@version, body object)
        decorators = ""
        for node in _named(self.root):
            if node.type == "decorators":
                decorators = _text(node)
                continue
            parts = _named(node)
            if node.type == "parameter_declaration":
                self.params[_text(parts[0])] = (parts[2] if len(parts) > 2 else None, decorators)
            elif node.type == "variable_declaration":
                self.vars[_text(parts[0])] = parts[1]
            elif node.type == "output_declaration":
                self.outputs[_text(parts[0])] = parts[-1]
            elif node.type == "module_declaration":
                self.modules[_text(parts[0])] = (_string_literal(parts[1]), _body(parts[-1]))
            elif node.type == "resource_declaration":
                self.resources.append((_text(parts[0]), _string_literal(parts[1]), _body(parts[-1])))
            decorators = ""

    def problems(self) -> list[str]:
        """ERROR and MISSING nodes, as 'line:column: text'."""
        found = []

        def walk(node):
            if node.is_error or node.is_missing or node.type == "ERROR":
                found.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1}: {_text(node)[:60]!r}")
            for child in node.children:
                walk(child)

        walk(self.root)
        return found

    # ---- evaluation

    def value(self, node, seen: frozenset = frozenset()):
        kind = node.type
        if kind == "string":
            rendered = self.render_string(node, seen)
            known = all(isinstance(self.value(_named(c)[0], seen), str)
                        for c in node.children if c.type == "interpolation")
            return rendered if known else Unknown(rendered)
        if kind == "number":
            return int(_text(node))
        if kind == "boolean":
            return _text(node) == "true"
        if kind == "null":
            return None
        if kind == "object":
            return {_key(p): self.value(p.named_children[-1], seen) for p in _named(node) if p.type == "object_property"}
        if kind == "array":
            return [self.value(item, seen) for item in _named(node)]
        if kind == "parenthesized_expression":
            return self.value(_named(node)[0], seen)
        if kind == "identifier":
            name = _text(node)
            if name in seen:
                return Unknown(name)
            if name in self.vars:
                return self.value(self.vars[name], seen | {name})
            if name in self.params and self.params[name][0] is not None:
                return self.value(self.params[name][0], seen | {name})
            return Unknown(name)
        if kind == "unary_expression" and _text(node).startswith("!"):
            operand = self.value(_named(node)[0], seen)
            return Unknown(_text(node)) if isinstance(operand, Unknown) else not operand
        if kind == "ternary_expression":
            condition, yes, no = _named(node)
            chosen = self.value(condition, seen)
            if isinstance(chosen, bool):
                return self.value(yes if chosen else no, seen)
            return Unknown(_text(node))
        if kind == "call_expression":
            function = _text(node.named_children[0])
            args = [self.value(a, seen) for a in _named(node.named_children[1])]
            if any(isinstance(a, Unknown) for a in args):
                return Unknown(_text(node))
            if function == "empty":
                return not args[0]
            if function == "union" and all(isinstance(a, dict) for a in args):
                merged: dict = {}
                for arg in args:
                    merged.update(arg)
                return merged
        return Unknown(_text(node))

    def render_string(self, node, seen: frozenset = frozenset()) -> str:
        """The string's value; an interpolation of something unknown stays as its ${...} text."""
        return _render(node, lambda inner: self.value(inner, seen))

    def var(self, name: str):
        return self.value(self.vars[name])

    def rendered(self, node) -> str:
        assert node.type == "string", _text(node)
        return self.render_string(node)

    def object_keys(self, node) -> set[str]:
        """Every key of every object literal inside ``node`` (both branches of a condition)."""
        keys = set()

        def walk(n):
            if n.type == "object_property":
                keys.add(_key(n))
            for child in n.named_children:
                walk(child)

        walk(node)
        return keys

    def property(self, body, *path):
        """The node at ``path`` in an object literal, or None."""
        node = body
        for step in path:
            props = {_key(p): p.named_children[-1] for p in _named(node) if p.type == "object_property"}
            if step not in props:
                return None
            node = props[step]
        return node


def _unescape(text: str) -> str:
    return re.sub(r"\\.", lambda m: _ESCAPES.get(m.group(0), m.group(0)), text)


def _body(node):
    """The object of a resource or module: past ``if (...)`` and ``[for ...: ...]``."""
    while node.type in ("if_statement", "for_statement"):
        node = [c for c in _named(node) if c.type == "object"][-1]
    return node


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@pytest.fixture(scope="module")
def main() -> Template:
    return Template(MAIN)


@pytest.fixture(scope="module")
def module_templates() -> dict[str, Template]:
    return {path.name: Template(path) for path in sorted(MODULES.glob("*.bicep"))}


@pytest.fixture(scope="module")
def app_settings(main) -> dict[str, object]:
    """The app settings with every parameter at its default (token settings then absent)."""
    settings = {}
    for name in ("hostSettings", "bridgeSettings", "tokenSettings"):
        value = main.var(name)
        assert isinstance(value, dict), (name, value)
        settings.update(value)
    return settings


@pytest.fixture(scope="module")
def mentioned_settings(main) -> set[str]:
    """Every app setting the template can set, whatever its parameters."""
    union = main.vars["appSettings"]
    assert _text(union).startswith("union(hostSettings, bridgeSettings, tokenSettings"), _text(union)
    return set().union(*(main.object_keys(main.vars[n]) for n in ("hostSettings", "bridgeSettings", "tokenSettings")))


@pytest.fixture(scope="module")
def indexed():
    # get_functions() may be called once per app; a fresh import gives a fresh app.
    sys.modules.pop("function_app", None)
    app = importlib.import_module("function_app").app
    return {f.get_function_name(): json.loads(f.get_function_json()) for f in app.get_functions()}


def deploy_section() -> str:
    page = Path(os.environ.get("INFRA_TEST_README") or DEPLOY_DOC)
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)  # '# ' in code
    heading = re.search(r"^(#+) Deploy\s*$", text, re.MULTILINE)
    assert heading, f"{page} has no 'Deploy' section"
    end = re.compile(rf"^#{{1,{len(heading.group(1))}}} ", re.MULTILINE).search(text, heading.end())
    return text[heading.end():end.start() if end else len(text)]


def documented_unset() -> set[str]:
    section = deploy_section()
    parts = re.split(rf"^#+ {re.escape(UNSET_HEADING)}\s*$", section, maxsplit=1, flags=re.MULTILINE)
    assert len(parts) == 2, f"the Deploy section has no {UNSET_HEADING!r} heading"
    table = parts[1].split("\n#", 1)[0]
    return set(re.findall(r"^\|\s*`([A-Za-z0-9_]+)`\s*\|", table, re.MULTILINE))


# --------------------------------------------------------------------------- every file parses


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses_without_error(path):
    assert Template(path).problems() == []
    # The grammar wrongly flags these two; Bicep has alternatives for both (union(), modules).
    code = "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())
    assert not re.search(r"^\s*extension\b", code, re.MULTILINE)
    assert not re.search(r"\.\.\.\s*[A-Za-z_(]", code)  # spread: ...name


def test_the_expected_files_exist():
    assert {p.name for p in MODULES.glob("*.bicep")} >= set(ROLES_BY_MODULE) | {
        "identity.bicep", "storage.bicep", "monitoring.bicep", "keyvault.bicep", "workbook.bicep"}
    for path, _ in Template(MAIN).modules.values():
        assert (INFRA / path).is_file(), path


# --------------------------------------------------------------------------- settings


def test_every_setting_is_set_or_documented_as_left_unset(mentioned_settings):
    unset = documented_unset()
    names = {s.name for s in SETTINGS}
    assert unset <= names, f"listed as unset but not a setting: {sorted(unset - names)}"
    assert not unset & mentioned_settings, f"listed as unset but set: {sorted(unset & mentioned_settings)}"
    missing = sorted(names - mentioned_settings - unset)
    assert not missing, f"neither set by main.bicep nor listed under {UNSET_HEADING!r}: {missing}"


def test_template_values_are_the_documented_defaults(app_settings):
    assert RUNTIME_VALUES | WRITABLE_FOLDERS | set(SELF_METRICS_ON) <= set(app_settings)
    for setting in SETTINGS:
        if setting.name not in app_settings:
            continue
        value = app_settings[setting.name]
        if setting.name in RUNTIME_VALUES:
            assert isinstance(value, Unknown), (setting.name, value)
        elif setting.name in WRITABLE_FOLDERS:
            assert isinstance(value, str) and value.startswith("/tmp/"), (setting.name, value)
        elif setting.name in SELF_METRICS_ON:
            assert value == SELF_METRICS_ON[setting.name]
        else:
            assert value == setting.default, f"{setting.name}: template {value!r}, documented {setting.default!r}"


def test_runtime_values_name_this_deployment(main):
    bridge = main.vars["bridgeSettings"]
    host = main.vars["hostSettings"]
    assert _text(main.property(bridge, "AZURE_CLIENT_ID")) == "identity.outputs.clientId"
    assert _text(main.property(host, "AzureWebJobsStorage__clientId")) == "identity.outputs.clientId"
    assert _text(main.property(bridge, "AZURE_MONITOR_RESOURCE_ID")) == "metricsResourceId"
    assert main.rendered(main.vars["functionAppResourceId"]) == (
        "${subscription().id}/resourceGroups/${rgName}/providers/Microsoft.Web/sites/${functionAppName}")
    assert _text(main.vars["metricsRegion"]) == "empty(azureMonitorRegion) ? location : azureMonitorRegion"


def test_the_defaults_load_in_the_code(app_settings):
    """The template's settings, with example values for what only Azure knows, are a valid
    configuration: the custom-metrics sink (the workbook's source) is the one enabled."""
    examples = {
        "AZURE_MONITOR_RESOURCE_ID": "/subscriptions/0000/resourceGroups/rg-x/providers/Microsoft.Web/sites/func-x",
        "AZURE_MONITOR_REGION": "westeurope",
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000000",
    }
    environ = {name: examples.get(name, value) for name, value in app_settings.items() if name in DEFAULTS}
    assert all(isinstance(v, str) for v in environ.values()), environ
    settings = load_settings({**environ, "WEBSITE_SITE_NAME": "func-x"})
    assert settings.enabled_sinks == ("azure_monitor",)
    assert settings.sink_problems == ()
    assert settings.self_metrics is True


def test_schedules_are_parameters_with_the_documented_defaults(main, indexed):
    bridge = main.vars["bridgeSettings"]
    for setting, param in (("CHECKS_SCHEDULE", "checksSchedule"), ("SOURCES_SCHEDULE", "sourcesSchedule")):
        assert _text(main.property(bridge, setting)) == param
        assert main.value(main.params[param][0]) == DEFAULTS[setting]
    # Every %SETTING% a binding names is set, non-empty: the host needs it to index the function.
    settings = main.var("bridgeSettings")
    named = set(re.findall(r"%([A-Za-z0-9_]+)%", json.dumps(indexed)))
    assert named == {"BRIDGE_DELIVERY_QUEUE", "BRIDGE_RETRY_QUEUE", "CHECKS_SCHEDULE", "SOURCES_SCHEDULE"}
    for name in named:
        assert isinstance(settings[name], str) and settings[name], name


def test_token_settings_are_key_vault_references_set_only_when_given(main, app_settings):
    tokens = {s.name for s in SETTINGS if s.secret and s.sink}
    assert tokens == {"DYNATRACE_API_TOKEN", "BETTERSTACK_SOURCE_TOKEN", "UNLEASH_API_TOKEN"}
    node = main.vars["tokenSettings"]
    assert main.object_keys(node) == tokens
    assert not tokens & set(app_settings)  # absent with the parameters at their defaults
    for match in re.finditer(r"empty\((\w+)\) \? \{\} : \{\s*(\w+): '([^']*)'", _text(node)):
        param, setting, reference = match.groups()
        assert "@secure()" in main.params[param][1], param
        assert reference.startswith("@Microsoft.KeyVault(SecretUri=${keyVault.outputs."), reference
        assert setting in tokens
    assert len(re.findall(r"empty\((\w+)\) \? \{\} : \{\s*(\w+): '([^']*)'", _text(node))) == len(tokens)
    assert len(re.findall(r"@Microsoft\.KeyVault\(SecretUri=", _text(node))) == len(tokens)
    # The other secrets (webhook signing secrets, credentials of checks) go the same way.
    vault = Template(MODULES / "keyvault.bicep")
    assert "@Microsoft.KeyVault(SecretUri=" in _text(vault.outputs["settingReferences"])
    assert vault.value(vault.property(_find_resource(vault, "Microsoft.KeyVault/vaults@"), "properties",
                                      "enableRbacAuthorization")) is True
    for name in ("dynatraceApiToken", "betterstackSourceToken", "unleashApiToken", "secretSettings"):
        assert "@secure()" in main.params[name][1] and "@secure()" in vault.params[name][1], name
    app = Template(MODULES / "function-app.bicep")
    site = _find_resource(app, "Microsoft.Web/sites@")
    assert _text(app.property(site, "properties", "keyVaultReferenceIdentity")) == "identityId"
    assert _text(app.property(site, "identity", "type")) == "'UserAssigned'"


def test_key_vault_name_never_meets_its_soft_deleted_predecessor(main, module_templates):
    """Deleting the resource group (``azd down``) soft-deletes the vault, and Azure keeps its
    name reserved until it is purged (7 days here). The name therefore hashes, with the
    environment's token, the principal id of the user-assigned identity: the same while the
    resource group lives (a redeployment keeps its vault, no orphan), a new one once the group was
    deleted and the identity made anew, so the next deployment gets a vault name never used
    before, with or without ``azd down --purge``. The vault stays purgeable (no purge protection)
    and is created normally (``createMode: 'recover'`` fails where no deleted vault exists)."""
    params = main.property(main.modules["keyVault"][1], "params")
    name = main.property(params, "name")
    assert main.rendered(name) == "kv-${uniqueString(resourceToken, identity.outputs.principalId)}"
    assert isinstance(main.value(name), Unknown)  # not computable from the parameters alone
    assert "'kv-${resourceToken}'" not in MAIN.read_text()
    # uniqueString gives 13 lowercase letters and digits: a valid vault name (3-24, a letter first,
    # letters, digits and single hyphens, a letter or digit last).
    example = "kv-" + "0123456789abc"
    assert re.fullmatch(r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]", example) and len(example) <= 24
    # The principal id is the identity resource's own, made by Azure when the identity is created.
    identity = module_templates["identity.bicep"]
    symbol = next(s for s, kind, _ in identity.resources if kind.startswith("Microsoft.ManagedIdentity/userAssignedIdentities@"))
    assert _text(identity.outputs["principalId"]) == f"{symbol}.properties.principalId"
    assert _text(main.property(main.modules["identity"][1], "params", "name")) == "'id-${resourceToken}'"
    # Everything else takes the vault's name from the module, never recomputes it.
    assert _text(main.property(main.modules["rbac"][1], "params", "keyVaultName")) == "keyVault.outputs.name"
    assert _text(main.outputs["AZURE_KEY_VAULT_NAME"]) == "keyVault.outputs.name"
    vault_template = module_templates["keyvault.bicep"]
    vault = vault_template.value(vault_template.property(_find_resource(vault_template, "Microsoft.KeyVault/vaults@"),
                                                         "properties"))
    assert vault["enableSoftDelete"] is True and vault["softDeleteRetentionInDays"] == 7
    assert "enablePurgeProtection" not in vault  # once true it can never be turned off again
    assert "createMode" not in vault
    assert _text(vault_template.property(_find_resource(vault_template, "Microsoft.KeyVault/vaults@"), "name")) == "name"


def test_flex_consumption_settings_are_not_set(mentioned_settings):
    assert not mentioned_settings & set(FLEX_DO_NOT_SET)
    files = bicep_files() + [INFRA / "main.parameters.json", ROOT / "azure.yaml"]
    for path in files:
        for name in FLEX_DO_NOT_SET:
            assert not re.search(rf"\b{name}\b", path.read_text()), f"{path.name} mentions {name}"


def _flex_sites(template: Template):
    """(symbol, body) of every site whose serverFarmId is an FC1 plan of the same template."""
    plans = {symbol for symbol, kind, body in template.resources if kind.startswith("Microsoft.Web/serverfarms@")
             and (template.value(template.property(body, "sku")) or {}).get("name") == "FC1"}
    for symbol, kind, body in template.resources:
        farm = template.property(body, "properties", "serverFarmId")
        if kind.startswith("Microsoft.Web/sites@") and farm is not None and _text(farm) in {f"{p}.id" for p in plans}:
            yield symbol, body


def test_flex_site_carries_no_property_flex_rejects(module_templates):
    """Flex Consumption takes its runtime, scale and deployment from functionAppConfig; the App
    Service switches in siteConfig (Always On above all) are deprecated there or refused with
    ARM error 51021. FLEX_SITE_PROPERTIES_REJECTED says why each one is checked."""
    rejected = {name.lower(): name for name in FLEX_SITE_PROPERTIES_REJECTED}
    sites = [(name, symbol, body) for name, template in module_templates.items()
             for symbol, body in _flex_sites(template)]
    assert [(name, symbol) for name, symbol, _ in sites] == [("function-app.bicep", "app")]
    app = module_templates["function-app.bicep"]
    _, _, site = sites[0]
    properties = app.property(site, "properties")
    site_config = app.property(properties, "siteConfig")
    found = []
    for where, node in (("properties", properties), ("properties.siteConfig", site_config)):
        for prop in _named(node):
            if prop.type == "object_property" and _key(prop).lower() in rejected:
                found.append(f"{where}.{_key(prop)}: {FLEX_SITE_PROPERTIES_REJECTED[rejected[_key(prop).lower()]]}")
    # A sites/config 'web' resource is siteConfig too.
    for _, kind, body in app.resources:
        if kind.startswith("Microsoft.Web/sites/config@") and app.value(app.property(body, "name")) == "web":
            found += [f"config/web.{k}" for k in app.object_keys(app.property(body, "properties"))
                      if k.lower() in rejected]
    assert found == [], "\n".join(found)
    # What siteConfig does set is only what Flex takes, and the rest is in functionAppConfig.
    assert {_key(p) for p in _named(site_config) if p.type == "object_property"} == FLEX_SITE_CONFIG_USED
    config = app.property(properties, "functionAppConfig")
    assert {_key(p) for p in _named(config) if p.type == "object_property"} == {
        "deployment", "scaleAndConcurrency", "runtime"}
    assert set(app.object_keys(app.property(config, "scaleAndConcurrency"))) == {"instanceMemoryMB",
                                                                                 "maximumInstanceCount"}
    code = "\n".join(line.split("//", 1)[0] for line in _text(site).splitlines())
    assert not re.search(r"\balwaysOn\b", code, re.IGNORECASE)  # not even behind a condition


# --------------------------------------------------------------------------- storage and bindings


def test_queues_and_table_are_the_ones_code_and_bindings_use(main, app_settings, indexed):
    storage_params = main.modules["storage"][1]
    queues = main.value(main.property(storage_params, "params", "queueNames"))
    tables = main.value(main.property(storage_params, "params", "tableNames"))
    retry, deadletter = DEFAULTS["BRIDGE_RETRY_QUEUE"], DEFAULTS["BRIDGE_DEADLETTER_QUEUE"]
    delivery = DEFAULTS["BRIDGE_DELIVERY_QUEUE"]
    assert delivery == main.var("deliveryQueueName") == "bridge-deliver"
    assert queues == [delivery, poison_name(delivery), retry, deadletter, poison_name(retry)]
    assert poison_name(delivery) == "bridge-deliver-poison"  # where the host parks a failing message
    assert tables == [DEFAULTS["BRIDGE_IDEMPOTENCY_TABLE"]]
    assert app_settings["BRIDGE_DELIVERY"] == "queued"
    assert app_settings["BRIDGE_DELIVERY_QUEUE"] == delivery  # the queue created is the queue used
    assert _text(main.property(main.vars["bridgeSettings"], "BRIDGE_DELIVERY_QUEUE")) == "deliveryQueueName"
    assert app_settings["BRIDGE_RETRY_QUEUE"] == retry
    assert app_settings["BRIDGE_DEADLETTER_QUEUE"] == deadletter
    assert app_settings["BRIDGE_IDEMPOTENCY_TABLE"] == tables[0]
    for function, setting in (("deliver_accepted", "BRIDGE_DELIVERY_QUEUE"), ("retry_deliveries", "BRIDGE_RETRY_QUEUE")):
        trigger = indexed[function]["bindings"][0]
        assert trigger["type"] == "queueTrigger"
        assert trigger["queueName"] == f"%{setting}%"
        assert trigger["connection"] == STORAGE_CONNECTION == "AzureWebJobsStorage"
        assert app_settings[setting] in queues
    # The queue role is granted on the whole account (not per queue), so it covers every queue above.
    rbac = Template(MODULES / "rbac.bicep")
    assert rbac.var("storageQueueDataContributor") in rbac.var("storageRoles")
    loop = next(body for symbol, _, body in rbac.resources if symbol == "storageRoleAssignments")
    assert _text(rbac.property(loop, "scope")) == "storage"
    account = next(body for symbol, kind, body in rbac.resources if symbol == "storage")
    assert _text(rbac.property(account, "name")) == "storageAccountName"
    assert _text(main.property(main.modules["rbac"][1], "params", "storageAccountName")) == "storage.outputs.name"


def test_host_storage_connection_is_identity_based(main, app_settings, indexed):
    connections = {b["connection"] for f in indexed.values() for b in f["bindings"] if "connection" in b}
    assert connections == {STORAGE_CONNECTION}
    host = main.vars["hostSettings"]
    prefix = STORAGE_CONNECTION + "__"
    assert app_settings[prefix + "credential"] == "managedidentity"
    for service in ("blob", "queue", "table"):
        assert _text(main.property(host, f"{prefix}{service}ServiceUri")) == f"storage.outputs.{service}Endpoint"
    storage = Template(MODULES / "storage.bicep")
    for service in ("blob", "queue", "table"):
        assert _text(storage.outputs[f"{service}Endpoint"]) == f"storage.properties.primaryEndpoints.{service}"
    assert STORAGE_CONNECTION not in app_settings  # no connection string: no shared key
    # The bridge's own clients find the same queues and table from these settings.
    examples = {f"{prefix}{service}ServiceUri": f"https://stx.{service}.core.windows.net/" for service in ("blob", "queue", "table")}
    environ = {name: examples.get(name, value) for name, value in app_settings.items() if name.startswith(prefix)}
    environ[prefix + "clientId"] = "00000000-0000-0000-0000-000000000000"
    assert storage_configured(environ)
    retry = queue_client(app_settings["BRIDGE_RETRY_QUEUE"], environ)
    assert retry.url == "https://stx.queue.core.windows.net/bridge-retry"
    assert type(retry.credential).__name__ == "ManagedIdentityCredential"
    assert table_client(app_settings["BRIDGE_IDEMPOTENCY_TABLE"], environ).url.startswith(
        "https://stx.table.core.windows.net")
    account = _find_resource(storage, "Microsoft.Storage/storageAccounts@")
    props = storage.value(storage.property(account, "properties"))
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    app = Template(MODULES / "function-app.bicep")
    deployment = app.property(_find_resource(app, "Microsoft.Web/sites@"), "properties", "functionAppConfig",
                              "deployment", "storage")
    assert app.value(app.property(deployment, "type")) == "blobContainer"
    assert app.value(app.property(deployment, "authentication", "type")) == "UserAssignedIdentity"


def test_telemetry_uses_entra(main, app_settings):
    host = main.vars["hostSettings"]
    assert main.rendered(main.property(host, "APPLICATIONINSIGHTS_AUTHENTICATION_STRING")) == (
        "ClientId=${identity.outputs.clientId};Authorization=AAD")
    assert _text(main.property(host, "APPLICATIONINSIGHTS_CONNECTION_STRING")) == "monitoring.outputs.connectionString"
    monitoring = Template(MODULES / "monitoring.bicep")
    component = _find_resource(monitoring, "Microsoft.Insights/components@")
    assert monitoring.value(monitoring.property(component, "properties", "DisableLocalAuth")) is True


def test_prometheus_url_is_the_rules_ingestion_url(main):
    prometheus = Template(MODULES / "prometheus.bicep")
    url = prometheus.rendered(prometheus.outputs["remoteWriteUrl"])
    assert url == ("${endpoint.properties.metricsIngestion.endpoint}/dataCollectionRules/"
                   "${rule.properties.immutableId}/streams/Microsoft-PrometheusMetrics/api/v1/write"
                   "?api-version=2023-04-24")
    example = url.replace("${endpoint.properties.metricsIngestion.endpoint}",
                          "https://dce-x.westeurope-1.metrics.ingest.monitor.azure.com").replace(
        "${rule.properties.immutableId}", "dcr-00000000000000000000000000000000")
    assert load_settings({"PROMETHEUS_REMOTE_WRITE_URL": example}).prometheus_remote_write_url == example
    assert _text(main.property(main.vars["bridgeSettings"], "PROMETHEUS_REMOTE_WRITE_URL")) == (
        "deployPrometheus ? prometheus.outputs.remoteWriteUrl : ''")
    rule = prometheus.value(prometheus.property(_find_resource(prometheus, "Microsoft.Insights/dataCollectionRules@"),
                                                "properties", "dataFlows"))
    assert rule == [{"streams": ["Microsoft-PrometheusMetrics"], "destinations": ["bridgeWorkspace"]}]


# --------------------------------------------------------------------------- roles


def test_role_definition_ids_are_the_documented_builtin_ones(module_templates):
    ids = set(BUILTIN_ROLES.values())
    for path in bicep_files():
        found = set(_GUID.findall(path.read_text()))
        assert found <= ids, f"{path.name}: unknown role ids {found - ids}"
    for name, roles in ROLES_BY_MODULE.items():
        template = module_templates[name]
        granted = {role for role, role_id in BUILTIN_ROLES.items()
                   if role_id in {v for v in (template.value(n) for n in template.vars.values()) if isinstance(v, str)}}
        assert granted == roles, name
        for var_name, node in template.vars.items():  # each id sits in a variable named after its role
            value = template.value(node)
            if isinstance(value, str) and _GUID.fullmatch(value):
                role = next(r for r, i in BUILTIN_ROLES.items() if i == value)
                assert var_name.lower() == role.replace(" ", "").lower(), (name, var_name, role)


def test_role_assignments_have_deterministic_names_for_service_principals(module_templates):
    assignments = 0
    for name, template in module_templates.items():
        for symbol, kind, body in template.resources:
            if not kind.startswith("Microsoft.Authorization/roleAssignments@"):
                continue
            assignments += 1
            assert kind.endswith("@2022-04-01")
            scope = _text(template.property(body, "scope"))
            assert re.fullmatch(rf"guid\({scope}\.id, principalId, \w+\)", _text(template.property(body, "name"))), (
                name, symbol)
            assert template.value(template.property(body, "properties", "principalType")) == "ServicePrincipal"
            assert _text(template.property(body, "properties", "roleDefinitionId")).startswith(
                "subscriptionResourceId('Microsoft.Authorization/roleDefinitions', ")
    assert assignments == 5  # storage (a loop over three roles), Key Vault, App Insights, the app, the rule
    # A resource of any type, by id: an ARM role assignment scoped by its path (Bicep cannot).
    publisher = module_templates["metrics-publisher.bicep"]
    nested = _text(publisher.resources[0][2])
    assert "'Microsoft.Authorization/roleAssignments'" in nested
    assert "name: guid(targetId, principalId, monitoringMetricsPublisher)" in nested
    assert "principalType: 'ServicePrincipal'" in nested
    assert "scope: relativeScope" in nested


# --------------------------------------------------------------------------- runtime and parameters


def test_python_version_matches_requirements(main):
    line = (ROOT / "requirements.txt").read_text().splitlines()[1]
    wanted = re.search(r"Deployed on Python (\d+\.\d+)", line).group(1)
    default, decorators = main.params["pythonVersion"]
    assert main.value(default) == wanted
    assert f"'{wanted}'" in decorators  # @allowed
    assert _text(main.property(main.modules["app"][1], "params", "pythonVersion")) == "pythonVersion"
    app = Template(MODULES / "function-app.bicep")
    runtime = app.property(_find_resource(app, "Microsoft.Web/sites@"), "properties", "functionAppConfig", "runtime")
    assert app.value(app.property(runtime, "name")) == "python"
    assert _text(app.property(runtime, "version")) == "pythonVersion"
    plan = app.value(app.property(_find_resource(app, "Microsoft.Web/serverfarms@"), "sku"))
    assert plan == {"name": "FC1", "tier": "FlexConsumption"}


def test_parameters_file_covers_every_parameter_without_default(main):
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    required = {name for name, (default, _) in main.params.items() if default is None}
    assert required == {"environmentName", "location"}
    assert required <= set(given)
    assert set(given) <= set(main.params), f"not parameters of main.bicep: {set(given) - set(main.params)}"
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["location"]["value"] == "${AZURE_LOCATION}"
    placeholder = re.compile(r"\$\{[A-Z0-9_]+\}")
    for name, (_, decorators) in main.params.items():  # secrets come from the environment, never the file
        if "@secure()" in decorators and name in given:
            value = given[name]["value"]
            values = value.values() if isinstance(value, dict) else [value]
            assert all(placeholder.fullmatch(v) for v in values), name
    signing = set()
    for path in (ROOT / "mappings").iterdir():
        signing.update((yaml.safe_load(path.read_text()).get("signature") or {}).get("secrets", []))
    assert set(given["secretSettings"]["value"]) <= signing


def test_azure_yaml_points_azd_at_the_template_and_the_app():
    config = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert config["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    assert (ROOT / config["infra"]["path"] / f"{config['infra']['module']}.bicep") == MAIN
    assert config["infra"]["provider"] == "bicep"
    main = Template(MAIN)
    assert main.value(main.property(main.modules["app"][1], "params", "serviceName")) == "api"
    app = Template(MODULES / "function-app.bicep")
    assert "'azd-service-name': serviceName" in _text(_find_resource(app, "Microsoft.Web/sites@"))


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    return any(fnmatch.fnmatch(part, pattern) for pattern in patterns for part in parts)


def test_funcignore_keeps_the_app_and_leaves_the_rest_out():
    patterns = [line.strip() for line in (ROOT / ".funcignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert all("/" not in p and not p.startswith("!") for p in patterns)  # what _ignored understands
    app_files = ["function_app.py", "host.json", "requirements.txt"]
    app_files += [str(p.relative_to(ROOT)) for folder in ("bridges", "schemas", "mappings")
                  for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(app_files) > 20
    assert [f for f in app_files if _ignored(f, patterns)] == []
    for left_out in ("tests/test_infra.py", "infra/bicep/main.bicep", "benchmarks/bench_ingest.py", ".venv/bin/python",
                     "local.settings.json", "scripts/install-peers.sh", ".azure/prod/.env", ".bridge/outbox/x.ndjson",
                     "README.md", "docs/deploying.md", "requirements-dev.txt", "bridges/__pycache__/core.cpython-311.pyc",
                     ".ci/run"):
        assert _ignored(left_out, patterns), left_out


# --------------------------------------------------------------------------- workbook and outputs


def _metric_items(items):
    for item in items:
        if item["type"] == 10:
            yield item
        elif item["type"] == 12:
            yield from _metric_items(item["content"]["items"])


def test_workbook_charts_only_metrics_the_bridge_emits(app_settings):
    workbook = json.loads(WORKBOOK.read_text())
    assert workbook["version"] == "Notebook/1.0"
    records = [selfmetrics.observation("dynatrace", 0.25, **{name: 1 for name in selfmetrics.COUNTS})]
    own = selfmetrics.as_metrics(records, 0)
    check = Check(name="home", url="https://example.com/", tags={"team": "web"})
    result = CheckResult(check, "status", "503", 0.5, phases={"dns": 0.01, "connect": 0.02, "tls": 0.03,
                                                               "first_byte": 0.1}, status=503, size=12,
                         certificate_days=30.0)
    checks = metrics_of([result], "westeurope", 0)
    assert {m.name for m in own} == {f"bridge_{name}_total" for name in selfmetrics.COUNTS} | {"bridge_delivery_seconds"}
    emitted = {m.name: {k for k, _ in m.tags} for m in own + checks}
    for sample in (ROOT / "tests" / "testdata" / "webhooks").glob("*/*.expected.json"):
        expected = json.loads(sample.read_text())
        for item in expected["metrics"] if isinstance(expected, dict) else expected:  # what the built-in rules emit
            emitted.setdefault(metric_name(item["name"]), set()).update(item.get("tags", {}))
    namespace = app_settings["AZURE_MONITOR_NAMESPACE"]
    assert namespace == DEFAULTS["AZURE_MONITOR_NAMESPACE"]
    charted = {}
    for item in _metric_items(workbook["items"]):
        content = item["content"]
        assert content["version"] == "MetricsItem/2.0"
        assert content["resourceIds"] == ["__METRICS_RESOURCE_ID__"]
        assert content["resourceType"] == "__METRICS_RESOURCE_TYPE__"
        for metric in content["metrics"]:
            assert metric["namespace"] == namespace
            prefix, _, name = metric["metric"].partition("--")
            assert prefix == namespace and name == metric_name(name)
            assert name in emitted, f"the workbook charts {name}, which the bridge does not emit"
            assert set(metric.get("splitBy") or []) <= emitted[name], (name, metric["splitBy"])
            charted[name] = metric.get("splitBy")
    for name in emitted:
        if name.startswith("bridge_"):
            assert charted.get(name) == ["sink"], name  # per sink over time
    assert charted["check_up"] == charted["check_duration_seconds"] == ["check"]
    workbook_module = (MODULES / "workbook.bicep").read_text()
    assert "loadTextContent('../bridge-workbook.json')" in workbook_module
    for placeholder in set(re.findall(r"__[A-Z_]+__", WORKBOOK.read_text())):
        assert f"'{placeholder}'" in workbook_module, placeholder


def _kql_parse_regex(query: str) -> re.Pattern:
    """The ``parse message with ...`` line of a query as a regex of its named columns (simple mode:
    ``*`` skips, a quoted string is literal, a name captures up to the next literal)."""
    pattern = re.search(r"^\| parse message with (.*)$", query, re.MULTILINE).group(1)
    tokens = re.findall(r'\*|"[^"]*"|\w+', pattern)
    regex = ""
    for index, token in enumerate(tokens):
        last = index == len(tokens) - 1
        if token == "*":
            regex += ".*?"
        elif token.startswith('"'):
            regex += re.escape(token[1:-1])
        else:
            regex += f"(?P<{token}>.*)" if last else f"(?P<{token}>.*?)"
    return re.compile(regex + "$")


def test_workbook_charts_the_delivery_queue(main, app_settings, caplog):
    """The "Delivery queue" section charts, per time bin, the most the delivery function's
    records (bridges.delivery.selfmetrics.log_queue: ``source == "delivery queue"``) said: the depth, the
    oldest message's age and the poison depth, from Application Insights traces; the numbers
    come from customDimensions or, when the host kept only the message, from the message."""
    workbook = json.loads(WORKBOOK.read_text())
    names = [item["name"] for item in workbook["items"]]
    section = names[names.index("delivery-queue-title"):names.index("checks-title")]
    title = workbook["items"][names.index("delivery-queue-title")]
    assert title["type"] == 1 and title["content"]["json"].startswith("## Delivery queue\n")
    text = title["content"]["json"]
    assert "python -m bridges deadletter list --delivery-poison" in text
    assert poison_name(app_settings["BRIDGE_DELIVERY_QUEUE"]) in text
    assert "falls behind or is not running" in text
    queries = {item["name"]: item["content"] for item in workbook["items"] if item["type"] == 3}
    assert set(queries) == set(section) - {"delivery-queue-title"}
    # What the delivery function logs, as the records' message and custom dimensions.
    with caplog.at_level("INFO", logger="bridges.delivery.selfmetrics"):
        selfmetrics.log_queue({"queue": app_settings["BRIDGE_DELIVERY_QUEUE"], "depth": 7, "oldest_seconds": 12.5,
                               "poison": {"queue": "bridge-deliver-poison", "depth": 2}})
    (record,) = [r for r in caplog.records if r.name == "bridges.delivery.selfmetrics"]
    dimensions = record.custom_dimensions
    assert dimensions["source"] == "delivery queue"
    charted = {}
    for name, content in queries.items():
        assert content["version"] == "KqlItem/1.0"
        assert content["queryType"] == 0
        assert content["resourceType"] == "microsoft.insights/components"
        assert content["crossComponentResources"] == ["__APPLICATION_INSIGHTS_ID__"]
        assert content["visualization"] == "timechart"
        assert content["timeContextFromParameter"] == "TimeRange"
        query = content["query"]
        assert query.startswith("traces\n")
        assert 'customDimensions.source == "delivery queue"' in query
        found = _kql_parse_regex(query).fullmatch(record.getMessage())
        assert found, (name, record.getMessage())
        logged = found.groupdict()
        summarized = re.search(r"^\| summarize (\w+) = max\((\w+)\) by bin\(timestamp, \{TimeRange:grain\}\), queue\b",
                               query, re.MULTILINE)
        assert summarized and summarized.group(1) == summarized.group(2), (name, query)
        column = summarized.group(1)
        assert column in dimensions
        # The column is read from customDimensions as a number, else from the message.
        source = re.search(rf"^\| extend {column} = coalesce\(todouble\(customDimensions\.{column}\), "
                           rf"todouble\((\w+)\)\)$", query, re.MULTILINE)
        assert source, (name, column)
        assert float(logged[source.group(1)]) == float(dimensions[column])
        queue = re.search(r"^\| extend queue = coalesce\(tostring\(customDimensions\.queue\), (\w+)\)$", query,
                          re.MULTILINE)
        assert queue and logged[queue.group(1)] == dimensions["queue"], name
        charted[column] = name
    assert set(charted) == {"depth", "oldest_seconds", "poison_depth"}


def test_workbook_is_deployed_for_the_metrics_resource(main):
    params = main.property(main.modules["workbook"][1], "params")
    assert _text(main.property(params, "metricsResourceId")) == "metricsResourceId"
    assert _text(main.property(params, "applicationInsightsId")) == "monitoring.outputs.applicationInsightsId"
    monitoring = Template(MODULES / "monitoring.bicep")
    assert _text(monitoring.outputs["applicationInsightsId"]) == "appInsights.id"
    workbook = Template(MODULES / "workbook.bicep")
    body = _find_resource(workbook, "Microsoft.Insights/workbooks@")
    assert _find_resource(workbook, "Microsoft.Insights/workbooks@2023-06-01") is body
    assert workbook.value(workbook.property(body, "kind")) == "shared"
    assert _text(workbook.property(body, "properties", "serializedData")) == "serializedData"


def test_outputs_give_every_url_a_sender_needs(main, indexed):
    assert main.rendered(main.vars["functionAppUrl"]) == "https://${app.outputs.defaultHostName}"
    assert set(main.outputs) >= {"functionAppUrl", "webhookUrls", "metricsUrl", "dynatraceIngestUrl", "remoteWriteUrl",
                                 "identityClientId"}
    routes = {doc["bindings"][0].get("route") for doc in indexed.values()}
    prefix = json.loads((ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    for output, route in (("metricsUrl", "metrics"), ("dynatraceIngestUrl", "v2/metrics/ingest"),
                          ("remoteWriteUrl", "v1/write")):
        assert route in routes
        assert main.rendered(main.outputs[output]) == f"${{functionAppUrl}}/{prefix}/{route}"
    assert "webhooks/{source}" in routes
    sources = {yaml.safe_load(p.read_text())["source"] for p in (ROOT / "mappings").iterdir()}
    assert sources == {p.stem for p in (ROOT / "mappings").iterdir()}
    urls = {_key(p): main.rendered(p.named_children[-1]) for p in _named(main.outputs["webhookUrls"])}
    assert urls == {source: f"${{functionAppUrl}}/{prefix}/webhooks/{source}" for source in sources}
    assert _text(main.outputs["identityClientId"]) == "identity.outputs.clientId"


def _find_resource(template: Template, kind_prefix: str):
    found = [body for _, kind, body in template.resources if kind.startswith(kind_prefix)]
    assert len(found) == 1, (template.path.name, kind_prefix, len(found))
    return found[0]


def test_senders_can_be_restricted_to_their_published_ranges(main, module_templates):
    """What the GitHub scheme cannot stop (a captured delivery resent under a new delivery id)
    the network can: access restrictions to the senders' ranges, off unless given."""
    assert main.value(main.params["allowedSenders"][0]) == []
    assert _text(main.property(main.modules["app"][1], "params", "allowedSenders")) == "allowedSenders"
    app = module_templates["function-app.bicep"]
    site = app.property(_find_resource(app, "Microsoft.Web/sites@"), "properties", "siteConfig")
    assert _text(app.property(site, "ipSecurityRestrictionsDefaultAction")) == "empty(allowedSenders) ? 'Allow' : 'Deny'"
    rules = _text(app.property(site, "ipSecurityRestrictions"))
    assert rules.startswith("[for (sender, index) in allowedSenders:") and "action: 'Allow'" in rules
    assert "allowedSenders" in (ROOT / "docs" / "webhooks.md").read_text()  # and the docs say when to use it


# --------------------------------------------------------------------------- Event Grid subscription


def test_key_vault_events_are_subscribed_only_under_their_parameter(main, module_templates):
    """subscribeKeyVaultEvents (off by default) adds an Event Grid system topic on the template's
    Key Vault and a WebHook subscription to the azure-eventgrid route; nothing else creates
    Event Grid resources."""
    assert main.value(main.params["subscribeKeyVaultEvents"][0]) is False
    assert "bool" in _text(main.root).split("param subscribeKeyVaultEvents", 1)[1].split("=", 1)[0]
    path, body = main.modules["keyVaultEvents"]
    assert path == "modules/eventgrid.bicep"
    declaration = next(n for n in _named(main.root) if n.type == "module_declaration"
                       and _text(_named(n)[0]) == "keyVaultEvents")
    assert _text(declaration).split("{", 1)[0].rstrip().endswith("= if (subscribeKeyVaultEvents)")
    params = main.property(body, "params")
    assert _text(main.property(params, "keyVaultName")) == "keyVault.outputs.name"
    assert _text(main.property(params, "functionAppName")) == "app.outputs.name"
    for name, template in module_templates.items():  # Event Grid resources live in that module alone
        kinds = [kind for _, kind, _ in template.resources if kind.startswith("Microsoft.EventGrid/")]
        assert not kinds or name == "eventgrid.bicep", name
    for other, (_, other_body) in main.modules.items():
        assert other == "keyVaultEvents" or main.modules[other][0] != path
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert given["subscribeKeyVaultEvents"]["value"] == "${SUBSCRIBE_KEY_VAULT_EVENTS=false}"
    assert "SUBSCRIBE_KEY_VAULT_EVENTS" in DEPLOY_DOC.read_text()


def test_the_subscription_delivers_key_vault_expiry_to_the_webhook_route(main, module_templates):
    events = module_templates["eventgrid.bicep"]
    topic = _find_resource(events, "Microsoft.EventGrid/systemTopics@")
    subscription = _find_resource(events, "Microsoft.EventGrid/systemTopics/eventSubscriptions@")
    kinds = {kind for _, kind, _ in events.resources if kind.startswith("Microsoft.EventGrid/")}
    assert kinds == {"Microsoft.EventGrid/systemTopics@2025-02-15",
                     "Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15"}  # the current GA version
    assert events.value(events.property(topic, "properties", "topicType")) == "Microsoft.KeyVault.vaults"
    vault = next(symbol for symbol, kind, _ in events.resources if kind.startswith("Microsoft.KeyVault/vaults@"))
    assert _text(events.property(topic, "properties", "source")) == f"{vault}.id"
    assert _text(events.property(subscription, "parent")) == next(
        symbol for symbol, kind, _ in events.resources if kind.startswith("Microsoft.EventGrid/systemTopics@"))
    props = events.property(subscription, "properties")
    assert events.value(events.property(props, "eventDeliverySchema")) == "EventGridSchema"
    assert events.value(events.property(props, "destination", "endpointType")) == "WebHook"
    assert _text(events.property(props, "filter", "includedEventTypes")) == "includedEventTypes"
    # The event types are those the built-in rule file's Key Vault rule charts.
    types = main.var("keyVaultExpiryEventTypes")
    assert _text(main.property(main.modules["keyVaultEvents"][1], "params", "includedEventTypes")) == (
        "keyVaultExpiryEventTypes")
    rule = next(r for r in yaml.safe_load((ROOT / "mappings" / "azure-eventgrid.yaml").read_text())["rules"]
                if r["name"] == "key vault expiry")
    assert sorted(types) == sorted(re.findall(r"'(Microsoft\.KeyVault\.[A-Za-z]+)'", rule["filter"]))
    assert len(types) == 6
    # The endpoint: the app's host, the webhook route of the azure-eventgrid source, the default
    # function key in code (what the host checks) and the shared secret in the parameter the
    # rule file's shared-secret scheme reads.
    url = _text(events.property(props, "destination", "properties", "endpointUrl"))[1:-1]  # as written
    app = next(symbol for symbol, kind, _ in events.resources if kind.startswith("Microsoft.Web/sites@"))
    host = next(symbol for symbol, kind, _ in events.resources if kind.startswith("Microsoft.Web/sites/host@"))
    assert url == (f"https://${{{app}.properties.defaultHostName}}/${{webhookPath}}"
                   f"?code=${{uriComponent({host}.listKeys().functionKeys.default)}}${{secretQuery}}")
    assert events.value(events.property(_find_resource(events, "Microsoft.Web/sites/host@"), "name")) == "default"
    prefix = json.loads((ROOT / "host.json").read_text())["extensions"]["http"]["routePrefix"]
    path = main.value(main.property(main.modules["keyVaultEvents"][1], "params", "webhookPath"))
    assert path == f"{prefix}/webhooks/azure-eventgrid"
    signature = yaml.safe_load((ROOT / "mappings" / "azure-eventgrid.yaml").read_text())["signature"]
    assert signature["scheme"] == "shared-secret"
    assert events.rendered(events.vars["secretQuery"].named_children[-1]) == (
        f"&{signature['query']}=${{uriComponent(sharedSecret)}}")
    assert _text(events.vars["secretQuery"]).startswith("empty(sharedSecret) ? '' : ")
    # The secret comes from the same secret setting the app checks it against.
    given = _text(main.property(main.modules["keyVaultEvents"][1], "params", "sharedSecret"))
    assert given == (f"contains(secretSettings, '{signature['secrets'][0]}') ? "
                     f"secretSettings.{signature['secrets'][0]} : ''")
    assert "@secure()" in events.params["sharedSecret"][1]


def test_neither_the_function_key_nor_the_secret_is_an_output(main, module_templates):
    events = module_templates["eventgrid.bicep"]
    assert events.outputs == {}
    for template in [main, *module_templates.values()]:
        for name, node in template.outputs.items():
            text = _text(node)
            assert "listKeys" not in text and "keyVaultEvents" not in text, (template.path.name, name)
            assert "sharedSecret" not in text and "EVENTGRID_WEBHOOK_SECRET" not in text, (template.path.name, name)


def test_the_dora_charts_are_the_ones_readme_explains():
    """Every metric the workbook's DORA section charts is named in README's "DORA metrics"
    section, which says which events give it."""
    workbook = json.loads(WORKBOOK.read_text())
    dora = [item for item in workbook["items"] if item["name"].startswith("dora-") and item["type"] == 10]
    charted = {metric["metric"].partition("--")[2] for item in dora for metric in item["content"]["metrics"]}
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## DORA metrics", 1)[1].split("\n## ", 1)[0]
    named = {metric_name(name) for name in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", section)}
    assert charted and charted <= named, charted - named

