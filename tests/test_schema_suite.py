"""The canonical schema and normalization against data files in the JSON-Schema-Test-Suite shape."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import jsonschema_rs
import pytest
from support import NOW_NS

from bridges.ingest.jsonschemas import explaining_validator
from bridges.ingest.normalize import METRIC_SCHEMA, Normalizer

SUITE = Path(__file__).parent / "testdata" / "schema"
SCHEMA = json.loads(METRIC_SCHEMA.read_text())
PYTHON_VALIDATOR = explaining_validator(SCHEMA)  # the one the bridge explains errors with
RUST_VALIDATOR = jsonschema_rs.Draft202012Validator(SCHEMA)
NORMALIZER = Normalizer()


def _cases() -> list:
    return list(_each_case())


def _each_case():
    for path in sorted(SUITE.glob("*.json")):
        for group in json.loads(path.read_text()):
            assert group["schema"] == {"$ref": "metric.schema.json"}
            for case in group["tests"]:
                yield pytest.param(case, id=f"{path.stem}: {group['description']}: {case['description']}")


def test_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("case", _cases())
def test_schema_verdict(case):
    assert PYTHON_VALIDATOR.is_valid(case["data"]) is case["valid"]
    assert RUST_VALIDATOR.is_valid(case["data"]) is case["valid"]


@pytest.mark.parametrize("case", _cases())
def test_normalization_verdict(case):
    result = NORMALIZER.normalize([case["data"]], NOW_NS)
    accepted = case["valid"] and "normalize_error" not in case
    assert len(result.metrics) == (1 if accepted else 0)
    if not accepted:
        assert result.rejected == 1
        assert result.errors and all(e.message for e in result.errors)
    if "normalize_error" in case:
        assert [e.pointer for e in result.errors] == ["/0" + case["normalize_error"]]
    if "canonical_dt" in case:
        assert result.metrics[0].to_json()["dt"] == case["canonical_dt"]
    if accepted:
        # What the bridge writes out is itself valid canonical input.
        assert PYTHON_VALIDATOR.is_valid(result.metrics[0].to_json())
