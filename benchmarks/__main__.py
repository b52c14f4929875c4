"""`python -m benchmarks [NAME ...]`: run the benchmarks, all or those whose names match."""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
import time
from pathlib import Path

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(benchmarks.__file__).parent)])
        if m.name.startswith("bench_") and (not argv or any(a in m.name for a in argv))
    )
    print(
        f"# coop-infra benchmarks, {time.strftime('%Y-%m-%d')}, {platform.machine()},"
        f" Python {platform.python_version()}"
    )
    print()
    print("| benchmark | measured | target | verdict | note |")
    print("|---|---|---|---|---|")
    missed = 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        for result in module.run():
            print(result.row(), flush=True)
            missed += not result.ok
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
