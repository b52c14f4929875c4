"""Import time of the code location over a bare `import dagster` (target: at most 0.5 s more).

Each import is timed in a fresh interpreter, 7 times; the medians are compared.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from benchmarks import Result

RUNS = 7
TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def _median_import(module: str) -> float:
    times = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-c", TIMER.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def run() -> list[Result]:
    bare = _median_import("dagster")
    ours = _median_import("infra_assets.definitions")
    extra = ours - bare
    return [
        Result(
            "import infra_assets.definitions over import dagster",
            extra,
            "s",
            "<= 0.5 s",
            extra <= 0.5,
            f"median of {RUNS}: dagster {bare:.2f} s, definitions {ours:.2f} s",
        )
    ]
