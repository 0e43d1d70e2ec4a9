"""Continual updates of the ranking head from the event stream (``recsieve.learn(engine)``, ``recsieve learn``).

An update takes the events journaled since the serving head was trained (its report's
``journal_seq``), turns each user's last new positive steps into ranking examples -- recall
run on that user's history before the step, with recall statistics that leave that user
out (as in training; a copy of the live statistics, so the log is not replayed), so no
example sees its own label -- mixes them with a replay sample of older
examples kept beside the head (so old behaviour is not forgotten), and continues training
the serving head for a few epochs. The update is kept only if some epoch does better than the
serving head on held-out new examples.

The new head is written to ``models/head-<seq>/`` in the engine directory (assembled in a
temporary folder and renamed into place), the engine switches to it with
:meth:`~recsieve.engine.engine.Engine.use_model` (atomic: requests never see half a model,
cached results of the old model are not served again), and the engine's config file is
rewritten atomically to name it, so a reopened engine serves it too. A failure anywhere
before the switch leaves the previous head serving. :class:`Learner` runs updates on a
schedule in a background thread with a time budget per update.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from recsieve.engine.context import CONTEXT_DIR
from recsieve.engine.ranker import listwise_ndcg
from recsieve.errors import InvalidInputError, ModelNotTrainedError
from recsieve.rerankers.training import Step
from recsieve.storage import replacing_folder
from recsieve.training.examples import RankingGroup, load_replay, ranking_groups, save_replay
from recsieve.training.head import fit_head

if TYPE_CHECKING:
    from recsieve.engine.engine import Engine

__all__ = ["learn", "Learner"]

log = logging.getLogger("recsieve")


def _ndcg(head: Any, groups: list[RankingGroup]) -> float:
        return float(np.mean([listwise_ndcg(head.score(g.features), g.target) for g in groups])) if groups else 0.0


def learn(
    engine: Engine,
    *,
    steps_per_user: int = 3,
    replay: int = 2000,
    epochs: int = 10,
    lr: float = 1e-3,
    valid_fraction: float = 0.2,
    users: int | None = None,
    budget_s: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Update the serving ranking head from events since its training; returns a report.

    ``steps_per_user``: each user's last N new positive steps become examples; ``replay``:
    older examples mixed in (at most); ``epochs`` and ``lr`` of the continued training;
    ``users``: a seeded sample of this many users with new steps (default: all);
    ``budget_s``: stop training after the epoch that exceeds it. The report says whether the
    head was replaced (``updated``) and why not when it was not.
    """
    t0 = time.perf_counter()
    head = engine.ranking_head
    if head is None:
        raise ModelNotTrainedError("learn() updates a trained ranking head: run train-reranker first")
    since = int(head.report.get("journal_seq", 0))
    channels, last = engine.statistics()  # the statistics and the journal position of one moment
    report: dict[str, Any] = {"updated": False, "since_seq": since, "to_seq": last}
    if last <= since:
        return {**report, "reason": "no new events", "seconds": round(time.perf_counter() - t0, 3)}
    by_user: dict[str, list[tuple[float, int, Step]]] = defaultdict(list)
    for rec in engine.journal.events():
        if rec.seq > last:
            break
        by_user[rec.user_id].append((rec.ts, rec.seq, Step(rec.row, rec.kind, rec.ts, rec.text)))
    sequences: dict[str, list[Step]] = {}
    new_from: dict[str, int] = {}
    for u, steps in by_user.items():
        steps.sort(key=lambda x: (x[0], x[1]))
        sequences[u] = [s for _, _, s in steps]
        first = next((i for i, (_, q, _) in enumerate(steps) if q > since), None)
        if first is not None:
            new_from[u] = first
    # The live statistics observed these very events (in journal order; a user whose events
    # were recorded out of time order is taken out approximately), so no replay of the log.
    fresh, tried = ranking_groups(engine, sequences, users=users, steps_per_user=steps_per_user, new_from=new_from,
                                  seed=seed, channels=channels)
    report.update(users=tried, new_examples=len(fresh))
    if len(fresh) < 2:
        return {**report, "reason": "too few new examples recall finds", "seconds": round(time.perf_counter() - t0, 3)}
    rng = np.random.default_rng(seed)
    users = sorted({g.user_id for g in fresh})
    held = {u for u, v in zip(users, rng.random(len(users)) < valid_fraction) if v} or {users[-1]}
    train = [g for g in fresh if g.user_id not in held] or fresh[:-1]
    valid = [g for g in fresh if g.user_id in held and g not in train]
    model_dir = engine.model_dir
    old = load_replay(model_dir) if model_dir is not None else []
    if len(old) > replay:
        old = [old[i] for i in sorted(rng.choice(len(old), size=replay, replace=False))]
    names = engine.feature_names()
    new_head = fit_head([g.features for g in train + old], [g.target for g in train + old], names,
                        valid=([g.features for g in valid], [g.target for g in valid]) if valid else None,
                        epochs=epochs, lr=lr, seed=seed, init=head, budget_s=budget_s,
                        weights=[g.weight for g in train + old])
    before, after = _ndcg(head, valid), _ndcg(new_head, valid)
    report.update(train_examples=len(train), replay_examples=len(old), valid_examples=len(valid),
                  valid_ndcg_before=before, valid_ndcg_after=after, epochs=new_head.report["epochs"])
    if valid and new_head.report["best_epoch"] == 0:  # no epoch beat the starting weights
        return {**report, "reason": "no epoch beat the serving head on held-out new examples",
                "seconds": round(time.perf_counter() - t0, 3)}
    new_head.blend, new_head.blend_top = head.blend, head.blend_top
    if head.cross_encoder and model_dir is not None:
        new_head.cross_encoder = str((model_dir / head.cross_encoder).resolve())
    new_head.report = {**new_head.report, "journal_seq": last, "parent": str(model_dir),
                       "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "learn": report}
    folder = engine.directory / "models" / f"head-{last}"
    with replacing_folder(folder) as work:
        if model_dir is not None and (model_dir / CONTEXT_DIR).exists():  # the context model the head stacks
            shutil.copytree(model_dir / CONTEXT_DIR, work / CONTEXT_DIR)
        new_head.save(work)
        save_replay(work, old + train, limit=replay, seed=seed)
    engine.use_model(folder, persist=True)
    report.update(updated=True, model=str(folder), seconds=round(time.perf_counter() - t0, 3))
    return report


class Learner:
    """Runs :func:`learn` every ``interval_s`` seconds in a daemon thread (``budget_s`` of
    training at most per update) until :meth:`stop`. Errors are logged, never raised into
    the serving path; the last report is in ``last_report``."""

    def __init__(self, engine: Engine, interval_s: float = 300.0, budget_s: float = 30.0) -> None:
        if not interval_s > 0 or not budget_s > 0:
            raise InvalidInputError("interval_s/budget_s", (interval_s, budget_s), "must be positive")
        self.engine, self.interval_s, self.budget_s = engine, interval_s, budget_s
        self.last_report: dict[str, Any] | None = None
        self.updates = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recsieve-learner", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.last_report = learn(self.engine, budget_s=self.budget_s)
                self.updates += int(self.last_report["updated"])
            except Exception:  # noqa: BLE001 - a failed update must not stop serving
                log.exception("recsieve: background learn() failed; the previous model keeps serving")

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the update in progress (if any)."""
        self._stop.set()
        self._thread.join(timeout)
