"""What the benchmark scripts share: summarizing timings and reporting figures."""
from __future__ import annotations

import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def best_and_median(samples: list[float]) -> tuple[float, float]:
    return min(samples), statistics.median(samples)


def report(name: str, lines: list[str]) -> None:
    """Print the figures and keep them in benchmarks/results/<name>.txt."""
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
