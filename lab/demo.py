"""`make demo` on the lab (`infra demo --topology topology.lab.yaml`): the lab up (the `main`
job), then the push-to-live loop on it, driven by the real Dagster daemon:

1. the sample app's bare repo where the topology names it (a path on this machine, served to
   the lab by the read-only git daemon on the lab's link) and a working clone beside it;
2. `dagster-daemon run` on the repo's instance, the delivery sensors on (the fallbacks), a
   `dagster-webserver` and the webhook endpoint (lab/demo_services.py), and the repo's
   post-receive hook calling the endpoint;
3. a commit, pushed: the hook -> the endpoint -> `deliver_<app>` (built on the jenkins agent
   through salt, pushed to the lab's registry, then released by the `app` state on
   web-staging-1, in one run); the loop follows the run and waits until staging answers with the
   commit: HTTPS to the app's domain at its planned address, through the lab's link, the
   certificate (from the lab's ACME server) checked;
4. a second commit, the same way.

Everything stays up afterwards; `infra lab down` stops the endpoint, the webserver, the daemon,
the git daemon and the lab.
"""

from __future__ import annotations

import sys
from pathlib import Path

from infra_assets.delivery.app_images import deliver_job_name
from infra_assets.topology.model import Topology, TopologyError
from infra_assets.topology.secrets import SecretsError
from infra_assets.topology.sites import LabSite
from lab import site as lab
from lab.cli import known_errors
from lab.demo_loop import (
    LoopError,
    demo_app,
    ensure_repo,
    hand_over,
    push_change,
    start_daemon_and_sensors,
    start_webhooks,
    wait_live,
)
from lab.demo_services import demo_daemon, demo_services, stop_daemon
from lab.lab_dagster import LabDagsterError, lab_dagster
from lab.processes import ProcessError
from lab.reach import Site
from lab.site import app_site, start_git_daemon
from resources.cli_runner import CliError
from resources.lab import LabError
from resources.lab_git import LabGitError
from resources.paths import dagster_home


def staging_site(site: LabSite, topo: Topology, app: str) -> Site:
    """`app` on the first staging web host, as the machine opens it (lab/site.py, app_site:
    HTTPS to its domain, checked against the lab's ACME root)."""
    host = sorted(topo.hosts_with_role("web-staging"))[0]
    return app_site(site, host, app, "staging")


def run_loop(topology_file: Path, site: LabSite, say, *, rounds: int = 2) -> int:
    """`rounds` commits pushed to the demo app, each followed until staging answers with it."""
    topo = site.topo
    if not topo.hosts_with_role("web-staging"):
        say("== no host has the role web-staging: nothing to release to", err=True)
        return 1
    try:
        app = demo_app(topo)
        where = staging_site(site, topo, app)
        say("")
        say(f"== push to live: {app} on staging ({where.url} at {where.address})")
        repo = ensure_repo(topology_file, topo, app, site.root)
        say(f"   git repo {repo.bare} (branch {repo.branch}); working clone {repo.work}")
        daemon = start_git_daemon(site, Path(topology_file).absolute().parent)
        if daemon:
            say(f"   the lab clones it from the git daemon on its link ({daemon.get('url', '')})")
        env = {"INFRA_TOPOLOGY": str(Path(topology_file).absolute())}
        dagster = lab_dagster(site)  # the lab's own, when a host has the role dagster
        if dagster is not None:
            # nothing of this machine's may drive the lab beside it: a daemon or an endpoint
            # an earlier demo (without the role) left running
            for stopped in stop_daemon(site):
                say(f"   stopped {stopped}: the lab's Dagster drives the lab")
            hand_over(dagster, say)
        else:
            start_daemon_and_sensors(demo_daemon(site), env, say)
        start_webhooks(site, topology_file, repo, env, say, dagster)
        for n in range(1, rounds + 1):
            sha, pushed = push_change(repo, n, say)
            took = wait_live(
                where,
                topo.apps[app].health,
                sha,
                since=pushed,
                say=say,
                release_job=deliver_job_name(app),
                dagster=dagster,
            )
            say(f"== {where.url} answers {sha} ({took:.1f} s after the push)")
    except (
        LoopError, LabGitError, ProcessError, LabError, CliError, OSError, LabDagsterError
    ) as err:  # fmt: skip
        # the git daemon or dagster-daemon not ready in time, a repo folder that cannot be made
        say(f"== the push-to-live loop stopped: {err}", err=True)
        return 1
    return 0


def run_demo(topology_file: Path, say, *, rounds: int = 2) -> int:
    """`make demo` on a lab topology: `infra lab up`, the push-to-live loop, where to look."""
    try:
        site = lab.lab_site(topology_file)
        say(f"== infra lab up: {topology_file} (the main job; every run is in the Dagster UI)")
        data = lab.up(topology_file, echo=say)
    except TopologyError as err:
        say(err.render(), err=True)
        return 2
    except SecretsError as err:  # bad input, found before anything starts
        say(f"== the lab did not come up: {err}", err=True)
        return 2
    except known_errors() as err:
        say(f"== the lab did not come up: {err}", err=True)
        return 1
    running = [h for h, v in data["hosts"].items() if v.get("running")]
    say(f"== lab up: {len(running)} of {len(data['hosts'])} hosts running")
    if site.topo.apps:
        code = run_loop(topology_file, site, say, rounds=rounds)
        if code:
            return code
    ui = demo_services(site).url("dagster-webserver")
    dagster = lab_dagster(site)
    if dagster is not None:
        shown = (
            f"{dagster.url}/assets (the lab's own, on {dagster.host}: an account of"
            f" dagster.accounts in {site.secrets_file()}; its certificate {dagster.ca_file})"
        )
    else:
        shown = f"{ui}/assets (the demo's)" if ui else "make dev, then http://127.0.0.1:3000/assets"
    history = str(dagster_home() / ".dagster")
    if dagster is not None:
        db = sorted(site.topo.hosts_with_role("postgres-production"))
        history = f"the database `dagster` on {db[0] if db else 'the production postgres host'}"
    where = [
        ("the Dagster UI: the runs, the lineage", shown),
        ("the lab: hosts, releases, registry", f"infra lab status --topology {topology_file}"),
        ("Dagster's history of runs", history),
    ]
    for app in sorted(site.topo.apps):
        staging = staging_site(site, site.topo, app)
        where.append((f"{app} on staging", staging.curl(site.topo.apps[app].health)))
        work = site.root / "git" / "work" / app
        if work.is_dir():
            where.append((f"push a change of {app} yourself", f"cd {work}; git commit; git push"))
    daemon = demo_daemon(site).status()
    if daemon["daemon_running"]:
        where.append(("the Dagster daemon (sensors on)", f"pid {daemon['pid']}, {daemon['log']}"))
    hooks = demo_services(site).url("webhooks")
    if hooks:
        where.append(("the webhook endpoint (the repos' hooks call it)", hooks))
    # From the instance's folder: dagster.yaml names its storage relative to it.
    execute = (
        f"cd {dagster_home()} && DAGSTER_HOME=$PWD INFRA_TOPOLOGY={Path(topology_file).absolute()}"
        f" {Path(sys.executable).parent / 'dagster'} job execute -m infra_assets.definitions -j"
    )
    if dagster is not None:  # the lab's Dagster built and released: it promotes them too
        execute = f"{dagster.url}/locations/coop-infra/jobs/"
        jobs = [
            f"{execute}{job} (Launchpad)" for job in ("promote", "rollback", "rollback_staging")
        ]
    else:
        jobs = [f"{execute} {job}" for job in ("promote", "rollback", "rollback_staging")]
    where += [
        ("send staging to production", jobs[0]),
        ("put back production's previous release", jobs[1]),
        ("put back staging's previous release", jobs[2]),
        ("stop the daemon and the lab", f"infra lab down --topology {topology_file}"),
    ]
    say("")
    say("== where to look")
    for what, place in where:
        say(f"   {what:<40} {place}")
    return 0
