"""`highstate/<role>`: each role's salt states, applied on the minions that have the role.

One asset per role the topology uses; the role catalogue (`salt/roles.yaml`) says which states a
role applies (the same file `salt/top.sls` reads). A run reports every state with its result,
changes and comment (failures first); a failed state fails the asset and names the minion and the
state.

Dry run: `dry_run: true` in the asset's run config (or the `configure_dry_run` job) applies with
`test=True`; nothing changes, and the report (what would change) is recorded as an observation
of the asset, not a materialisation.
"""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from infra_assets.configuration.minions import GROUP, POOL
from infra_assets.topology.model import Topology
from infra_assets.topology.roles import CATALOGUE_FILE, role_catalogue
from infra_assets.topology.secrets import SecretsError, load_secrets
from infra_assets.topology.sites import SiteError, site_for
from resources.salt import ApplyResult, SaltError, SaltResource, StateResult


class HighstateConfig(dg.Config):
    dry_run: bool = Field(
        default=False,
        description="Apply with test=True: report what would change, change nothing.",
    )


def role_states(path: Path = CATALOGUE_FILE) -> dict[str, list[str]]:
    """The role catalogue (salt/roles.yaml): role -> the states it applies."""
    return role_catalogue(path).states()


def highstate_key(role: str) -> dg.AssetKey:
    return dg.AssetKey(["highstate", role])


def highstate_asset(role: str, states: list[str], after: list[str] = ()) -> dg.AssetsDefinition:
    @dg.asset(
        key=highstate_key(role),
        group_name=GROUP,
        kinds={"salt"},
        # (and the roles the catalogue's `after` names: their highstate first)
        deps=[dg.AssetKey("minions"), dg.AssetKey("salt_pillar"), *map(highstate_key, after)],
        ins={"topology": dg.AssetIn("topology")},
        pool=POOL,
        output_required=False,  # a dry run observes the asset; it does not materialise it
        description=f"The salt states of the role {role} ({', '.join(states) or 'none'}),"
        " applied on its minions.",
    )
    def _highstate(
        context: dg.AssetExecutionContext,
        config: HighstateConfig,
        topology: Topology,
        salt: SaltResource,
    ):
        hosts = sorted(topology.hosts_with_role(role))
        if not states:
            raise dg.Failure(
                description=f"the role {role!r} has no states: add it to {CATALOGUE_FILE}"
                " with the states it applies",
                allow_retries=False,
            )
        try:
            site = site_for(topology)
            secrets = load_secrets(site.secrets_file(), topology).values()
            result = salt.apply(
                minions=hosts,
                sls=states,
                test=config.dry_run,
                log=context.log.info,
                redact=secrets,
            )
        except (SaltError, SiteError, SecretsError) as err:
            raise dg.Failure(description=str(err), allow_retries=False) from None
        metadata = report(result)
        if not result.ok:
            problems = result.problems()
            raise dg.Failure(
                description=f"highstate/{role}"
                + (" (dry run)" if config.dry_run else "")
                + f": {len(problems)} problem{'s' if len(problems) != 1 else ''}\n"
                + "\n".join(f"- {p}" for p in problems),
                metadata=metadata,
                allow_retries=False,
            )
        if config.dry_run:
            context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata=metadata))
            return
        yield dg.MaterializeResult(metadata=metadata)

    return _highstate


def report(result: ApplyResult) -> dict[str, Any]:
    states = result.states()
    failed = [s for s in states if s.failed]
    changed = [s for s in states if not s.failed and s.changed]
    unchanged = [s for s in states if not s.failed and not s.changed]
    rows = [
        "| minion | state | function | result | changes | comment | ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in result.minions.values():
        if not run.returned:
            rows.append(f"| {run.minion} | - | - | **no answer** | | | |")
        for error in run.errors:
            rows.append(f"| {run.minion} | - | - | **error** | | {_cell(error)} | |")
    for s in [*failed, *changed, *unchanged]:
        rows.append(
            f"| {s.minion} | {s.sls}: {s.state_id} | {s.function} | {_verdict(s, result.test)} |"
            f" {_cell(_changes(s))} | {_cell(s.detail)} | {s.duration_ms:.0f} |"
        )
    return {
        "dry_run": result.test,
        "minions": list(result.minions),
        "states": len(states),
        "changed": len(changed),
        "failed": len(failed),
        "duration_s": round(result.duration_s, 2),
        "jid": result.jid,
        "results": dg.MetadataValue.md("\n".join(rows)),
    }


def _verdict(state: StateResult, test: bool) -> str:
    if state.failed:
        return "**FAILED**"
    if state.result is None:
        return "would change"
    return "changed" if state.changes else "ok"


def _changes(state: StateResult) -> str:
    if not state.changes:
        return ""
    if "diff" in state.changes:
        return "diff: " + str(state.changes["diff"])[:200]
    if state.function == "cmd.run":
        return f"retcode {state.changes.get('retcode', '?')}"
    return ", ".join(f"{k}: {str(v)[:60]}" for k, v in state.changes.items())


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")[:300]


def definitions(topo: Topology) -> dg.Definitions:
    roles = role_states()
    used = sorted({role for host in topo.hosts.values() for role in host.roles})
    catalogue = role_catalogue()
    assets = [
        highstate_asset(
            role,
            roles.get(role, []),
            after=[r for r in catalogue.roles[role].after if r in used]
            if role in catalogue.roles
            else [],
        )
        for role in used
    ]
    dry_run = dg.define_asset_job(
        "configure_dry_run",
        # No `minions`: a dry run accepts and deletes no key. The pillar is written (it is data
        # the dry run needs, and it changes no host).
        selection=dg.AssetSelection.groups("topology")
        | dg.AssetSelection.assets("salt_pillar")
        | dg.AssetSelection.key_prefixes("highstate"),
        description="The highstates as dry runs (test=True): what would change on each role's"
        " minions, and nothing changes.",
        config={"ops": {a.op.name: {"config": {"dry_run": True}} for a in assets}},
    )
    return dg.Definitions(assets=assets, jobs=[dry_run])
