"""Does the order of same-second ratings move the SASRec yardstick on ML-1M?

python bench/tie_order_experiment.py --ratings ../shared/data/ml-1m/ratings.users0001-2999.dat.gz
    --sequences ../shared/data/ml-1m/sequences.tsv --order tsv|file|movie|shuffle
    [--epochs 20] [--budget S] [--valid-users 0] [--threads 1] [--per-user FILE.npy] [--pair-with OTHER.npy]
python bench/tie_order_experiment.py --ratings … --sequences … --order file --custom-out DIR

ML-1M's timestamps are seconds, and many ratings share one: a user's sequence then depends on
how the preprocessing orders each same-second group. The shared ``sequences.tsv`` has them in
pandas' (unstable) sort order; the only timestamps at hand are those of users 1-2999
(``ratings.users0001-2999.dat.gz``). For those users this builds each sequence four ways, the
same ratings each time: ``tsv`` (as ``sequences.tsv``), ``file`` (by time, then the order of
``ratings.dat``: a stable sort), ``movie`` (by time, then movie id) and ``shuffle`` (by time, then
at random). It trains :class:`~recsieve.evaluation.sasrec.SASRec` (the published recipe) on all
but each user's last item and ranks every item for the last one (history excluded, ties at their
expected rank). A tie-order change may change a user's last item, so the paired interval pairs
users, not targets. Prints one JSON line, including the share of same-second neighbours.
``--custom-out DIR`` instead writes those users' sequences in that order as a ``custom``
evaluation folder (``ts`` = the position in the order, as ``load_ml1m`` gives the shared file),
for ``recsieve evaluate --dataset custom --data-dir DIR``.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import time
from pathlib import Path

import numpy as np

from recsieve.evaluation.metrics import history_mask, rank_metrics
from recsieve.evaluation.sasrec import SASRec
from recsieve.intervals import paired_gain

ORDERS = ("tsv", "file", "movie", "shuffle")


def sequences(ratings: str, tsv: str, order: str, seed: int = 1) -> tuple[list[list[int]], dict[str, float]]:
    """Each user's movie ids (users 1-2999, oldest first) in ``order``, and tie statistics."""
    by: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    with gzip.open(ratings, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            user, movie, _rating, ts = line.rstrip("\n").split("::")
            by[int(user)].append((int(ts), int(movie), line_no))
    from_tsv: dict[int, list[int]] = {}
    with open(tsv, encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            user, items = line.rstrip("\n").split("\t")
            if int(user) in by:
                from_tsv[int(user)] = [int(x) for x in items.split()]
    rng = np.random.default_rng(seed)
    keys = {
        "file": lambda e: (e[0], e[2]),
        "movie": lambda e: (e[0], e[1]),
        "shuffle": lambda e: (e[0], rng.random()),
    }
    out, tied, pairs, last_tied = [], 0, 0, 0
    for user in sorted(by):
        events = by[user]
        seq = from_tsv[user] if order == "tsv" else [m for _, m, _ in sorted(events, key=keys[order])]
        when = {m: t for t, m, _ in events}
        ts = [when[m] for m in seq]
        if any(a > b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"user {user}: the {order} order is not chronological")
        tied += sum(a == b for a, b in zip(ts, ts[1:]))
        pairs += len(ts) - 1
        last_tied += ts[-1] == ts[-2]
        out.append(seq)
    return out, {"same_second_neighbours": tied / pairs, "last_item_tied_with_the_one_before": last_tied / len(out)}


def write_orders(seqs: list[list[int]], ml1m: Path, out: Path) -> None:
    """Users 1..len(seqs)'s ``seqs`` and the movies they rated as a ``custom`` folder."""
    from recsieve.evaluation.datasets import load_ml1m, write_custom

    used = {str(m) for s in seqs for m in s}
    write_custom(out, (item for item in load_ml1m(ml1m).items if item.id in used),
                 ((str(user), [str(m) for m in seq]) for user, seq in enumerate(seqs, 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratings", required=True, help="ratings.users0001-2999.dat.gz (UserID::MovieID::Rating::Timestamp)")
    ap.add_argument("--sequences", required=True, help="sequences.tsv (the shared chronological sequences)")
    ap.add_argument("--order", choices=ORDERS, required=True, help="how each same-second group is ordered")
    ap.add_argument("--epochs", type=int, default=20, help="SASRec epochs at most (default %(default)s)")
    ap.add_argument("--budget", type=float, default=None, help="SASRec training seconds at most (default: none)")
    ap.add_argument("--valid-users", type=int, default=0,
                    help="held-out users for SASRec's early stopping (default 0: train every epoch)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    ap.add_argument("--per-user", default=None, help="save the per-user NDCG@10 here (.npy)")
    ap.add_argument("--pair-with", default=None, help="a --per-user file of another order's run")
    ap.add_argument("--custom-out", default=None,
                    help="write the sequences as a custom evaluation folder here (with the movies.dat beside "
                         "--sequences) and stop")
    a = ap.parse_args()
    seqs, ties = sequences(a.ratings, a.sequences, a.order)
    if a.custom_out:
        write_orders(seqs, Path(a.sequences).parent, Path(a.custom_out))
        return
    items = sorted({m for s in seqs for m in s})
    index = {m: i for i, m in enumerate(items)}
    rows = [np.array([index[m] for m in s], np.int64) for s in seqs]
    train = [r[:-1] for r in rows]
    targets = np.array([r[-1] for r in rows], np.int64)
    model = SASRec(epochs=a.epochs, budget_s=a.budget, threads=a.threads, valid_users=a.valid_users,
                   patience=8 if a.valid_users else None, seed=0)
    t0 = time.perf_counter()
    model.fit(train, len(items))
    fit_s = time.perf_counter() - t0
    m = rank_metrics(model.score(train), targets, history_mask(train, len(items)))
    out = {"order": a.order, "users": len(rows), "items": len(items), **{k: round(v, 4) for k, v in ties.items()},
           "ndcg@10": round(float(m["ndcg@10"].mean()), 4), "hr@10": round(float(m["hr@10"].mean()), 4),
           "fit_s": round(fit_s, 1), "epochs": model.history.get("epochs"),
           "best_epoch": model.history.get("best_epoch"), "args": vars(a)}
    if a.per_user:
        np.save(a.per_user, m["ndcg@10"])
    if a.pair_with:
        out["minus_pair_with"] = paired_gain(list(m["ndcg@10"]), list(np.load(a.pair_with)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
