"""Training the cross-encoder re-ranker on interaction sequences.

Two steps:

1. :func:`build_examples` turns users' event sequences into :class:`Example` objects: for a
   sampled time step ``t`` of a user, the context is the rendering of the events before ``t``
   (the same :func:`~recsieve.rerankers.context.render_context` that serving uses, through
   :func:`make_render`), the positive is the item at ``t``, the negatives are hard ones from a
   callable (the engine passes its recall) plus random ones.
2. :func:`train_reranker` fine-tunes ``CrossEncoder(base_model, num_labels=1)`` -- the bundled
   MiniLM bi-encoder with a fresh one-logit head -- with sentence-transformers'
   ``CrossEncoderTrainer`` and its losses (binary cross-entropy, or the listwise LambdaLoss),
   evaluates NDCG@10/MRR of the positive among its negatives on the validation examples,
   stops early, keeps the best checkpoint, and writes the model folder atomically together
   with the marker (``recsieve_reranker.json``) that :class:`CrossEncoderReranker` requires.

Training needs the ``train`` extra (``datasets``, ``accelerate``); serving does not.
Nothing is pushed to, or loaded from, a model hub.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsieve.embedding import DEFAULT_MODEL, resolve_model_path
from recsieve.errors import InvalidInputError, MissingDependencyError
from recsieve.rerankers.base import Reranker, check_scores
from recsieve.rerankers.context import ContextEvent, render_context
from recsieve.rerankers.folder import MARKER_FILE, MARKER_FORMAT
from recsieve.storage import atomic_write_json, fsync_dir
from recsieve.types import EVENT_KINDS

__all__ = [
    "Step",
    "Example",
    "TrainReport",
    "make_render",
    "build_examples",
    "evaluate_examples",
    "ranking_metrics",
    "train_reranker",
]

log = logging.getLogger(__name__)

#: Cut-off of the NDCG reported and used for early stopping.
NDCG_K = 10
_METRIC = f"ndcg@{NDCG_K}"


@dataclass(frozen=True)
class Step:
    """One event of a user's sequence: item index (catalog row), kind, time, optional text."""

    item: int
    kind: str = "click"
    ts: float | None = None
    text: str | None = None


@dataclass(frozen=True)
class Example:
    """One training example: a rendered context, the item text that came next, negatives."""

    context: str
    positive: str
    negatives: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train_reranker` did; also stored in the model's marker file."""

    out: str
    base_model: str
    loss: str
    epochs: float
    steps: int
    best_step: int | None
    stopped_early: bool
    train_examples: int
    valid_examples: int
    valid_before: dict[str, float]
    valid_after: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- examples -----------------------------------------------------------------------------


def make_render(
    titles: Sequence[str], *, max_events: int = 10, max_chars: int = 512, max_title_chars: int = 64
) -> Callable[[Sequence[Step], Step], str]:
    """A ``render(history, target)`` for :func:`build_examples` that reads as serving does.

    Each history step becomes a :class:`ContextEvent` with the item's title, its kind and its
    age at the target's time (``None`` when either time is unknown), rendered by
    :func:`render_context` with the given limits -- use the serving limits.
    """

    def render(history: Sequence[Step], target: Step) -> str:
        events = [
            ContextEvent(
                titles[s.item], s.kind,
                None if s.ts is None or target.ts is None else max(0.0, target.ts - s.ts), s.text,
            )
            for s in history
        ]
        return render_context(events, None, max_events=max_events, max_chars=max_chars,
                              max_title_chars=max_title_chars)

    return render


def _as_step(value: Step | int, n_items: int, field_name: str) -> Step:
    step = value if isinstance(value, Step) else Step(value) if isinstance(value, (int, np.integer)) else None
    if step is None or isinstance(step.item, bool) or not isinstance(step.item, (int, np.integer)):
        raise InvalidInputError(field_name, value, "must be an item index (int) or a Step")
    if not 0 <= int(step.item) < n_items:
        raise InvalidInputError(field_name, step.item, f"item index out of range [0, {n_items})")
    return step


def build_examples(
    sequences: Sequence[Sequence[Step | int]],
    item_texts: Sequence[str],
    render: Callable[[Sequence[Step], Step], str],
    negatives_fn: Callable[[list[int], int], Sequence[int]] | None = None,
    *,
    max_history: int = 10,
    steps_per_user: int = 5,
    n_hard: int = 4,
    n_random: int = 4,
    seed: int = 0,
    last_only: bool = False,
) -> list[Example]:
    """Training examples from users' event sequences (each in time order).

    ``last_only=True`` takes exactly one position per user, the last positive one (validation
    examples split by time); otherwise positions are sampled as follows.

    ``item_texts[i]`` is item ``i``'s catalog text (what the re-ranker reads for an item). For
    each sequence, up to ``steps_per_user`` positions ``t >= 1`` whose event is positive (not a
    skip/dislike) are sampled without replacement, later ones more likely (weight grows
    linearly with position). The context is ``render(history, target)`` with the last
    ``max_history`` steps before ``t``; the positive is item ``t``'s text; the negatives are up
    to ``n_hard`` items from ``negatives_fn(history_items, n)`` (all items before ``t``, oldest
    first; it may return fewer or more than ``n``) followed by ``n_random`` uniform ones. A
    negative is never an item of the same sequence (past or future: a future positive is not a
    negative) nor an item whose text equals the positive's. Examples without any negative are
    dropped. Deterministic for a given ``seed``.
    """
    n_items = len(item_texts)
    for name, value, low in (("max_history", max_history, 1), ("steps_per_user", steps_per_user, 1),
                             ("n_hard", n_hard, 0), ("n_random", n_random, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(name, value, f"must be an integer >= {low}")
    if n_hard and negatives_fn is None:
        raise InvalidInputError("negatives_fn", None, "is required when n_hard > 0")
    rng = np.random.default_rng(seed)
    examples: list[Example] = []
    for u, raw in enumerate(sequences):
        seq = [_as_step(s, n_items, f"sequences[{u}][{i}]") for i, s in enumerate(raw)]
        candidates = [t for t in range(1, len(seq)) if EVENT_KINDS.get(seq[t].kind, 1.0) > 0]
        if not candidates:
            continue
        if last_only:
            chosen = [len(candidates) - 1]
        else:
            weights = np.arange(1, len(candidates) + 1, dtype=np.float64)
            chosen = rng.choice(len(candidates), size=min(steps_per_user, len(candidates)), replace=False,
                                p=weights / weights.sum())
        exclude = {int(s.item) for s in seq}
        for t in sorted(candidates[int(c)] for c in chosen):
            target = seq[t]
            positive = item_texts[int(target.item)]
            negatives: list[int] = []
            taken = set(exclude)
            hard = negatives_fn([int(s.item) for s in seq[:t]], n_hard) if negatives_fn and n_hard else ()
            for item in hard:
                if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or not 0 <= item < n_items:
                    raise InvalidInputError("negatives_fn", item, f"returned an item index outside [0, {n_items})")
                if len(negatives) >= n_hard:
                    break
                if int(item) not in taken and item_texts[int(item)] != positive:
                    negatives.append(int(item))
                taken.add(int(item))
            goal = len(negatives) + n_random
            for _ in range(20 * n_random):
                if len(negatives) >= goal or len(taken) >= n_items:
                    break
                item = int(rng.integers(n_items))
                if item not in taken and item_texts[item] != positive:
                    negatives.append(item)
                taken.add(item)
            if negatives:
                context = render(seq[max(0, t - max_history):t], target)
                examples.append(Example(context, positive, [item_texts[i] for i in negatives]))
    return examples


# -- metrics --------------------------------------------------------------------------------


def ranking_metrics(scores: np.ndarray, k: int = NDCG_K) -> tuple[float, float]:
    """(NDCG@k, reciprocal rank) of the positive ``scores[0]`` among ``scores[1:]``.

    Ties are counted honestly: the positive is placed uniformly at random among the items
    with its score, and the metrics are their expectations -- a model that scores every item
    the same gets the average, not a perfect rank. A non-finite score is an error.

    >>> ranking_metrics(np.array([1.0, 0.0, 2.0], dtype=np.float32))  # rank 2
    (0.6309297535714575, 0.5)
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 1:
        raise InvalidInputError("scores", scores.shape, "must be a non-empty 1-d array, positive first")
    if not np.isfinite(scores).all():
        raise InvalidInputError("scores", scores.tolist()[:5], "NaN/inf scores cannot be ranked")
    pos, neg = scores[0], scores[1:]
    greater, ties = int((neg > pos).sum()), int((neg == pos).sum())
    ranks = np.arange(greater + 1, greater + ties + 2, dtype=np.float64)
    ndcg = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))
    return ndcg, float(np.mean(1.0 / ranks))


def _summarise(per_example: list[tuple[float, float]]) -> dict[str, float]:
    if not per_example:
        return {_METRIC: 0.0, "mrr": 0.0, "n": 0}
    arr = np.asarray(per_example, dtype=np.float64)
    return {_METRIC: float(arr[:, 0].mean()), "mrr": float(arr[:, 1].mean()), "n": len(per_example)}


def evaluate_examples(reranker: Reranker, examples: Sequence[Example]) -> dict[str, float]:
    """Mean NDCG@10 and MRR of each example's positive among its negatives, by ``reranker``.

    Returns ``{"ndcg@10": ..., "mrr": ..., "n": number of examples}``; ties are counted as in
    :func:`ranking_metrics`. Chance level for one positive among ``m`` negatives is an MRR of
    ``H(m+1)/(m+1)``.
    """
    out = []
    for ex in examples:
        docs = [ex.positive, *ex.negatives]
        out.append(ranking_metrics(check_scores(reranker.score(ex.context, docs), len(docs))))
    return _summarise(out)


def _check_examples(examples: object, name: str) -> list[Example]:
    if not isinstance(examples, Sequence) or not examples:
        raise InvalidInputError(name, type(examples).__name__, "must be a non-empty list of Example")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise InvalidInputError(f"{name}[{i}]", type(ex).__name__, "must be an Example")
        if not ex.negatives:
            raise InvalidInputError(f"{name}[{i}].negatives", ex.negatives, "an example needs at least one negative")
    return list(examples)


# -- training -------------------------------------------------------------------------------


def _require_training_stack() -> None:
    missing = [m for m in ("datasets", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"training the re-ranker needs {', '.join(missing)}: pip install 'recsieve[train]' "
            f"(or pip install {' '.join(missing)})"
        )


def _make_evaluator(examples: list[Example], batch_size: int) -> Any:
    """A sentence-transformers evaluator computing :func:`evaluate_examples` on a CrossEncoder."""
    import torch
    from sentence_transformers.base.evaluation import BaseEvaluator

    class _RankingEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = _METRIC
            self.greater_is_better = True

        def __call__(self, model: Any, output_path: str | None = None, epoch: float = -1,
                     steps: int = -1) -> dict[str, float]:
            pairs = [(ex.context, doc) for ex in examples for doc in (ex.positive, *ex.negatives)]
            scores = model.predict(pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                                   show_progress_bar=False, convert_to_numpy=True)
            scores = np.asarray(scores, dtype=np.float32).reshape(-1)
            out, start = [], 0
            for ex in examples:
                n = 1 + len(ex.negatives)
                out.append(ranking_metrics(scores[start:start + n]))
                start += n
            metrics = _summarise(out)
            metrics.pop("n")
            return metrics

    return _RankingEvaluator()


def _datasets(train: list[Example], loss: str) -> Any:
    from datasets import Dataset

    if loss == "bce":
        rows: dict[str, list] = {"query": [], "document": [], "label": []}
        for ex in train:
            for doc, label in ((ex.positive, 1.0), *((neg, 0.0) for neg in ex.negatives)):
                rows["query"].append(ex.context)
                rows["document"].append(doc)
                rows["label"].append(label)
        return Dataset.from_dict(rows)
    return Dataset.from_dict({
        "query": [ex.context for ex in train],
        "docs": [[ex.positive, *ex.negatives] for ex in train],
        "labels": [[1.0] + [0.0] * len(ex.negatives) for ex in train],
    })


def _fsync_files(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(Path(dirpath) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def train_reranker(
    train: Sequence[Example],
    valid: Sequence[Example],
    *,
    base_model: str = DEFAULT_MODEL,
    out: str | os.PathLike,
    epochs: float = 1,
    batch_size: int = 16,
    lr: float = 5e-5,
    loss: Literal["bce", "listwise"] = "bce",
    max_length: int = 128,
    patience: int = 2,
    eval_steps: int | None = None,
    warmup: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    device: str = "cpu",
) -> TrainReport:
    """Fine-tune a cross-encoder re-ranker and save the best one to ``out``.

    Starts from ``CrossEncoder(base_model, num_labels=1)`` (a local folder or installed model
    package, by default the bundled MiniLM bi-encoder: its encoder plus a fresh one-logit
    head). ``loss="bce"`` trains on (context, item, 0/1) pairs with
    ``BinaryCrossEntropyLoss`` (``pos_weight`` = negatives per positive; ``batch_size`` pairs
    per step); ``"listwise"`` trains ``LambdaLoss`` on each example's whole list
    (``batch_size`` examples per step). Pairs longer than ``max_length`` tokens are truncated.

    NDCG@10 of the positive among its negatives on ``valid`` is measured before training and
    every ``eval_steps`` optimiser steps (each epoch when ``None``); training stops after
    ``patience`` evaluations without improvement and the best checkpoint is kept. ``seed``
    fixes the head's initialisation and the data order.

    The model folder is assembled in a temporary folder next to ``out`` and renamed into
    place only when complete, with the marker ``recsieve_reranker.json`` (base model, loss,
    steps, validation metrics before and after); a failed or interrupted run leaves ``out``
    as it was. An existing ``out`` is replaced only with ``overwrite=True``.
    """
    _require_training_stack()
    train = _check_examples(train, "train")
    valid = _check_examples(valid, "valid")
    if loss not in ("bce", "listwise"):
        raise InvalidInputError("loss", loss, "must be 'bce' or 'listwise'")
    for name, value in (("batch_size", batch_size), ("max_length", max_length), ("patience", patience)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, value, "must be a positive integer")
    if eval_steps is not None and (isinstance(eval_steps, bool) or not isinstance(eval_steps, int) or eval_steps < 1):
        raise InvalidInputError("eval_steps", eval_steps, "must be a positive integer or None (each epoch)")
    for name, value, ok in (("epochs", epochs, lambda v: v > 0), ("lr", lr, lambda v: v > 0),
                            ("warmup", warmup, lambda v: 0 <= v < 1)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise InvalidInputError(name, value, "out of range")
    base_path = resolve_model_path(base_model, "base_model")
    out_path = Path(out).expanduser().absolute()
    if out_path.exists() and not overwrite:
        raise InvalidInputError("out", str(out_path), "already exists; pass overwrite=True to replace it")
    if out_path.exists() and not out_path.is_dir():
        raise InvalidInputError("out", str(out_path), "exists and is not a folder")

    import torch
    import transformers
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss

    t0 = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.training-", dir=out_path.parent))
    try:
        transformers.set_seed(seed)  # the fresh head's initialisation
        model = CrossEncoder(base_path, num_labels=1, max_length=max_length, device=device,
                             local_files_only=True, activation_fn=torch.nn.Identity())
        evaluator = _make_evaluator(valid, max(batch_size, 32))
        before = evaluator(model)
        if loss == "bce":
            neg_per_pos = sum(len(ex.negatives) for ex in train) / len(train)
            loss_fn = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(neg_per_pos))
        else:
            loss_fn = LambdaLoss(model)
        strategy = "epoch" if eval_steps is None else "steps"
        args = CrossEncoderTrainingArguments(
            output_dir=str(work / "checkpoints"),
            num_train_epochs=float(epochs),
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=lr,
            warmup_steps=warmup,
            eval_strategy=strategy,
            save_strategy=strategy,
            eval_steps=eval_steps,
            save_steps=eval_steps,
            save_only_model=True,
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model=f"eval_{_METRIC}",
            greater_is_better=True,
            logging_strategy="no",
            report_to="none",
            push_to_hub=False,
            disable_tqdm=not progress,
            seed=seed,
            data_seed=seed,
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
        )
        trainer = CrossEncoderTrainer(
            model=model, args=args, train_dataset=_datasets(train, loss), loss=loss_fn, evaluator=evaluator,
            callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=patience)],
        )
        if not progress:
            trainer.remove_callback(transformers.PrinterCallback)  # it prints every evaluation
        trainer.train()
        after = evaluator(model)  # the best checkpoint, reloaded by the trainer
        best = trainer.state.best_metric
        if best is not None and not math.isclose(after[_METRIC], best, rel_tol=1e-4, abs_tol=1e-6):
            log.warning("recsieve: re-evaluated NDCG@10 %.4f differs from the best checkpoint's %.4f",
                        after[_METRIC], best)
        best_ckpt = trainer.state.best_model_checkpoint
        steps = int(trainer.state.global_step)
        report = TrainReport(
            out=str(out_path),
            base_model=str(base_model),
            loss=loss,
            epochs=float(trainer.state.epoch or 0.0),
            steps=steps,
            best_step=int(best_ckpt.rsplit("-", 1)[-1]) if best_ckpt else None,
            stopped_early=trainer.state.epoch is not None and trainer.state.epoch < float(epochs) - 1e-6,
            train_examples=len(train),
            valid_examples=len(valid),
            valid_before={k: float(v) for k, v in before.items()},
            valid_after={k: float(v) for k, v in after.items()},
            seconds=time.perf_counter() - t0,
        )
        folder = work / "model"
        model.save_pretrained(str(folder), create_model_card=False)
        atomic_write_json(folder / MARKER_FILE, {
            "format": MARKER_FORMAT,
            "kind": "cross-encoder",
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "max_length": max_length,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "metric": _METRIC,
            **{k: v for k, v in report.to_dict().items() if k not in ("out", "seconds")},
        })
        _fsync_files(folder)
        if out_path.exists():
            os.replace(out_path, work / "previous")
        os.replace(folder, out_path)
        fsync_dir(out_path.parent)
        log.info("recsieve: re-ranker saved to %s (NDCG@10 %.4f -> %.4f on %d validation examples)",
                 out_path, before[_METRIC], after[_METRIC], len(valid))
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
