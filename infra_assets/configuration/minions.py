"""Salt: the pillar generated from the topology, and the minions whose keys the topology gates.

- `salt_pillar`: every host's pillar (roles, addresses, the master, its services, the secrets its
  roles need and no others), written where the master reads it. Metadata names which secrets
  each host gets, never a value.
- `minion_keys`: every host's key pair and the master's, made ahead of the hosts; the minions'
  public keys accepted on the master before they boot.
- `minions`: never accepts a key (a pending key stays pending, even under a declared host's
  name), reports every key that is not a host of the topology, deletes the keys of hosts that
  left the topology, and pings every declared minion. A denied or rejected key under a
  declared host's name (an impostor, or a rebuilt server) is named with a warning. Metadata: a
  table of minions and their state.
- check `minion_keys_match_topology` (blocking): accepted keys == declared hosts, so no state is
  applied while a stranger is accepted or a host is missing.
"""

import hashlib

import dagster as dg
from pydantic import Field

from infra_assets.cloud import lab_instances
from infra_assets.cloud.tfvars import cloud_locations
from infra_assets.configuration.pillar import firewall_rules, render_pillars, secret_paths
from infra_assets.configuration.salt_keys import KeyStore
from infra_assets.topology.model import Topology
from infra_assets.topology.secrets import SecretsError, load_secrets
from infra_assets.topology.sites import SiteError, site_for
from resources.salt import KeyList, PingResult, SaltError, SaltResource

GROUP = "salt"
POOL = "salt"  # one writer at a time to the salt master's minions


class MinionsConfig(dg.Config):
    ping_timeout_s: float = Field(
        default=30.0,
        description="How long to wait for every declared minion to answer test.ping (a minion"
        " whose key was just accepted needs a moment to authenticate).",
    )


def _salt_pillar_asset(deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        name="salt_pillar",
        group_name=GROUP,
        kinds={"salt"},
        deps=[dg.AssetKey("ip_plan"), *deps],
        pool=POOL,
        description="The salt pillar generated from the topology: one file per minion with its"
        " roles, addresses, services and only the secrets its roles need.",
    )
    def salt_pillar_asset(
        context: dg.AssetExecutionContext, topology: Topology, salt: SaltResource
    ) -> dg.MaterializeResult:
        return salt_pillar(context, topology, salt)

    return salt_pillar_asset


def salt_pillar(
    context: dg.AssetExecutionContext, topology: Topology, salt: SaltResource
) -> dg.MaterializeResult:
    site = _site(topology)
    try:
        secrets = load_secrets(site.secrets_file(), topology)
    except (SecretsError, SiteError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    try:
        pillars = render_pillars(site, secrets)
        written = salt.write_pillar(pillars=pillars)
    except (SiteError, SaltError) as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    context.log.info(
        f"pillar in {written.root}: {len(written.written)} written, {len(written.unchanged)}"
        f" unchanged, {len(written.removed)} removed"
    )
    rows = ["| minion | roles | secrets it gets | file |", "|---|---|---|---|"]
    granted = {}
    for host, pillar in pillars.items():
        names = secret_paths(pillar, secrets)
        granted[host] = names
        state = "written" if host in written.written else "unchanged"
        rows.append(
            f"| {host} | {', '.join(pillar['roles'])} | {', '.join(names) or '(none)'} | {state} |"
        )
    return dg.MaterializeResult(
        metadata={
            "pillar_root": dg.MetadataValue.path(str(written.root)),
            "site": site.kind,
            "minions": len(pillars),
            "written": list(written.written),
            "removed": list(written.removed),
            "secrets_file": dg.MetadataValue.path(str(secrets.file)),
            "pillars": dg.MetadataValue.md("\n".join(rows)),
            "secrets_by_minion": dg.MetadataValue.json(granted),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"salt"},
    deps=["topology"],
    pool=POOL,
    description="Every host's salt key pair and the master's, made ahead of the hosts (as"
    " salt-cloud makes them): each pair is handed to its instance at creation, the minions'"
    " public keys are accepted on the master before they boot, and minions pin the master's key.",
)
def minion_keys(
    context: dg.AssetExecutionContext, topology: Topology, salt: SaltResource
) -> dg.MaterializeResult:
    site = _site(topology)
    try:
        store = KeyStore(site.keys_dir())
    except SiteError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    changes = store.ensure(sorted(topology.hosts))
    for name in changes.created:
        context.log.info(f"made the key pair of {name}")
    for name in changes.removed:
        context.log.info(f"removed the key pair of {name}: no such host in the topology any more")
    accepted = pre_accept(context, salt, topology, store)
    master = store.master()
    rows = ["| key | fingerprint (sha256) | this run |", "|---|---|---|"]
    for name in ["master", *store.minions()]:
        pair = store.get(name)
        rows.append(f"| {name} | `{pair.finger}` | {'made' if name in changes.created else ''} |")
    version = hashlib.sha256(
        "".join(store.get(n).public_pem for n in ["master", *store.minions()]).encode()
    ).hexdigest()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version[:16]),
        metadata={
            "site": site.kind,
            "keys_dir": dg.MetadataValue.path(str(store.folder)),
            "master_finger": master.finger,
            "created": list(changes.created),
            "removed": list(changes.removed),
            "pre_accepted_on_the_running_master": accepted,
            "keys": dg.MetadataValue.md("\n".join(rows)),
        },
    )


MASTER_PKI = "/etc/salt/pki/master/minions"


def pre_accept(
    context: dg.AssetExecutionContext, salt: SaltResource, topology: Topology, store: KeyStore
) -> list[str]:
    """Hand the running master each declared host's public key as accepted, where it does not
    hold that key yet (a host added to a running site): written by the master's own minion, as
    salt-cloud writes it on the master. Before the master exists, its instance gets them at
    creation (the lab writes them in; a cloud's user-data carries them)."""
    master = topology.salt_master()
    try:
        keys = salt.list_keys()
    except SaltError as err:
        context.log.info(f"the master is not up yet ({err}): its instance gets the keys")
        return []
    written = []
    for host in sorted(topology.hosts):
        pem = store.minion(host).public_pem
        path = f"{MASTER_PKI}/{host}"
        if host in keys.accepted:
            held = salt.call(minions=[master], fun="file.read", args=[path]).get(master)
            if isinstance(held, str) and held.strip() == pem.strip():
                continue
        done = salt.call(
            minions=[master], fun="file.write", args=[path], kwargs={"args": [pem.strip()]}
        )
        if master not in done:
            raise dg.Failure(
                description=f"the master ({master}) did not answer when its key for {host} was"
                " written: is its minion running?",
                allow_retries=False,
            )
        written.append(host)
        context.log.info(f"the master now holds {host}'s key as accepted")
    return written


def _minions_asset(deps: list[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        name="minions",
        group_name=GROUP,
        kinds={"salt"},
        deps=deps,
        pool=POOL,
        description="The salt minions: keys accepted exactly for the hosts of the topology, keys"
        " of removed hosts deleted, every declared minion pinged.",
    )
    def minions(
        context: dg.AssetExecutionContext,
        config: MinionsConfig,
        topology: Topology,
        salt: SaltResource,
    ) -> dg.MaterializeResult:
        return _minions(context, config, topology, salt)

    return minions


def _open_the_master_to(
    context: dg.AssetExecutionContext, salt: SaltResource, topology: Topology, wait_s: float
) -> None:
    """The master's firewall takes salt's ports from planned hosts only (common.firewall): a
    host just added could not reach it until the master's own highstate. So its firewall is
    brought up to this topology first (the `firewall` block alone, which holds no secret).
    The master's own minion may still be connecting (a server just booted): a job published
    before it listens is never seen, so it must answer a ping first."""
    site = _site(topology)
    master = site.master_host()
    if (
        master
        not in salt.wait_for(minions=[master], timeout_s=wait_s, log=context.log.info).answered
    ):
        raise SaltError(
            f"the master's own minion ({master}) did not answer within {wait_s:g} s: is it"
            " running, and is its key accepted?"
        )
    rules = firewall_rules(site, master)
    done = salt.apply(
        minions=[master], sls=["common.firewall"], pillar={"firewall": rules}, log=context.log.info
    )
    if not done.ok:
        raise SaltError(
            f"the master's firewall ({master}) could not be brought up to the topology: "
            + "; ".join(done.problems() or ["no return"])
        )


def _minions(
    context: dg.AssetExecutionContext,
    config: MinionsConfig,
    topology: Topology,
    salt: SaltResource,
) -> dg.MaterializeResult:
    declared = sorted(topology.hosts)
    # The keys were accepted ahead of the hosts (`minion_keys`): a pending key is never accepted.
    try:
        before = salt.list_keys()
        removed = salt.delete_keys(
            minion_ids=[m for m in before.accepted if m not in topology.hosts]
        )
        after = salt.list_keys()
        targets = [m for m in declared if m in after.accepted]
        _open_the_master_to(context, salt, topology, config.ping_timeout_s)
        ping = salt.wait_for(minions=targets, timeout_s=config.ping_timeout_s, log=context.log.info)
    except SaltError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None
    for m in removed:
        context.log.info(f"deleted the key of {m}: no such host in the topology any more")
    undeclared = sorted(after.all() - set(declared))
    for m in undeclared:
        context.log.warning(
            f"key {m!r} ({after.state_of(m)}) is not a host of the topology: left unaccepted"
        )
    denied, rejected = _name_claimed_hosts(context, declared, after)
    missing = [m for m in declared if m not in after.accepted]
    rows = _minions_table(topology, declared, after, targets, ping, removed, undeclared)
    return dg.MaterializeResult(
        metadata={
            "declared": len(declared),
            "accepted_keys": list(after.accepted),
            "deleted_keys": removed,
            "undeclared_keys": undeclared,
            "missing_keys": missing,
            "denied_keys": denied,
            "rejected_keys": rejected,
            "answering": list(ping.answered),
            "silent": list(ping.silent),
            "minions": dg.MetadataValue.md("\n".join(rows)),
        }
    )


def _name_claimed_hosts(
    context: dg.AssetExecutionContext, declared: list[str], after: KeyList
) -> tuple[list[str], list[str]]:
    """The declared hosts whose name is on a key the master will not use (denied, rejected),
    each named with a warning."""
    # A declared host's name on a key the master will not use: denied (another machine presents
    # a different key for a name that already has one: an impostor, or the server was rebuilt)
    # or rejected (by a person). Neither is accepted or deleted here; both are named.
    denied = [m for m in declared if m in after.denied]
    rejected = [m for m in declared if m in after.rejected]
    for m in denied:
        context.log.warning(
            f"host {m}: a key under its name was denied: a machine presents another key than"
            f" the {after.state_of(m)} one (an impostor, or the server was rebuilt). If it was"
            f" rebuilt: `salt-key -d {m}`, restart its minion and materialise minions again;"
            " otherwise find that machine"
        )
    for m in rejected:
        context.log.warning(
            f"host {m}: a key under its name was rejected (salt-key -r) and is left so; if the"
            f" host is genuine, `salt-key -d {m}` and let its minion authenticate again"
        )
    return denied, rejected


def _minions_table(
    topology: Topology,
    declared: list[str],
    after: KeyList,
    targets: list[str],
    ping: PingResult,
    removed: list[str],
    undeclared: list[str],
) -> list[str]:
    """The rows of the `minions` metadata table: declared hosts, deleted keys, undeclared keys."""
    rows = ["| minion | roles | key | answers | this run |", "|---|---|---|---|---|"]
    for m in declared:
        answers = "yes" if m in ping.answered else ("no" if m in targets else "-")
        roles = ", ".join(topology.hosts[m].roles)
        rows.append(f"| {m} | {roles} | {_key_states(after, m)} | {answers} | |")
    for m in removed:
        rows.append(f"| {m} | (not in the topology) | deleted | - | key deleted |")
    for m in undeclared:
        rows.append(f"| {m} | (not in the topology) | {after.state_of(m)} | - | left unaccepted |")
    return rows


@dg.asset_check(
    asset="minions",
    additional_ins={"topology": dg.AssetIn("topology")},
    blocking=True,
    description="The master has accepted exactly the keys of the hosts in the topology: no"
    " stranger, no host missing.",
)
def minion_keys_match_topology(topology: Topology, salt: SaltResource) -> dg.AssetCheckResult:
    return check_keys(salt.list_keys(), topology)


@dg.asset_check(
    asset="minions",
    additional_ins={"topology": dg.AssetIn("topology")},
    description="Every declared minion answers test.ping.",
)
def declared_minions_answer(topology: Topology, salt: SaltResource) -> dg.AssetCheckResult:
    declared = sorted(topology.hosts)
    ping = salt.ping(minions=declared)
    return dg.AssetCheckResult(
        passed=ping.ok,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"silent: {', '.join(ping.silent)}" if ping.silent else None,
        metadata={"answering": list(ping.answered), "silent": list(ping.silent)},
    )


def check_keys(keys: KeyList, topology: Topology) -> dg.AssetCheckResult:
    accepted, declared = set(keys.accepted), set(topology.hosts)
    strangers = sorted(accepted - declared)
    missing = sorted(declared - accepted)
    lines = [f"- accepted, but not a host of the topology: {m}" for m in strangers]
    lines += [
        f"- a host of the topology without an accepted key: {m} ({keys.state_of(m)})"
        for m in missing
    ]
    # Another machine presenting a declared host's name with another key (an impostor, or a
    # host rebuilt without its key pair): salt denies or rejects it; the host is not trusted.
    impostors = sorted(declared & (set(keys.denied) | set(keys.rejected)))
    lines += [
        f"- a key under a declared host's name was refused: {m} ({_key_states(keys, m)}):"
        f" another machine presents this name; find it, then `salt-key -d {m}` removes the"
        " refused key"
        for m in impostors
    ]
    return dg.AssetCheckResult(
        passed=not strangers and not missing and not impostors,
        severity=dg.AssetCheckSeverity.ERROR,
        description="\n".join(lines) or None,
        metadata={
            "accepted": sorted(accepted),
            "strangers": strangers,
            "missing": missing,
            "refused_under_declared_names": impostors,
        },
    )


def _key_states(keys: KeyList, minion_id: str) -> str:
    """Every state the id has a key in (`accepted + denied`), or `no key`."""
    states = [
        s for s in ("accepted", "pending", "rejected", "denied") if minion_id in getattr(keys, s)
    ]
    return " + ".join(f"**{s}**" if s in ("denied", "rejected") else s for s in states) or "no key"


def _site(topology: Topology):
    try:
        return site_for(topology)
    except SiteError as err:
        raise dg.Failure(description=str(err), allow_retries=False) from None


def definitions(topo: Topology) -> dg.Definitions:
    # `minions` comes after the hosts exist: the lab's or the cloud's instances of each location.
    deps = [dg.AssetKey("minion_keys"), *lab_instances.instance_keys(topo)]
    deps += [dg.AssetKey(["instances", loc]) for loc in cloud_locations(topo)]
    return dg.Definitions(
        assets=[_salt_pillar_asset(deps[1:]), minion_keys, _minions_asset(deps)],
        asset_checks=[minion_keys_match_topology, declared_minions_answer],
    )
