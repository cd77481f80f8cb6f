"""Cold-start cost: ``import function_app`` against ``import azure.functions`` alone.

Each import runs in a fresh interpreter, many times over, alternating the two so machine noise
hits both alike; the script prints the best and median wall time of each and their ratio
(target <= 1.25: heavy dependencies are imported where they are first used, not at start-up).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 25
TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", TIMER.format(module=module)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


def main() -> None:
    baseline, ours = [], []
    for _ in range(ROUNDS):
        baseline.append(import_seconds("azure.functions"))
        ours.append(import_seconds("function_app"))
    lines = [
        f"import azure.functions: best {min(baseline) * 1000:.1f} ms, median {statistics.median(baseline) * 1000:.1f} ms",
        f"import function_app:    best {min(ours) * 1000:.1f} ms, median {statistics.median(ours) * 1000:.1f} ms",
        f"ratio: {min(ours) / min(baseline):.2f} best, {statistics.median(ours) / statistics.median(baseline):.2f} median (target <= 1.25)",
    ]
    print("\n".join(lines))
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "import.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
