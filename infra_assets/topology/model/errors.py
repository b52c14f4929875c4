"""Problems found in a topology file, reported all at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in the file: where it is and what to do about it."""

    line: int | None  # 1-based line in the file, where the YAML says
    path: str  # the key path, `hosts.web-staging-1.instance`; "" for the whole file
    message: str

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class TopologyError(Exception):
    """The topology file is not usable. `problems` lists every problem found, in file order."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path, p.message))
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        head = f"{self.file}: {count} problem{'s' if count != 1 else ''} in the topology"
        return "\n".join([head, *("  " + p.render(self.file) for p in self.problems)])

    def as_json(self) -> dict:
        return {
            "file": self.file,
            "ok": False,
            "problems": [
                {"line": p.line, "path": p.path, "message": p.message} for p in self.problems
            ],
        }
