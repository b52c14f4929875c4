"""App delivery in the code location: app_image/<app> per app (partitioned by commit), its
lineage from the topology, its build job, the two sensors, and the builder each site gets; the
releases (release/staging/<app> -> release/production/<app>) and their jobs."""

from __future__ import annotations

import dagster as dg
import pytest

from infra_assets.definitions import build_definitions
from infra_assets.delivery.app_images import builder_for
from infra_assets.topology.model import load_topology


@pytest.fixture
def lab_defs(repo_root, monkeypatch):
    monkeypatch.delenv("INFRA_JENKINS_URL", raising=False)
    return build_definitions(load_topology(repo_root / "topology.lab.yaml"))


def test_each_app_has_an_image_asset_partitioned_by_commit(lab_defs):
    graph = lab_defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey(["app_image", "hello"]))
    assert dg.AssetKey("topology") in node.parent_keys
    assert node.group_name == "app_images"
    assert set(node.kinds) == {"salt", "docker"}
    assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
    assert node.partitions_def.name == "commits_hello"


def test_the_build_job_includes_the_topology_and_the_app_image(lab_defs):
    job = lab_defs.resolve_job_def("build_hello")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"topology", "app_image/hello"}
    assert job.partitions_def.name == "commits_hello"


def test_main_stays_unpartitioned_without_the_per_commit_builds(lab_defs):
    job = lab_defs.resolve_job_def("main")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert "app_image/hello" not in keys and {"topology", "ip_plan"} <= keys
    assert job.partitions_def is None


def test_the_sensors_target_jobs_that_exist(lab_defs):
    git = lab_defs.resolve_sensor_def("git_push_sensor")
    registry = lab_defs.resolve_sensor_def("registry_image_sensor")
    assert {j.name for j in git.jobs} == {"build_hello", "deliver_hello"}
    assert {j.name for j in registry.jobs} == {"release_staging_hello"}
    # A push calls the webhook endpoint, which starts the run, and the registry's notifications
    # wake the registry sensor: both sensors are the fallbacks.
    assert git.minimum_interval_seconds == 30
    assert registry.minimum_interval_seconds == 30
    for sensor in (git, registry):
        assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_the_lab_builds_through_salt_after_the_registry_and_the_agent(repo_root, monkeypatch):
    monkeypatch.delenv("INFRA_JENKINS_URL", raising=False)
    topo = load_topology(repo_root / "topology.lab.yaml")
    assert builder_for(topo) == "salt"
    defs = build_definitions(topo)
    node = defs.resolve_asset_graph().get(dg.AssetKey(["app_image", "hello"]))
    assert set(node.kinds) == {"salt", "docker"}
    assert node.parent_keys == {
        dg.AssetKey("topology"),
        dg.AssetKey(["highstate", "docker-registry"]),
        dg.AssetKey(["highstate", "jenkins-agent"]),
    }
    # Pushes and the registry's notifications come through the webhook endpoint.
    assert defs.resolve_sensor_def("registry_image_sensor").minimum_interval_seconds == 30
    assert defs.resolve_sensor_def("git_push_sensor").minimum_interval_seconds == 30
    # The lab's registry, reached through the lab's link, no password in config.
    registry = defs.resources["registry"]
    assert registry.url == "https://10.127.9.1:5001" and registry.username == "ci"  # push door
    assert registry.route_device == "coop127-m" and registry.password == ""
    assert registry.password_file.endswith("/lab/lab-127/registry/password")
    # With Jenkins configured, the lab builds through it.
    monkeypatch.setenv("INFRA_JENKINS_URL", "https://jenkins.example.coop")
    assert builder_for(topo) == "jenkins"


def test_the_coops_cloud_topology_builds_with_jenkins(repo_root):
    topo = load_topology(repo_root / "topology.yaml")
    assert builder_for(topo) == "jenkins"
    defs = build_definitions(topo)
    node = defs.resolve_asset_graph().get(dg.AssetKey(["app_image", "hello"]))
    assert set(node.kinds) == {"jenkins", "docker"}
    assert defs.resolve_sensor_def("git_push_sensor").minimum_interval_seconds == 30


def test_a_topology_without_apps_has_no_delivery_part(write_topology):
    topo = load_topology(write_topology(edit=lambda d: d.pop("apps")))
    defs = build_definitions(topo)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert not [k for k in keys if k.startswith(("app_image", "release/"))]
    main = defs.resolve_job_def("main").asset_layer.selected_asset_keys
    # everything, there being no app (but the health checks and backups: their own jobs)
    assert {k.to_user_string() for k in main} == {
        k for k in keys if not k.startswith(("health/", "backup/"))
    }


def test_secrets_come_from_the_environment_as_env_vars(monkeypatch, repo_root):
    monkeypatch.setenv("INFRA_REGISTRY_URL", "https://registry.example.coop")
    monkeypatch.setenv("INFRA_REGISTRY_PASSWORD", "s3cret")
    monkeypatch.setenv("INFRA_JENKINS_API_TOKEN", "t0ken")
    from infra_assets.site_resources import resources

    res = resources()
    assert isinstance(res["registry"].password, dg.EnvVar)
    assert res["registry"].password.env_var_name == "INFRA_REGISTRY_PASSWORD"
    assert res["registry"].username == ""  # unset: not taken
    assert isinstance(res["jenkins"].api_token, dg.EnvVar)
    assert "s3cret" not in repr(res) and "t0ken" not in repr(res)


def test_releases_follow_the_image_and_staging_leads_to_production(lab_defs):
    graph = lab_defs.resolve_asset_graph()
    staging = graph.get(dg.AssetKey(["release", "staging", "hello"]))
    production = graph.get(dg.AssetKey(["release", "production", "hello"]))
    assert set(staging.parent_keys) == {
        dg.AssetKey("topology"),
        dg.AssetKey(["app_image", "hello"]),
        dg.AssetKey(["highstate", "web-staging"]),
    }
    assert set(production.parent_keys) == {
        dg.AssetKey("topology"),
        dg.AssetKey(["release", "staging", "hello"]),
        dg.AssetKey(["highstate", "web-production"]),
    }
    for node in (staging, production):
        assert node.group_name == "releases" and node.partitions_def is None
        assert set(node.kinds) == {"salt", "podman", "nginx"}
        assert node.pools == {"salt"}  # one writer at a time to the minions, as the highstates


def test_release_jobs(lab_defs):
    def keys(job: str) -> set[str]:
        return {
            k.to_user_string()
            for k in lab_defs.resolve_job_def(job).asset_layer.selected_asset_keys
        }

    assert keys("release_staging_hello") == {"topology", "release/staging/hello"}
    assert keys("promote") == {"topology", "release/production/hello"}
    assert keys("rollback") == {"topology", "release/production/hello"}
    assert keys("rollback_staging") == {"topology", "release/staging/hello"}
    # The rollback jobs ask for the previous release; promote for what is on staging (no config).
    assert lab_defs.resolve_job_def("rollback").run_config == {
        "ops": {"release__production__hello": {"config": {"rollback": True}}}
    }
    assert lab_defs.resolve_job_def("rollback_staging").run_config == {
        "ops": {"release__staging__hello": {"config": {"rollback": True}}}
    }
    assert not lab_defs.resolve_job_def("promote").run_config
    # Releases are not part of `main` (they follow images and people).
    assert not {k for k in keys("main") if k.startswith("release/")}


def test_nothing_to_roll_back_to_is_a_clear_error():
    from infra_assets.delivery.releases import Record, _rollback_target

    record = Record("web-production-1", {"digest": "sha256:" + "a" * 64}, None)
    with pytest.raises(dg.Failure) as err:
        _rollback_target("release/production/hello", [record])
    assert err.value.description == (
        "release/production/hello: nothing to roll back to on web-production-1 (no previous"
        " release recorded there)"
    )


def test_a_partition_that_is_a_sha_with_a_newline_is_refused(repo_root):
    # `$` matches before a final newline: the sha would reach the build's command line and tags.
    from infra_assets.delivery.app_images import materialize

    topo = load_topology(repo_root / "topology.lab.yaml")
    sha = "0123456789abcdef0123456789abcdef01234567"
    with dg.build_asset_context(partition_key=sha + "\n") as context:
        with pytest.raises(dg.Failure) as err:
            materialize(context, topo, "hello", builder_for(topo))
    assert err.value.description.startswith(
        "partition '0123456789abcdef0123456789abcdef01234567\\n' of app_image/hello is not a"
        " commit sha"
    )
