"""`registry_image_sensor`: a new image on an app's branch tag asks for a staging release.

It watches each app's repository in the registry (named like the app) at the tag of the app's
branch (`hello:main`), the tag the image build moves to each new head of the branch. The cursor
is the digest per app and tag, as JSON (`{"hello": {"main": "sha256:..."}}`). Each new digest asks
for one run with run_key = the digest, its tags naming the app, the digest, the image and the
commit (the image's `org.opencontainers.image.revision` label). Only a digest that
`app_image/<app>` built and recorded (Dagster's event log: infra_assets/delivery/provenance.py) is
released: any other at the tag (an image someone else pushed) is named in the tick, with no run,
and the cursor stays before it. An image whose label is not a commit (40 hex digits) is refused:
no run, the reason in the tick, the cursor past it. A registry
that cannot be reached
(or refuses the credentials) skips the tick with the reason, and the cursor stays where it was.

The run goes to the job that `job_for_app` names for the app: its staging release
(`release_staging_<app>`, delivery/releases.py), with the digest and the commit in the run's
config (`run_config_for`), so the run releases exactly the image the sensor saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import dagster as dg

from infra_assets.delivery.provenance import our_build
from infra_assets.topology.model import App
from resources.git import SHA_RE
from resources.registry import REVISION_LABEL, RegistryError, RegistryResource
from sensors.cursors import CursorError, read_json_cursor

SENSOR_NAME = "registry_image_sensor"
# Run statuses of a `deliver_<app>` run that will still release its image.
IN_PROGRESS = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED"})


@dataclass(frozen=True)
class NewImage:
    app: str
    tag: str
    digest: str
    image: str  # host:port/app@sha256:...
    sha: str | None  # the commit it was built from (its revision label), if it says


@dataclass
class RegistryPoll:
    new: list[NewImage] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # app -> tag not in the registry yet
    refused: list[str] = field(default_factory=list)  # new images not released, and why
    # new digests that app_image never built: named at every tick while the tag points at them
    # (the cursor stays before them: our own build's record may land after its tag moved)
    foreign: list[str] = field(default_factory=list)
    # new digests a `deliver_<app>` run of their commit released or is releasing: no run of
    # ours (the cursor stays before those still in progress)
    delivered: list[str] = field(default_factory=list)
    cursor: dict[str, dict[str, str]] = field(default_factory=dict)


def read_cursor(text: str | None) -> dict[str, dict[str, str]]:
    return read_json_cursor(
        text,
        valid=lambda tags: (
            isinstance(tags, dict)
            and all(isinstance(t, str) and isinstance(d, str) for t, d in tags.items())
        ),
        shape='{"<app>": {"<tag>": "<digest>"}}',
    )


def watched_tags(app: App) -> list[str]:
    return [app.branch]


def poll(
    *,
    apps: Mapping[str, App],
    cursor: Mapping[str, Mapping[str, str]],
    registry: RegistryResource,
    ours: Callable[[str, str, str], bool],
    delivered_by: Callable[[str, str], tuple[str, str] | None] = lambda app, sha: None,
) -> RegistryPoll:
    """Every app's watched tags against the cursor; `ours(app, branch, digest)` says whether
    app_image built that digest (its record in Dagster's event log); `delivered_by(app, sha)`
    names the newest `deliver_<app>` run of that commit and its status (None: there is none): a
    run that succeeded released the image itself, one queued or running will; one that failed
    or was cancelled leaves it to this sensor. Raises RegistryError when the registry cannot be
    asked (then nothing of this poll counts)."""
    endpoint = registry.endpoint()
    result = RegistryPoll(cursor={app: dict(tags) for app, tags in cursor.items()})
    for name, app in apps.items():
        for tag in watched_tags(app):
            digest = registry.digest(repository=name, reference=tag)
            if digest is None:
                result.absent[name] = f"{name}:{tag} is not in the registry yet"
                continue
            if cursor.get(name, {}).get(tag) == digest:
                continue
            if not ours(name, app.branch, digest):
                result.foreign.append(
                    f"{name}:{tag} = {digest} not released: app_image/{name} never built it (an"
                    " image pushed by someone else, or a build not recorded yet)"
                )
                continue
            manifest = registry.manifest(repository=name, reference=digest)
            sha = None
            if manifest is not None and not manifest.is_index:
                sha = registry.labels(repository=name, manifest=manifest).get(REVISION_LABEL)
            found = delivered_by(name, sha) if sha and SHA_RE.match(sha) else None
            if found is not None and found[1] in IN_PROGRESS:
                # the cursor stays before it: looked at again next tick
                result.delivered.append(f"{name}:{tag} = {digest}: being released by {found[0]}")
                continue
            result.cursor.setdefault(name, {})[tag] = digest
            if sha is not None and not SHA_RE.match(sha):
                # The label becomes the release's commit (a salt pillar value): only a sha passes.
                result.refused.append(
                    f"{name}:{tag} = {digest} not released: its label {REVISION_LABEL}={sha!r}"
                    " is not a commit (40 lowercase hex digits); build it from git (app_image)"
                )
                continue
            if found is not None and found[1] == "SUCCESS":
                result.delivered.append(f"{name}:{tag} = {digest}: released by {found[0]}")
                continue
            result.new.append(NewImage(name, tag, digest, endpoint.image(name, digest), sha))
    return result


def build_registry_image_sensor(
    *,
    apps: Mapping[str, App],
    job_for_app: Mapping[str, str],
    jobs: list,
    run_config_for: Callable[[NewImage], dict] | None = None,
    deliver_job_for_app: Mapping[str, str] | None = None,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The sensor for these apps; a new image of `app` asks for a run of `job_for_app[app]`,
    configured by `run_config_for(image)`, unless a run of `deliver_job_for_app[app]` for its
    commit exists (that run releases it)."""

    @dg.sensor(
        name=SENSOR_NAME,
        jobs=jobs,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="A new digest at an app's branch tag in the registry -> a staging release"
        " of that digest (run_key = the digest). Cursor: the digest per app and tag.",
    )
    def registry_image_sensor(context: dg.SensorEvaluationContext, registry: RegistryResource):
        return _evaluate(
            context,
            registry,
            apps=apps,
            job_for_app=job_for_app,
            run_config_for=run_config_for,
            deliver_job_for_app=deliver_job_for_app,
        )

    return registry_image_sensor


def _evaluate(
    context: dg.SensorEvaluationContext,
    registry: RegistryResource,
    *,
    apps: Mapping[str, App],
    job_for_app: Mapping[str, str],
    run_config_for: Callable[[NewImage], dict] | None,
    deliver_job_for_app: Mapping[str, str] | None,
) -> dg.SkipReason | dg.SensorResult:
    """One tick: a run per new image of ours, or why there is none."""
    try:
        cursor = read_cursor(context.cursor)
    except CursorError as err:
        return dg.SkipReason(str(err))
    try:
        result = poll(
            apps=apps,
            cursor=cursor,
            registry=registry,
            ours=partial(_ours, context),
            delivered_by=partial(_delivered_by, context, deliver_job_for_app),
        )
    except RegistryError as err:
        return dg.SkipReason(f"registry unreachable, cursor unchanged: {err}")
    for refused in [*result.refused, *result.foreign]:
        context.log.warning(refused)
    for line in result.delivered:
        context.log.info(line)
    if not result.new:
        return _nothing_new(result)
    requests = []
    for image in result.new:
        requests.append(_run_request(image, job_for_app, run_config_for))
        context.log.info(f"new image {image.app}:{image.tag} = {image.digest}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(result.cursor, sort_keys=True))


def _ours(context: dg.SensorEvaluationContext, app: str, branch: str, digest: str) -> bool:
    """Whether app_image built that digest (its record in Dagster's event log)."""
    return our_build(context.instance, app, branch, digest) is not None


def _delivered_by(
    context: dg.SensorEvaluationContext,
    deliver_job_for_app: Mapping[str, str] | None,
    app: str,
    sha: str,
) -> tuple[str, str] | None:
    """The newest `deliver_<app>` run of that commit and its status; None: there is none."""
    job = (deliver_job_for_app or {}).get(app)
    if job is None:
        return None
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=job, tags={"coop/sha": sha}), limit=1
    )
    if not records:
        return None
    run = records[0].dagster_run
    return f"run {run.run_id} ({job})", run.status.value


def _nothing_new(result: RegistryPoll) -> dg.SkipReason | dg.SensorResult:
    """The skip of a tick with no image to release; the cursor moves past the refused and the
    delivered."""
    absent = [result.absent[a] for a in sorted(result.absent)]
    why = "; ".join(["no new image", *result.delivered, *result.refused, *result.foreign, *absent])
    if result.refused or result.delivered:  # the cursor moves past them
        return dg.SensorResult(cursor=json.dumps(result.cursor, sort_keys=True), skip_reason=why)
    return dg.SkipReason(why)


def _run_request(
    image: NewImage,
    job_for_app: Mapping[str, str],
    run_config_for: Callable[[NewImage], dict] | None,
) -> dg.RunRequest:
    """The release run of one new image: run_key = its digest, tags naming it."""
    tags = {
        "coop/app": image.app,
        "coop/tag": image.tag,
        "coop/digest": image.digest,
        "coop/image": image.image,
    }
    if image.sha:
        tags["coop/sha"] = image.sha
    return dg.RunRequest(
        run_key=image.digest,
        job_name=job_for_app[image.app],
        run_config=run_config_for(image) if run_config_for else {},
        tags=tags,
    )
