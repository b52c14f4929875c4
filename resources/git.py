"""GitResource: the apps' git repositories, read with the system's git (`ls-remote`, fetch).

Local paths and URLs alike: a topology names an app's repo by URL (`https://...`, `ssh://...`,
`git@host:path`) or, on the lab, by a path relative to the topology file. Every call goes
through the project's CLI runner; git never prompts (no terminal, no askpass), and ssh runs in
batch mode with a connect timeout, so an unreachable repo fails fast instead of hanging a sensor.
A password in a repo URL (the topology refuses one; resources/git_url.py) is never in what these
calls log or raise: git's own output is redacted, and the errors name the repo without it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.cli_runner import CliError, CliResult, ToolError, discard, run_cli
from resources.git_url import redact_repo, repo_secrets

# \Z, not $: `$` also matches before a final newline.
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")

# Git must never wait for a person: no prompts, ssh in batch mode, and no system/global config
# that a developer's machine might carry (insteadOf rewrites, credential helpers).
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o ConnectTimeout=10",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}


class GitError(ToolError):
    """A repo could not be read (unreachable, not a repo, no such branch or commit), or git
    failed in one (resources/infra_repo.py raises it too)."""


@dataclass(frozen=True)
class Head:
    """What `ls-remote` says about one branch: its sha, or why it could not be read."""

    repo: str
    branch: str
    sha: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.sha is not None


@dataclass(frozen=True)
class Checkout:
    path: Path
    sha: str


class GitResource(dg.ConfigurableResource):
    """The system's git, for app repositories (local paths and URLs)."""

    timeout_s: float = Field(
        default=20.0, description="How long one git command may take before it is stopped."
    )
    max_workers: int = Field(default=16, ge=1, description="How many repos `heads` reads at once.")

    def head(self, *, repo: str, branch: str) -> str:
        """The sha at the tip of `branch` in `repo`. Raises GitError if it cannot be read."""
        ref = f"refs/heads/{branch}"
        try:
            result = run_git(
                None, "ls-remote", "--", repo, ref,
                redact=repo_secrets(repo), timeout_s=self.timeout_s,
            )  # fmt: skip
        except CliError as err:
            raise GitError.from_cli(_git_reason(err), err) from err
        for line in result.lines:
            sha, _, name = line.partition("\t")
            if name == ref and SHA_RE.match(sha):
                return sha
        raise GitError(f"no branch {branch!r} in {redact_repo(repo)}")

    def heads(self, *, targets: Sequence[tuple[str, str]]) -> list[Head]:
        """`head` of many (repo, branch) pairs at once; each failure is a Head with its error."""

        def one(target: tuple[str, str]) -> Head:
            repo, branch = target
            try:
                return Head(repo, branch, self.head(repo=repo, branch=branch))
            except GitError as err:
                return Head(repo, branch, None, str(err))

        if not targets:
            return []
        workers = min(self.max_workers, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="git-ls-remote") as pool:
            return list(pool.map(one, targets))

    def on_branch(self, *, repo: str, branch: str, sha: str) -> bool:
        """Whether commit `sha` is `branch`'s tip in `repo` or in its history: the tip as
        `head` reads it, else the branch fetched into a throwaway repository and asked
        (`git merge-base --is-ancestor`). A commit the branch does not hold is False; a repo
        or branch that cannot be read raises GitError."""
        _full_sha(sha)
        if self.head(repo=repo, branch=branch) == sha:
            return True
        with tempfile.TemporaryDirectory(prefix="coop-git-") as scratch:
            try:
                self._git(scratch, repo, "init", "-q", "--bare")
                self._git(
                    scratch, repo, "fetch", "-q", "--no-tags", "--", repo,
                    f"refs/heads/{branch}:refs/heads/b",
                )  # fmt: skip
            except CliError as err:
                raise GitError.from_cli(
                    f"cannot read branch {branch!r} of {redact_repo(repo)}: {_git_reason(err)}",
                    err,
                ) from err
            # 0: an ancestor; 1: not one; 128: no such commit in the branch's history
            answer = self._git(
                scratch, repo, "merge-base", "--is-ancestor", sha, "refs/heads/b", check=False
            )
            return answer.returncode == 0

    def checkout(
        self,
        *,
        repo: str,
        sha: str,
        dest: Path,
        branch: str | None = None,
        log: Callable[[str], object] | None = None,
    ) -> Checkout:
        """The tree of commit `sha` of `repo` in `dest` (emptied first), without history.

        Fetches the one commit (`--depth 1`); a server that refuses to serve a commit by its id
        (GitHub does, some do not) is asked for `branch` instead, deep enough to hold it.
        """
        _full_sha(sha)
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)

        def git(*args: str) -> None:
            self._git(dest, repo, *args, log=log)

        try:
            git("init", "-q")
            try:
                git("fetch", "-q", "--depth", "1", "--no-tags", "--", repo, sha)
            except CliError:
                if not branch:
                    raise
                git("fetch", "-q", "--no-tags", "--", repo, f"refs/heads/{branch}")
            git("-c", "advice.detachedHead=false", "checkout", "-q", sha)
        except CliError as err:
            raise GitError.from_cli(
                f"cannot check out {sha[:12]} of {redact_repo(repo)}: {_git_reason(err)}", err
            ) from err
        shutil.rmtree(dest / ".git")  # the build context is the tree, not the repo
        return Checkout(dest, sha)

    def _git(
        self,
        where: str | Path,
        repo: str,
        *args: str,
        log: Callable[[str], object] | None = None,
        check: bool = True,
    ) -> CliResult:
        """git in the folder `where`, on `repo` (its password never printed), given time for a
        fetch."""
        return run_git(
            where,
            *args,
            log=log,
            redact=repo_secrets(repo),
            timeout_s=max(self.timeout_s, 300),
            check=check,
        )


def run_git(
    where: str | Path | None,
    *args: str,
    env: Mapping[str, str] | None = GIT_ENV,
    log: Callable[[str], object] | None = None,
    redact: Sequence[str] = (),
    timeout_s: float | None = None,
    check: bool = True,
) -> CliResult:
    """The one way this project runs git: `git -C where args` (`where` None: in no folder)
    through the CLI runner, its output not logged unless `log` is given. `env`: added to git's
    environment (GIT_ENV: never a prompt nor the system's config; None: git as the person who
    runs it has it)."""
    return run_cli(
        ["git", *(["-C", str(where)] if where is not None else []), *args],
        env=env,
        log=log or discard,
        redact=redact,
        timeout_s=timeout_s,
        check=check,
    )


def _full_sha(sha: str) -> None:
    if not SHA_RE.match(sha):
        raise GitError(f"{sha!r} is not a full commit sha (40 hex digits)")


def _git_reason(err: CliError) -> str:
    """git's own words (its `fatal:` lines), else the runner's message."""
    fatal = [line.removeprefix("fatal: ") for line in err.tail if line.startswith("fatal:")]
    if fatal:
        return "; ".join(fatal)
    if err.returncode is None or "timed out" in str(err):
        return str(err).splitlines()[0]
    return f"git exited with status {err.returncode}" + (f": {err.tail[-1]}" if err.tail else "")
