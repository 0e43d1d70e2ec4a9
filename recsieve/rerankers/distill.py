"""Distil a trained cross-encoder into a shallower student that scores the same pairs alike.

The student starts as a copy of the teacher with only ``layers`` of its transformer layers
(evenly spaced, the first and last included) and is trained to reproduce the teacher's raw
logits (mean squared error) on (context, item) pairs from interaction data -- real user
contexts against the candidates recall gives them -- read at the student's own, usually
shorter, ``max_length``. Contexts are split into training and held-out ones; the epoch
whose student agrees best with the teacher on held-out contexts (mean Spearman correlation
of the two scorings per context) is kept. The student is written as an ordinary recsieve
re-ranker folder (marker ``kind: "distilled"``), served by
:class:`~recsieve.rerankers.cross_encoder.CrossEncoderReranker` or
:class:`~recsieve.rerankers.onnx.OnnxReranker` like any other.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.errors import InvalidInputError
from recsieve.rerankers.cross_encoder import CrossEncoderReranker
from recsieve.rerankers.folder import MARKER_FILE, MARKER_FORMAT, read_marker
from recsieve.storage import atomic_write_json, replacing_folder

__all__ = ["distill_reranker", "keep_layers", "spearman"]


def keep_layers(cross_encoder: Any, layers: int) -> list[int]:
    """Cut a sentence-transformers ``CrossEncoder`` down to ``layers`` evenly spaced transformer
    layers (first and last kept), in place; returns the indices kept."""
    import torch

    encoder = cross_encoder.model.base_model.encoder
    n = len(encoder.layer)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= n:
        raise InvalidInputError("layers", layers, f"must be between 1 and the model's {n} layers")
    keep = sorted({int(round(x)) for x in np.linspace(0, n - 1, layers)})
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    cross_encoder.model.config.num_hidden_layers = len(keep)
    return keep


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two scorings of the same items (ties get their mean rank)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _agreement(student: Any, groups: list[tuple[str, list[str], np.ndarray]], batch_size: int) -> float:
    import torch

    rhos = []
    for context, items, target in groups:
        with torch.no_grad():
            got = student.predict([(context, t) for t in items], batch_size=batch_size, show_progress_bar=False,
                                  convert_to_numpy=True)
        rhos.append(spearman(np.asarray(got, np.float32).reshape(-1), target))
    return float(np.mean(rhos)) if rhos else 0.0


def distill_reranker(
    teacher: str | os.PathLike,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    out: str | os.PathLike,
    layers: int = 2,
    max_length: int = 64,
    epochs: int = 4,
    batch_size: int = 32,
    lr: float = 1e-4,
    valid_fraction: float = 0.15,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a ``layers``-layer student of the trained cross-encoder ``teacher`` and save it to ``out``.

    ``groups``: ``(context, candidate item texts)`` from interaction data; every pair is
    scored by the teacher (fp32, its own ``max_length``) once. Returns the report also
    stored in the student's marker: layers kept, pairs, held-out agreement before and after
    training, the best epoch, seconds. ``out`` is replaced only when the student is complete.
    """
    read_marker(teacher)  # refuses a folder not trained by recsieve
    for name, value in (("layers", layers), ("max_length", max_length), ("epochs", epochs),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, value, "must be a positive integer")
    if not 0 < valid_fraction < 1:
        raise InvalidInputError("valid_fraction", valid_fraction, "must be between 0 and 1")
    groups = [(c, list(items)) for c, items in groups if len(items) >= 2]
    if len(groups) < 4:
        raise InvalidInputError("groups", len(groups), "need at least 4 contexts with 2 or more candidates each")

    import torch
    from sentence_transformers import CrossEncoder

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    teach = CrossEncoderReranker(teacher)
    scored = [(c, items, teach.score(c, items)) for c, items in tqdm(groups, desc="teacher scores",
                                                                     disable=not progress)]
    rng = np.random.default_rng(seed)
    held = rng.random(len(scored)) < valid_fraction
    held[-1] = True
    held[0] = False
    train = [g for g, h in zip(scored, held) if not h]
    valid = [g for g, h in zip(scored, held) if h]

    student = CrossEncoder(str(teacher), max_length=max_length, local_files_only=True,
                           activation_fn=torch.nn.Identity())
    n_layers = len(student.model.base_model.encoder.layer)
    keep = keep_layers(student, layers)
    before = _agreement(student, valid, batch_size)

    pairs = [(c, t, float(s)) for c, items, target in train for t, s in zip(items, target)]
    net = student.model
    optim = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    total = epochs * ((len(pairs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, 1.0 - s / max(total, 1)))
    best, best_epoch, best_state, history = before, 0, copy.deepcopy(net.state_dict()), []
    for epoch in tqdm(range(1, epochs + 1), desc="distil epochs", disable=not progress):
        net.train()
        order = rng.permutation(len(pairs))
        for lo in range(0, len(order), batch_size):
            batch = [pairs[i] for i in order[lo:lo + batch_size]]
            enc = student.tokenizer([b[0] for b in batch], [b[1] for b in batch], truncation=True,
                                    max_length=max_length, padding=True, return_tensors="pt")
            logits = net(**enc).logits[:, 0]
            loss = torch.nn.functional.mse_loss(logits, torch.tensor([b[2] for b in batch], dtype=logits.dtype))
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
        net.eval()
        rho = _agreement(student, valid, batch_size)
        history.append(round(rho, 4))
        if rho > best:
            best, best_epoch, best_state = rho, epoch, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    net.eval()
    report = {"teacher": str(teacher), "layers": len(keep), "kept_layers": keep, "teacher_layers": n_layers,
              "max_length": max_length, "train_pairs": len(pairs), "train_contexts": len(train),
              "valid_contexts": len(valid), "valid_spearman_before": before, "valid_spearman_after": best,
              "valid_history": history, "best_epoch": best_epoch, "epochs": epochs, "lr": lr,
              "seconds": round(time.perf_counter() - t0, 1)}
    with replacing_folder(Path(out)) as work:
        student.save_pretrained(str(work), create_model_card=False)
        atomic_write_json(work / MARKER_FILE, {
            "format": MARKER_FORMAT, "kind": "distilled", "max_length": max_length, "seed": seed,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **report})
    return report
