"""``spade inspect-maps``: a user command, so it never writes inside a DVC output."""

from __future__ import annotations

from pipeline import paths
from pipeline.hashing import tree_digest
from pipeline.stores import InversionStore
from stages.inspect_maps import inspect_maps


def test_inspect_maps_writes_outside_the_inversion_store(trained_workspace, monkeypatch):
    monkeypatch.chdir(trained_workspace)
    before = tree_digest(paths.INVERT)
    image_id = InversionStore.open(paths.INVERT_STORE).image_ids[0]
    out = inspect_maps(image_id)
    assert out == paths.INSPECTIONS / f"maps-{image_id}.png" and out.is_file()
    assert tree_digest(paths.INVERT) == before  # `dvc status` stays clean
