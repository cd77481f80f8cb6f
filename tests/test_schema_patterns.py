"""The two JSON Schema validators agree on every string, for every pattern of our schemas.

jsonschema-rs decides; jsonschema (``bridges.ingest.jsonschemas.explaining_validator``) explains what
it refused, and an item it finds no fault with is accepted. Where they disagreed, Python's
``re`` let ``"m\\n"`` and ``"westeurope\\n"`` through. Strings are generated from each pattern as
Python reads it (so they include exactly the texts Python's ``$`` and ``\\d`` wrongly admit),
then broken at their ends and in the middle with line breaks and other scripts' characters.
"""
from __future__ import annotations

import json
import os

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import NOW_NS, ROOT

from bridges.ingest.jsonschemas import explaining_validator
from bridges.ingest.normalize import Normalizer

SCHEMAS = sorted((ROOT / "schemas").glob("*.schema.json"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
BREAKERS = ["\n", "\r", "\r\n", "\u2028", "\u0085", "\x00", " ", "\ufeff", "\u0663", "é", "/", "?", "#", ".."]


def _patterns(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return own + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


PATTERNS = sorted({p for path in SCHEMAS for p in _patterns(json.loads(path.read_text(encoding="utf-8")))})


def test_every_schema_pattern_is_collected():
    assert len(PATTERNS) >= 10 and "^[a-z0-9]{2,40}$" in PATTERNS


@st.composite
def near_misses(draw, pattern: str) -> str:
    """A string the pattern (read by Python) matches, then possibly broken."""
    text = draw(st.from_regex(pattern) | st.text(max_size=30))
    breaker = draw(st.sampled_from(BREAKERS))
    where = draw(st.sampled_from(["end", "start", "middle", "none"]))
    if where == "end":
        return text + breaker
    if where == "start":
        return breaker + text
    if where == "middle":
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + breaker + text[cut:]
    return text


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_both_validators_agree_on_any_string(pattern, data):
    schema = {"type": "string", "pattern": pattern}
    text = data.draw(near_misses(pattern))
    deciding = jsonschema_rs.validator_for(schema).is_valid(text)
    explaining = explaining_validator(schema).is_valid(text)
    assert deciding == explaining, (pattern, text)


@settings(max_examples=EXAMPLES, deadline=None)
@given(name=st.text(min_size=1, max_size=20), region=st.from_regex(r"^[a-z0-9]{2,40}$"),
       breaker=st.sampled_from(BREAKERS))
@example(name="m\n", region="westeurope\n", breaker="\n")
def test_an_item_the_fast_validator_refuses_is_never_accepted(name, region, breaker):
    resource = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Web/sites/app" + breaker
    items = [{"name": name, "gauge": {"value": 1}},
             {"name": "m", "gauge": {"value": 1}, "azure": {"resource_id": resource, "region": region}}]
    normalizer = Normalizer()
    result = normalizer.normalize(items, NOW_NS)
    for index, item in enumerate(items):
        accepted = index in result.indexes
        assert accepted == normalizer._fast.is_valid(item), item
        if not accepted:
            assert any(e.index == index for e in result.errors)  # refused with a reason
