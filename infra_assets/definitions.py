"""The Dagster code location: merges the parts of the graph, their sensors and the site's
resources. Nothing is defined here.

    topology/        the file, its address plan, the role catalogue, secrets, sites
    cloud/           images, networks, instances (OpenStack or the lab), plan and apply
    configuration/   the salt pillar, minions' keys, highstate per role
    delivery/        app images per commit, releases, the push path's jobs
    operations/      health probes, backups
    jobs.py          `main`, across the parts
    site_resources.py  the tools each kind of site gets
    ../sensors/      the sensors, wired to the parts' jobs (sensors/definitions.py)

Importing this module reads nothing: the definitions are built when Dagster loads the code
location (`@dg.definitions`), from the topology it works on ($INFRA_TOPOLOGY, else topology.yaml).
Parts of the graph that exist once per location, role or app (`network/<location>`,
`release/staging/<app>`) are built from that topology. A broken topology still loads the
`topology` asset and the jobs, whose run then fails with the file's problems listed; the other
parts appear once it is fixed.
"""

import warnings

import dagster as dg

from infra_assets.cloud import definitions as cloud
from infra_assets.configuration import definitions as configuration
from infra_assets.delivery import definitions as delivery
from infra_assets.jobs import main_job
from infra_assets.operations import definitions as operations
from infra_assets.site_resources import site_resources
from infra_assets.topology import definitions as topology
from infra_assets.topology.model import Topology, TopologyError, load_topology
from resources.paths import default_topology
from sensors import definitions as sensors

# Data versions on outputs (`topology` hashes its file) are beta in Dagster 1.13; we rely on them.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(
    topo: Topology | None, resource_overrides: dict[str, object] | None = None
) -> dg.Definitions:
    """The whole code location for `topo` (None: the topology is broken; its asset says why).
    `resource_overrides` replace resources by key (tests: a stand-in or a fake's client)."""
    parts = [
        topology.definitions(),
        cloud.definitions(topo),
        configuration.definitions(topo),
        delivery.definitions(topo),
        operations.definitions(topo),
    ]
    jobs = {job.name: job for part in parts for job in part.jobs or ()}
    base = dg.Definitions(
        jobs=[main_job],
        resources={**site_resources(topo), **(resource_overrides or {})},
        # Steps run one after another in the run's process: a step in a subprocess of its own
        # costs 2-3 s of imports, and most of ours wait on a tool (salt, terraform), not the CPU.
        executor=dg.in_process_executor,
    )
    return dg.Definitions.merge(base, *parts, sensors.definitions(topo, jobs))


@dg.definitions
def defs() -> dg.Definitions:
    try:
        topo = load_topology(default_topology())
    except TopologyError:
        topo = None
    return build_definitions(topo)
