"""The `infra` command, run as a person runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INFRA = shutil.which("infra", path=str(Path(sys.executable).parent))


def infra(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert INFRA, "the console script `infra` is installed with the project (uv sync)"
    return subprocess.run([INFRA, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_check_defaults_to_topology_yaml_in_the_current_folder(repo_root):
    out = infra("check", cwd=repo_root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "topology.yaml: ok: 1 location, 6 hosts with 12 addresses, 1 app"


def test_check_json(repo_root):
    out = infra("check", "--json", str(repo_root / "topology.lab.yaml"))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is True and data["hosts"] == 6 and data["apps"] == 1


def test_ips_prints_host_role_address_and_dns_name(repo_root):
    out = infra("ips", cwd=repo_root)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["HOST", "ROLE", "ADDRESS", "DNS", "NAME"]
    assert [
        "web-staging-1",
        "web-staging",
        "10.100.5.1",
        "web-staging-1.nz-por-1.coop.internal",
    ] in rows
    assert [
        "support-1",
        "npm-cache",
        "(service)",
        "10.100.10.1",
        "npm-cache-1.nz-por-1.coop.internal",
    ] in rows


def test_ips_json(repo_root):
    out = infra("ips", "--json", str(repo_root / "topology.yaml"))
    data = json.loads(out.stdout)
    support = [a for a in data["addresses"] if a["host"] == "support-1"]
    assert [a["address"] for a in support] == [
        "10.100.1.1",
        "10.100.3.1",
        "10.100.9.1",
        "10.100.10.1",
        "10.100.11.1",
        "10.100.12.1",
    ]
    assert support[0]["primary"] and support[0]["dns_name"] == "support-1.nz-por-1.coop.internal"


@pytest.mark.parametrize("command", ["check", "ips"])
def test_bad_input_exits_2_with_every_problem_and_no_traceback(write_topology, command):
    path = write_topology(
        edit=lambda d: d["hosts"]["web-staging-1"].update(instance=999, location="x")
    )
    out = infra(command, str(path))
    assert out.returncode == 2
    assert out.stdout == ""
    assert "Traceback" not in out.stderr
    assert f"{path}: 2 problems in the topology" in out.stderr
    assert "hosts.web-staging-1.instance: 999 is out of range: must be 1..254" in out.stderr
    assert "hosts.web-staging-1.location: unknown location 'x'" in out.stderr


def test_bad_input_json(write_topology):
    path = write_topology("locations: [\n")
    out = infra("check", "--json", str(path))
    assert out.returncode == 2
    data = json.loads(out.stdout)
    assert data["ok"] is False and data["problems"][0]["message"].startswith("YAML syntax error")


def test_a_missing_file_is_a_clear_error(tmp_path):
    out = infra("check", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().endswith("topology.yaml: no such file: pass the topology file's path")


def test_a_topology_without_a_salt_master_fails_check_and_lab_status_says_why(repo_root, tmp_path):
    path = tmp_path / "topology.yaml"
    text = (repo_root / "topology.lab.yaml").read_text()
    old = "roles: [salt-master, docker-registry, dns, npm-cache, pypi-cache, dagster]"
    assert old in text
    # No host has the role, and no type names it (the check once ran only when a type did).
    text = text.replace(old, "roles: [docker-registry, dns, npm-cache, pypi-cache, dagster]")
    path.write_text(text.replace("  salt-master: 1\n", ""))
    out = infra("check", str(path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "hosts: no host has the role salt-master: every host is a minion of one" in out.stderr
    status = subprocess.run(
        [INFRA, "lab", "status", "--json", "--topology", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "INFRA_STATE_DIR": str(tmp_path / "state")},
    )
    assert status.returncode == 2 and "Traceback" not in status.stderr, status.stderr
    assert "no host has the role salt-master" in status.stderr


@pytest.mark.parametrize("command", [("demo",), ("lab", "up")])
def test_a_missing_secrets_file_stops_the_demo_cleanly_with_nothing_started(tmp_path, command):
    """`infra demo` brings the lab up as `infra lab up` does: a missing secrets file is a clear
    error (exit 2), no traceback, and nothing is started (on a lab number nothing else uses)."""
    from lab.site import write_lab_topology

    number = 121
    topology = write_lab_topology(tmp_path, number)
    out = subprocess.run(
        [INFRA, *command, "--topology", str(topology)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "INFRA_STATE_DIR": str(tmp_path), "INFRA_SECRETS_FILE": "/nonexistent"},
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert (
        "/nonexistent: 1 problem in the secrets\n"
        "  no such file: write it (README, 'Secrets') or set $INFRA_SECRETS_FILE"
    ) in out.stderr
    # Nothing was started: no namespace, no owner of the lab number, no push-to-live loop.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"coop-lab-{number}" not in netns.split()
    assert not Path(f"/run/coop-infra/lab-{number}.owner").exists()
    assert "push to live" not in out.stdout


def test_infra_demo_runs_on_a_lab_topology_only(repo_root):
    out = infra("demo", "--topology", str(repo_root / "topology.yaml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "location(s) nz-por-1 are not `cloud: lab`: `infra demo` runs on the lab only" in (
        out.stderr
    )


def test_infra_dev_with_no_instance_folder_says_so(tmp_path):
    gone = tmp_path / "no-such-instance"
    out = subprocess.run(
        [INFRA, "dev"],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": str(gone)},
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"infra dev: DAGSTER_HOME {gone} is not a folder" in out.stderr


def test_webhooks_serve_refuses_an_account_file_that_is_not_text(repo_root, tmp_path):
    account = tmp_path / "account"
    account.write_bytes(b"bot:\xff\xfe-s3cr3t\n")
    account.chmod(0o600)
    out = infra("webhooks", "serve", "--dagster-account-file", str(account), cwd=repo_root)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{account}: not UTF-8 text" in out.stderr and "s3cr3t" not in out.stderr
