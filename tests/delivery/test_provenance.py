"""What counts as ours (infra_assets/delivery/provenance.py), on a real Dagster instance: the digests that
`app_image/<app>` recorded in a run, for the app's branch; never a materialisation reported by
hand; production's digest is the last successful staging release's."""

from __future__ import annotations

import dagster as dg

from infra_assets.delivery.provenance import build_records, our_build, staging_record

D1, D2, D3 = (f"sha256:{c * 64}" for c in "abc")
SHA1, SHA2 = "1" * 40, "2" * 40


def _record(instance: dg.DagsterInstance, key: list[str], **metadata) -> None:
    @dg.asset(key=key)
    def recorded() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata=metadata)

    assert dg.materialize([recorded], instance=instance).success


def test_a_digest_is_ours_when_app_image_recorded_it_in_a_run_for_the_branch():
    instance = dg.DagsterInstance.ephemeral()
    _record(instance, ["app_image", "hello"], digest=D1, sha=SHA1, branch="main")
    _record(instance, ["app_image", "hello"], digest=D2, sha=SHA2, branch="feature")
    _record(instance, ["app_image", "other"], digest=D3, sha=SHA1, branch="main")
    # a materialisation a person reports by hand (the UI's button): no run, not a build
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=["app_image", "hello"], metadata={"digest": D3, "sha": SHA1, "branch": "main"}
        )
    )
    records = build_records(instance, "hello")
    assert set(records) == {D1, D2}
    assert (records[D1].sha, records[D1].branch) == (SHA1, "main") and records[D1].run_id
    assert our_build(instance, "hello", "main", D1) == records[D1]
    assert our_build(instance, "hello", "main", D2) is None  # built, but for another branch
    assert our_build(instance, "hello", "main", D3) is None  # another app's, or said by hand
    assert our_build(instance, "other", "main", D3) is not None


def test_production_takes_the_last_successful_staging_release():
    instance = dg.DagsterInstance.ephemeral()
    assert staging_record(instance, "hello") is None
    _record(instance, ["release", "staging", "hello"], digest=D1, sha=SHA1)
    _record(instance, ["release", "staging", "hello"], digest=D2, sha="(unknown)")

    @dg.asset(key=["release", "staging", "hello"])
    def failed() -> dg.MaterializeResult:
        raise dg.Failure("the health check failed")

    assert not dg.materialize([failed], instance=instance, raise_on_error=False).success
    # a staging release reported by hand (no run) is no release
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=["release", "staging", "hello"], metadata={"digest": D3})
    )
    record = staging_record(instance, "hello")
    assert (record.digest, record.sha) == (D2, "") and record.run_id
