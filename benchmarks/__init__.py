"""Benchmarks: `make bench` runs every `bench_*.py` here and prints one table.

Each module has `run() -> list[Result]`. Figures go in the README; tests never time anything.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Result:
    name: str
    value: float
    unit: str
    target: str  # as a person reads it: "<= 0.5 s"
    ok: bool
    note: str = ""

    def row(self) -> str:
        verdict = "ok" if self.ok else "MISSED"
        measured = f"{self.value:.3g} {self.unit}"
        return f"| {self.name} | {measured} | {self.target} | {verdict} | {self.note} |"
