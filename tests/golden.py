"""Golden-file checks for sinks: ``tests/testdata/sinks/<sink>/<case>/`` holds ``input.ndjson``
(canonical metrics), ``settings.json`` and ``expected.json`` (the readable requests, the local
rejections and the conversions). Receipt time is conftest.NOW_NS."""
from __future__ import annotations

import json
from pathlib import Path

from bridges.normalize import Normalizer
from bridges.render import readable
from bridges.settings import load_settings
from bridges.sinks import build_sinks
from conftest import NOW_NS

GOLDEN = Path(__file__).parent / "testdata" / "sinks"


def cases(sink: str) -> list[Path]:
    return sorted(p for p in (GOLDEN / sink).iterdir() if p.is_dir())


def encode_case(sink_name: str, case: Path) -> dict:
    settings = load_settings({**json.loads((case / "settings.json").read_text()), "BRIDGE_SINKS": sink_name})
    [sink] = build_sinks(settings)
    items = [json.loads(line) for line in (case / "input.ndjson").read_text().splitlines() if line.strip()]
    normalized = Normalizer().normalize(items, NOW_NS)
    assert normalized.errors == [], normalized.errors
    encoded = sink.encode(normalized.metrics, NOW_NS)
    return {
        "requests": [{**readable(r), "items": list(r.items)} for r in encoded.requests],
        "rejected": [{"index": r.index, "reason": r.reason} for r in encoded.rejected],
        "conversions": dict(sorted(encoded.conversions.items())),
    }
