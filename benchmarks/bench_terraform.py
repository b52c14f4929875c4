"""A Terraform plan through the TerraformResource against the raw binary, on the same
configuration, as a ratio in one run (target: at most 1.1).

The configuration is the null-provider stand-in of the OpenStack stacks (tests/terraform/standin,
with the real layout module and variables) for the co-op's topology.yaml at nz-por-1: as many
resources as the real configuration makes there (24 for the network, 16 for the instances).
Both stacks are applied first, so each plan refreshes all 40, as the nightly plan does. One
measurement = both stacks planned into a saved file and described by `show -json`: the raw way
(`terraform plan -out` + `terraform show -json`, output captured) against the resource's
(`plan(init=False)`: the same two commands with -json, every line streamed to a log sink, the
plan parsed into a typed plan). Terraform 1.0.3 with the null provider, offline. Medians of 7,
taken alternately.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import Result
from infra_assets.cloud.tfvars import instances_vars, network_vars
from infra_assets.topology.model import load_topology
from resources.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests"))  # the stand-in and Terraform 1.0.3 helpers
from cloud_env import terraform_resource, write_location  # noqa: E402

RUNS = 7
LOCATION = "nz-por-1"
TARGET = 1.1


def run() -> list[Result]:
    topo = load_topology(REPO_ROOT / "topology.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-terraform-") as folder:
        tf = terraform_resource(Path(folder))
        settings = write_location(Path(tf.config_dir), LOCATION)
        quiet = lambda _line: None  # noqa: E731
        net = network_vars(topo, LOCATION)
        tf.apply(
            plan=tf.plan(
                stack="network", location=LOCATION, variables=net, var_files=[settings], log=quiet
            ),
            log=quiet,
        )
        outputs = tf.output(stack="network", location=LOCATION)
        groups = {h["image_group"] for h in net["hosts"].values()}
        inst = instances_vars(
            topo, LOCATION, network_outputs=outputs, images={g: f"image-{g}" for g in groups}
        )
        first = tf.plan(
            stack="instances", location=LOCATION, variables=inst, var_files=[settings], log=quiet
        )
        tf.apply(plan=first, log=quiet)
        stacks = {"network": net, "instances": inst}
        resources = 0

        def through_resource() -> float:
            nonlocal resources
            started = time.perf_counter()
            counted = 0
            for stack, variables in stacks.items():
                plan = tf.plan(
                    stack=stack,
                    location=LOCATION,
                    variables=variables,
                    var_files=[settings],
                    log=quiet,
                    init=False,
                )
                assert not plan.has_changes, plan.summary_line()
                counted += plan.resource_count
            resources = counted
            return time.perf_counter() - started

        raw_files = {}
        for stack, variables in stacks.items():
            path = Path(folder) / f"raw-{stack}.tfvars.json"
            path.write_text(json.dumps(variables))
            raw_files[stack] = path

        def raw_binary() -> float:
            started = time.perf_counter()
            for stack in stacks:
                env = tf._env(stack, LOCATION)
                cwd = tf.stack_dir(stack)
                out = Path(folder) / f"raw-{stack}.tfplan"
                subprocess.run(
                    [
                        tf.binary,
                        "plan",
                        "-input=false",
                        f"-lock-timeout={tf.lock_timeout}",
                        f"-out={out}",
                        f"-var-file={settings}",
                        f"-var-file={raw_files[stack]}",
                    ],
                    cwd=cwd,
                    env=env,
                    check=True,
                    capture_output=True,
                )
                shown = subprocess.run(
                    [tf.binary, "show", "-json", "-no-color", str(out)],
                    cwd=cwd,
                    env=env,
                    check=True,
                    capture_output=True,
                )
                json.loads(shown.stdout)
            return time.perf_counter() - started

        through_resource(), raw_binary()  # warm the page cache
        ours, raw = [], []
        for _ in range(RUNS):
            raw.append(raw_binary())
            ours.append(through_resource())
    ratio = statistics.median(ours) / statistics.median(raw)
    return [
        Result(
            "terraform plan through the resource / raw binary",
            ratio,
            "x",
            f"<= {TARGET}",
            ratio <= TARGET,
            f"{resources} resources (network + instances of nz-por-1, null-provider stand-in),"
            f" refresh + plan + show; medians of {RUNS}: resource {statistics.median(ours):.2f} s,"
            f" raw {statistics.median(raw):.2f} s; Terraform 1.0.3",
        )
    ]
