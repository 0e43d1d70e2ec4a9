"""Pseudo-cold ranking examples: how the head learns to rank items nobody has interacted with yet.

A cold item (upserted after training, or never interacted with) has no behaviour statistics --
no popularity, no transitions -- and its context-model token comes from its text alone (no ID
residual). A head trained only on warm targets learns that an item without behaviour is never
the answer and ranks every cold item below the warm candidates, however well its text fits.

Here a seeded random share of the items the log holds is made **pseudo-cold** for a second set
of examples, exactly as the cold-item protocol makes items cold
(:func:`~recsieve.evaluation.protocol.cold_item_split`): their steps are removed from every
user's history (each user's last positive step, the example's target, is kept whatever it is),
the recall statistics are counted without them, and they are served by a copy of the context
model whose ID residuals for them are zero (tokens from text alone, the behaviour index rebuilt
from those tokens). Recall and features then come from the engine's own functions
(:func:`~recsieve.training.examples.ranking_groups`), as they would for a truly cold item, with
statistics leaving each user out as usual. Which items are pseudo-cold does not depend on which
items are targets, so in these examples items without behaviour are the answer as often as such
items are (the users are sampled by whether their target is cold, and weighted back, see
:func:`pseudo_cold_groups`): the head learns how an item without behaviour ranks against warm
ones from what its text and the context model say, not that "cold" wins or loses as such.

One difference from a truly cold item remains: the context model did learn these items' IDs
(and, with ``TrainConfig.id_dropout``, their text-only tokens as targets), so their text-only
tokens are somewhat better trained than a never-seen item's.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from recsieve.engine.context import CONTEXT_DIR
from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.rerankers.training import Step
from recsieve.training.batched_examples import supported
from recsieve.training.examples import RankingGroup, last_positives, observe_all, ranking_groups

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.context.model import ContextModel

__all__ = ["COLD_SALT", "pseudo_cold_items", "cold_world", "without_ids", "pseudo_cold_groups"]

#: Mixed into the pseudo-cold draw's seed, so it is independent of the examples' user sample.
COLD_SALT = 0x5EEDC01D


def pseudo_cold_items(sequences: dict[str, list[Step]], share: float, seed: int = 0) -> np.ndarray:
    """A seeded random ``share`` of the distinct rows ``sequences`` hold (sorted int64; at least one)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < share < 1.0:
        raise InvalidInputError("cold_share", share, "must be a share strictly between 0 and 1")
    rows = np.unique(np.fromiter((s.item for seq in sequences.values() for s in seq), np.int64))
    if rows.size < 2:
        raise InvalidInputError("events", int(rows.size), "need 2+ distinct items to make some pseudo-cold")
    k = min(rows.size - 1, max(1, round(share * rows.size)))
    return np.sort(np.random.default_rng([COLD_SALT, int(seed)]).choice(rows, size=k, replace=False))


def cold_world(sequences: dict[str, list[Step]],
               cold: np.ndarray) -> tuple[dict[str, list[Step]], dict[str, list[Step]]]:
    """(examples, statistics): each user's steps without the ``cold`` rows but its last positive
    step (the target, kept even when cold), and every user's steps without any cold row (what the
    recall statistics count). Users left with no target or no history give no examples."""
    is_cold = np.zeros(int(cold.max()) + 1 if cold.size else 0, bool)
    is_cold[cold] = True

    def warm(step: Step) -> bool:
        return not (step.item < is_cold.size and is_cold[step.item])

    examples, statistics = {}, {}
    for u, seq in sequences.items():
        statistics[u] = [s for s in seq if warm(s)]
        last = last_positives(seq, 1)
        if last:
            t = last[0]
            history = [s for s in seq[:t] if warm(s)]
            if history:
                examples[u] = [*history, seq[t]]
    return examples, statistics


def without_ids(model: ContextModel, rows: np.ndarray, text_vectors: np.ndarray | None) -> ContextModel:
    """A copy of ``model`` in which ``rows`` have no ID residual and no co-occurrence: their tokens
    come from text alone, as a cold item's do (the original is unchanged)."""
    twin = copy.deepcopy(model)
    if twin.tower.ids is not None:
        rows = np.asarray(rows, np.int64)
        rows = rows[rows < twin.tower.n_warm]
        with torch.no_grad():
            twin.tower.ids.weight[torch.from_numpy(rows)] = 0.0
    if twin.cooccurrence is not None:
        twin.cooccurrence = twin.cooccurrence.without(rows)
    twin.set_items(text_vectors)
    return twin


def pseudo_cold_groups(engine: Engine, sequences: dict[str, list[Step]], share: float, *,
                       context: ContextModel | None = None, users: int | None = None, seed: int = 0,
                       progress: bool = False, among: Collection[str] | None = None,
                       ) -> tuple[list[RankingGroup], dict[str, int]]:
    """Ranking examples in a world where a seeded ``share`` of the items is cold (see the module
    docstring): each sampled user's last positive step, recalled and featured by the engine's own
    functions with the statistics and (with ``context``, a trained context model whose fusion
    weight is set) the behaviour index of that world. Only the engine's built-in recall channels
    are supported (the batched builder's, which only read the statistics); with others there are
    no such examples.

    Few targets are cold (about ``share`` of them, fewer where cold items are less popular), so
    the ``users`` sampled (default: all) are drawn half from the users whose target is cold and
    half from the others, and each group is **weighted** by its stratum's size over its sample
    (scaled to a mean weight of 1): the head sees many cold targets, yet learns from them as
    often as they occur. Returns the groups whose target recall found, and counts:
    ``pseudo_cold_items``, ``users_tried``, ``cold_target_users`` (of all users, before sampling)
    and ``cold_targets`` (groups whose target is pseudo-cold). ``among``: sample only these users."""
    cold = pseudo_cold_items(sequences, share, seed)
    examples, statistics = cold_world(sequences, cold)
    channels = engine.new_statistics()
    counts = {"pseudo_cold_items": int(cold.size), "users_tried": 0, "cold_target_users": 0, "cold_targets": 0}
    if not examples or not supported(channels):  # the per-user loop would count the cold targets back in
        return [], counts
    ids = sorted(examples if among is None else set(examples) & set(among))
    cold_target = np.isin([examples[u][-1].item for u in ids], cold)
    strata = [[u for u, c in zip(ids, cold_target) if c], [u for u, c in zip(ids, cold_target) if not c]]
    rng = np.random.default_rng([COLD_SALT, int(seed), 1])
    take = len(ids) if users is None else min(users, len(ids))
    n_cold = min(len(strata[0]), take // 2 if len(strata[1]) >= take - take // 2 else take - len(strata[1]))
    sizes = (n_cold, take - n_cold)
    weight: dict[str, float] = {}
    for stratum, n in zip(strata, sizes):
        for u in (rng.choice(stratum, size=n, replace=False).tolist() if n < len(stratum) else stratum):
            weight[u] = len(stratum) / n
    observe_all(engine, channels, statistics)
    with tempfile.TemporaryDirectory(prefix="recsieve-pseudo-cold-") as tmp:
        model = None
        if context is not None:
            n_rows = engine.catalog.num_rows
            text = engine.text_vectors()[:n_rows] if context.settings.text_dim else None
            without_ids(context, cold, text).save(Path(tmp) / CONTEXT_DIR)
            model = engine.load_model(tmp)
        groups, _ = ranking_groups(engine, {u: examples[u] for u in weight}, steps_per_user=1, progress=progress,
                                   channels=channels, model=model)
    if groups:
        scale = len(groups) / sum(weight[g.user_id] for g in groups)
        for g in groups:
            g.weight = weight[g.user_id] * scale
    targets = np.array([g.rows[g.target] for g in groups], np.int64)
    counts.update(users_tried=len(weight), cold_target_users=len(strata[0]),
                  cold_targets=int(np.isin(targets, cold).sum()))
    return groups, counts
