"""`infra_main`: a sensor on this repository's main branch. Each new commit is compared with the
last one seen (the cursor is that sha): the OpenStack locations whose Terraform stacks it changes
are planned (`plan` job), or planned and applied where the topology marks the location
`auto_apply: true` (`apply` job; the destroy gate still stands); the role images whose template
or states it changes are rebuilt (`images` job). Run keys repeat the sha, so a replay asks for no
second run; every skip says why; a failed look at git leaves the cursor where it was.
"""

import dagster as dg
import yaml

from infra_assets.cloud.changes import ChangeSet, changes_between
from infra_assets.cloud.images import image_key
from infra_assets.cloud.jobs import apply_job, ensure_location_pools, images_job, plan_job
from infra_assets.cloud.stacks import apply_key, plan_key
from infra_assets.topology.model import Topology, TopologyError, parse_topology
from resources.infra_repo import GitError, InfraRepoResource
from resources.topology import TopologyResource

BASE_KEYS = [dg.AssetKey("topology"), dg.AssetKey("ip_plan")]


@dg.sensor(
    name="infra_main",
    jobs=[plan_job, apply_job, images_job],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Plans (or, where a location is marked auto_apply, applies) what each new"
    " commit on the infra repo's main branch changes, and rebuilds the images it touches.",
)
def infra_main_sensor(
    context: dg.SensorEvaluationContext,
    infra_repo: InfraRepoResource,
    topology_file: TopologyResource,
):
    try:
        head = infra_repo.head()
    except GitError as err:
        return dg.SkipReason(f"cannot read {infra_repo.branch} of {infra_repo.root()}: {err}")
    last = context.cursor
    if not last:
        return dg.SensorResult(
            skip_reason=f"first look at {infra_repo.branch}: {head[:12]} recorded; commits"
            " after it will be planned",
            cursor=head,
        )
    if last == head:
        return dg.SkipReason(f"{infra_repo.branch} is still at {head[:12]}")

    path = infra_repo.relative(topology_file.file())
    if path is None:
        return dg.SkipReason(f"the topology {topology_file.file()} is not in {infra_repo.root()}")
    try:
        text = infra_repo.show(head, path)
        if text is None:
            return dg.SensorResult(
                skip_reason=f"{path} does not exist at {head[:12]}: nothing to plan", cursor=head
            )
        topo = parse_topology(text, file=f"{path}@{head[:12]}")
    except TopologyError as err:
        return dg.SensorResult(
            skip_reason=f"{path} at {head[:12]} is broken, nothing planned:\n{err.render()}",
            cursor=head,
        )
    return _runs_for_changes(context, infra_repo, topo, path, last=last, head=head)


def _runs_for_changes(
    context: dg.SensorEvaluationContext,
    infra_repo: InfraRepoResource,
    topo: Topology,
    path: str,
    *,
    last: str,
    head: str,
) -> dg.SkipReason | dg.SensorResult:
    """What `last..head` changes (everything, if history was rewritten), and the runs for it."""
    try:
        if infra_repo.is_ancestor(last, head):
            changed = infra_repo.changed_files(last, head)
            old_text = lambda: infra_repo.show(last, path)  # noqa: E731
        else:  # history rewritten: plan everything
            changed = ["terraform/network", "packer/coop.pkr.hcl"]
            old_text = lambda: None  # noqa: E731
        work = changes_between(
            changed,
            topology_path=path,
            new_topology=topo,
            read_old_topology=old_text,
            salt_roles=_salt_roles(infra_repo, head),
        )
    except GitError as err:
        return dg.SkipReason(f"cannot compare {last[:12]}..{head[:12]}: {err}")

    if work.empty:
        return dg.SensorResult(
            skip_reason=f"{last[:12]}..{head[:12]} changes no network, instances or image"
            f" ({len(changed)} files)",
            cursor=head,
        )

    requests, notes = _run_requests(context, work, topo, head)
    for reason in work.reasons:
        context.log.info(reason)
    for note in notes:
        context.log.warning(note)
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "nothing to run", cursor=head)
    return dg.SensorResult(run_requests=requests, cursor=head)


def _run_requests(
    context: dg.SensorEvaluationContext, work: ChangeSet, topo: Topology, head: str
) -> tuple[list[dg.RunRequest], list[str]]:
    """A plan (or apply) run per location whose stacks changed, an images run for the changed
    image groups; notes for the locations the loaded code location does not hold yet."""
    known = set(context.repository_def.asset_graph.get_all_asset_keys())
    requests, notes = [], []
    ensure_location_pools(context.instance, list(work.stacks))
    tags = {"coop/git_sha": head, "coop/trigger": "infra_main"}
    for location, stacks in sorted(work.stacks.items()):
        auto = topo.locations[location].auto_apply
        keys = [plan_key(s, location) for s in sorted(stacks)]
        if auto:
            keys += [apply_key(s, location) for s in sorted(stacks)]
        if not set(keys) <= known:
            notes.append(f"{location}: not in the loaded code location yet (reload it)")
            continue
        mode = "apply" if auto else "plan"
        requests.append(
            dg.RunRequest(
                run_key=f"{mode}:{location}:{head}",
                job_name=mode,
                asset_selection=[*BASE_KEYS, *keys],
                tags={**tags, "coop/location": location},
            )
        )
    groups = sorted(g for g in work.images if image_key(g) in known)
    if groups:
        requests.append(
            dg.RunRequest(
                run_key=f"images:{head}",
                job_name="images",
                asset_selection=[dg.AssetKey("topology"), *(image_key(g) for g in groups)],
                tags=tags,
            )
        )
    return requests, notes


def _salt_roles(infra_repo: InfraRepoResource, sha: str) -> dict[str, list[str]] | None:
    """The role catalogue (salt/roles.yaml) at `sha`: role -> states; None if it is missing or
    broken, and then every salt/ change rebuilds every image."""
    text = infra_repo.show(sha, "salt/roles.yaml")
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    roles = data.get("roles") if isinstance(data, dict) else None
    if not isinstance(roles, dict) or not all(isinstance(r, dict) for r in roles.values()):
        return None
    return {str(role): [str(s) for s in spec.get("states") or []] for role, spec in roles.items()}
