"""Streaming evaluation: the global stream order and a tiny end-to-end replay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsieve.cli import main
from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.streaming import STRATEGIES, stream_order
from recsieve.types import Item


def _dataset(sequences, timestamps=None) -> Dataset:
    items = tuple(Item(id=f"i{i}", title=f"Item {i}") for i in range(10))
    return Dataset("toy", items, tuple(it.title for it in items), tuple(f"u{u}" for u in range(len(sequences))),
                   tuple(np.asarray(s, np.int64) for s in sequences),
                   None if timestamps is None else tuple(np.asarray(t, np.float64) for t in timestamps))


def test_stream_order_by_timestamps() -> None:
    ds = _dataset([[1, 2, 3], [4, 5]], timestamps=[[10, 30, 50], [20, 40]])
    users, positions, how = stream_order(ds)
    assert how == "timestamps"
    assert list(zip(users.tolist(), positions.tolist())) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]


def test_stream_order_by_relative_position_without_timestamps() -> None:
    ds = _dataset([[1, 2, 3, 4], [5, 6]])
    users, positions, how = stream_order(ds)
    assert "relative position" in how
    # user 0 at 1/4, 2/4, 3/4, 4/4; user 1 at 1/2, 2/2; ties go to the lower user index
    assert list(zip(users.tolist(), positions.tolist())) == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1)]
    # every user's own events keep their order
    for u in (0, 1):
        assert positions[users == u].tolist() == sorted(positions[users == u].tolist())


def test_streaming_cli_end_to_end(tmp_path, capsys) -> None:
    from test_evaluate_cli import write_custom

    data = tmp_path / "data"
    write_custom(data, n_users=60, length=10)
    out = tmp_path / "stream.json"
    rc = main(["evaluate-stream", "--dataset", "custom", "--data-dir", str(data), "--chunks", "2",
               "--eval-users", "30", "--ranker-users", "60", "--quiet", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["order"] == "timestamps" and len(report["chunks"]) == 2
    first = report["chunks"][0]
    assert first["evaluated_users"] > 0 and "continual_seconds" in first and "retrain_seconds" in first
    for row in report["chunks"]:
        for s in STRATEGIES:
            assert 0.0 <= row[f"ndcg@10_{s}"] <= 1.0
    # before any update all strategies serve the same head
    assert first["ndcg@10_never"] == first["ndcg@10_continual"] == first["ndcg@10_retrain"]
    for name in ("continual", "retrain"):
        gain = report["gain_vs_never"][name]
        assert gain["users"] > 0 and gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    assert "mean NDCG@10" in capsys.readouterr().out


def test_paired_gain_interval() -> None:
    from recsieve.evaluation.streaming import paired_gain

    flat = paired_gain([0.5] * 50, [0.3] * 50)
    assert flat["mean"] == pytest.approx(0.2) and flat["ci95"] == pytest.approx([0.2, 0.2]) and flat["users"] == 50
    rng = np.random.default_rng(0)
    b = rng.random(400).tolist()
    noisy = paired_gain([x + d for x, d in zip(b, rng.normal(0.0, 1.0, 400))], b)
    assert noisy["ci95"][0] < noisy["mean"] < noisy["ci95"][1]
    assert noisy["ci95"][0] < 0 < noisy["ci95"][1]  # pure noise: the interval includes no gain
    shifted = paired_gain([x + 0.5 + d for x, d in zip(b, rng.normal(0.0, 1.0, 400))], b)
    assert shifted["ci95"][0] > 0
    assert paired_gain([], [])["mean"] is None
    with pytest.raises(InvalidInputError):
        paired_gain([1.0], [])
