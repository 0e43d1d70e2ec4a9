"""``recsieve evaluate``: the systems by name, evaluated in one run on one dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from recsieve.errors import InvalidInputError
from recsieve.evaluation.datasets import DATASETS

__all__ = ["run_evaluation", "run_streaming", "run_instructions", "SYSTEMS"]

#: The SASRec yardstick's early stopping, as the published recipe's (Klenitskiy & Vasilev: patience 10
#: on validation NDCG@10): epochs without a better one on the context encoder's held-out users
#: (``TrainConfig.valid_users``: every user's second-to-last item, as the reference, up to 2,048 users).
SASREC_PATIENCE = 10
SYSTEMS = ("popularity", "item-knn", "transitions", "sasrec", "text-zero-shot", "recsieve-recall", "recsieve-fast",
           "recsieve", "recsieve-without-cross-encoder", "recsieve-without-refit")
#: the ablations of ``recsieve`` (the same engine, one learned part left out of its model) and the
#: :class:`~recsieve.evaluation.systems.EngineSystem` attribute naming each one's model folder
ABLATIONS = {"recsieve-without-cross-encoder": "ablated_model", "recsieve-without-refit": "before_refit_model"}


def run_evaluation(dataset: str, data_dir: str | Path, *, users: int | None = None, seed: int = 0,
                   systems: str | list[str] = "popularity,transitions", cross_encoder: bool = False,
                   progress: bool = True, channel_weights: tuple[float, ...] | None = None,
                   context_budget_s: float | None = 1200.0, sasrec_budget_s: float | None = 1800.0,
                   ranker_users: int | None = 2000, cold_items: float | None = None,
                   cache_dir: str | Path | None = None, cache: bool = True,
                   embedder: Any | None = None, min_len: int = 5) -> dict[str, Any]:
    """Load ``dataset`` from ``data_dir``, evaluate the named systems, print the table, return the report.

    ``recsieve`` is the whole engine: :func:`~recsieve.training.train_engine` trains its context
    model (item tower, context encoder, candidate scorer) and the ranking head that stacks them
    on the training part, within ``context_budget_s`` seconds for the encoder, the head on
    ``ranker_users`` users' last steps.
    ``recsieve-without-cross-encoder`` is its ablation: the same engine and encoder, the head
    retrained without the candidate scorer (it needs ``recsieve`` in the same run);
    ``recsieve-without-refit`` the same head with the encoder as it was before its refit on the
    steps held out from it (:func:`~recsieve.training.model.refit_encoder`).
    ``recsieve-fast`` is the ranking head over recall's features alone (no context model), and
    ``recsieve-recall`` recall alone. Every row gets its paired difference from ``recsieve``.
    ``cross_encoder=True`` adds the word-level MiniLM cross-encoder to ``recsieve-fast``'s
    ``full`` tier (tens of minutes on 2 cores).

    ``cold_items=f`` runs the cold-item protocol (see :mod:`recsieve.evaluation.protocol`): a
    seeded fraction ``f`` of the items never reaches training or a context, and only users whose
    test target is cold are evaluated (ID-only systems score about 0 there by construction;
    ``text-zero-shot`` is the baseline to beat). Users with fewer than ``min_len`` interactions
    are left out altogether (neither evaluated nor trained on).

    ``cache`` (default on): trained models (recsieve's model folders, SASRec's weights) and the
    items' text vectors are kept in ``cache_dir`` (default
    :func:`~recsieve.evaluation.model_cache.default_cache_dir`), keyed by the data's
    fingerprint, the split, each system's settings, the recsieve version and its training code, and a repeat of the
    same command loads them instead of training; the report's ``cache`` says which systems came
    from it. ``embedder``: the text embedder (default MiniLM; tests pass a small one).
    """
    from recsieve.embedding import SentenceTransformerEmbedder
    from recsieve.engine.config import EngineConfig
    from recsieve.evaluation.baselines import ItemKNN, Popularity, Transitions
    from recsieve.evaluation.datasets import load_dataset
    from recsieve.evaluation.harness import evaluate, format_table
    from recsieve.evaluation.model_cache import ModelCache, cached_text_vectors, default_cache_dir
    from recsieve.evaluation.protocol import check_cold_fraction
    from recsieve.evaluation.systems import (
        CachedEmbedder,
        EngineSystem,
        EngineVariant,
        TextZeroShot,
    )

    names = [s.strip() for s in systems.split(",")] if isinstance(systems, str) else list(systems)
    for name in names:
        if name not in SYSTEMS:
            raise InvalidInputError("systems", name, f"unknown system; expected some of {SYSTEMS}")
    if cold_items is not None:
        cold_items = check_cold_fraction(cold_items, "--cold-items")
    data = load_dataset(dataset, data_dir)
    config = EngineConfig(index="flat", cache="none", refresh_threads=0)
    if channel_weights is not None:
        config = config.replace(channel_weights=channel_weights)
    embedder = CachedEmbedder(embedder if embedder is not None else SentenceTransformerEmbedder())
    models = ModelCache(cache_dir if cache_dir is not None else default_cache_dir()) if cache else None
    for name in ABLATIONS:
        if name in names and "recsieve" not in names:
            raise InvalidInputError("systems", name, "is an ablation of recsieve: list both")
    names.sort(key=lambda n: n in ABLATIONS)  # after the system they ablate
    text_vectors = None
    if models is not None and any(n == "text-zero-shot" or n.startswith("recsieve") for n in names):
        # every text system embeds them: once, and kept for the next run
        vectors, hit = cached_text_vectors(models, embedder, data.item_texts, show_progress=progress)
        embedder.preload(data.item_texts, vectors)
        text_vectors = "from cache" if hit else "embedded and cached"
    built = []
    for name in names:
        if name == "popularity":
            built.append(Popularity())
        elif name == "item-knn":
            built.append(ItemKNN())
        elif name == "transitions":
            built.append(Transitions())
        elif name == "sasrec":
            from recsieve.evaluation.sasrec import SASRec
            from recsieve.training.context_model import TrainConfig

            built.append(SASRec(seed=seed, budget_s=sasrec_budget_s, valid_users=TrainConfig.valid_users,
                                valid_share=TrainConfig.valid_share,
                                patience=SASREC_PATIENCE))
        elif name == "text-zero-shot":
            built.append(TextZeroShot(data, embedder))
        elif name == "recsieve-recall":
            built.append(EngineSystem(data, name=name, config=config, embedder=embedder, rerank=False,
                                      progress=progress))
        elif name == "recsieve":
            built.append(EngineSystem(data, name=name, config=config, embedder=embedder, context=True,
                                      context_budget_s=context_budget_s, ranker_users=ranker_users,
                                      ablation="recsieve-without-cross-encoder" in names,
                                      refit_ablation="recsieve-without-refit" in names, progress=progress))
        elif name in ABLATIONS:
            base = next(b for b in built if b.name == "recsieve")
            built.append(EngineVariant(base, name, lambda base=base, attr=ABLATIONS[name]: getattr(base, attr)))
        else:  # recsieve-fast
            built.append(EngineSystem(data, name=name, config=config, embedder=embedder, train_ranker=True,
                                      cross_encoder=cross_encoder, tier="full", progress=progress))
    report = evaluate(data, built, users=users, seed=seed, progress=progress, cold_items=cold_items, cache=models,
                      min_len=min_len)
    if text_vectors is not None:
        report["cache"]["text_vectors"] = text_vectors
    for system, row in zip(built, report["results"]):
        if isinstance(system, EngineSystem):
            if system.train_report is not None:
                row["train_report"] = system.train_report
            system.close()
    print(format_table(report))
    return report


def run_streaming(dataset: str, data_dir: str | Path, *, chunks: int = 4, start: float = 0.5,
                  eval_users: int | None = 1000, ranker_users: int | None = 2000, learn_users: int | None = 500,
                  seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Load ``dataset``, run :func:`~recsieve.evaluation.streaming.streaming_evaluation`, print a table."""
    from recsieve.evaluation.datasets import load_dataset
    from recsieve.evaluation.streaming import STRATEGIES, streaming_evaluation

    report = streaming_evaluation(load_dataset(dataset, data_dir), chunks=chunks, start=start, eval_users=eval_users,
                                  ranker_users=ranker_users, learn_users=learn_users, seed=seed, progress=progress)
    print(f"{report['dataset']}: {report['events']:,} events in stream order by {report['order']}; "
          f"first {start:.0%} to train, then {chunks} chunks")
    print("chunk  users  " + "  ".join(f"{s:>10}" for s in STRATEGIES) + "  continual_s  retrain_s")
    for r in report["chunks"]:
        vals = "  ".join(f"{r[f'ndcg@10_{s}']:10.4f}" if r[f"ndcg@10_{s}"] is not None else f"{'-':>10}"
                         for s in STRATEGIES)
        print(f"{r['chunk']:>5}  {r['evaluated_users']:>5}  {vals}  {r.get('continual_seconds', 0):11.1f}  "
              f"{r.get('retrain_seconds', 0):9.1f}")
    print("mean NDCG@10 over chunks 2..: " + ", ".join(f"{s} {report[f'mean_ndcg@10_{s}']:.4f}" for s in STRATEGIES
                                                        if report[f"mean_ndcg@10_{s}"] is not None)
          + f"; update time: continual {report['continual_seconds_total']:.0f}s, "
            f"retrain {report['retrain_seconds_total']:.0f}s")
    for name, gain in report["gain_vs_never"].items():
        if gain["mean"] is not None:
            print(f"{name} - never: {gain['mean']:+.4f} NDCG@10 (95% CI {gain['ci95'][0]:+.4f} .. "
                  f"{gain['ci95'][1]:+.4f}, {gain['users']} paired users)")
    share = report["recovered_share"]
    print(f"continual recovers {share:.0%} of retraining's gain" if share is not None
          else report["recovered_share_note"])
    return report


def run_instructions(dataset: str, data_dir: str | Path, *, users: int = 500, seed: int = 0,
                     progress: bool = True) -> dict[str, Any]:
    """Load ``dataset``, run :func:`~recsieve.evaluation.instructions.instruction_evaluation`, print a table."""
    from recsieve.evaluation.datasets import load_dataset
    from recsieve.evaluation.instructions import instruction_evaluation

    report = instruction_evaluation(load_dataset(dataset, data_dir), users=users, seed=seed, progress=progress)
    print(f"{report['dataset']}: {report['users']} held-out users, {report['protocol']}")
    print(f"{'condition':<22} {'hr@10':>7} {'ndcg@10':>8} {'satisfying@10':>14}")
    for r in report["results"]:
        print(f"{r['condition']:<22} {r['hr@10']:7.4f} {r['ndcg@10']:8.4f} {r['satisfying@10']:14.4f}")
    return report


#: ``--dataset``'s help, shared by every command that reads a dataset.
DATASET_HELP = ("dataset format: ml-1m / ml-100k (GroupLens files), amazon (any Amazon set in UniSRec's atomic "
                "files: {prefix}.text, .item2index, .user2index, .train/.valid/.test.inter), amazon-scientific "
                "(the same, prefix Scientific), custom (interactions.csv|.parquet with user_id,item_id,ts and "
                "items.jsonl|.csv|.parquet in the catalog format; README: 'Evaluate on your own data')")


def add_evaluate_arguments(s: argparse.ArgumentParser) -> None:
    """The options of ``recsieve evaluate`` (kept here, beside :func:`run_evaluation`)."""
    s.add_argument("--dataset", required=True, choices=tuple(DATASETS), help=DATASET_HELP)
    s.add_argument("--data-dir", required=True, help="folder holding the dataset's files")
    s.add_argument("--users", type=int, help="evaluate a fixed seeded subset of this many users (default: all)")
    s.add_argument("--seed", type=int, default=0, help="seed for the user subset and training (default 0)")
    s.add_argument("--min-len", type=int, default=5, metavar="N",
                   help="leave out users with fewer than N interactions, from evaluation and training alike (at "
                        "least 3: history, validation and test item; default 5, as the published protocols)")
    s.add_argument("--systems", default="popularity,item-knn,transitions,text-zero-shot,recsieve-recall,recsieve",
                   help="comma-separated systems: popularity, item-knn, transitions, sasrec (the published full-softmax "
                        "recipe: early stopping after 10 epochs without a better NDCG@10 on every user's validation item (up to 2,048 users), the "
                        "best epoch kept; --sasrec-budget-s), text-zero-shot, recsieve-recall, recsieve-fast (recall + ranking "
                        "head over recall's features), recsieve (the whole engine: context model + head, trained on "
                        "the training part), recsieve-without-cross-encoder (its ablation: the head retrained "
                        "without the candidate scorer; needs recsieve), recsieve-without-refit (its ablation: the "
                        "same head with the encoder before its refit on the steps held out from it; needs "
                        "recsieve). Every row is paired against recsieve")
    s.add_argument("--context-budget-s", type=float, default=1200.0,
                   help="recsieve: context encoder training budget in seconds, 0 for none (default 1200)")
    s.add_argument("--ranker-users", type=int, default=2000,
                   help="recsieve: the ranking head learns from a seeded sample of this many users, 0 for all "
                        "(default 2000)")
    s.add_argument("--sasrec-budget-s", type=float, default=1800.0,
                   help="sasrec: training budget in seconds, 0 for none (default 1800)")
    s.add_argument("--cross-encoder", action="store_true", help="'recsieve-fast' also fine-tunes the word-level "
                   "MiniLM cross-encoder (600 users, about 10 minutes on 2 cores) and fits its weight on held-out users")
    s.add_argument("--channel-weights", help="recall fusion weights for vector,transitions,popularity in the recsieve "
                   "systems (default: the engine's, 1.0,1.0,0.3); choose them on the validation stage, not on test")
    s.add_argument("--cold-items", type=float, metavar="FRACTION",
                   help="cold-item protocol: a seeded FRACTION (0 < f < 1) of the items is declared cold; their "
                        "interactions are removed from training and from every context (all but the test target "
                        "itself), they stay in the catalog "
                        "with their text, and only users whose test target is cold are evaluated (ID-only systems "
                        "such as sasrec score about 0 there by construction; text-zero-shot is the baseline to "
                        "beat). Default: off")
    s.add_argument("--cache-dir", metavar="DIR",
                   help="where trained models (recsieve's, sasrec's) and the items' text vectors are cached, keyed "
                        "by the data's fingerprint, the split, each system's settings, the recsieve version and a "
                        "hash of the training code; a "
                        "repeat of the same command loads them instead of training (default: "
                        "$XDG_CACHE_HOME/recsieve/evaluate, else ~/.cache/recsieve/evaluate)")
    s.add_argument("--no-cache", action="store_true", help="train everything and read or write no model cache")
    s.add_argument("--json", help="also write the report as JSON to this path")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
