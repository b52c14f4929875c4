"""`infra local up|down|status`: the seam every local service plugs into."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

INFRA = str(Path(sys.executable).parent / "infra")


def infra(*args: str, state: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [INFRA, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**__import__("os").environ, "INFRA_STATE_DIR": str(state)},
        timeout=300,
    )


def test_status_json_names_the_topology_and_state(tmp_path, repo_root):
    out = infra("local", "status", "--json", state=tmp_path, cwd=repo_root)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["topology"] == str(repo_root / "topology.local.yaml")
    assert data["state_dir"] == str(tmp_path / "local")


def test_up_refuses_a_broken_topology_before_starting_anything(tmp_path, write_topology, repo_root):
    bad = write_topology("locations: {}\n")
    out = infra("local", "up", "--topology", str(bad), state=tmp_path / "state", cwd=repo_root)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "locations: is empty" in out.stderr
    assert not (tmp_path / "state" / "local").exists()


def test_down_is_safe_when_nothing_runs(tmp_path, repo_root):
    for _ in range(2):
        out = infra("local", "down", state=tmp_path, cwd=repo_root)
        assert out.returncode == 0, out.stderr
