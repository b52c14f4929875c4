"""A real dagster-webserver and dagster-daemon on an instance of a test's own (the repo's
dagster.yaml, SQLite in `tmp`), loading the project's code location: for tests that talk to
Dagster as its users do, through its GraphQL API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.demo_services import DemoServices
from lab.processes import Supervisor
from resources.paths import REPO_ROOT

BIN = Path(sys.executable).parent


@contextmanager
def running_dagster(
    tmp: Path, env: dict[str, str], *, ui_url_env: str | None = None
) -> Iterator[str]:
    """The webserver's URL while both run (`env`: the code location's settings; `ui_url_env`:
    a variable that tells the daemon's runs the UI's URL); both are stopped by pid afterwards."""
    home = tmp / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    services = DemoServices(tmp / "run")
    daemon = Supervisor(tmp / "run")
    try:
        ui = services.start_webserver(dagster_home=home, env=env)
        if ui_url_env:
            env = {**env, ui_url_env: ui}
        daemon.start(
            "dagster-daemon",
            [BIN / "dagster-daemon", "run", "-w", REPO_ROOT / "workspace.yaml"],
            log=tmp / "run" / "daemon.log",
            cwd=home,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        )
        yield ui
    finally:
        daemon.stop("dagster-daemon", timeout_s=30)
        services.stop()
