"""What a resource that may talk to a lab address needs, shared by the salt and registry resources:
the machine's route to an address (it must go through the lab's link, or nothing is sent), and a
secret read from a file (mode 600, outside git) when the resource connects, so no value is in
its config. Each resource raises its own error with these texts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit


def route_problem(url: str, device: str) -> str | None:
    """None when the machine's route to `url`'s address goes through `device` (the lab's link);
    else what is wrong, for the caller's error."""
    host = urlsplit(url).hostname or ""
    try:
        out = subprocess.run(
            ["ip", "-j", "route", "get", host], capture_output=True, text=True, timeout=10
        )
        routes = json.loads(out.stdout or "[]") if out.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        routes = []
    dev = routes[0].get("dev") if routes else None
    if dev == device:
        return None
    return (
        f"the route to {host} does not go through {device} (it goes"
        f" {'through ' + dev if dev else 'nowhere'}): the lab is not up; run `infra lab up`"
    )


def read_secret_file(path: str) -> str:
    """The secret in `path` ("" for no path); OSError when it cannot be read."""
    return Path(path).read_text().strip() if path else ""
