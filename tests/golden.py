"""Golden-file checks for sinks: ``tests/testdata/sinks/<sink>/<case>/`` holds ``input.ndjson``
(canonical metrics), ``settings.json`` and ``expected.json`` (the readable requests, the local
rejections and the conversions). Receipt time is support.NOW_NS. ``UPDATE_GOLDEN=1`` rewrites
the expected files: read every change before committing it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from support import NOW_NS

from bridges.delivery.render import readable
from bridges.delivery.sinks import build_sinks
from bridges.ingest.normalize import Normalizer
from bridges.settings import load_settings

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


def check_case(sink_name: str, case: Path) -> dict:
    """Encode a case and compare it with (or, under UPDATE_GOLDEN=1, write) its expected.json."""
    produced = encode_case(sink_name, case)
    expected = case / "expected.json"
    if os.environ.get("UPDATE_GOLDEN"):
        expected.write_text(json.dumps(produced, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    assert produced == json.loads(expected.read_text(encoding="utf-8"))
    return produced
