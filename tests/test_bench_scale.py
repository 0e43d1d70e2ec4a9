"""The bench's ``scale`` section on a toy catalog: what it records, not how fast anything is."""

from __future__ import annotations

import numpy as np
import pytest

from recsieve.bench import SECTIONS
from recsieve.bench.common import ProgressBar
from recsieve.bench.compaction import RATIO_KEY, compaction_latency, format_compaction
from recsieve.bench.scale import format_scale, neighbour_recall, scale_section
from recsieve.embedding import resolve_backend
from recsieve.quantization import ISAS


def test_neighbour_recall() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(60, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    assert neighbour_recall(vecs, vecs) == 1.0
    other = rng.normal(size=(60, 16)).astype(np.float32)
    assert neighbour_recall(vecs, other / np.linalg.norm(other, axis=1, keepdims=True)) < 0.5


def test_scale_section_records_each_backend_against_fp32(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    notes: list[str] = []
    res = scale_section({}, 0, ProgressBar(1, False), notes, tmp_path, items=40, rounds=2,
                        backends=["onnx"], extra_texts={"titles": ["Heat (1995)", "Casino (1995)", "Babe (1995)"]},
                        compaction_items=300)
    assert "scale" in SECTIONS
    assert res["isa"] in ISAS and res["default_backend"] == resolve_backend("auto")
    assert list(res["backends"]) == ["torch", "onnx"] and res["quality_texts"] == {"generated": 40, "titles": 3}
    torch_row, onnx_row = res["backends"]["torch"], res["backends"]["onnx"]
    assert torch_row["ratio_vs_torch"] == [1.0, 1.0] and torch_row["recall_at_10_generated"] == 1.0
    assert len(onnx_row["items_per_s"]) == 2 and all(x > 0 for x in onnx_row["items_per_s"])
    assert onnx_row["recall_at_10_generated"] >= 0.98 and onnx_row["min_cosine_titles"] > 0.999
    assert res["fastest_keeping_neighbours"] in ("torch", "onnx") and len(res["load_avg_per_round"]) == 2
    assert "onnx" in format_scale(res) and notes
    assert not list(tmp_path.glob("scale-*"))  # each build's directory is removed after timing
    assert res["compaction"]["items"] == 300 and res[RATIO_KEY] == res["compaction"][RATIO_KEY]
    assert "compaction" in format_scale(res)


def test_compaction_latency_times_recommend_before_during_and_after(tmp_path) -> None:
    res = compaction_latency(400, 0, tmp_path, users=20, events=5, requests=15)
    assert res["removed_before"] == 40 and res["positions_before"] == 400
    assert res["positions_after"] == 361  # the compaction ran to its swap: the tombstones are gone, the write kept
    assert res["recommend_before"]["n"] == res["recommend_after"]["n"] == 15
    assert res["recommend_without"]["n"] == 30 and res["compaction_s"] > 0
    during = res["recommend_during"]  # requests started while it ran: none if it was that quick
    if during is None:
        assert res[RATIO_KEY] is None and "over before" in format_compaction(res)
    else:
        assert res[RATIO_KEY] == pytest.approx(during["p99_ms"] / res["recommend_without"]["p99_ms"])
        assert "p99 ratio" in format_compaction(res)
    assert set(res["load_avg"]) == {"before", "during", "after"}
    assert not list(tmp_path.iterdir())  # the engine directory is removed


def test_open_replay_curves_measure_what_they_name(tmp_path) -> None:
    """``recsieve.bench.open_replay`` on toy sizes: each point opened in a child process, the
    journal curve replaying every event once and only the tail after the snapshot once."""
    import json

    from recsieve.bench import open_replay

    out = tmp_path / "open.json"
    assert open_replay.main(["--items", "300", "--events", "2000", "--index", "flat", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    (cat,), (jour,) = res["catalog"], res["journal"]
    assert cat["items"] == 300 and cat["open_s"] > 0 and cat["peak_rss_mb"] > 0
    assert cat["applied_seq"] == cat["snapshot_seq"]  # saved after the items: nothing to replay
    head = int(2000 * open_replay.SNAPSHOT_SHARE)
    assert jour["recorded"] == 2000 and jour["snapshot_at"] == head
    assert jour["replayed_all"] == head and jour["replayed_tail"] == 2000 - head
    assert (tmp_path / "open.png").stat().st_size > 0
