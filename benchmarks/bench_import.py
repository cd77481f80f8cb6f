"""Cold-start cost: ``import function_app`` against ``import azure.functions`` alone.

Each import runs in a fresh interpreter, many times over, alternating the two so machine noise
hits both alike; the script prints the best and median wall time of each and their ratio
(target <= 1.25: heavy dependencies are imported where they are first used, not at start-up).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import best_and_median, report  # noqa: E402

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
    base_best, base_median = best_and_median(baseline)
    ours_best, ours_median = best_and_median(ours)
    report("import", [
        f"import azure.functions: best {base_best * 1000:.1f} ms, median {base_median * 1000:.1f} ms",
        f"import function_app:    best {ours_best * 1000:.1f} ms, median {ours_median * 1000:.1f} ms",
        f"ratio: {ours_best / base_best:.2f} best, {ours_median / base_median:.2f} median (target <= 1.25)",
    ])


if __name__ == "__main__":
    main()
