"""Evaluate scorers on one dataset in one run, under the same split and metrics.

>>> import numpy as np
>>> from recsieve.types import Item
>>> from recsieve.evaluation.datasets import Dataset
>>> from recsieve.evaluation.baselines import Popularity
>>> items = tuple(Item(str(i), title=f"item {i}") for i in range(4))
>>> seqs = tuple(np.array(s, np.int64) for s in ([0, 1, 2, 3, 0], [1, 2, 3, 0, 1]))
>>> data = Dataset("toy", items, tuple(i.title for i in items), ("a", "b"), seqs)
>>> report = evaluate(data, [Popularity()], progress=False)
>>> report["users"], report["results"][0]["system"]
(2, 'popularity')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.errors import InvalidInputError
from recsieve.evaluation.baselines import CandidateScorer, Scorer
from recsieve.evaluation.datasets import Dataset
from recsieve.evaluation.metrics import (
    catalog_coverage,
    check_scores,
    history_mask,
    paired_gain,
    rank_metrics,
    recall_coverage,
    top_k,
)
from recsieve.evaluation.model_cache import ModelCache, dataset_fingerprint, fit_cached
from recsieve.evaluation.protocol import Split, cold_item_split, leave_one_out, training_sequences

__all__ = ["evaluate", "evaluate_split", "format_table", "COLD_NOTE"]

#: What a cold-item report says about the systems that read no item text.
COLD_NOTE = ("cold items: every evaluated user's target is an item no system saw in training or in a context; "
             "systems that learn from item IDs alone (popularity, item-knn, transitions, sasrec) find it no better "
             "than chance by construction (a zero-count tie or an untrained embedding: about 0 on a real catalog); "
             "text-zero-shot is the baseline to beat")


def _protocol_text(exclude_history: bool, split: Split | None = None, stage: str = "test") -> str:
    text = "leave-one-out, full ranking, " + ("history excluded" if exclude_history else "history kept")
    if split is not None and split.cold is not None:
        text += (f", cold items: {split.cold.size} of {split.n_items} items removed from training and contexts, "
                 f"only users whose {stage} target is cold evaluated")
    return text


def evaluate(
    dataset: Dataset,
    systems: Sequence[Scorer],
    *,
    users: int | None = None,
    seed: int = 0,
    ks: Sequence[int] = (10, 20),
    recall_n: int = 200,
    stage: str = "test",
    min_len: int = 5,
    exclude_history: bool = True,
    batch_size: int = 256,
    progress: bool = True,
    reference: str = "recsieve",
    cold_items: float | None = None,
    cache: ModelCache | None = None,
) -> dict[str, Any]:
    """Fit each system on the training part of a leave-one-out split and rank for every user.

    Every row but ``reference``'s gets ``vs_<reference>``: its paired per-user difference from
    the reference system (NDCG@10, HR@10) with a 95% bootstrap interval, when that system ran.

    Returns a JSON-ready report::

        {"dataset": ..., "users": N, "items": ..., "protocol": "leave-one-out, full ranking,
         history excluded", "stage": "test", "seed": 0, "min_len": 5,
         "results": [{"system": ..., "hr@10": ..., "ndcg@10": ..., "hr@20": ..., "ndcg@20": ...,
                      "mrr": ..., "coverage@10": ..., "recall@200": ..., "recall_source": ...,
                      "fit_seconds": ..., "eval_seconds": ...}, ...]}

    ``coverage@K`` (K = the smallest of ``ks``) is the share of items in anyone's top K.
    ``recall@N`` is recall-stage coverage: for a :class:`CandidateScorer`, the share of users
    whose target is among its ``candidates(contexts, N)`` (``recall_source: "candidates"``);
    for any other scorer, HR@N of its full ranking (``"scores"``). ``users=N`` evaluates a
    seeded subset of N users; training always uses every kept user's training part.

    ``cold_items=f`` (0 < f < 1) runs the cold-item protocol
    (:func:`~recsieve.evaluation.protocol.cold_item_split`): a seeded fraction ``f`` of the
    items never reaches training or a context, and only users whose target is one of them are
    evaluated; the report adds ``cold_items`` (f), ``cold_item_count``, ``cold_target_users``
    (evaluated), ``cold_target_users_available`` (before a ``users`` subset) and ``notes``.

    ``cache``: load trained systems from this :class:`~recsieve.evaluation.model_cache.ModelCache`
    when an entry for the same data, split, system and settings is there, and store the ones
    trained; every row gets ``from_cache`` and the report ``cache`` (its folder, the systems
    that came from it).
    """
    if not systems:
        raise InvalidInputError("systems", systems, "give at least one scorer")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise InvalidInputError("systems", names, "system names must be unique")
    if cold_items is None:
        split = leave_one_out(dataset, min_len=min_len, users=users, seed=seed)
    else:
        split = cold_item_split(dataset, cold_items, stage=stage, min_len=min_len, users=users, seed=seed)
    cache_parts = None
    if cache is not None:
        cache_parts = {"dataset": dataset.name, "data": dataset_fingerprint(dataset),
                       "split": {"users": users, "seed": seed, "stage": stage, "min_len": min_len,
                                 "cold_items": cold_items}}
    report: dict[str, Any] = {
        "dataset": dataset.name,
        "users": split.n_users,
        "items": dataset.n_items,
        "protocol": _protocol_text(exclude_history, split, stage),
        "stage": stage,
        "seed": seed,
        "min_len": min_len,
    }
    if split.cold is not None:
        available = split.n_users if users is None else cold_item_split(
            dataset, cold_items, stage=stage, min_len=min_len, seed=seed).n_users
        report.update({"cold_items": cold_items, "cold_item_count": int(split.cold.size),
                       "cold_target_users": split.n_users, "cold_target_users_available": available,
                       "notes": [COLD_NOTE]})
    report["results"] = [
        evaluate_split(
            split,
            system,
            ks=ks,
            recall_n=recall_n,
            stage=stage,
            exclude_history=exclude_history,
            batch_size=batch_size,
            progress=progress,
            per_user=True,
            cache=cache,
            cache_parts=cache_parts,
        )
        for system in systems
    ]
    if cache is not None:
        report["cache"] = {"dir": str(cache.root),
                           "from_cache": [r["system"] for r in report["results"] if r.get("from_cache")]}
    paired_against(report, reference, seed=seed)
    return report


def evaluate_split(
    split: Split,
    system: Scorer,
    *,
    ks: Sequence[int] = (10, 20),
    recall_n: int = 200,
    stage: str = "test",
    exclude_history: bool = True,
    batch_size: int = 256,
    progress: bool = True,
    per_user: bool = False,
    cache: ModelCache | None = None,
    cache_parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ``system`` on ``training_sequences(split, stage)`` and return its result row
    (with ``per_user``, also its per-user NDCG and HR under :data:`PER_USER`, for pairing).

    With ``cache`` (and ``cache_parts``: what besides the system names the training data: the
    dataset, its fingerprint, the split), a cacheable system is loaded from it when it can be
    (:func:`~recsieve.evaluation.model_cache.fit_cached`); the row then says ``from_cache``."""
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise InvalidInputError("ks", ks, "give positive integer cut-offs")
    if isinstance(recall_n, bool) or not isinstance(recall_n, int) or recall_n < 1:
        raise InvalidInputError("recall_n", recall_n, "must be a positive integer")
    if batch_size < 1:
        raise InvalidInputError("batch_size", batch_size, "must be positive")
    if cache is not None and not cache_parts:
        raise InvalidInputError("cache_parts", cache_parts, "a cache needs what the training data is made of "
                                "(dataset, data fingerprint, split), or entries of other data would be served")
    n_items = split.n_items
    start = time.perf_counter()
    from_cache = fit_cached(system, training_sequences(split, stage), n_items, cache, cache_parts or {})
    fit_seconds = time.perf_counter() - start

    start = time.perf_counter()
    contexts, targets = split.contexts(stage), split.targets(stage)
    cover_k = min(ks)
    two_stage = isinstance(system, CandidateScorer)
    sums: dict[str, float] = {}
    paired: dict[str, list[np.ndarray]] = {f"ndcg@{k}": [] for k in ks} | {f"hr@{k}": [] for k in ks}
    seen = np.zeros(n_items, bool)
    recalled = 0.0
    bar = tqdm(total=len(targets), desc=system.name, unit="user", disable=not progress, leave=False)
    for lo in range(0, len(targets), batch_size):
        ctx, tgt = contexts[lo : lo + batch_size], targets[lo : lo + batch_size]
        scores = check_scores(system.score(ctx), len(ctx), n_items, f"{system.name}.score")
        mask = history_mask(ctx, n_items) if exclude_history else None
        per_user = rank_metrics(scores, tgt, mask, ks=(*ks, recall_n))
        for key, values in per_user.items():
            if key != "rank":
                sums[key] = sums.get(key, 0.0) + float(values.sum())
            if key in paired:
                paired[key].append(np.asarray(values, np.float64))
        seen[top_k(scores, cover_k, mask).ravel()] = True
        if two_stage:
            recalled += float(recall_coverage(system.candidates(ctx, recall_n), tgt).sum())
        bar.update(len(ctx))
    bar.close()
    n = max(len(targets), 1)
    row: dict[str, Any] = {"system": system.name}
    for k in ks:
        row[f"hr@{k}"] = sums[f"hr@{k}"] / n
        row[f"ndcg@{k}"] = sums[f"ndcg@{k}"] / n
    row["mrr"] = sums["mrr"] / n
    row[f"coverage@{cover_k}"] = catalog_coverage(np.flatnonzero(seen), n_items)
    row[f"recall@{recall_n}"] = recalled / n if two_stage else sums[f"hr@{recall_n}"] / n
    row["recall_source"] = "candidates" if two_stage else "scores"
    row["fit_seconds"] = round(fit_seconds, 3)
    row["eval_seconds"] = round(time.perf_counter() - start, 3)
    if cache is not None:
        row["from_cache"] = bool(from_cache or getattr(system, "from_cache", False))
    if per_user:
        row[PER_USER] = {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in paired.items()}
    return row


#: A result row's per-user metrics (same users, same order in every row of a report); not written to JSON.
PER_USER = "_per_user"


def paired_against(report: dict[str, Any], reference: str, keys: Sequence[str] = ("ndcg@10", "hr@10"),
                   seed: int = 0) -> None:
    """Add to every other row ``vs_<reference>``: per metric, the mean per-user difference (row
    minus ``reference``) on the same users, with a 95% bootstrap interval; then drop the per-user
    metrics from every row."""
    rows = {r["system"]: r for r in report["results"]}
    ref = rows.get(reference)
    for row in report["results"]:
        if ref is not None and row is not ref and PER_USER in row:
            row[f"vs_{reference}"] = {k: paired_gain(row[PER_USER][k].tolist(), ref[PER_USER][k].tolist(), seed=seed)
                                      for k in keys}
    for row in report["results"]:
        row.pop(PER_USER, None)


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a report from :func:`evaluate` (one row per system)."""
    rows = report["results"]
    metric_keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)] if rows else []
    head = ["system", *metric_keys]
    cells = [
        [
            str(r["system"]),
            *(f"{r[k]:.1f}" if k.endswith("seconds") else f"{r[k]:.4f}" for k in metric_keys),
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    title = (
        f"{report['dataset']}: {report['users']} users, {report.get('items', '?')} items, "
        f"{report['protocol']}, stage {report.get('stage', 'test')}, seed {report['seed']}"
    )
    if "cold_target_users" in report:
        title += (f"\ncold items: {report['cold_items']:g} of the catalog ({report['cold_item_count']} items); "
                  f"{report['cold_target_users']} users whose target is cold"
                  + (f" (a seeded subset of {report['cold_target_users_available']})"
                     if report.get("cold_target_users_available", 0) > report["cold_target_users"] else ""))
    lines = [
        title,
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=True))
        ),
    ]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append(
            "  ".join(
                x.ljust(w) if i == 0 else x.rjust(w)
                for i, (x, w) in enumerate(zip(c, widths, strict=True))
            )
        )
    for r in rows:
        for key, gains in r.items():
            if key.startswith("vs_"):
                parts = [f"{m} {g['mean']:+.4f} [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]"
                         for m, g in gains.items() if g.get("mean") is not None]
                lines.append(f"{r['system']} - {key[3:]} (paired, 95% CI): " + "; ".join(parts))
    if "cache" in report:
        hits = report["cache"]["from_cache"]
        vectors = report["cache"].get("text_vectors")
        lines.append(f"from the model cache ({report['cache']['dir']}): {', '.join(hits) if hits else 'none'}"
                     + (f"; item text vectors {vectors}" if vectors else ""))
    lines.extend(f"note: {n}" for n in report.get("notes", ()))
    return "\n".join(lines)
