"""What the benchmark scripts share: summarizing timings, a timing against Azurite, and
reporting figures."""
from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def best_and_median(samples: list[float]) -> tuple[float, float]:
    return min(samples), statistics.median(samples)


def on_azurite(measure: Callable[[str], list[str]], indent: str = "") -> list[str]:
    """``measure(connection_string)`` against an Azurite queue service started as
    tests/peers/azurite.py does (tests/ must be on sys.path), stopped afterwards. When it cannot
    start, one line saying why instead of the figures."""
    try:
        from peers import PeerUnavailable
        from peers.azurite import run_azurite
    except Exception as exc:  # e.g. pytest missing: say so and go on
        return [f"{indent}Azurite: not measured, the peer helper could not be imported ({type(exc).__name__}: {exc})"]
    running = run_azurite()
    try:
        peer = next(running)
    except (PeerUnavailable, OSError, subprocess.SubprocessError) as exc:
        return [f"{indent}Azurite: not measured, it could not start: {exc}"]
    try:
        return measure(peer.connection_string)
    finally:
        running.close()  # stops it


def report(name: str, lines: list[str]) -> None:
    """Print the figures and keep them in benchmarks/results/<name>.txt."""
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
