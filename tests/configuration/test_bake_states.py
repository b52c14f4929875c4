"""The image bake against the REAL salt/ tree: the real packer/scripts/bake.sh, whose salt step is
`salt-call --local` with the bake's pillar and grains (`image_bake: true`, the group's roles, no
host, site or secret), for every image group of the role catalogue (salt/roles.yaml). Each group's highstate runs
in test mode (every state renders and is checked: packages looked up, templates rendered); the
web group's is applied for real on this machine, whose packages scripts/apt-packages.txt has
installed already, in a private mount namespace of the test's own where the folders a state
writes (/etc, /var, ...) are overlays whose upper layers are in the test's folder: what the
states write lands there, and this machine's own /etc and /var are not changed. The bake's own
minion files live in a temporary folder of bake.sh's.

No Packer here: tests/cloud/test_packer.py runs bake.sh inside a real Packer build, with a tiny tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra_assets.topology.roles import role_catalogue

HERE = Path(__file__).parents[1]
REPO = HERE.parent
SALT_CALL = str(Path(sys.executable).parent / "salt-call")
CATALOGUE = role_catalogue(REPO / "salt" / "roles.yaml")
GROUPS: dict[str, tuple[str, ...]] = {name: g.roles for name, g in CATALOGUE.images.items()}
ROLE_STATES: dict[str, list[str]] = CATALOGUE.states()

# What a bake may do: install packages (and the repositories and users they need), write files
# and folders, and run one install command; never start, enable or restart a service.
BAKE_FUNCTIONS = {
    "pkg.installed",
    "pkgrepo.managed",
    "user.present",
    "file.managed",
    "file.directory",
    "test.nop",
    "cmd.run",
}
BAKE_COMMANDS = {
    "npm-cache-install",  # fetches verdaccio: the same on every host
    "pypi-cache-install",  # fetches proxpi (pinned with hashes): the same on every host
    "jenkins-key",  # fetches the Jenkins repository key, checked against its pinned fingerprint
    "dagster-install",  # fetches Dagster and the project's dependencies (pinned with hashes)
}
# What each group's image gets: its services' packages (and what installs them)...
BAKED = {
    "support": {
        "salt-master-unit",
        "salt-api-unit",
        "jenkins-key",
        "jenkins-repo",
        "jenkins-packages",
        "jenkins-package",
        "registry-packages",
        "registry-push-unit",
        "npm-cache-packages",
        "npm-cache-install",
        "npm-cache-unit",
        "pypi-cache-packages",
        "pypi-cache-user",
        "pypi-cache-requirements",
        "pypi-cache-install",
        "pypi-cache-unit",
        "dns-packages",
        "dagster-packages",
        "dagster-user",
        "dagster-requirements",
        "dagster-build-requirements",
        "dagster-install",
        "dagster-webserver-unit",
        "dagster-daemon-unit",
    },
    "builder": {"jenkins-agent-packages", "jenkins-agent-user", "jenkins-agent-containers-conf"},
    "web": {"web-packages", "web-containers-conf"},
    "postgres": {"postgres-packages"},
}
# ... and never what names the host, its addresses or ports, or a secret: the first highstate's.
NOT_BAKED = {
    "common-host-record",
    "salt-minion-config",
    "salt-master-config",
    "jenkins-init",
    "jenkins-admin-env",
    "jenkins-environment",
    "jenkins-agent-master",
    "registry-pull-config",
    "registry-push-config",
    "registry-pull-htpasswd",
    "registry-push-htpasswd",
    "firewall-rules",
    "registry-tls-key",
    "npm-cache-config",
    "dns-config",
    "dns-hosts",
    "web-nginx-config",
    "web-registry-auth",
    "postgres-config",
    "postgres-hba",
}

# The top folders a state may write (file states' names): on a real apply in the tests, each is
# an overlay whose upper layer is the test's (see `bake`).
OVERLAID = ("etc", "opt", "run", "srv", "usr", "var")


def bake(group: str, out: Path, salt_args: str, layers: Path | None = None) -> dict[str, dict]:
    """Run the real bake.sh for `group` with `salt_args`; the state results by key. With
    `layers`: in a private mount namespace where each folder of OVERLAID is an overlay whose
    upper layer is `layers/<folder>/upper` (kept: a second bake with the same `layers` sees
    what the first wrote)."""
    env = {
        **os.environ,
        "SALT_TREE": str(REPO / "salt"),
        "IMAGE_ROLES": ",".join(GROUPS[group]),
        "IMAGE_GROUP": group,
        "SALT_CALL": SALT_CALL,
        "SALT_ARGS": f"--out=json --out-file={out} {salt_args}",
    }
    argv = ["sh", str(REPO / "packer" / "scripts" / "bake.sh")]
    if layers is not None:
        mounts = ""
        for top in OVERLAID:
            upper, work = layers / top / "upper", layers / top / "work"
            upper.mkdir(parents=True, exist_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            mounts += (
                f"mount -t overlay overlay -o lowerdir=/{top},upperdir={upper},workdir={work}"
                f" /{top} && "
            )
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        argv = [*unshare, "sh", "-c", mounts + 'exec "$@"', "sh", *argv]
    run = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, f"bake of {group} failed:\n{run.stdout}\n{run.stderr}"
    assert f"bake: applying the states of {env['IMAGE_ROLES']}" in run.stdout
    results = json.loads(out.read_text())["local"]
    assert isinstance(results, dict), results  # a list is salt's list of render errors
    return results


def parse(key: str) -> tuple[str, str, str]:
    """(function, id, name) from a state result's key `module_|-id_|-name_|-function`."""
    module, sid, name, function = key.split("_|-")
    return f"{module}.{function}", sid, name


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_s_states_render_and_check_in_bake_mode(group, tmp_path):
    results = bake(group, tmp_path / "out.json", "state.highstate test=True")

    failed = {k: r["comment"] for k, r in results.items() if r["result"] is False}
    assert not failed, failed
    # the group's roles bring their states (the catalogue), and every host's
    expected = {"common", "salt.minion"}
    for role in GROUPS[group]:
        expected |= set(ROLE_STATES[role])
    assert {r["__sls__"] for r in results.values()} >= expected

    for key in results:
        function, sid, name = parse(key)
        assert function in BAKE_FUNCTIONS, f"{group}: {sid} ({function}) in a bake"
        if function == "cmd.run":
            assert sid in BAKE_COMMANDS, f"{group}: {sid} runs `{name}` in a bake"
        if function.startswith("file."):
            top = Path(name).parts[1]
            assert top in OVERLAID, f"{group}: {sid} writes {name}, outside the folders {OVERLAID}"
    ids = {parse(k)[1] for k in results}
    # every image: salt's minion unit (salt itself is bake.sh's venv), enabled at first boot
    assert BAKED[group] | {"common-packages", "salt-minion-unit", "firewall-packages"} <= ids
    assert not ids & NOT_BAKED, ids & NOT_BAKED
    assert not any(i.startswith("common-addresses") for i in ids)


def test_the_web_bake_applies_for_real_in_overlays_and_twice_changes_nothing(tmp_path):
    packages = ["ca-certificates", "curl", "python3", "nftables"]
    packages += ["nginx-light", "podman", "crun", "catatonit", "uidmap", "slirp4netns"]
    missing = [
        p
        for p in packages
        if "install ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
        ).stdout
    ]
    # a real apply would install them on this machine: scripts/setup installs them beforehand
    assert not missing, f"run `make setup` (scripts/apt-packages.txt) first: missing {missing}"
    if os.geteuid() != 0:
        pytest.skip("the real apply runs in a private mount namespace (overlays): that needs root")

    layers = tmp_path / "layers"
    results = bake("web", tmp_path / "out.json", "state.highstate", layers)
    assert all(r["result"] is True for r in results.values()), results
    changed = {parse(k)[1]: parse(k)[2] for k, r in results.items() if r["changes"]}
    # what changed is in the overlays: this machine's own folders are untouched
    assert all(Path(name).parts[1] in OVERLAID for name in changed.values()), changed
    assert "web-packages" not in changed and "common-packages" not in changed

    def seen(path: str) -> Path:
        """`/path` as the bake saw it: the overlay's upper layer if it has it, else this machine."""
        top, rest = path.split("/", 1)
        upper = layers / top / "upper" / rest
        return upper if upper.exists() else Path("/", path)

    conf = (layers / "etc/upper/containers/containers.conf").read_text()
    assert 'runtime = "crun"' in conf  # podman inside a container runs with crun
    for folder in ("etc/nginx/conf.d", "var/log/nginx", "var/lib/nginx/body", "etc/coop"):
        assert seen(folder).is_dir(), folder
    written = sorted(
        f"{top}/{p.relative_to(layers / top / 'upper')}"
        for top in OVERLAID
        for p in (layers / top / "upper").rglob("*")
        if p.is_file()
    )
    # no host record, minion id or nginx.conf; the minion's unit (enabled at first boot)
    assert written == [
        "etc/containers/containers.conf",
        "etc/systemd/system/coop-firewall.service",
        "etc/systemd/system/salt-minion.service",
    ]
    unit = (layers / "etc/upper/systemd/system/salt-minion.service").read_text()
    assert "ExecStart=/opt/salt/bin/salt-minion\n" in unit

    again = bake("web", tmp_path / "again.json", "state.highstate", layers)
    assert not {parse(k)[1] for k, r in again.items() if r["changes"]}
