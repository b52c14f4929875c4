"""registry_image_sensor and the push path's runs: a digest whose commit has a `deliver_<app>`
run is that run's to release while the run goes on or once it succeeded; a run that failed (its
retries spent, cancelled, its worker lost) leaves it to the sensor, so no commit is lost. On a
real registry (Debian's docker-registry on loopback) and a real Dagster instance."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import pytest
from fixtures_delivery import delivery_defs, push_image, record_build, write_app_topology

from infra_assets.topology.model import load_topology
from sensors.registry_images import REVISION_LABEL, SENSOR_NAME

pytestmark = pytest.mark.slow  # a registry process

SHA = "a" * 40


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None = None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return defs.resolve_sensor_def(SENSOR_NAME)(context)


def _why(tick) -> str:
    """The tick's skip message, whether it skipped alone or with a new cursor."""
    reason = tick if isinstance(tick, dg.SkipReason) else tick.skip_reason
    return reason.skip_message if isinstance(reason, dg.SkipReason) else str(reason)


def _deliver_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    """A run of deliver_hello for SHA in `status`, as the webhook endpoint or the git sensor
    would have made it."""
    run = dg.DagsterRun(
        job_name="deliver_hello",
        run_id=str(uuid.uuid4()),
        status=status,
        tags={"coop/app": "hello", "coop/sha": SHA},
    )
    instance.add_run(run)
    return run.run_id


@pytest.fixture
def pushed(tmp_path, monkeypatch, loopback_registry):
    """hello's branch tag on an image of SHA that app_image recorded; the code location."""
    digest = push_image(loopback_registry.url, "hello", "main", {REVISION_LABEL: SHA})
    topo_file = write_app_topology(tmp_path / "topology.yaml", {"hello": "git/hello.git"})
    monkeypatch.setenv("INFRA_TOPOLOGY", str(topo_file))
    defs = delivery_defs(load_topology(topo_file), registry=loopback_registry)
    instance = dg.DagsterInstance.ephemeral()
    record_build(instance, "hello", digest, SHA, "main")
    return defs, instance, digest


def test_a_digest_a_deliver_run_is_releasing_is_left_to_it_and_looked_at_again(pushed):
    defs, instance, digest = pushed
    run_id = _deliver_run(instance, dg.DagsterRunStatus.STARTED)
    tick = _tick(defs, instance)
    assert not getattr(tick, "run_requests", None)
    assert f"hello:main = {digest}: being released by run {run_id} (deliver_hello)" in _why(tick)
    # The cursor stays before it: the next tick looks again.
    cursor = getattr(tick, "cursor", None)
    assert not cursor or "hello" not in json.loads(cursor) or not json.loads(cursor)["hello"]


def test_a_digest_a_deliver_run_released_is_not_released_again(pushed):
    defs, instance, digest = pushed
    run_id = _deliver_run(instance, dg.DagsterRunStatus.SUCCESS)
    tick = _tick(defs, instance)
    assert not tick.run_requests
    assert f"released by run {run_id} (deliver_hello)" in _why(tick)
    assert json.loads(tick.cursor) == {"hello": {"main": digest}}  # moved past it


def test_a_digest_whose_deliver_run_failed_is_released_by_the_sensor(pushed):
    defs, instance, digest = pushed
    _deliver_run(instance, dg.DagsterRunStatus.FAILURE)
    tick = _tick(defs, instance)
    [request] = tick.run_requests
    assert request.run_key == digest and request.job_name == "release_staging_hello"
    assert request.tags["coop/sha"] == SHA
