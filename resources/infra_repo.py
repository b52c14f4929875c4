"""InfraRepoResource: this repository in git, as the sensor on its main branch reads it: the
branch's head, the files a range of commits changed, a file as it was at a commit."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.cli_runner import CliError, CliResult
from resources.git import GitError, run_git
from resources.paths import REPO_ROOT

__all__ = ["GitError", "InfraRepoResource"]  # GitError: resources/git.py's, named here too


class InfraRepoResource(dg.ConfigurableResource):
    """The infrastructure repository (this one) and the branch that is deployed."""

    path: str = Field(default="", description="The repository. Empty: this checkout.")
    branch: str = Field(default="main", description="The branch whose commits are planned.")

    def root(self) -> Path:
        return Path(self.path).absolute() if self.path else REPO_ROOT

    def _run(self, *args: str, check: bool = True) -> CliResult:
        """git in this repository, as the person who runs it has git (their config too)."""
        return run_git(self.root(), *args, env=None, check=check)

    def _git(self, *args: str, check: bool = True) -> str:
        """What git printed; GitError (the command, its message) when it failed."""
        try:
            result = self._run(*args, check=check)
        except CliError as err:
            raise GitError.from_cli(str(err), err) from err
        return result.output if result.returncode == 0 else ""

    def head(self) -> str:
        """The sha at the tip of the branch."""
        return self._git("rev-parse", "--verify", f"refs/heads/{self.branch}^{{commit}}").strip()

    def checkout_head(self) -> str:
        """The commit the working tree is checked out at (HEAD), which is what a plan reads;
        the branch's tip (`head`) can be ahead of it until someone pulls."""
        sha = self._git("rev-parse", "--verify", "HEAD^{commit}").strip()
        if not sha:
            raise GitError(f"{self.root()} has no commit checked out")
        return sha

    def uncommitted(self, paths: list[Path]) -> list[str]:
        """Files under `paths` that differ from HEAD: modified, staged, deleted or untracked
        (Terraform reads an untracked *.tf too), relative to the repo. Terraform's own lock
        file (.terraform.lock.hcl, written by `init`) is not counted."""
        inside = [p for p in (self.relative(Path(path)) for path in paths) if p is not None]
        if not inside:
            return []
        out = self._git(
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            *inside,
            ":(exclude,glob)**/.terraform.lock.hcl",
        )
        return sorted({line[3:].strip() for line in out.splitlines() if line.strip()})

    def is_ancestor(self, old: str, new: str) -> bool:
        try:
            self._run("merge-base", "--is-ancestor", old, new)
        except CliError:
            return False
        return True

    def changed_files(self, old: str, new: str) -> list[str]:
        """Paths (relative to the repo) that differ between two commits."""
        out = self._git("diff", "--name-only", "--no-renames", old, new)
        return [line for line in out.splitlines() if line.strip()]

    def show(self, sha: str, path: str) -> str | None:
        """A file's content at a commit; None if it did not exist there."""
        try:
            return self._run("show", f"{sha}:{path}").output
        except CliError:
            return None

    def relative(self, file: Path) -> str | None:
        """`file` relative to the repo, None if it is outside."""
        try:
            return str(Path(file).absolute().relative_to(self.root()))
        except ValueError:
            return None
