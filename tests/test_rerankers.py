"""The Reranker protocol, check_scores, context rendering and the cross-encoder re-ranker.

Expected strings and numbers are worked out by hand. The cross-encoder tests use a real
MiniLM cross-encoder; for shape/determinism/exactness tests it carries a fresh head and a
marker written here (quality is tested in test_reranker_training.py, on a trained model).
"""

from __future__ import annotations

import doctest
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

import recsieve.rerankers.base as base_mod
import recsieve.rerankers.context as context_mod
from recsieve.errors import CorruptStoreError, InvalidInputError, ModelNotTrainedError
from recsieve.rerankers import (
    MARKER_FILE,
    ContextEvent,
    CrossEncoderReranker,
    Reranker,
    check_scores,
    describe_age,
    render_context,
)
from recsieve.rerankers.cross_encoder import DEFAULT_MAX_LENGTH

MIN, HOUR, DAY = 60.0, 3600.0, 86400.0


def test_doctests() -> None:
    for mod in (base_mod, context_mod):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


# -- describe_age ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "just now"),
        (59.9, "just now"),
        (60, "1 min ago"),
        (300, "5 min ago"),
        (3599, "59 min ago"),
        (HOUR, "1 hour ago"),
        (2 * HOUR + 59 * MIN, "2 hours ago"),
        (DAY - 1, "23 hours ago"),
        (DAY, "1 day ago"),
        (2 * DAY + 5 * HOUR, "2 days ago"),
        (14 * DAY - 1, "13 days ago"),
        (14 * DAY, "2 weeks ago"),
        (59 * DAY, "8 weeks ago"),
        (60 * DAY, "2 months ago"),
        (364 * DAY, "12 months ago"),
        (365 * DAY, "1 year ago"),
        (3 * 365 * DAY + DAY, "3 years ago"),
    ],
)
def test_describe_age(seconds: float, expected: str) -> None:
    assert describe_age(seconds) == expected


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "5", True, None])
def test_describe_age_rejects(bad: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        describe_age(bad)  # type: ignore[arg-type]
    assert info.value.field == "age_seconds"


# -- render_context -------------------------------------------------------------------------


def test_render_context_example_from_design() -> None:
    events = [ContextEvent("Casino (1995)", "purchase", 2 * DAY + 3 * HOUR),
              ContextEvent("Heat (1995)", "click", 12.0)]
    assert render_context(events, "something lighter") == (
        "request: something lighter | recent: clicked Heat (1995) (just now); "
        "purchased Casino (1995) (2 days ago)"
    )


def test_render_context_parts() -> None:
    assert render_context([]) == ""
    assert render_context([], "funny films") == "request: funny films"
    assert render_context([], "   ") == ""  # a blank instruction is no instruction
    # unknown age: no recency; unknown kind: shown as it is; event text quoted
    events = [ContextEvent("Toy Story", "click", None), ContextEvent("Fargo", "shared", 7200.0, "for dad")]
    assert render_context(events) == 'recent: shared Fargo (2 hours ago): "for dad"; clicked Toy Story'
    kinds = ["view", "cart", "rating", "skip", "dislike"]
    text = render_context([ContextEvent("X", k, None) for k in kinds])
    assert text == "recent: disliked X; skipped X; rated X; added to cart X; viewed X"


def test_render_context_keeps_most_recent_events() -> None:
    events = [ContextEvent(t, "click", None) for t in ("A", "B", "C", "D")]
    assert render_context(events, max_events=2) == "recent: clicked D; clicked C"
    assert render_context(events, "x", max_events=0) == "request: x"


def test_render_context_truncates_and_cleans_titles() -> None:
    events = [ContextEvent("The   Good,\nthe Bad and the Ugly (1966)", "click", None)]
    assert render_context(events) == "recent: clicked The Good, the Bad and the Ugly (1966)"
    assert render_context(events, max_title_chars=12) == "recent: clicked The Good,..."  # 9 chars + ...
    assert render_context([], "a" * 40, max_chars=20) == "request: " + "a" * 8 + "..."


def test_render_context_drops_oldest_events_to_fit() -> None:
    events = [ContextEvent(t, "click", None) for t in ("Alpha", "Beta", "Gamma")]
    full = "request: q | recent: clicked Gamma; clicked Beta; clicked Alpha"
    assert render_context(events, "q") == full
    assert render_context(events, "q", max_chars=len(full)) == full
    # one character less: the oldest event goes, the rest stays whole
    assert render_context(events, "q", max_chars=len(full) - 1) == "request: q | recent: clicked Gamma; clicked Beta"
    assert render_context(events, "q", max_chars=20) == "request: q"


def test_render_context_is_deterministic_and_pure() -> None:
    events = [ContextEvent("Heat", "click", 30.0), ContextEvent("Up", "view", 90.0)]
    copy = list(events)
    first = render_context(events, "x")
    assert render_context(events, "x") == first
    assert events == copy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_events": -1}, "max_events"),
        ({"max_chars": 3}, "max_chars"),
        ({"max_title_chars": 0}, "max_title_chars"),
        ({"instruction": 5}, "instruction"),
    ],
)
def test_render_context_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        render_context([ContextEvent("A", "click", None)], **kwargs)
    assert info.value.field == field


def test_render_context_rejects_non_events_and_future_events() -> None:
    with pytest.raises(InvalidInputError):
        render_context([("A", "click", 1.0)])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError) as info:
        render_context([ContextEvent("A", "click", -5.0)])
    assert info.value.field == "age_seconds"


# -- check_scores ---------------------------------------------------------------------------


def test_check_scores_accepts_and_returns_the_array() -> None:
    scores = np.array([3.0, -2.5, 0.0], dtype=np.float32)
    assert check_scores(scores, 3) is scores
    empty = np.empty(0, dtype=np.float32)
    assert check_scores(empty, 0) is empty


@pytest.mark.parametrize(
    ("scores", "n", "field"),
    [
        ([1.0, 2.0], 2, "reranker.scores"),
        (np.array([1.0, 2.0]), 2, "reranker.scores"),  # float64
        (np.zeros((2, 1), dtype=np.float32), 2, "reranker.scores"),
        (np.zeros(3, dtype=np.float32), 2, "reranker.scores"),
        (np.array([0.0, np.nan, 1.0], dtype=np.float32), 3, "reranker.scores[1]"),
        (np.array([0.0, 1.0, -np.inf], dtype=np.float32), 3, "reranker.scores[2]"),
    ],
)
def test_check_scores_rejects(scores: object, n: int, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        check_scores(scores, n)
    assert info.value.field == field


def test_reranker_is_abstract() -> None:
    with pytest.raises(TypeError):
        Reranker()  # type: ignore[abstract]


# -- CrossEncoderReranker -------------------------------------------------------------------


@pytest.fixture(scope="module")
def reranker(marked_model: str) -> CrossEncoderReranker:
    rr = CrossEncoderReranker(marked_model, batch_size=4, max_length=64)
    rr.load()
    return rr


CONTEXT = "request: something lighter | recent: clicked Heat (1995) (just now)"
ITEMS = ["Toy Story (1995). Animation, Comedy", "Casino (1995). Crime, Drama", "Babe (1995)",
         "Jumanji (1995). Adventure, Children's, Fantasy", "Sabrina (1995). Comedy, Romance",
         "GoldenEye (1995). Action, Adventure, Thriller", "Nixon (1995). Drama"]


class RerankerContract:
    """The Reranker contract; subclass with a ``reranker`` fixture for each implementation."""

    def test_scores_shape_dtype_finite(self, reranker: Reranker) -> None:
        scores = reranker.score(CONTEXT, ITEMS)
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
        assert scores.shape == (len(ITEMS),)
        assert np.isfinite(scores).all()
        check_scores(scores, len(ITEMS))

    def test_empty_items(self, reranker: Reranker) -> None:
        out = reranker.score(CONTEXT, [])
        assert out.dtype == np.float32 and out.shape == (0,)

    def test_deterministic_and_order_equivariant(self, reranker: Reranker) -> None:
        first = reranker.score(CONTEXT, ITEMS)
        np.testing.assert_array_equal(reranker.score(CONTEXT, ITEMS), first)
        np.testing.assert_allclose(reranker.score(CONTEXT, ITEMS[::-1]), first[::-1], atol=1e-5)

    def test_context_matters(self, reranker: Reranker) -> None:
        a = reranker.score(CONTEXT, ITEMS)
        b = reranker.score("recent: purchased Nixon (1995) (3 days ago)", ITEMS)
        assert not np.allclose(a, b)

    def test_names(self, reranker: Reranker) -> None:
        assert isinstance(reranker.name, str) and reranker.name
        assert isinstance(reranker.model_id, str) and reranker.model_id


class TestCrossEncoderContract(RerankerContract):
    pass


def test_scores_are_raw_logits_of_each_pair(reranker: CrossEncoderReranker, marked_model: str) -> None:
    """Oracle: the Hugging Face model run on one pair at a time (no padding, no activation)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(marked_model)
    hf = AutoModelForSequenceClassification.from_pretrained(marked_model).eval()
    with torch.inference_mode():
        expected = [hf(**tok(CONTEXT, item, truncation=True, max_length=64, return_tensors="pt")).logits.item()
                    for item in ITEMS]
    np.testing.assert_allclose(reranker.score(CONTEXT, ITEMS), expected, rtol=1e-4, atol=1e-4)


def test_batch_size_does_not_change_scores(reranker: CrossEncoderReranker, marked_model: str) -> None:
    whole = CrossEncoderReranker(marked_model, batch_size=64, max_length=64)
    np.testing.assert_allclose(whole.score(CONTEXT, ITEMS), reranker.score(CONTEXT, ITEMS), atol=1e-5)


def test_per_call_activation_never_leaks(reranker: CrossEncoderReranker) -> None:
    """Another caller asking the shared model for sigmoid scores changes nothing for the next call."""
    import torch

    logits = reranker.score(CONTEXT, ITEMS)
    model = reranker._model
    probs = model.predict([(CONTEXT, t) for t in ITEMS], batch_size=4, show_progress_bar=False,
                          activation_fn=torch.nn.Sigmoid())
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-logits)), atol=1e-5)
    np.testing.assert_array_equal(reranker.score(CONTEXT, ITEMS), logits)


def test_threads_share_one_reranker(marked_model: str) -> None:
    rr = CrossEncoderReranker(marked_model, batch_size=4, max_length=64)  # not loaded: threads race to load
    expected = CrossEncoderReranker(marked_model, batch_size=4, max_length=64).score(CONTEXT, ITEMS)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2):
                results.append(rr.score(CONTEXT, ITEMS))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_marker_is_exposed(reranker: CrossEncoderReranker, marked_model: str) -> None:
    assert reranker.marker["loss"] == "test"
    rr = CrossEncoderReranker(marked_model)  # the marker gives no max_length: the default
    assert rr.max_length is None
    rr.load()
    assert rr.max_length == DEFAULT_MAX_LENGTH


def test_untrained_base_model_is_refused(base_path: str) -> None:
    rr = CrossEncoderReranker(base_path)  # construction is cheap and does not load
    with pytest.raises(ModelNotTrainedError, match=MARKER_FILE):
        rr.score(CONTEXT, ITEMS)
    with pytest.raises(ModelNotTrainedError):
        rr.load()


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotTrainedError, match="not a folder"):
        CrossEncoderReranker(str(tmp_path / "nope")).score(CONTEXT, ITEMS)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99}), json.dumps([1])])
def test_bad_marker_is_corrupt(tmp_path: Path, content: str) -> None:
    (tmp_path / MARKER_FILE).write_text(content)
    with pytest.raises(CorruptStoreError):
        CrossEncoderReranker(str(tmp_path)).load()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"model": ""}, "model"), ({"model": 3}, "model"), ({"batch_size": 0}, "batch_size"),
     ({"max_length": True}, "max_length"), ({"device": ""}, "device")],
)
def test_constructor_validates(kwargs: dict, field: str) -> None:
    args = {"model": "somewhere", **kwargs}
    with pytest.raises(InvalidInputError) as info:
        CrossEncoderReranker(args.pop("model"), **args)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("context", "items", "field"),
    [(None, ["a"], "context"), (CONTEXT, "abc", "items"), (CONTEXT, ["a", 3], "items[1]")],
)
def test_score_validates(reranker: CrossEncoderReranker, context: object, items: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        reranker.score(context, items)  # type: ignore[arg-type]
    assert info.value.field == field
