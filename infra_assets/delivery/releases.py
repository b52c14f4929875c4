"""Releases: `release/staging/<app>` and `release/production/<app>`, carried out by Salt.

A release puts one image, by digest, live on every web host of an environment (the hosts with the
role `web-<environment>`). Dagster decides what goes where; the `app` salt state (salt/app/) does
it on each host, blue/green: pull by digest, start the new container beside the live one, wait for
its health path, switch the app's nginx upstream and reload, stop the old container and keep it
(with its image) as the release to roll back to. A failed health check leaves the live release
serving, removes the new container and fails the asset with the health log.

Which digest:
- `release/staging/<app>`: the run config's `digest` (what registry_image_sensor asks for, one run
  per new digest at the app's branch tag), else the digest at that tag now;
- `release/production/<app>`: the digest of the last successful `release/staging/<app>`
  (Dagster's record; the `promote` job), refused unless every staging host runs it: never a new
  build; a config `digest` is refused unless it is that one (release it on staging first);
- with `rollback: true` (the `rollback` and `rollback_staging` jobs): the previous release recorded
  on the environment's hosts.
Whichever it is, it is released only when `app_image/<app>` built and recorded it for a commit of
the app's branch (provenance.py): a digest someone else pushed, under any tag, or a
host's record names, is refused; so are indexes and images whose revision label is not the
recorded commit.

Hosts are released one after another; the first failure stops the run (the hosts after it keep
what they had). Metadata: digest, commit, the URL, the health check's answer, the previous digest,
a table of what each host did and every state's result.
"""

import json
import re
import shlex
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from infra_assets.configuration.highstate import highstate_key, report
from infra_assets.configuration.minions import POOL
from infra_assets.delivery.app_images import asset_key as app_image_key
from infra_assets.delivery.provenance import build_of_commit, our_build, staging_record
from infra_assets.topology.model import ENVIRONMENTS, App, Topology
from infra_assets.topology.secrets import SecretsError, load_secrets
from infra_assets.topology.sites import RECORDS_DIR, Site, SiteError, site_for
from resources.git import GitError, GitResource
from resources.git_url import resolve_repo
from resources.registry import REVISION_LABEL, RegistryError, RegistryResource
from resources.salt import ApplyResult, SaltError, SaltResource, StateResult
from resources.topology import TopologyResource

GROUP = "releases"
# \Z, not $: `$` also matches before a final newline (a newline would add nginx directives).
DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")
# A release that fails for a passing reason (a minion, salt-api, the registry, the app's git
# server or the network briefly down; an image pull that failed) is run again after about 5, 15,
# 35, 75 and 155 s (Dagster's exponential backoff: delay * (2^n - 1), with jitter; nearly 5
# minutes in all). The app's own failures (its release phase, a container that exits or never
# answers, a site nginx refuses), a host not ready for releases (nginx down: a highstate mends
# it), a certificate refused (an ACME server counts failed validations) and a wrong request are
# not (`_fail`, `allow_retries=False`): a release is idempotent, so a retry finishes what the
# failed attempt began and changes nothing where it had finished.
RELEASE_RETRY_POLICY = dg.RetryPolicy(
    max_retries=5, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
# The release state's steps whose failure says nothing about the app: tried again.
PASSING_STEPS = frozenset({"pull", "record", "stop-old", "prune"})
# Run tags of a `deliver_<app>` run (the push path): its commit, and when it was pushed.
PARTITION_TAG = "dagster/partition"
PUSHED_AT_TAG = "coop/pushed_at"


def release_key(environment: str, app: str) -> dg.AssetKey:
    return dg.AssetKey(["release", environment, app])


def release_op_name(environment: str, app: str) -> str:
    """The op Dagster derives from the asset key (for run config)."""
    return release_key(environment, app).to_python_identifier()


def staging_job_name(app: str) -> str:
    return f"release_staging_{app.replace('-', '_')}"


class ReleaseConfig(dg.Config):
    digest: str = Field(
        default="",
        description="The image to release (sha256:...). Empty: on staging the digest at the app's"
        " branch tag in the registry; on production the digest live on staging.",
    )
    sha: str = Field(
        default="",
        description="The commit it was built from, 40 hex digits (else: the image's revision"
        " label).",
    )
    rollback: bool = Field(
        default=False, description="Put back the previous release recorded on the hosts."
    )
    health_timeout_s: int = Field(
        default=30, ge=1, le=600, description="How long the new container has to answer 200."
    )


@dataclass(frozen=True)
class Record:
    """What a web host says is live (`current`) and was live before (`previous`)."""

    host: str
    current: dict[str, Any] | None
    previous: dict[str, Any] | None

    def digest(self, which: str = "current") -> str | None:
        entry = getattr(self, which)
        return entry.get("digest") if entry else None


def record_path(app: str) -> str:
    return f"{RECORDS_DIR}/{app}.json"


def read_records(salt: SaltResource, site: Site, hosts: list[str], app: str) -> list[Record]:
    """Each host's release record, asked from the host itself (through salt)."""
    records = []
    for host in hosts:
        path = shlex.quote(record_path(app))
        out = salt.call(
            minions=[host],
            fun="cmd.run",
            args=[f"cat {path} 2>/dev/null || true"],
            kwargs={"python_shell": True},
        )
        if host not in out:
            raise SaltError(f"{host} did not answer (is its minion running and accepted?)")
        text = str(out[host] or "").strip()
        try:
            data = json.loads(text) if text else {}
        except json.JSONDecodeError:
            raise SaltError(f"{host}: {record_path(app)} is not JSON") from None
        records.append(Record(host, data.get("current"), data.get("previous")))
    return records


def release_asset(environment: str, app_name: str, topo: Topology) -> dg.AssetsDefinition:
    role = f"web-{environment}"
    deps: list[Any] = []
    if environment == "staging":
        deps.append(app_image_key(app_name))
    else:
        deps.append(release_key("staging", app_name))
    if topo.hosts_with_role(role):
        deps.append(highstate_key(role))

    @dg.asset(
        key=release_key(environment, app_name),
        group_name=GROUP,
        kinds={"salt", "podman", "nginx"},
        deps=deps,
        ins={"topology": dg.AssetIn("topology")},
        pool=POOL,
        retry_policy=RELEASE_RETRY_POLICY,
        # A `deliver_<app>` run whose commit is no longer its branch's head releases nothing:
        # the run of the newer head does.
        output_required=False,
        tags={"coop/app": app_name, "coop/environment": environment},
        description=f"App {app_name!r} live on the {environment} web hosts (role {role}): an"
        " image by digest, released by the `app` salt state (blue/green behind nginx, health"
        " checked, the previous release kept for a rollback)."
        + (" Its digest is the one live on staging." if environment == "production" else ""),
    )
    def _release(
        context: dg.AssetExecutionContext,
        config: ReleaseConfig,
        topology: Topology,
        salt: SaltResource,
        registry: RegistryResource,
        git: GitResource,
        topology_file: TopologyResource,
    ):
        def branch_head() -> str:
            """The app's branch head now, read from its repository (a deliver run's check)."""
            app = topology.apps[app_name]
            repo = resolve_repo(app.repo, topology_file.file().parent)
            return git.head(repo=repo, branch=app.branch)

        result = materialize(
            context, config, topology, salt, registry, environment, app_name, branch_head
        )
        if result is not None:
            yield result

    return _release


def materialize(
    context: dg.AssetExecutionContext,
    config: ReleaseConfig,
    topology: Topology,
    salt: SaltResource,
    registry: RegistryResource,
    environment: str,
    app_name: str,
    branch_head=None,
) -> dg.MaterializeResult | None:
    """The release, or None when a `deliver_<app>` run's commit is no longer its branch's head
    (the newer head's run releases that)."""
    what = f"release/{environment}/{app_name}"
    step_started = time.time()
    app, hosts = _checked_request(what, config, topology, environment, app_name)
    try:
        site = site_for(topology)
        secrets = load_secrets(site.secrets_file(), topology).values()
        before = read_records(salt, site, hosts, app_name)
        commit = delivered_commit(context, environment)
        if commit and branch_head is not None and (head := branch_head()) != commit:
            context.log.info(
                f"{what}: {commit} is no longer the head of {app.branch} ({head} is): not"
                " released; the run of the newer head releases that"
            )
            return None
        chosen = _choose(context.instance, config, registry, salt, site, topology, environment,
                         app_name, before, commit)  # fmt: skip
    except (SiteError, SecretsError) as err:
        raise _fail(f"{what}: {err}") from None
    except (SaltError, RegistryError, GitError) as err:
        raise _passing(f"{what}: {err}") from None
    digest, sha, why = chosen
    if not DIGEST_RE.match(digest or "") or (sha and not SHA_RE.match(sha)):
        # What the hosts' records or the registry said: refused before the hosts are asked to act.
        raise _fail(
            f"{what}: {why}: {digest!r} (commit {sha!r}) is not an image digest and a commit"
            " (sha256:<64 hex digits>; 40 hex digits): nothing was released"
        )
    context.log.info(f"{what}: {digest} ({why}) on {', '.join(hosts)}")
    results, took, live_at = _release_host_by_host(
        context, salt, config, environment, app_name, hosts, digest, sha, secrets
    )

    worker = app.kind == "worker"
    url = None if worker else site.app_url(hosts[0], app_name, environment)
    states = [s for r in results for s in r.states()]
    changed = any(s.changed for s in states)
    previous = _previous_digest(before, digest)
    after = _records_after(what, salt, site, hosts, app_name, digest)
    metadata = _release_metadata(context, app_name, app, environment, hosts, (digest, sha, why),
                                 url=url, previous=previous, changed=changed, results=results,
                                 after=after, took=took, step_started=step_started,
                                 live_at=live_at)  # fmt: skip
    if not changed:
        context.log.info(f"{what}: {digest} was live already; nothing changed")
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(digest))


def _checked_request(
    what: str, config: ReleaseConfig, topology: Topology, environment: str, app_name: str
) -> tuple[App, list[str]]:
    """The app and the environment's web hosts, sorted; refused (not retried) when the run
    config is malformed, the app has left the topology or no host has the role."""
    if config.digest and not DIGEST_RE.match(config.digest):
        raise _fail(
            f"{what}: config digest {config.digest!r} is not sha256:<64 hex digits> (a release is"
            " an image by digest, as the registry names it)"
        )
    if config.sha and not SHA_RE.match(config.sha):
        raise _fail(
            f"{what}: config sha {config.sha!r} is not a commit (40 lowercase hex digits, as"
            " `git rev-parse` prints it); leave it empty to take the image's revision label"
        )
    if config.digest and config.rollback:
        raise _fail(f"{what}: config asks for a digest and a rollback: give one or the other")
    app = topology.apps.get(app_name)
    if app is None:
        raise _fail(f"{what}: app {app_name!r} is no longer in the topology")
    hosts = sorted(topology.hosts_with_role(f"web-{environment}"))
    if not hosts:
        raise _fail(f"{what}: no host has the role web-{environment}: nowhere to release")
    return app, hosts


def _release_host_by_host(
    context: dg.AssetExecutionContext,
    salt: SaltResource,
    config: ReleaseConfig,
    environment: str,
    app_name: str,
    hosts: list[str],
    digest: str,
    sha: str,
    secrets: list[str],
) -> tuple[list[ApplyResult], float, float | None]:
    """The `app` state on each host, one after another, the first failure stopping the release:
    (each host's result, the seconds it took, when nginx served it on the first host)."""
    what = f"release/{environment}/{app_name}"
    results: list[ApplyResult] = []
    started = time.monotonic()
    live_at: float | None = None  # when nginx served it on the first host (wall clock)
    for host in hosts:  # one host after another: the first failure stops the release
        pillar = {
            "release": {
                "app": app_name,
                "digest": digest,
                "sha": sha,
                "health_timeout_s": config.health_timeout_s,
                # The image's release command runs once per release: on the first host (where
                # the digest is new), never for a rollback (the database keeps what the newer
                # release made of it: a release phase must leave a schema the previous release
                # still runs on).
                "release_phase": host == hosts[0] and not config.rollback,
                "web_state": f"highstate/web-{environment}",
            }
        }
        try:
            result = salt.apply(minions=[host], sls=["app"], pillar=pillar, log=context.log.info,
                                redact=secrets, sync_states=True)  # fmt: skip
        except SaltError as err:
            raise _passing(f"{what}: {host}: {err}") from None
        results.append(result)
        if not result.ok:
            raise _failure(what, digest, host, result, results)
        if live_at is None:
            live_at = time.time() - _seconds_after_switch(result)
    took = time.monotonic() - started
    return results, took, live_at


def _records_after(
    what: str, salt: SaltResource, site: Site, hosts: list[str], app_name: str, digest: str
) -> list[Record]:
    """The hosts' records once released: each must record `digest` live."""
    try:
        after = read_records(salt, site, hosts, app_name)
    except SaltError as err:
        raise _passing(f"{what}: released, but the hosts' records cannot be read: {err}") from None
    wrong = [r.host for r in after if r.digest() != digest]
    if wrong:
        raise _fail(f"{what}: released, but {', '.join(wrong)} records another release live")
    return after


def _hosts_table(after: list[Record], results: list[ApplyResult], digest: str) -> str:
    """What each host runs now, and what it did (markdown)."""
    rows = [
        "| host | live | slot | port | container | previous | steps changed |",
        "|---|---|---|---|---|---|---|",
    ]
    for record, result in zip(after, results, strict=True):
        live, prev = record.current or {}, record.previous or {}
        rows.append(
            f"| {record.host} | {live.get('sha', '')[:12] or digest[:19]} | {live.get('slot')} |"
            f" {live.get('port')} | {live.get('container')} |"
            f" {(prev.get('sha') or prev.get('digest') or 'none')[:19]} |"
            f" {sum(step.changed for step in steps_of(result))} |"
        )
    return "\n".join(rows)


def _release_metadata(
    context: dg.AssetExecutionContext,
    app_name: str,
    app: App,
    environment: str,
    hosts: list[str],
    chosen: tuple[str, str, str],
    *,
    url: str | None,
    previous: str | None,
    changed: bool,
    results: list[ApplyResult],
    after: list[Record],
    took: float,
    step_started: float,
    live_at: float | None,
) -> dict[str, Any]:
    """The release's metadata: what was released where, why, its health, each host's part."""
    digest, sha, why = chosen
    worker = app.kind == "worker"
    first = steps_of(results[0])
    return {
        "digest": digest,
        "sha": sha or "(unknown)",
        "image": f"{app_name}@{digest}",
        "url": dg.MetadataValue.url(url) if url else "(a worker: no URL)",
        "environment": environment,
        "hosts": hosts,
        "why": why,
        "health": next((s.comment for s in first if s.step in ("healthy", "up")), "(not checked)"),
        "health_path": f"(a worker: up {app.up_s} s)" if worker else app.health,
        "release_phase": next(
            (s.comment for s in first if s.step == "release-phase"),
            "(not run: this release was live already, or a rollback)",
        ),
        **_release_phase_output(first),
        "previous_digest": previous or "(none)",
        "changed": changed,
        "what_happened": dg.MetadataValue.md(
            "\n".join(f"- {h}: {_summary(r)}" for h, r in zip(hosts, results, strict=True))
        ),
        "release_hosts": dg.MetadataValue.md(_hosts_table(after, results, digest)),
        "apply_s": dg.MetadataValue.float(round(took, 2)),
        # From `podman run` to the first 200 on the health path, on the slowest host.
        "container_start_s": dg.MetadataValue.float(
            round(max(_container_start_s(r) for r in results), 2)
        ),
        **{k: v for k, v in report(_merge(results)).items() if k in ("results", "states")},
        **push_stages(context, app_name, step_started, live_at or time.time()),
    }


def _choose(
    instance: dg.DagsterInstance,
    config: ReleaseConfig,
    registry: RegistryResource,
    salt: SaltResource,
    site: Site,
    topology: Topology,
    environment: str,
    app_name: str,
    before: list[Record],
    delivered: str | None,
) -> tuple[str, str, str]:
    """(digest, sha, why) of what to release: only ever a digest that `app_image/<app>` built
    and recorded for a commit of the app's branch (provenance.py); production only
    the digest of the last successful staging release, which every staging host must run. In a
    `deliver_<app>` run (`delivered`: its commit, still its branch's head), the image its build
    step recorded."""
    what = f"release/{environment}/{app_name}"
    app = topology.apps[app_name]
    if config.rollback:
        digest, why = _rollback_target(what, before)
    elif environment == "production":
        digest, why = _promoted(instance, salt, site, app_name, config.digest)
    elif config.digest:
        digest, why = config.digest, "asked for (run config)"
    elif delivered:
        built = build_of_commit(instance, app_name, app.branch, delivered)
        if built is None:
            raise _fail(
                f"{what}: app_image/{app_name} recorded no build of {delivered} (this run's build"
                " step): nothing to release"
            )
        digest, why = built.digest, f"built from {delivered[:12]}, the head of {app.branch}"
    else:
        found = registry.digest(repository=app_name, reference=app.branch)
        if found is None:
            raise _fail(
                f"{what}: {app_name}:{app.branch} is not in the registry yet: push a commit"
                " (git_push_sensor builds it)"
            )
        digest, why = found, f"the image at {app_name}:{app.branch}"
    sha = _recorded_commit(instance, config, registry, what, app_name, app.branch, digest, why)
    return digest, sha, why


def _recorded_commit(
    instance: dg.DagsterInstance,
    config: ReleaseConfig,
    registry: RegistryResource,
    what: str,
    app_name: str,
    branch: str,
    digest: str,
    why: str,
) -> str:
    """The commit of `branch` app_image recorded `digest` built from; refused unless it is the
    config's sha (when given) and the image in the registry is labelled with it."""
    record = our_build(instance, app_name, branch, digest)
    if record is None:
        raise _fail(
            f"{what}: {app_name}@{digest} ({why}) is not an image app_image/{app_name} built for a"
            f" commit of {branch}: nothing was released. Only what the pipeline built is"
            " released: push the commit and let app_image build it"
        )
    if config.sha and config.sha != record.sha:
        raise _fail(
            f"{what}: config sha {config.sha} is not the commit {app_name}@{digest} was built"
            f" from ({record.sha}, app_image's record): nothing was released"
        )
    manifest = registry.manifest(repository=app_name, reference=digest)
    if manifest is None:
        raise _fail(f"{what}: {app_name}@{digest} is not in the registry")
    if manifest.is_index:
        raise _fail(f"{what}: {app_name}@{digest} is an index, not an image: nothing was released")
    label = registry.labels(repository=app_name, manifest=manifest).get(REVISION_LABEL, "")
    if label != record.sha:
        raise _fail(
            f"{what}: {app_name}@{digest} carries {REVISION_LABEL}={label!r}, not the commit it"
            f" was recorded for ({record.sha}): nothing was released"
        )
    return record.sha


def _rollback_target(what: str, before: list[Record]) -> tuple[str, str]:
    """The previous release every host recorded (checked against app_image's record after)."""
    previous = {r.digest("previous") for r in before}
    if None in previous:
        missing = [r.host for r in before if r.previous is None]
        raise _fail(
            f"{what}: nothing to roll back to on {', '.join(missing)} (no previous release"
            " recorded there)"
        )
    if len(previous) > 1:
        raise _fail(
            f"{what}: the hosts disagree on the previous release ({_by_host(before, 'previous')});"
            " release a digest by hand (config: digest)"
        )
    return previous.pop(), f"rollback to the previous release (was {before[0].digest()})"


def _promoted(
    instance: dg.DagsterInstance, salt: SaltResource, site: Site, app_name: str, asked: str
) -> tuple[str, str]:
    """Production's digest: the last successful `release/staging/<app>`'s (Dagster's record,
    not what a staging host says), refused unless every staging host runs it."""
    record = staging_record(instance, app_name)
    if record is None or not record.digest:
        raise _fail(
            f"release/production/{app_name}: staging never released {app_name} (no successful"
            f" release/staging/{app_name}): release it there first"
        )
    if asked and asked != record.digest:
        raise _fail(
            f"release/production/{app_name}: config digest {asked} is not the last release on"
            f" staging ({record.digest}): production only takes what staging released. Release"
            f" it on staging first ({staging_job_name(app_name)} with that digest), then run"
            " `promote`"
        )
    staging = sorted(site.topo.hosts_with_role("web-staging"))
    if not staging:
        raise _fail(f"release/production/{app_name}: no staging host to promote from")
    live = read_records(salt, site, staging, app_name)
    disagree = [r for r in live if r.digest() != record.digest]
    if disagree:
        raise _fail(
            f"release/production/{app_name}: the last staging release is {record.digest}"
            f" (run {record.run_id[:8]}), but {_by_host(disagree, 'current')}: nothing was"
            " promoted. Release staging again (or find out who changed that host)"
        )
    why = "promoted: the last release on staging"
    return record.digest, why + (" (asked for: run config)" if asked else "")


def _previous_digest(before: list[Record], digest: str) -> str | None:
    """What was live before this release (or, when it was live already, before that)."""
    for record in before:
        current = record.digest()
        if current and current != digest:
            return current
    return next((r.digest("previous") for r in before if r.digest("previous")), None)


@dataclass(frozen=True)
class Step:
    """One step of a release on a host, as the `coop_app.released` state reports it."""

    step: str
    changed: bool
    comment: str
    seconds: float
    output: str = ""


def steps_of(result: ApplyResult) -> list[Step]:
    """The steps of the release state (salt/_states/coop_app.py): from its changes when it
    changed something, else from its comment (a line per step: `<step>: <what>`)."""
    state = _release_state(result)
    if state is None:
        return []
    changes = state.changes if isinstance(state.changes, dict) else {}
    if isinstance(changes.get("steps"), list):
        return [
            Step(
                str(d.get("step")),
                bool(d.get("changed")),
                str(d.get("comment")),
                float(d.get("seconds") or 0),
                str(d.get("output") or ""),
            )  # fmt: skip
            for d in changes["steps"]
            if isinstance(d, dict)
        ]
    if state.failed:
        return []
    lines = [line.partition(": ") for line in state.comment.splitlines()]
    return [Step(step, False, comment, 0.0) for step, _, comment in lines if comment]


def _release_phase_output(steps: list[Step]) -> dict[str, Any]:
    phase = next((s for s in steps if s.step == "release-phase" and s.output), None)
    if phase is None:
        return {}
    return {"release_phase_output": dg.MetadataValue.md(f"```\n{phase.output}\n```")}


def _release_state(result: ApplyResult) -> StateResult | None:
    return next((s for s in result.states() if s.function == "coop_app.released"), None)


def _failure(
    what: str, digest: str, host: str, result: ApplyResult, results: list[ApplyResult]
) -> dg.Failure:
    state = _release_state(result)
    failed = (state.changes or {}).get("failed") if state is not None and state.failed else None
    if not isinstance(failed, dict):
        problems = [f"{s.label}: {s.comment}" for s in result.failed_states()]
        lines = [f"{what}: {digest} failed on {host}: " + "; ".join(problems or result.problems())]
        output = ""
    else:
        lines = [
            f"{what}: {digest} failed on {host}: {failed.get('step')}: {failed.get('comment')}"
        ]
        output = str(failed.get("output") or "")
        after = {
            "release-phase": "The live release keeps serving; nothing new was started.",
            "start": "The live release keeps serving; the new container was removed.",
            "healthy": "The live release keeps serving; the new container was removed.",
            "nginx": "The live release keeps serving: the old site is back, the new container"
            " removed.",
            "stop-old": "nginx serves the new release (recorded); the old container may still"
            " run: release again to finish.",
        }.get(str(failed.get("step")))
        if after and "(the live release itself)" not in str(failed.get("comment")):
            lines.append(after)
        if output:
            lines.append(f"Its output:\n{output}")
    done = [r for r in results if r is not result]
    metadata: dict[str, Any] = {
        "digest": digest,
        "failed_host": host,
        "released_before_the_failure": [m for r in done for m in r.minions],
        **{k: v for k, v in report(result).items() if k in ("results", "failed")},
    }
    if output:
        metadata["output"] = dg.MetadataValue.md(f"```\n{output}\n```")
    if isinstance(failed, dict):
        passing = str(failed.get("step")) in PASSING_STEPS
    else:  # a minion that did not answer is passing; a state that does not render is not
        passing = any(not run.returned for run in result.minions.values())
    if passing:
        lines[0] += PASSING
    return dg.Failure(description="\n".join(lines), metadata=metadata, allow_retries=passing)


def _container_start_s(result: ApplyResult) -> float:
    """Seconds from starting the new container to its first healthy answer (0 when the
    container was running already)."""
    steps = {s.step: s for s in steps_of(result)}
    start, healthy = steps.get("start"), steps.get("healthy")
    if start is None or not start.changed:
        return 0.0
    return start.seconds + (healthy.seconds if healthy else 0.0)


def _summary(result: ApplyResult) -> str:
    changed = [s for s in steps_of(result) if s.changed]
    if not changed:
        return "nothing to do: this release was live already"
    return "; ".join(s.comment for s in changed)


def _merge(results: list[ApplyResult]) -> ApplyResult:
    minions = {m: run for r in results for m, run in r.minions.items()}
    return ApplyResult(
        results[0].sls, False, minions, sum(r.duration_s for r in results), results[0].jid
    )


def _by_host(records: list[Record], which: str) -> str:
    return ", ".join(f"{r.host}: {r.digest(which) or 'none'}" for r in records)


def _fail(description: str) -> dg.Failure:
    """A failure that only a change mends (the request, the app, the topology): not retried."""
    return dg.Failure(description=description, allow_retries=False)


PASSING = " (a passing failure: tried again with backoff)"


def _passing(description: str) -> dg.Failure:
    """A failure that may mend itself (RELEASE_RETRY_POLICY tries again)."""
    return dg.Failure(description=description + PASSING, allow_retries=True)


# --- the push path's stages --------------------------------------------------------------------


def delivered_commit(context: dg.AssetExecutionContext, environment: str) -> str | None:
    """The commit a `deliver_<app>` run builds and releases on staging (its partition), or
    None: another kind of run."""
    if environment != "staging":
        return None
    sha = context.run.tags.get(PARTITION_TAG, "")
    return sha if SHA_RE.match(sha) else None


def _seconds_after_switch(result: ApplyResult) -> float:
    """How long the release state went on after nginx served the new release (a worker: after
    it was up) (record, stop the old container, prune)."""
    steps = steps_of(result)
    names = [s.step for s in steps]
    last = "nginx" if "nginx" in names else "up" if "up" in names else None
    if last is None:
        return 0.0
    return sum(s.seconds for s in steps[names.index(last) + 1 :])


def push_stages(
    context: dg.AssetExecutionContext, app_name: str, release_started: float, live_at: float
) -> dict[str, Any]:
    """The seconds of each stage of a `deliver_<app>` run, from the push (the `coop/pushed_at`
    tag the webhook endpoint sets) or, for a run the sensor started, from the run's creation:
    to the run (hook and launch request), queue and launch (to the run's first step), the build
    step, then the release until nginx served the new release. {} for other runs."""
    run = context.run
    if delivered_commit(context, "staging") is None or not run.job_name.startswith("deliver_"):
        return {}
    record = context.instance.get_run_record_by_id(run.run_id)
    if record is None:
        return {}
    created = record.create_timestamp.timestamp()
    starts, ends = {}, {}
    for entry in context.instance.all_logs(
        run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    ):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            starts.setdefault(entry.step_key, entry.timestamp)
        else:
            ends[entry.step_key] = entry.timestamp
    build_step = app_image_key(app_name).to_python_identifier()
    first_step = min(starts.values(), default=release_started)
    build_s = ends.get(build_step, release_started) - starts.get(build_step, release_started)
    pushed = _pushed_at(run.tags.get(PUSHED_AT_TAG), created)
    origin = pushed if pushed is not None else created
    rows: list[tuple[str, float]] = []
    if pushed is not None:
        rows.append(("push to run (the hook, the launch request)", created - pushed))
    rows += [
        ("queue and launch (to the run's first step)", first_step - created),
        ("build (app_image step)", build_s),
        ("release until nginx serves it", live_at - release_started),
    ]
    table = ["| stage | seconds |", "|---|---|"] + [f"| {name} | {sec:.2f} |" for name, sec in rows]
    total = live_at - origin
    table.append(f"| **{'push' if pushed is not None else 'run created'} to live** | {total:.2f} |")
    extra = {}
    if pushed is not None:
        extra["stage_push_to_run_s"] = dg.MetadataValue.float(round(created - pushed, 2))
    return {
        **extra,
        "stages": dg.MetadataValue.md("\n".join(table)),
        "push_to_live_s" if pushed is not None else "run_to_live_s": dg.MetadataValue.float(
            round(total, 2)
        ),
        "stage_build_s": dg.MetadataValue.float(round(build_s, 2)),
        "stage_launch_s": dg.MetadataValue.float(round(first_step - created, 2)),
        "stage_release_s": dg.MetadataValue.float(round(live_at - release_started, 2)),
    }


def _pushed_at(tag: str | None, created: float) -> float | None:
    """The push's time from the run's tag: a number of seconds since the epoch, at most an hour
    before the run was created and not after it (else None: not a time to measure from)."""
    try:
        pushed = float(tag or "")
    except ValueError:
        return None
    return pushed if created - 3600 <= pushed <= created + 1 else None


# --- jobs -------------------------------------------------------------------------------------


def _rollback_config(assets: list[dg.AssetsDefinition]) -> dict:
    return {"ops": {a.op.name: {"config": {"rollback": True}} for a in assets}}


def definitions(topo: Topology) -> dg.Definitions:
    """The release assets of every app and environment, and the jobs that run them (the
    registry sensor that starts staging releases: sensors/registry_images.py)."""
    if not topo.apps:
        return dg.Definitions()
    by_env = {env: [release_asset(env, name, topo) for name in topo.apps] for env in ENVIRONMENTS}
    assets = [a for env in ENVIRONMENTS for a in by_env[env]]
    staging = [release_key("staging", name) for name in topo.apps]
    production = [release_key("production", name) for name in topo.apps]
    topology = dg.AssetSelection.assets("topology")
    staging_jobs = {
        name: dg.define_asset_job(
            staging_job_name(name),
            selection=topology | dg.AssetSelection.assets(release_key("staging", name)),
            description=f"Release app {name!r} on staging: the digest in the run config, else the"
            " image at its branch tag. Launched by registry_image_sensor.",
            tags={"coop/app": name},
        )
        for name in topo.apps
    }
    promote = dg.define_asset_job(
        "promote",
        selection=topology | dg.AssetSelection.assets(*production),
        description="Send what is live on staging to production, for every app: the same digest,"
        " never a new build.",
    )
    rollback = dg.define_asset_job(
        "rollback",
        selection=topology | dg.AssetSelection.assets(*production),
        description="Put back production's previous release, for every app.",
        config=_rollback_config(by_env["production"]),
    )
    rollback_staging = dg.define_asset_job(
        "rollback_staging",
        selection=topology | dg.AssetSelection.assets(*staging),
        description="Put back staging's previous release, for every app.",
        config=_rollback_config(by_env["staging"]),
    )

    return dg.Definitions(
        assets=assets,
        jobs=[*staging_jobs.values(), promote, rollback, rollback_staging],
    )
