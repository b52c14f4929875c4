"""The asset graph against its committed snapshot (tests/snapshots/asset_graph.yaml): every asset
key of the co-op's topology and the lab's, its dependencies, group, kinds and checks, and the
jobs, sensors and schedules. A change to the graph fails here until `make snapshot` writes it
again, so that it is a diff in the pull request that makes it. This test never writes the file."""

from __future__ import annotations

import difflib
from pathlib import Path

from scripts_loader import load_script

REPO = Path(__file__).resolve().parent.parent


def _script():
    return load_script("asset_graph")


def test_the_asset_graph_is_its_committed_snapshot(monkeypatch):
    script = _script()
    committed = script.SNAPSHOT.read_text()
    now = script.render(script.snapshot())
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True), now.splitlines(keepends=True),
            "tests/snapshots/asset_graph.yaml (committed)", "the code's graph now",
        )
    )  # fmt: skip
    assert not diff, (
        "the asset graph changed: if that is meant, run `make snapshot` and commit the file\n"
        + diff
    )


def test_the_snapshot_sees_a_changed_graph(tmp_path, monkeypatch):
    """The comparison can fail: one more host in the lab's topology is one more asset."""
    import yaml

    script = _script()
    data = yaml.safe_load((REPO / "topology.lab.yaml").read_text())
    data["hosts"]["web-staging-2"] = {**data["hosts"]["web-staging-1"], "instance": 2}
    changed = tmp_path / "topology.lab.yaml"
    changed.write_text(yaml.safe_dump(data))
    graph = script.graph_of(changed)
    assert "health/web-staging-2" in graph["assets"]
    assert graph != script.graph_of(REPO / "topology.lab.yaml")
