"""Content hashes by row: a snapshot's memory-mapped array plus the hashes set since."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsieve.engine.row_hashes import RowHashes
from recsieve.errors import CorruptStoreError


def test_round_trip_with_changes_over_a_mapped_snapshot(tmp_path):
    first = RowHashes()
    for row in (0, 2, 5):
        first[row] = f"h{row}" * 8
    first.save(tmp_path / "a.npy", 6)
    loaded = RowHashes.load(tmp_path / "a.npy")
    assert [loaded.get(r) for r in range(7)] == ["h0" * 8, None, "h2" * 8, None, None, "h5" * 8, None]
    assert loaded.get(1, "") == "" and loaded.get(-1) is None
    loaded[1] = "a-longer-hash-than-the-snapshot-held"  # wider than the saved array
    loaded[2] = "new"
    loaded[7] = "past the snapshot"
    assert dict(loaded.items()) == {0: "h0" * 8, 1: "a-longer-hash-than-the-snapshot-held", 2: "new",
                                    5: "h5" * 8, 7: "past the snapshot"}
    loaded.save(tmp_path / "b.npy", 8)
    again = RowHashes.load(tmp_path / "b.npy")
    assert dict(again.items()) == dict(loaded.items()) and len(again) == 5


def test_the_format_before_and_damaged_files(tmp_path):
    (tmp_path / "hashes.json").write_text(json.dumps({"3": "x", "0": "y"}))
    assert dict(RowHashes.load(tmp_path / "hashes.json").items()) == {0: "y", 3: "x"}
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(CorruptStoreError, match="bad.json"):
        RowHashes.load(tmp_path / "bad.json")
    np.save(tmp_path / "floats.npy", np.zeros(3))
    with pytest.raises(CorruptStoreError, match="floats.npy"):
        RowHashes.load(tmp_path / "floats.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(CorruptStoreError, match="junk.npy"):
        RowHashes.load(tmp_path / "junk.npy")
