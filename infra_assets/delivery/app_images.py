"""App images: `app_image/<app>`, one per app, partitioned by commit (a dynamic partition per sha).

A materialisation builds the app's Dockerfile at that commit and pushes the image to the registry,
tagged with the sha; when the commit is still the head of the app's branch, the branch tag (`main`)
is moved to it too (that tag is what `registry_image_sensor` watches for staging releases).

Two builders:
- `salt` (the lab, `cloud: lab`, with no Jenkins configured: no INFRA_JENKINS_URL): the Jenkins
  job's own script (salt/jenkins/files/build-app-image.sh) run on a jenkins-agent host by the
  `jenkins.build` salt state, with the agent's podman (crun), the registry's CA and its push
  account, as the `jenkins.agent` state made them. The base image is the project's, pushed to
  the registry once (`coop-base`) for the agent to pull; an app repo that is a path on this
  machine is served to the lab by a read-only git daemon on the lab's link (resources/lab_git.py);
- `jenkins` (the co-op's cloud sites, or the lab with INFRA_JENKINS_URL): the `app-image`
  Jenkins job (jenkins/Jenkinsfile) on the jenkins agents, triggered and followed through
  resources/jenkins.py.
Either way the digest is then read back from the registry and must match what the build pushed;
the metadata is the same: digest, size, build time, the build log.

Idempotent: a commit whose image is already in the registry (its sha tag, with that commit as its
revision label) is not built again; the materialisation says so.

A push runs `deliver_<app>` (delivery/jobs.py): this build and the staging release in one
run; `build_<app>` is the build alone.
"""

import functools
import importlib.util
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import dagster as dg

from infra_assets.configuration.highstate import highstate_key
from infra_assets.configuration.pillar import build_caches
from infra_assets.delivery.provenance import our_build
from infra_assets.topology.model import App, Topology
from infra_assets.topology.secrets import PUSH_ACCOUNT, SecretsError, load_secrets
from infra_assets.topology.sites import LabSite, SiteError, site_for
from resources.cli_runner import CliError
from resources.git import GitError, GitResource
from resources.git_url import redact_repo, resolve_repo
from resources.jenkins import JenkinsBuild, JenkinsError, JenkinsResource
from resources.lab_git import LabGitError
from resources.paths import REPO_ROOT, state_dir
from resources.podman import RUNTIME_LABEL, PodmanError, PodmanResource
from resources.registry import REVISION_LABEL, Endpoint, Manifest, RegistryError, RegistryResource
from resources.salt import ApplyResult, SaltError, SaltResource
from resources.topology import TopologyResource

GROUP = "app_images"
SHA_RE = re.compile(r"\A[0-9a-f]{40}\Z")  # \Z: `$` also matches before a final newline
DIGEST_LINE = re.compile(r"PUSHED_DIGEST=(sha256:[0-9a-f]{64})")
# The build script's last line of output when the app itself cannot be built
# (build-app-image.sh); in a Jenkins console, after the timestamp the console may put first.
BUILD_ERROR_LINE = re.compile(r"BUILD_ERROR=(.*)$")
# A build that fails for a passing reason (the registry, a minion, the git daemon or the network
# briefly down) is run again: after about 5, 15, 35, 75, 155 and 315 s (Dagster's exponential
# backoff: delay * (2^n - 1), with jitter; about 10 minutes in all); the app's own failure
# (BuildRefused) and a wrong configuration are not.
BUILD_RETRY_POLICY = dg.RetryPolicy(
    max_retries=6, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
LOG_TAIL_LINES = 40
REGISTRY_ACCOUNT = PUSH_ACCOUNT  # the registry's push account: the builds', the agents'
BUILD_AGENT_ROLE = "jenkins-agent"
BUILD_STATE = "jenkins.build"
# The project's base image, as the salt builder's agents pull it from the registry.
BASE_REPOSITORY = "coop-base"
JENKINS_URL_ENV = "INFRA_JENKINS_URL"
# The standard build's rules (a repository without a Dockerfile), run on the agents.
STANDARD_BUILD = REPO_ROOT / "salt" / "jenkins" / "files" / "standard_build.py"
# The cache role each runtime's packages come through (no PyPI cache role yet: Python apps of
# the standard build are refused, with that reason, until it comes).
RUNTIME_CACHES = {"node": "npm-cache", "python": "pypi-cache"}
# Whose applied states a build needs: the registry's (it pushes there) and the agent's.
UPSTREAM_ROLES = ("docker-registry", BUILD_AGENT_ROLE)


def _ident(app: str) -> str:
    """App names are DNS labels (a-z, 0-9, -); Dagster names take a-z, 0-9, _."""
    return app.replace("-", "_")


def asset_key(app: str) -> dg.AssetKey:
    return dg.AssetKey(["app_image", app])


def partitions_def_name(app: str) -> str:
    return f"commits_{_ident(app)}"


def build_job_name(app: str) -> str:
    return f"build_{_ident(app)}"


def deliver_job_name(app: str) -> str:
    """The push path's job: the build and the staging release (infra_assets/delivery/jobs.py)."""
    return f"deliver_{_ident(app)}"


def builder_for(topo: Topology) -> str:
    """`salt` on the lab with no Jenkins configured ($INFRA_JENKINS_URL unset); else
    `jenkins`."""
    lab = all(loc.site_kind == "lab" for loc in topo.locations.values())
    return "salt" if lab and not os.environ.get(JENKINS_URL_ENV) else "jenkins"


BUILDER_RESOURCES = {"salt": "salt", "jenkins": "jenkins"}
BUILDER_KINDS = {"salt": "salt", "jenkins": "jenkins"}


class BuildRefused(RuntimeError):
    """The app itself cannot be built (its tests fail, its Dockerfile, the standard build
    refuses it): building it again would fail again."""


@dataclass(frozen=True)
class AppImage:
    """What `app_image/<app>` hands downstream (the releases): an image by digest."""

    app: str
    sha: str
    repository: str
    digest: str
    image: str  # registry-host/app@sha256:...
    tags: tuple[str, ...]
    size: int


class BuildLog:
    """Each line of a build: to the Dagster log as it comes, and to a file kept with the build."""

    def __init__(self, path: Path, context: dg.AssetExecutionContext):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._log = context.log
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._file.write(line + "\n")
        self._file.flush()
        self._log.info(line)

    def close(self) -> None:
        self._file.close()

    def tail_md(self, lines: int = LOG_TAIL_LINES) -> dg.MetadataValue:
        text = "\n".join(self.lines[-lines:]) or "(no output)"
        return dg.MetadataValue.md(f"```\n{text}\n```")


@dataclass
class BuildOutcome:
    digest: str | None  # None: nothing was built (already in the registry)
    took_s: float
    notes: list[str]
    extra: dict


def app_image_asset(
    app_name: str, builder: str, topo: Topology | None = None
) -> dg.AssetsDefinition:
    partitions = dg.DynamicPartitionsDefinition(name=partitions_def_name(app_name))
    # podman: the base images, made here and pushed to the registry for the build hosts.
    needs = {"git", "registry", "topology_file", "podman", BUILDER_RESOURCES[builder]}
    # One lineage: the image comes after the registry's and the build agent's states.
    deps = [highstate_key(role) for role in UPSTREAM_ROLES if topo and topo.hosts_with_role(role)]

    @dg.asset(
        key=asset_key(app_name),
        partitions_def=partitions,
        ins={"topology": dg.AssetIn("topology")},
        deps=deps,
        group_name=GROUP,
        kinds={BUILDER_KINDS[builder], "docker"},
        required_resource_keys=needs,
        retry_policy=BUILD_RETRY_POLICY,
        tags={"coop/app": app_name},
        description=f"The image of app {app_name!r} at one commit (partition = the sha), built"
        f" by the {builder} builder and pushed to the registry as {app_name}:<sha>; the branch"
        " tag follows the branch head.",
    )
    def _asset(context: dg.AssetExecutionContext, topology: Topology) -> dg.Output:
        return materialize(context, topology, app_name, builder)

    return _asset


def materialize(
    context: dg.AssetExecutionContext, topology: Topology, app_name: str, builder: str
) -> dg.Output:
    sha, app = _partition_commit(context, topology, app_name)
    res = context.resources
    registry: RegistryResource = res.registry
    topology_file: TopologyResource = res.topology_file
    repo = resolve_repo(app.repo, topology_file.file().parent)  # what git here reads
    # What leaves this process (the log, the metadata, the build's parameters and so the image's
    # source label): never a password, should one reach the repo URL by any way. A build host
    # authenticates with its own deploy key or credential helper.
    shown = redact_repo(repo)
    try:
        endpoint = registry.endpoint()
    except RegistryError as err:
        raise dg.Failure(f"no registry to push to: {err}", allow_retries=False) from None
    _refuse_a_commit_off_the_branch(res.git, app_name, app, repo, sha)
    log = BuildLog(state_dir() / "builds" / app_name / f"{sha}.log", context)
    try:
        manifest, outcome, tags = _build_or_adopt(
            context, topology, endpoint, app_name, app, repo, shown, sha, builder, log
        )
    except (
        GitError, PodmanError, JenkinsError, RegistryError, CliError, SaltError, LabGitError,
        SiteError, SecretsError, BuildRefused,
    ) as err:  # fmt: skip
        # Retried (BUILD_RETRY_POLICY) unless nothing but a change can mend it.
        permanent = isinstance(err, (BuildRefused, SiteError, SecretsError))
        raise dg.Failure(
            description=f"app_image/{app_name} at {sha[:12]}: {err}"
            + ("" if permanent else " (a passing failure: tried again with backoff)"),
            metadata={"build_log": dg.MetadataValue.path(str(log.path)), "log_tail": log.tail_md()},
            allow_retries=not permanent,
        ) from None
    finally:
        log.close()
    return _image_output(endpoint, app_name, app, shown, sha, builder, manifest, outcome, tags, log)


def _partition_commit(
    context: dg.AssetExecutionContext, topology: Topology, app_name: str
) -> tuple[str, App]:
    """The commit this partition names and the app it is of; refused (not retried) when the
    partition is no sha or the app has left the topology."""
    sha = context.partition_key
    if not SHA_RE.match(sha):
        raise dg.Failure(
            f"partition {sha!r} of app_image/{app_name} is not a commit sha (40 hex digits):"
            " partitions are added by git_push_sensor, one per commit",
            allow_retries=False,
        )
    app = topology.apps.get(app_name)
    if app is None:
        raise dg.Failure(
            f"app {app_name!r} is no longer in the topology ({', '.join(topology.apps) or 'none'}"
            " left): nothing to build",
            allow_retries=False,
        )
    return sha, app


def _build_or_adopt(
    context: dg.AssetExecutionContext,
    topology: Topology,
    endpoint: Endpoint,
    app_name: str,
    app: App,
    repo: str,
    shown: str,
    sha: str,
    builder: str,
    log: BuildLog,
) -> tuple[Manifest, BuildOutcome, list[str]]:
    """The image of `sha` in the registry, built unless app_image built it already, checked
    against what the build pushed, and the branch tag moved to it when `sha` is the branch's
    head: (its manifest, the build's outcome, its tags)."""
    res = context.resources
    registry: RegistryResource = res.registry
    existing, foreign = _already_built(context.instance, registry, app_name, app.branch, sha)
    if foreign:
        log(foreign)
    if existing is not None:
        log(f"{endpoint.image(app_name, sha)} is already in the registry ({existing.digest})")
        outcome = BuildOutcome(
            None, 0.0, ["already in the registry, built by app_image: not built again"], {}
        )
    elif builder == "salt":
        outcome = _build_salt(context, topology, endpoint, app_name, app, shown, sha, log)
    else:
        outcome = _build_jenkins(context, topology, endpoint, app_name, app, shown, sha, log)
    manifest = registry.manifest(repository=app_name, reference=sha)
    if manifest is None:
        raise dg.Failure(f"{endpoint.image(app_name, sha)} is not in the registry after push")
    if existing is not None and manifest.digest != existing.digest:
        raise dg.Failure(  # someone else pushes to our tags: said, not tried again
            f"{endpoint.image(app_name, sha)} changed while it was being adopted (it was"
            f" {existing.digest}, it is {manifest.digest}): nothing recorded; run it again",
            allow_retries=False,
        )
    if outcome.digest is not None and manifest.digest != outcome.digest:
        raise dg.Failure(
            f"the build pushed {outcome.digest}, but the registry serves"
            f" {endpoint.image(app_name, sha)} as {manifest.digest}",
            allow_retries=False,
        )
    tags, branch_note = _follow_branch(res, registry, app_name, app, repo, sha, manifest)
    outcome.notes.append(branch_note)
    return manifest, outcome, tags


def _image_output(
    endpoint: Endpoint,
    app_name: str,
    app: App,
    shown: str,
    sha: str,
    builder: str,
    manifest: Manifest,
    outcome: BuildOutcome,
    tags: list[str],
    log: BuildLog,
) -> dg.Output:
    """The AppImage handed downstream, with the build's metadata."""
    image = AppImage(
        app=app_name,
        sha=sha,
        repository=f"{endpoint.host}/{app_name}",
        digest=manifest.digest,
        image=endpoint.image(app_name, manifest.digest),
        tags=tuple(tags),
        size=manifest.size,
    )
    metadata = {
        "digest": manifest.digest,
        "image": image.image,
        "tags": ", ".join(f"{app_name}:{t}" for t in tags),
        "sha": sha,
        "branch": app.branch,
        "repo": shown,
        "size_bytes": dg.MetadataValue.int(manifest.size),
        "size": _human(manifest.size),
        "media_type": manifest.media_type,
        "builder": builder,
        "built": outcome.digest is not None,
        "build_time_s": dg.MetadataValue.float(round(outcome.took_s, 2)),
        "what_happened": dg.MetadataValue.md("\n".join(f"- {n}" for n in outcome.notes)),
        "build_log": dg.MetadataValue.path(str(log.path)),
        "build_log_tail": log.tail_md(),
        **outcome.extra,
    }
    return dg.Output(image, metadata=metadata, data_version=dg.DataVersion(manifest.digest))


def _refuse_a_commit_off_the_branch(
    git: GitResource, app_name: str, app: App, repo: str, sha: str
) -> None:
    """The record says the image is of a commit of the app's branch (what a release trusts):
    a partition added by hand for a commit that only another branch holds is not built."""
    try:
        on_branch = git.on_branch(repo=repo, branch=app.branch, sha=sha)
    except GitError as err:
        raise dg.Failure(
            f"app_image/{app_name} at {sha[:12]}: cannot tell whether it is a commit of"
            f" {app.branch!r}: {err}"
        ) from None
    if not on_branch:
        raise dg.Failure(
            f"app_image/{app_name}: {sha[:12]} is not a commit of branch {app.branch!r} of"
            f" {redact_repo(repo)}: only the branch's commits are built (a release takes only"
            " what app_image recorded for the branch)",
            allow_retries=False,
        )


def _already_built(
    instance: dg.DagsterInstance, registry: RegistryResource, app_name: str, branch: str, sha: str
) -> tuple[Manifest | None, str]:
    """The image at `<app>:<sha>` when it is one app_image built and recorded (it is adopted,
    not built again), and what to say when an image is there that is not ours (it is built
    again, and the tag moves to ours)."""
    manifest = registry.manifest(repository=app_name, reference=sha)
    if manifest is None:
        return None, ""
    if our_build(instance, app_name, branch, manifest.digest) is None:
        return None, (
            f"{app_name}:{sha} is in the registry as {manifest.digest}, which app_image never"
            " built (pushed by someone else?): not adopted, built again"
        )
    if manifest.is_index:
        return None, f"{app_name}:{sha} is an index: not adopted, built again"
    labels = registry.labels(repository=app_name, manifest=manifest)
    if labels.get(REVISION_LABEL) != sha:
        return None, f"{app_name}:{sha} is labelled {labels.get(REVISION_LABEL)!r}: built again"
    return manifest, ""


def build_agent(topology: Topology) -> str:
    """The host the salt builder runs a build on: the first with the jenkins-agent role."""
    agents = sorted(topology.hosts_with_role(BUILD_AGENT_ROLE))
    if not agents:
        raise dg.Failure(
            f"no host has the role {BUILD_AGENT_ROLE}: the salt builder runs builds on one (add"
            " one to the topology, or configure Jenkins with INFRA_JENKINS_URL)",
            allow_retries=False,
        )
    return agents[0]


def lab_repo_url(site: LabSite, base_dir: Path, agent: str, app_name: str, repo: str) -> str:
    """Where `agent` clones `repo` from: a URL as it is; a path on this machine through the
    lab's git daemon (started when it is not running), git://169.254.N.1/<app>.git."""
    if not Path(repo).is_absolute():
        return repo
    daemon = site.serve_git(site.number_of(agent), base_dir)
    assert daemon is not None  # `repo` is a path: it is among the exports
    return daemon.url(app_name)


def _publish_image(
    podman: PodmanResource, registry: RegistryResource, endpoint: Endpoint, log: BuildLog, *,
    ref: str, image_id: str, repository: str, tag: str,
) -> tuple[str, float | None]:  # fmt: skip
    """Image `ref` of this machine's storage in the registry as `repository:tag`, pushed when the
    one there is another: (its digest there, the push's seconds or None when none was made)."""
    there = registry.manifest(repository=repository, reference=tag)
    if there is not None and there.config_digest == f"sha256:{image_id}":
        return there.digest, None
    destination = endpoint.image(repository, tag)
    log(f"== podman push {ref} {destination} (the agents build FROM it)")
    pushed = podman.push(image=ref, destination=destination, registry=endpoint, log=log)
    return pushed.digest, pushed.took_s


def publish_base_image(
    podman: PodmanResource, registry: RegistryResource, endpoint: Endpoint, log: BuildLog
) -> tuple[str, str]:
    """The project's base image in the registry (`coop-base:<suite>`), pushed when the one there
    is not the image in this machine's storage; returns (image by digest, what happened). A
    host without podman (the dagster role's) takes the registry's as it is."""
    tag = podman.base_image.rsplit(":", 1)[-1] if ":" in podman.base_image else "latest"
    if not podman.available():
        manifest = _made_elsewhere(registry, BASE_REPOSITORY, tag)
        return endpoint.image(BASE_REPOSITORY, manifest.digest), (
            f"base image {BASE_REPOSITORY}:{tag} as the registry has it (made where podman runs)"
        )
    base = podman.ensure_base_image(log=log)
    digest, took = _publish_image(
        podman, registry, endpoint, log,
        ref=podman.base_image, image_id=base.image_id, repository=BASE_REPOSITORY, tag=tag,
    )  # fmt: skip
    if took is None:
        note = f"base image {podman.base_image} is in the registry ({BASE_REPOSITORY}:{tag})"
    else:
        note = f"base image {podman.base_image} pushed to the registry in {took:.1f} s"
    return endpoint.image(BASE_REPOSITORY, digest), note


def _made_elsewhere(registry: RegistryResource, repository: str, tag: str) -> Manifest:
    """`repository:tag` as the registry has it, for a Dagster host without podman, which cannot
    make it (debootstrap and podman do: `infra lab up` pushes the lab's; on a cloud, the
    operators' machine's first `app_image` run). `SiteError` when it is not there."""
    manifest = registry.manifest(repository=repository, reference=tag)
    if manifest is None:
        raise SiteError(
            f"{repository}:{tag} is not in the registry, and this host has no podman to make it:"
            " it is made and pushed where podman and debootstrap run (the lab: `infra lab up`;"
            " a cloud: an `app_image` run on the operators' machine)"
        )
    return manifest


@functools.cache
def standard_build_module() -> ModuleType:
    """salt/jenkins/files/standard_build.py, the standard build's rules, which the agents run:
    read here too, so that the runtime an app needs is told by the same rule."""
    spec = importlib.util.spec_from_file_location("coop_standard_build", STANDARD_BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def standard_runtime(git: GitResource, repo: str, branch: str, sha: str) -> str | None:
    """The runtime whose base image the standard build of `repo` at `sha` needs (None: it has
    a Dockerfile, or is no Node or Python app, which the build itself then says)."""
    with tempfile.TemporaryDirectory(prefix="coop-standard-") as scratch:
        tree = git.checkout(repo=repo, sha=sha, dest=Path(scratch) / "src", branch=branch).path
        names = {p.name for p in tree.iterdir() if p.is_file()}
    return standard_build_module().runtime_of(names)


def publish_runtime_image(
    podman: PodmanResource, registry: RegistryResource, endpoint: Endpoint, runtime: str,
    log: BuildLog,
) -> tuple[str, str]:  # fmt: skip
    """The standard build's base image for `runtime` in the registry (`coop-<runtime>:<suite>`),
    made and pushed when needed: (`<runtime>=<version>=<image by digest>`, what happened). A
    host without podman takes the registry's as it is, its version from its label."""
    repository = f"coop-{runtime}"
    if not podman.available():
        manifest = _made_elsewhere(registry, repository, podman.debian_suite)
        version = registry.labels(repository=repository, manifest=manifest).get(RUNTIME_LABEL)
        if not version:
            raise SiteError(f"{repository}:{podman.debian_suite} has no {RUNTIME_LABEL} label")
        where = f"{runtime} {version} base image as the registry has it (made where podman runs)"
        return f"{runtime}={version}={endpoint.image(repository, manifest.digest)}", where
    image = podman.ensure_runtime_image(runtime, log=log)
    digest, took = _publish_image(podman, registry, endpoint, log, ref=image.ref,
                                  image_id=image.image_id, repository=repository,
                                  tag=podman.debian_suite)  # fmt: skip
    where = "is in the registry" if took is None else f"pushed in {took:.1f} s"
    note = f"{runtime} {image.version} base image {where}"
    return f"{runtime}={image.version}={endpoint.image(repository, digest)}", note


@dataclass(frozen=True)
class BuildStart:
    """What a build starts FROM, in the registry for the build host to pull (either builder)."""

    base_image: str  # the project's base image, by digest
    runtime_images: str  # `<runtime>=<version>=<image>` for the standard build, or ""
    caches: dict[str, str]  # NPM_REGISTRY, PIP_INDEX_URL: the caches it installs from
    notes: list[str]


def build_start(
    res, topology: Topology, endpoint: Endpoint, app: App, sha: str, log: BuildLog
) -> BuildStart:
    """The base image, pushed to the registry when it is not there; for a repository the
    standard build builds (no Dockerfile), its runtime's base image too, made and pushed only
    where a build can use it: with the cache its packages come from; and the caches' URLs."""
    base, base_note = publish_base_image(res.podman, res.registry, endpoint, log)
    notes = [base_note]
    runtime_images = ""
    repo = resolve_repo(app.repo, res.topology_file.file().parent)
    runtime = standard_runtime(res.git, repo, app.branch, sha)
    if runtime and topology.hosts_with_role(RUNTIME_CACHES[runtime]):
        runtime_images, runtime_note = publish_runtime_image(
            res.podman, res.registry, endpoint, runtime, log
        )
        notes.append(f"standard build (no Dockerfile): {runtime_note}")
    caches = build_caches(site_for(topology))
    return BuildStart(base, runtime_images, {k: v or "" for k, v in caches.items()}, notes)


def _build_salt(
    context: dg.AssetExecutionContext,
    topology: Topology,
    endpoint: Endpoint,
    app_name: str,
    app: App,
    repo: str,
    sha: str,
    log: BuildLog,
) -> BuildOutcome:
    """The `jenkins.build` state on a jenkins agent: the job's script, run by salt."""
    started = time.monotonic()
    res = context.resources
    salt: SaltResource = res.salt
    site = site_for(topology)
    if not isinstance(site, LabSite):
        raise SiteError("the salt builder runs on the lab (cloud: lab) only")
    agent = build_agent(topology)
    secrets = load_secrets(site.secrets_file(), topology).values()
    start = build_start(res, topology, endpoint, app, sha, log)
    base_dir = res.topology_file.file().parent
    source = lab_repo_url(site, base_dir, agent, app_name, repo)
    build = {
        "app": app_name,
        "repo": source,
        "sha": sha,
        "branch": app.branch,
        "image": endpoint.image(app_name),
        "base_image": start.base_image,
        "runtime_images": start.runtime_images,
    }
    log(f"== build on {agent} through salt ({BUILD_STATE}): {source} {sha}")
    result = salt.apply(
        minions=[agent], sls=[BUILD_STATE], pillar={"build": build}, log=log, redact=secrets
    )
    digest = _salt_build_digest(result, app_name, agent, secrets, log)
    return BuildOutcome(
        digest,
        time.monotonic() - started,
        [*start.notes, f"built on {agent} through salt ({BUILD_STATE}, job {result.jid})"],
        {
            "build_host": agent,
            "salt_jid": result.jid,
            "base_image": start.base_image,
            "repo_url": source,
        },
    )


def _salt_build_digest(
    result: ApplyResult, app_name: str, agent: str, secrets: list[str], log: BuildLog
) -> str:
    """The build's output to the log (its secrets masked), its failure said (`BuildRefused`
    when the app itself cannot be built), and the digest it pushed."""
    step = next((s for s in result.states() if s.state_id == f"jenkins-build-{app_name}"), None)
    output = ""
    if step is not None and isinstance(step.changes, dict):
        output = "\n".join(
            str(step.changes.get(k) or "") for k in ("stdout", "stderr") if step.changes.get(k)
        )
    for line in output.splitlines():
        for secret in secrets:
            if secret:
                line = line.replace(secret, "***")
        log(f"[{agent}] {line}")
    stdout = (
        str(step.changes.get("stdout") or "") if step and isinstance(step.changes, dict) else ""
    )
    refused = BUILD_ERROR_LINE.search((stdout.strip().splitlines() or [""])[-1])
    if not result.ok and refused:
        raise BuildRefused(f"the build on {agent} failed: {refused[1]}")
    if not result.ok:
        problems = [f"{s.label}: {s.comment}" for s in result.failed_states()]
        raise SaltError(
            f"the build on {agent} failed: "
            + ("; ".join(problems or result.problems()) or "no return")
        )
    found = DIGEST_LINE.findall(output)
    if not found:
        raise SaltError(f"the build on {agent} printed no PUSHED_DIGEST=sha256:... line")
    return found[-1]


def _build_jenkins(
    context: dg.AssetExecutionContext,
    topology: Topology,
    endpoint: Endpoint,
    app_name: str,
    app: App,
    repo: str,
    sha: str,
    log: BuildLog,
) -> BuildOutcome:
    """The `app-image` Jenkins job (jenkins/Jenkinsfile): its parameters are the build's."""
    started = time.monotonic()
    res = context.resources
    jenkins: JenkinsResource = res.jenkins
    start = build_start(res, topology, endpoint, app, sha, log)
    parameters = {
        "APP": app_name,
        "REPO": repo,
        "SHA": sha,
        "BRANCH": app.branch,
        "IMAGE": endpoint.image(app_name),
        "BASE_IMAGE": start.base_image,
        "RUNTIME_IMAGES": start.runtime_images,
        "NPM_REGISTRY": start.caches["npm_registry"],
        "PIP_INDEX_URL": start.caches["pip_index"],
    }
    build = jenkins.build(parameters=parameters, log=log)
    extra = {
        "jenkins_build": dg.MetadataValue.url(build.url),
        "jenkins_console": dg.MetadataValue.url(build.console_url),
        "jenkins_result": build.result,
    }
    digest = _jenkins_build_digest(build, extra)
    return BuildOutcome(
        digest,
        time.monotonic() - started,
        [
            *start.notes,
            f"Jenkins {build.job} #{build.number}: {build.result} in {build.duration_s:.1f} s",
        ],
        {**extra, "base_image": start.base_image},
    )


def _jenkins_build_digest(build: JenkinsBuild, extra: dict) -> str:
    """The digest the Jenkins build pushed; its failure said (not retried when the app itself
    cannot be built, or the job prints no digest)."""
    # The script's last line, among the pipeline's own lines that follow it.
    refused = [m[1] for m in map(BUILD_ERROR_LINE.search, build.console.splitlines()[-40:]) if m]
    if not build.ok:
        raise dg.Failure(
            allow_retries=not refused,  # the app's own failure is not tried again
            description=f"Jenkins {build.job} #{build.number} ended {build.result}:"
            f" {build.console_url}" + (f" ({refused[-1]})" if refused else ""),
            metadata={**extra, "console_tail": dg.MetadataValue.md(
                "```\n" + "\n".join(build.tail()) + "\n```"
            )},
        )  # fmt: skip
    found = DIGEST_LINE.findall(build.console) or DIGEST_LINE.findall(
        (build.description or "").replace("digest=", "PUSHED_DIGEST=")
    )
    if not found:
        raise dg.Failure(
            description=f"Jenkins {build.job} #{build.number} succeeded but printed no"
            f" PUSHED_DIGEST=sha256:... line (is the job running jenkins/Jenkinsfile?):"
            f" {build.console_url}",
            metadata=extra,
            allow_retries=False,  # the job's configuration: the same again next time
        )
    return found[-1]


def _follow_branch(res, registry, app_name, app, repo, sha, manifest) -> tuple[list[str], str]:
    """Move the branch tag to this image if the commit is still the branch's head."""
    branch = app.branch
    git: GitResource = res.git
    try:
        head = git.head(repo=repo, branch=branch)
    except GitError as err:
        return [sha], f"branch tag {branch!r} left alone: cannot read the branch ({err})"
    if head != sha:
        return [sha], f"branch tag {branch!r} left alone: {branch} has moved on to {head[:12]}"
    current = registry.digest(repository=app_name, reference=branch)
    if current == manifest.digest:
        return [sha, branch], f"branch tag {branch!r} already on this image"
    registry.tag(repository=app_name, manifest=manifest, tag=branch)
    return [sha, branch], f"branch tag {branch!r} moved to this image (was {current or 'absent'})"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"


def definitions(topo: Topology) -> dg.Definitions:
    """`app_image/<app>` for each app of `topo` (the jobs that build them and git_push_sensor:
    infra_assets/delivery/jobs.py)."""
    if not topo.apps:
        return dg.Definitions()
    builder = builder_for(topo)
    assets = [app_image_asset(name, builder, topo) for name in topo.apps]
    return dg.Definitions(assets=assets)
