"""Which images are ours: the record of what `app_image/<app>` built, and of what staging runs.

Dagster's event log is the record. A digest is **ours** when a materialisation of
`app_image/<app>` recorded it (metadata `digest`) for a commit (`sha`, the partition) of the
app's branch (`branch`): the build ran, pushed that digest and read it back from the registry.
Nothing else makes an image releasable: not a tag in the registry (anyone with the push account
can move one), not a host's record file (root on a host can write one), not a label, not a
materialisation reported by hand (the UI's "Report materialization" writes one without a run:
only materialisations made in a run count).

- `build_records(instance, app)`: digest -> the newest record of it.
- `build_of_commit(instance, app, branch, sha)`: the newest record of a build of one commit
  (what a `deliver_<app>` run releases after its own build step).
- `staging_record(instance, app)`: the digest and commit of the last successful
  `release/staging/<app>`, what production takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg

PAGE = 500


@dataclass(frozen=True)
class BuildRecord:
    digest: str
    sha: str
    branch: str
    run_id: str


def build_records(instance: dg.DagsterInstance, app: str) -> dict[str, BuildRecord]:
    """Every digest `app_image/<app>` has recorded, newest record first wins."""
    found: dict[str, BuildRecord] = {}
    for run_id, meta in _made_in_runs(instance, dg.AssetKey(["app_image", app])):
        digest, sha, branch = (_text(meta, k) for k in ("digest", "sha", "branch"))
        if digest and digest not in found:
            found[digest] = BuildRecord(digest, sha, branch, run_id)
    return found


def our_build(
    instance: dg.DagsterInstance, app: str, branch: str, digest: str
) -> BuildRecord | None:
    """The record of `digest` as a build of a commit on `branch`, or None: not ours."""
    record = build_records(instance, app).get(digest)
    return record if record is not None and record.branch == branch else None


def build_of_commit(
    instance: dg.DagsterInstance, app: str, branch: str, sha: str
) -> BuildRecord | None:
    """The newest record of a build of commit `sha` on `branch` (None: never built)."""
    for run_id, meta in _made_in_runs(instance, dg.AssetKey(["app_image", app])):
        digest, built, on = (_text(meta, k) for k in ("digest", "sha", "branch"))
        if digest and built == sha and on == branch:
            return BuildRecord(digest, sha, branch, run_id)
    return None


@dataclass(frozen=True)
class StagingRecord:
    digest: str
    sha: str
    run_id: str


def staging_record(instance: dg.DagsterInstance, app: str) -> StagingRecord | None:
    """The last successful `release/staging/<app>` (None: staging never released it)."""
    key = dg.AssetKey(["release", "staging", app])
    for run_id, meta in _made_in_runs(instance, key):
        sha = _text(meta, "sha")
        return StagingRecord(_text(meta, "digest"), "" if sha == "(unknown)" else sha, run_id)
    return None


def _made_in_runs(instance: dg.DagsterInstance, key: dg.AssetKey) -> Iterator[tuple[str, dict]]:
    """(run id, metadata) of `key`'s materialisations made in a run, newest first: a runless
    event (the UI's "Report materialization", the API's report_runless_asset_event) is something
    a person said, not a build or a release."""
    cursor = None
    while True:
        page = instance.fetch_materializations(key, limit=PAGE, cursor=cursor)
        for record in page.records:
            if record.asset_materialization is not None and record.run_id:
                yield record.run_id, record.asset_materialization.metadata
        if not page.has_more:
            return
        cursor = page.cursor


def _text(meta: dict, key: str) -> str:
    value = meta.get(key)
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, str) else ""
