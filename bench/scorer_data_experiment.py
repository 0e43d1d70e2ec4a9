"""How much held-out data the candidate scorer needs to carry weight (ML-1M, all users, test).

python bench/scorer_data_experiment.py --train-encoder --save DIR [--budget 1200] [--hold-users 4000] [--hold-steps 8]
python bench/scorer_data_experiment.py --model DIR --variants 2000x2,4000x8 [--epochs 2]

``--train-encoder``: trains the context encoder (the engine's settings) on every user's training
part (history + validation item) with the last ``--hold-steps`` positions of ``--hold-users``
seeded users held out, as ``recsieve train`` holds out the example users' steps, and saves it.
``--model``: for each variant ``UxS`` (U of those users, their S held-out steps just before the
last positions, the newest first), trains a fresh candidate scorer listwise on the encoder's top
200 where the target is among them (``recsieve.training.model.scorer_examples``), then re-ranks
every user's test candidates (the encoder's top 200, history excluded) and reports NDCG@10 /
HR@10 against the encoder's own order with a paired 95% interval, and each variant against the
first. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from context_experiment import text_vectors  # bench/ is the script's folder
from context_scorer_experiment import rerank_scores

from recsieve.context import ContextModel, ContextSettings
from recsieve.evaluation.datasets import load_dataset
from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.protocol import leave_one_out, training_sequences
from recsieve.intervals import paired_gain
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.model import scorer_examples
from recsieve.training.scorer import fit_candidate_scorer


def held_users(train: list[np.ndarray], n: int, steps: int, seed: int) -> np.ndarray:
    """A seeded order of the users with ``steps`` + 2 positions or more; the first ``n``."""
    ok = np.flatnonzero([len(s) >= steps + 2 for s in train])
    return np.random.default_rng(seed).permutation(ok)[:n]


def encoder_top(model: ContextModel, contexts, k: int = 200, batch: int = 256):
    """The encoder's scores, the history mask and the top ``k`` unseen candidates of each context."""
    enc = np.concatenate([model.score_items(contexts[lo : lo + batch]) for lo in range(0, len(contexts), batch)])
    mask = history_mask(contexts, enc.shape[1])
    return enc, mask, np.argsort(-np.where(mask, -np.inf, enc), axis=1)[:, :k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/ml-1m", help="the ML-1M folder")
    ap.add_argument("--text-cache", default="bench/.cache/ml1m_text.npy", help="MiniLM item vectors, computed once")
    ap.add_argument("--train-encoder", action="store_true", help="train and save the encoder (--save)")
    ap.add_argument("--save", default=None, help="folder for the trained encoder")
    ap.add_argument("--model", default=None, help="a saved encoder to train scorers on")
    ap.add_argument("--budget", type=float, default=1200, help="encoder training budget, seconds")
    ap.add_argument("--hold-users", type=int, default=4000, help="users whose last steps the encoder never trains on")
    ap.add_argument("--hold-steps", type=int, default=8, help="how many last steps of theirs")
    ap.add_argument("--variants", default="2000x2,4000x8", help="comma-separated USERSxSTEPS scorer data")
    ap.add_argument("--epochs", type=int, default=2, help="scorer epochs")
    ap.add_argument("--scorer-budget", type=float, default=600, help="scorer budget, seconds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out users and the training")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("ml-1m", a.data)
    split = leave_one_out(data)
    train = training_sequences(split, "test")
    held = held_users(train, a.hold_users, a.hold_steps, a.seed)
    t0 = time.time()
    if a.train_encoder:
        cut = set(held.tolist())
        rows = [s[: -a.hold_steps] if u in cut else s for u, s in enumerate(train)]
        tv = text_vectors(data, a.text_cache)
        settings = ContextSettings(n_warm=len(tv), text_dim=tv.shape[1])
        cfg = TrainConfig(budget_s=a.budget, seed=a.seed, threads=a.threads, progress=True)
        model, hist = fit_context_model([np.asarray(r, np.int64) for r in rows], len(tv), tv,
                                        settings=settings, config=cfg)
        model.save(a.save)
        print(json.dumps({"encoder": {k: v for k, v in hist.items() if k not in ("losses", "valid_curve")},
                          "wall_s": round(time.time() - t0, 1)}))
        return
    variants = {spec: tuple(int(x) for x in spec.split("x")) for spec in a.variants.split(",")}
    for spec, (n_users, steps) in variants.items():
        if steps > a.hold_steps or n_users > len(held):
            raise SystemExit(f"variant {spec}: the encoder held out {a.hold_steps} steps of {len(held)} users")
    model = ContextModel.load(a.model, threads=a.threads)
    contexts, targets = split.contexts("test"), split.targets("test")
    enc, mask, top = encoder_top(model, contexts)  # the encoder is frozen: once for every variant
    m_enc = rank_metrics(enc, targets, mask)
    out: dict = {"model": a.model, "epochs": a.epochs, "variants": {}}
    first = None
    for spec, (n_users, steps) in variants.items():
        ctx, tgt = [], []
        for u in held[:n_users]:
            s = train[u]
            for j in range(1, steps + 1):  # the newest held-out steps first, as recsieve train takes them
                ctx.append(np.asarray(s[: -j], np.int64))
                tgt.append(int(s[-j]))
        t = time.time()
        ctx, cands, tix, recall = scorer_examples(model, ctx, tgt, 200)
        model.scorer = None
        hist = fit_candidate_scorer(model, ctx, cands, tix, epochs=a.epochs, budget_s=a.scorer_budget,
                                    seed=a.seed, threads=a.threads, progress=True)
        fused = enc - 1e6  # outside the candidates: the encoder's order, below every candidate
        np.put_along_axis(fused, top, rerank_scores(model, contexts, top), axis=1)
        m_fin = rank_metrics(fused, targets, mask)
        row = {"examples": len(ctx), "encoder_recall@200": round(recall, 4), "scorer": hist,
               "seconds": round(time.time() - t, 1),
               "encoder_ndcg@10": float(m_enc["ndcg@10"].mean()), "ndcg@10": float(m_fin["ndcg@10"].mean()),
               "hr@10": float(m_fin["hr@10"].mean()),
               "vs_encoder": paired_gain(list(m_fin["ndcg@10"]), list(m_enc["ndcg@10"]))}
        if first is None:
            first = m_fin["ndcg@10"]
        else:
            row["vs_first"] = paired_gain(list(m_fin["ndcg@10"]), list(first))
        out["variants"][spec] = row
        print(json.dumps({spec: row}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
