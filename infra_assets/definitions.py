"""The Dagster code location: assembles assets, checks, jobs and resources. Nothing is defined
here, and nothing is read or started at import."""

import warnings

import dagster as dg

from infra_assets import topology
from infra_assets.jobs import JOBS
from resources.topology import TopologyResource

# Data versions on outputs (`topology` hashes its file) are beta in Dagster 1.13; we rely on them.
warnings.filterwarnings("ignore", category=dg.BetaWarning)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([topology]),
    asset_checks=dg.load_asset_checks_from_modules([topology]),
    jobs=JOBS,
    # Steps run one after another in the run's process: a step in a subprocess of its own costs
    # 2-3 s of imports, and most of ours wait on a tool (salt, terraform) rather than compute.
    executor=dg.in_process_executor,
    resources={
        "topology_file": TopologyResource(),
    },
)
