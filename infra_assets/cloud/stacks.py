"""A Terraform stack of one location as Dagster assets: the plan, its gates, and the apply.

    plan/<stack>/<location>   terraform plan -out + show -json: a typed plan (metadata: summary)
      check safe_to_apply       blocking: no server or network destroyed or replaced unless the
                                run's config (the plan asset's `allow_destroy`) allows it
      check no_drift            the plan is empty: what runs matches the configuration
    <stack>/<location>        terraform apply of that saved plan, made in the same run; outputs

Every asset of a location shares the pool `location/<name>` (dagster.yaml: a limit of 1, run
granularity), so runs that the daemon's run queue launches never plan or apply one location at
once; a failed or cancelled run frees it.

Terraform runs with the location's cloud credentials (`OpenStackResource.tool_env`: OS_CLOUD,
OS_CLIENT_CONFIG_FILE, OS_PASSWORD), for the OpenStack provider of both stacks. A run tagged with
a commit (`coop/git_sha`, by the `infra_main` sensor) plans only if this checkout is at that
commit, with nothing uncommitted under terraform/ or in the topology.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from infra_assets.topology.model import Topology
from resources.infra_repo import GitError, InfraRepoResource
from resources.openstack import OpenStackResource
from resources.terraform import (
    ResourceChange,
    TerraformError,
    TerraformPlan,
    TerraformResource,
    public_outputs,
)

# What a plan asset computes its variables with: (context, topology). Resources are on
# context.resources (`terraform`, and `openstack` for stacks that need it).
VariablesFn = Callable[[dg.AssetExecutionContext, Topology], dict[str, Any]]
# What runs after a successful apply: (context, topology, public outputs).
AfterApplyFn = Callable[[dg.AssetExecutionContext, Topology, dict[str, Any]], None]


GIT_SHA_TAG = "coop/git_sha"
# "plan" on the plan job's runs (previews: pull requests, the nightly drift check), "apply" on
# the apply job's. A plan in a run without it may be applied.
MODE_TAG = "coop/mode"


class NotReady(Exception):
    """A stack cannot be planned yet (what it builds on is not applied): the plan is skipped, with
    this reason, and the run goes on."""


def tool_env(context: dg.AssetExecutionContext, topology: Topology, location: str) -> dict:
    """Terraform's provider credentials for the location's cloud (never logged, never stored)."""
    openstack: OpenStackResource = context.resources.openstack
    return openstack.tool_env(cloud=topology.locations[location].cloud)


def checkout_problem(repo: InfraRepoResource, sha: str, paths: list[Path]) -> str | None:
    """Why this checkout is not the commit `sha` a run was asked to plan (None: it is). The
    plan reads the files on disk, so they must be that commit's."""
    try:
        head = repo.checkout_head()
        if head != sha:
            return (
                f"this run plans commit {sha[:12]} (tag {GIT_SHA_TAG}), but the checkout"
                f" {repo.root()} is at {head[:12]}: update the checkout to {sha[:12]} (git pull"
                f" on {repo.branch}) and run again. Nothing was planned."
            )
        dirty = repo.uncommitted(paths)
    except GitError as err:
        return (
            f"this run plans commit {sha[:12]} (tag {GIT_SHA_TAG}), but the checkout"
            f" {repo.root()} cannot be read with git: {err}"
        )
    if dirty:
        return (
            f"this run plans commit {sha[:12]} (tag {GIT_SHA_TAG}), but the checkout"
            f" {repo.root()} has uncommitted changes the plan would read: {', '.join(dirty)}."
            " Commit or discard them (git stash) and run again. Nothing was planned."
        )
    return None


def pool_of(location: str) -> str:
    return f"location/{location}"


def ensure_location_pools(instance: dg.DagsterInstance, locations: list[str]) -> list[str]:
    """Give each location's pool its limit before any run uses it. Dagster creates a pool's row
    on first use, so a first burst of runs would otherwise not be limited. Returns the pools
    this call created."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    existing = storage.get_concurrency_keys()
    limit = instance.global_op_concurrency_default_limit or 1
    created = []
    for location in locations:
        pool = pool_of(location)
        if pool not in existing:
            storage.set_concurrency_slots(pool, limit)
            created.append(pool)
    return created


def plan_key(stack: str, location: str) -> dg.AssetKey:
    return dg.AssetKey(["plan", stack, location])


def apply_key(stack: str, location: str) -> dg.AssetKey:
    return dg.AssetKey([stack, location])


class PlanConfig(dg.Config):
    allow_destroy: list[str] = Field(
        default_factory=list,
        description="Resource addresses (globs) this run may destroy or replace, e.g."
        ' ["openstack_compute_instance_v2.host[\\"web-staging-1\\"]"]; ["*"] allows all.'
        " Empty: a plan that destroys or replaces a server or a network is stopped.",
    )


@dataclass(frozen=True)
class StackPlan:
    """A plan as the plan asset hands it to the apply asset: made in which run, allowing what."""

    plan: TerraformPlan
    run_id: str
    allow_destroy: tuple[str, ...] = ()

    def blocked(self, protected: list[str]) -> list[ResourceChange]:
        """Protected resources the plan would destroy or replace without the run's leave."""
        return [c for c in self.plan.destructive(protected) if not c.matches(self.allow_destroy)]


def stack_definitions(
    stack: str,
    location: str,
    *,
    variables: VariablesFn,
    deps: list[dg.AssetKey],
    description: str,
    after_apply: AfterApplyFn | None = None,
) -> dg.Definitions:
    """The plan and apply assets of `stack` at `location`, with the gate and drift checks."""
    tags = {"coop/location": location, "coop/stack": stack}
    # Both stacks' OpenStack provider needs the cloud's credentials (`openstack.tool_env`).
    resource_keys = {"terraform", "openstack"}
    plan_asset = _plan_asset(
        stack,
        location,
        variables=variables,
        deps=deps,
        description=description,
        tags=tags,
        resource_keys=resource_keys,
    )
    apply_asset = _apply_asset(
        stack,
        location,
        description=description,
        after_apply=after_apply,
        tags=tags,
        resource_keys=resource_keys,
    )
    return dg.Definitions(
        assets=[plan_asset, apply_asset], asset_checks=_plan_checks(plan_key(stack, location))
    )


def _plan_asset(
    stack: str,
    location: str,
    *,
    variables: VariablesFn,
    deps: list[dg.AssetKey],
    description: str,
    tags: dict[str, str],
    resource_keys: set[str],
) -> dg.AssetsDefinition:
    """`plan/<stack>/<location>`: the Terraform plan, saved for the apply of the same run."""

    @dg.asset(
        key=plan_key(stack, location),
        group_name=stack,
        kinds={"terraform", "openstack"},
        pool=pool_of(location),
        deps=[dg.AssetKey("ip_plan"), *deps],
        ins={"topology": dg.AssetIn(dg.AssetKey("topology"))},
        required_resource_keys=resource_keys | {"infra_repo", "topology_file"},
        tags=tags,
        # Not made when what the stack builds on is not applied yet (NotReady): the plan is
        # skipped with the reason, its checks and apply with it, and the run succeeds.
        output_required=False,
        description=f"The Terraform plan of {stack} at {location}: {description}",
    )
    def plan_asset(context: dg.AssetExecutionContext, config: PlanConfig, topology: Topology):
        yield from _plan(
            context, config, topology, stack=stack, location=location, variables=variables
        )

    return plan_asset


def _location_settings(terraform: TerraformResource, location: str) -> Path:
    """terraform/locations/<location>.tfvars: a Failure when it is missing."""
    settings = terraform.location_file(location)
    if not settings.is_file():
        raise dg.Failure(
            description=f"{settings} is missing: it holds {location}'s settings that the"
            " topology does not (bastion_cidr, external_network). Copy"
            " terraform/locations/nz-por-1.tfvars and set them for this location.",
            allow_retries=False,
        )
    return settings


def _check_checkout(context: dg.AssetExecutionContext, terraform: TerraformResource) -> None:
    """A run tagged with a commit plans only if this checkout is that commit, clean."""
    sha = context.run.tags.get(GIT_SHA_TAG)
    if sha:
        problem = checkout_problem(
            context.resources.infra_repo,
            sha,
            [terraform.config_root(), context.resources.topology_file.file()],
        )
        if problem:
            raise dg.Failure(description=problem, allow_retries=False)


def _plan(
    context: dg.AssetExecutionContext,
    config: PlanConfig,
    topology: Topology,
    *,
    stack: str,
    location: str,
    variables: VariablesFn,
):
    """The plan asset's body: the plan as a StackPlan, or nothing when the stack is NotReady."""
    pkey = plan_key(stack, location)
    terraform: TerraformResource = context.resources.terraform
    # Runs launched by hand before the sensor or a schedule ever ran: from now on, at least,
    # the location's pool has its limit.
    ensure_location_pools(context.instance, [location])
    settings = _location_settings(terraform, location)
    _check_checkout(context, terraform)
    try:
        values = variables(context, topology)
        plan = terraform.plan(
            stack=stack,
            location=location,
            variables=values,
            var_files=[settings],
            log=context.log.info,
            env=tool_env(context, topology, location),
        )
    except NotReady as why:
        context.log.warning(f"{pkey.to_user_string()} skipped: {why}")
        context.log_event(
            dg.AssetObservation(asset_key=pkey, metadata={"skipped": str(why), "planned": False})
        )
        return
    except (TerraformError, ValueError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    summary = plan.summary()
    yield dg.Output(
        StackPlan(plan, context.run_id, tuple(config.allow_destroy)),
        metadata={
            "plan": dg.MetadataValue.md(plan.markdown()),
            **{k: dg.MetadataValue.int(v) for k, v in summary.items()},
            "has_changes": plan.has_changes,
            "drift": len(plan.drift),
            "allow_destroy": dg.MetadataValue.json(list(config.allow_destroy)),
            "terraform_version": plan.terraform_version,
            "plan_file": dg.MetadataValue.path(plan.path),
            "git_sha": context.run.tags.get(GIT_SHA_TAG, "(not from a commit sensor)"),
        },
    )


def _plan_checks(pkey: dg.AssetKey) -> list[dg.AssetChecksDefinition]:
    """The plan's checks: the destroy gate (blocking) and drift."""

    @dg.asset_check(
        asset=pkey,
        name="safe_to_apply",
        blocking=True,
        description="Stops the apply when the plan destroys or replaces a server or a network"
        " that the run's config (allow_destroy on the plan) does not allow.",
    )
    def safe_to_apply(plan: StackPlan, terraform: TerraformResource) -> dg.AssetCheckResult:
        result = gate_result(plan, terraform.protected)
        if not result.passed:  # the apply will not run: the saved plan (its secrets) goes now
            terraform.discard(plan.plan)
        return result

    @dg.asset_check(
        asset=pkey,
        name="no_drift",
        description="The plan is empty: the running infrastructure matches the configuration."
        " Run nightly; a plan with changes after nothing was merged is drift.",
    )
    def no_drift(plan: StackPlan) -> dg.AssetCheckResult:
        return drift_result(plan.plan)

    return [safe_to_apply, no_drift]


def _apply_asset(
    stack: str,
    location: str,
    *,
    description: str,
    after_apply: AfterApplyFn | None,
    tags: dict[str, str],
    resource_keys: set[str],
) -> dg.AssetsDefinition:
    """`<stack>/<location>`: Terraform applies the plan made in the same run."""
    pkey = plan_key(stack, location)

    @dg.asset(
        key=apply_key(stack, location),
        group_name=stack,
        kinds={"terraform", "openstack"},
        pool=pool_of(location),
        ins={"stack_plan": dg.AssetIn(pkey), "topology": dg.AssetIn(dg.AssetKey("topology"))},
        required_resource_keys=resource_keys,
        tags=tags,
        description=f"{stack.capitalize()} at {location}, applied by Terraform from the plan"
        f" made in the same run: {description}",
    )
    def apply_asset(
        context: dg.AssetExecutionContext, stack_plan: StackPlan, topology: Topology
    ) -> dg.Output[dict[str, Any]]:
        return _apply_in_run(
            context, stack_plan, topology, stack=stack, location=location, after_apply=after_apply
        )

    return apply_asset


def _apply_in_run(
    context: dg.AssetExecutionContext,
    stack_plan: StackPlan,
    topology: Topology,
    *,
    stack: str,
    location: str,
    after_apply: AfterApplyFn | None,
) -> dg.Output[dict[str, Any]]:
    """The apply asset's body: only a plan of this run is applied, and then discarded."""
    pkey, akey = plan_key(stack, location), apply_key(stack, location)
    plan = stack_plan.plan
    if stack_plan.run_id != context.run_id:
        raise dg.Failure(
            description=f"{akey.to_user_string()} applies only a plan made in the same run;"
            f" this one is from run {stack_plan.run_id}. Materialise"
            f" {pkey.to_user_string()} with it.",
            allow_retries=False,
        )
    try:
        return _apply(context, stack_plan, topology, stack, location, after_apply)
    finally:
        # once this run is done with it, applied or not (refused, nothing to do, failed)
        context.resources.terraform.discard(plan)


def _apply(
    context: dg.AssetExecutionContext,
    stack_plan: StackPlan,
    topology: Topology,
    stack: str,
    location: str,
    after_apply: AfterApplyFn | None,
) -> dg.Output[dict[str, Any]]:
    """Terraform applies the plan (unless the destroy gate blocks it); the public outputs."""
    terraform: TerraformResource = context.resources.terraform
    plan = stack_plan.plan
    blocked = stack_plan.blocked(terraform.protected)
    if blocked:  # the gate's own test, so that leaving the check out cannot bypass it
        raise dg.Failure(description=_blocked_text(blocked), allow_retries=False)
    env = tool_env(context, topology, location)
    try:
        if plan.has_changes:
            result = terraform.apply(plan=plan, log=context.log.info, env=env)
            outputs = result.outputs
            applied = {
                "applied": True,
                "added": result.added,
                "changed": result.changed,
                "destroyed": result.destroyed,
                "apply_seconds": round(result.duration_s, 1),
            }
        else:
            context.log.info(f"{stack}/{location}: the plan has no changes; nothing applied")
            outputs = terraform.output(stack=stack, location=location, env=env)
            applied = {"applied": False, "why": "the plan has no changes"}
    except TerraformError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    public = public_outputs(outputs)
    if after_apply is not None:
        after_apply(context, topology, public)
    return dg.Output(
        public,
        metadata={
            **applied,
            "plan": dg.MetadataValue.md(plan.markdown()),
            "outputs": dg.MetadataValue.md(_outputs_table(public)),
            "outputs_json": dg.MetadataValue.json(public),
        },
    )


def gate_result(stack_plan: StackPlan, protected: list[str]) -> dg.AssetCheckResult:
    blocked = stack_plan.blocked(protected)
    allowed = [c for c in stack_plan.plan.destructive(protected) if c not in blocked]
    return dg.AssetCheckResult(
        passed=not blocked,
        severity=dg.AssetCheckSeverity.ERROR,
        description=_blocked_text(blocked) if blocked else None,
        metadata={
            "blocked": dg.MetadataValue.json([f"{c.action} {c.address}" for c in blocked]),
            "allowed_by_config": dg.MetadataValue.json(
                [f"{c.action} {c.address}" for c in allowed]
            ),
        },
    )


def drift_result(plan: TerraformPlan) -> dg.AssetCheckResult:
    changed = [c for c in plan.changes if c.action not in ("no-op", "read")]
    lines = [f"- {c.action} `{c.address}`" for c in changed]
    lines += [f"- changed outside Terraform: `{c.address}`" for c in plan.drift]
    return dg.AssetCheckResult(
        passed=not plan.has_changes and not plan.drift,
        severity=dg.AssetCheckSeverity.WARN,
        description="\n".join(lines) or None,
        metadata={"changes": len(changed), "outside_terraform": len(plan.drift)},
    )


def _blocked_text(blocked: list[ResourceChange]) -> str:
    what = ", ".join(f"{c.action} {c.address}" for c in blocked)
    return (
        f"the plan would {what}. If that is intended, run again with the plan asset's config"
        ' allow_destroy listing those addresses (or ["*"]); otherwise fix the configuration.'
    )


def _outputs_table(outputs: dict[str, Any]) -> str:
    rows = ["| output | value |", "|---|---|"]
    for name, value in outputs.items():
        shown = value if isinstance(value, str) else f"`{_short(value)}`"
        rows.append(f"| {name} | {shown} |")
    return "\n".join(rows)


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
