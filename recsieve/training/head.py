"""Training the ranking head (``recsieve train-reranker``): a two-layer MLP over recall's
features of each candidate, fitted with a listwise softmax loss on each user's last steps, and
optionally a cross-encoder whose weight in the ``full`` tier is fitted on held-out users through
:func:`~recsieve.engine.ranker.blend_scores`, the rule serving orders by.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from recsieve.engine.context import CONTEXT_DIR
from recsieve.engine.engine import Engine
from recsieve.engine.ranker import RankingHead, blend_scores, listwise_ndcg
from recsieve.errors import InvalidInputError
from recsieve.intervals import paired_gain
from recsieve.rerankers.training import TrainReport
from recsieve.storage import replacing_folder
from recsieve.training.examples import (
    RANKER_USERS,
    RankingGroup,
    engine_sequences,
    ranking_groups,
    save_replay,
)
from recsieve.training.fusion import tune_context_weight
from recsieve.types import Event

if TYPE_CHECKING:  # pragma: no cover
    from recsieve.context.model import ContextModel

__all__ = ["fit_head", "fit_head_cv", "user_folds", "head_fitter", "without_feature", "fit_blend", "split_users",
           "train_engine_ranker"]


def fit_head(
    groups: Sequence[np.ndarray],
    targets: Sequence[int],
    names: Sequence[str],
    *,
    valid: tuple[Sequence[np.ndarray], Sequence[int]] | None = None,
    hidden: int = 32,
    epochs: int = 60,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch: int = 256,
    seed: int = 0,
    init: RankingHead | None = None,
    budget_s: float | None = None,
    weights: Sequence[float] | None = None,
    valid_weights: Sequence[float] | None = None,
    select: str = "ndcg",
) -> RankingHead:
    """Train a head with a listwise softmax loss: each group is one request's candidates
    (features ``(n_i, F)``), ``targets[i]`` the position of the item the user took next.
    ``weights`` / ``valid_weights``: how much each training / validation group counts in the
    loss / the validation mean (default: equally; they must be positive).

    With ``valid``, the epoch with the best validation score is kept (early stopping): by
    ``select``, the highest NDCG@10 (``"ndcg"``) or the lowest listwise loss (``"loss"``, the
    weighted mean cross-entropy of the target among its group's candidates, which every
    candidate's score moves, so it jumps less from epoch to epoch on a few hundred groups).
    ``init``: continue from this head (its normalisation and weights; ``hidden`` is then
    its). ``budget_s``: stop after the epoch that exceeds this many seconds.
    """
    import time

    import torch

    if not groups or len(groups) != len(targets):
        raise InvalidInputError("groups", len(groups), f"need one target per group ({len(targets)} targets)")
    f = len(names)
    for i, (g, t) in enumerate(zip(groups, targets)):
        if g.ndim != 2 or g.shape[1] != f:
            raise InvalidInputError(f"groups[{i}]", g.shape, f"expected (n, {f})")
        if not 0 <= t < g.shape[0]:
            raise InvalidInputError(f"targets[{i}]", t, f"must index a candidate of its group (0..{g.shape[0] - 1})")
    w_train = _group_weights(weights, len(groups), "weights")
    w_valid = None if valid is None else _group_weights(valid_weights, len(valid[0]), "valid_weights")
    if select not in ("ndcg", "loss"):
        raise InvalidInputError("select", select, "expected 'ndcg' or 'loss'")
    if init is not None:
        if tuple(init.features) != tuple(names):
            raise InvalidInputError("init", init.features, f"was trained on other features than {tuple(names)}")
        mean, std, hidden = init.mean, init.std, init.b1.shape[0]
    else:
        allx = np.concatenate(list(groups))
        mean = allx.mean(0).astype(np.float32)
        std = allx.std(0).astype(np.float32)
    # A feature that never varied in training (no request was ever given, say) carries no
    # learned meaning: its weights are pinned at zero, so an unseen value cannot swing scores.
    constant = std < 1e-6
    std = np.where(constant, 1.0, std).astype(np.float32)
    width = max(g.shape[0] for g in groups)

    def pack(gs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.zeros((len(gs), width, f), np.float32)
        mask = np.zeros((len(gs), width), bool)
        for i, g in enumerate(gs):
            m = min(g.shape[0], width)
            x[i, :m] = (g[:m] - mean) / std
            mask[i, :m] = True
        return torch.from_numpy(x), torch.from_numpy(mask)

    torch.manual_seed(seed)
    x, mask = pack(groups)
    y = torch.as_tensor(np.asarray(targets, np.int64))
    w = torch.from_numpy(w_train)
    model = torch.nn.Sequential(torch.nn.Linear(f, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    if init is not None:
        with torch.no_grad():
            model[0].weight.copy_(torch.from_numpy(init.w1.T.copy()))
            model[0].bias.copy_(torch.from_numpy(init.b1))
            model[2].weight.copy_(torch.from_numpy(init.w2[None, :].copy()))
            model[2].bias.fill_(init.b2)
    started = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)

    def head_of() -> RankingHead:
        w1, b1 = model[0].weight.detach().numpy().T.copy(), model[0].bias.detach().numpy().copy()
        w1[constant] = 0.0
        w2, b2 = model[2].weight.detach().numpy()[0].copy(), float(model[2].bias.detach()[0])
        return RankingHead(tuple(names), mean, std, w1, b1, w2, b2)

    def valid_scores(head: RankingHead) -> tuple[float, float]:
        """Validation (NDCG@10, listwise loss), each a weighted mean over the groups."""
        assert valid is not None and w_valid is not None
        scores = [head.score(g).astype(np.float64) for g in valid[0]]
        ndcg = np.average([listwise_ndcg(s, t) for s, t in zip(scores, valid[1])], weights=w_valid)
        top = [s.max() for s in scores]
        loss = np.average([m + np.log(np.exp(s - m).sum()) - s[t] for s, t, m in zip(scores, valid[1], top)],
                          weights=w_valid)
        return float(ndcg), float(loss)

    def better(new: tuple[float, float], old: tuple[float, float] | None) -> bool:
        if old is None:
            return True
        return new[0] > old[0] if select == "ndcg" else new[1] < old[1]

    best, best_score, history, losses, best_epoch = head_of(), None, [], [], 0
    if valid is not None and init is not None:  # an update must beat the head it started from
        best_score = valid_scores(best)
        history.append(round(best_score[0], 5))
        losses.append(round(best_score[1], 5))
    epochs_run = 0
    for _ in range(epochs):
        if budget_s is not None and time.perf_counter() - started > budget_s:
            break
        epochs_run += 1
        model.train()
        for idx in torch.randperm(len(groups), generator=gen).split(batch):
            logits = model(x[idx]).squeeze(-1).masked_fill(~mask[idx], -1e9)
            per_group = torch.nn.functional.cross_entropy(logits, y[idx], reduction="none")
            loss = (per_group * w[idx]).sum() / w[idx].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        head = head_of()
        if valid is None:
            best = head
            continue
        score = valid_scores(head)
        history.append(round(score[0], 5))
        losses.append(round(score[1], 5))
        if better(score, best_score):
            best, best_score, best_epoch = head, score, epochs_run
    best.report = {"train_groups": len(groups), "epochs": epochs_run, "best_epoch": best_epoch, "hidden": hidden,
                   "select": select, "valid_ndcg@10": best_score[0] if best_score is not None else None,
                   "valid_loss": best_score[1] if best_score is not None else None,
                   "valid_history": history, "valid_loss_history": losses}
    return best


def fit_head_cv(
    groups: Sequence[np.ndarray],
    targets: Sequence[int],
    names: Sequence[str],
    folds: Sequence[int] | np.ndarray,
    *,
    epochs: int = 60,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    **kw: Any,
) -> RankingHead:
    """A head whose epoch count is chosen by cross-validation, then fitted on every group.

    ``folds[i]``: the fold of group ``i`` (a user's groups belong in one fold:
    :func:`user_folds`). For each fold a head is fitted on the others for ``epochs`` epochs,
    with that fold's NDCG@10 after each; the curves are averaged (each fold weighted by its
    groups' weight) and the head returned is fitted on all groups for the epoch count with the
    best mean. Every group thus votes on the epoch count once, out of fold, where a single
    held-out tenth (a few hundred groups) lets the head stop on a lucky epoch. ``kw``: passed
    to :func:`fit_head` (``hidden``, ``lr``, ...).
    """
    fold_of = np.asarray(folds)
    if fold_of.shape != (len(groups),):
        raise InvalidInputError("folds", fold_of.shape, f"expected one fold per group ({len(groups)})")
    labels = np.unique(fold_of)
    if labels.size < 2:
        raise InvalidInputError("folds", labels.size, "need groups in 2 or more folds")
    w = _group_weights(weights, len(groups), "weights")
    curves, mass = [], []
    for f in labels:
        tr, va = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        part = fit_head([groups[i] for i in tr], [targets[i] for i in tr], names,
                        valid=([groups[i] for i in va], [targets[i] for i in va]), epochs=epochs,
                        weights=w[tr], valid_weights=w[va], seed=seed, **kw)
        curves.append(part.report["valid_history"])
        mass.append(float(w[va].sum()))
    mean = np.average(np.asarray(curves, np.float64), axis=0, weights=mass)
    best = int(np.argmax(mean)) + 1
    head = fit_head(groups, targets, names, epochs=best, weights=w, seed=seed, **kw)
    head.report.update(best_epoch=best, cv_folds=int(labels.size), **{"cv_ndcg@10": float(mean[best - 1])},
                       cv_history=[round(float(x), 5) for x in mean])
    return head


def user_folds(groups: Sequence[RankingGroup], k: int, seed: int) -> np.ndarray:
    """int ``(len(groups),)``: each group's fold among ``min(k, users)``, users dealt at random
    (every group of a user in its user's fold)."""
    users = sorted({g.user_id for g in groups})
    perm = np.random.default_rng(seed).permutation(len(users))
    fold = {u: int(perm[i] % max(min(k, len(users)), 1)) for i, u in enumerate(users)}
    return np.array([fold[g.user_id] for g in groups], np.int64)


HeadFit = Callable[[list[np.ndarray], list[np.ndarray]], RankingHead]


def head_fitter(train: Sequence[RankingGroup], valid: Sequence[RankingGroup], names: Sequence[str], *,
                cv_folds: int = 5, hidden: int = 32, epochs: int = 60, seed: int = 0,
                select: str = "ndcg") -> HeadFit:
    """How :func:`train_engine_ranker` fits a head on ``train``'s groups: a function of the
    features to read for ``train`` and for ``valid`` (so an ablation changes only those), whose
    epoch count is cross-validated over ``train``'s users (:func:`fit_head_cv`), or, with
    ``cv_folds=0`` or a single training user, early-stopped on ``valid`` by ``select``."""
    folds = user_folds(train, cv_folds, seed) if cv_folds else None
    targets, weights = [g.target for g in train], [g.weight for g in train]

    def fit(train_x: list[np.ndarray], valid_x: list[np.ndarray]) -> RankingHead:
        kw = dict(hidden=hidden, epochs=epochs, seed=seed, weights=weights)
        if folds is not None and np.unique(folds).size >= 2:
            return fit_head_cv(train_x, targets, names, folds, **kw)
        return fit_head(train_x, targets, names, valid=(valid_x, [g.target for g in valid]),
                        valid_weights=[g.weight for g in valid], select=select, **kw)

    return fit


def without_feature(groups: Sequence[RankingGroup], col: int) -> list[np.ndarray]:
    """The groups' features, copied, with column ``col`` held at 0 (an ablation's inputs)."""
    out = [g.features.copy() for g in groups]
    for x in out:
        x[:, col] = 0.0
    return out


def _group_weights(weights: Sequence[float] | None, n: int, field: str) -> np.ndarray:
    """float32 ``(n,)`` weights of ``n`` groups (all 1 when ``None``), checked: finite and positive."""
    if weights is None:
        return np.ones(n, np.float32)
    w = np.asarray(weights, np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w <= 0).any():
        raise InvalidInputError(field, w.shape if w.shape != (n,) else "non-positive",
                                f"need one finite positive weight per group ({n})")
    return w.astype(np.float32)


def _mean_ndcg(scores: Sequence[np.ndarray], groups: Sequence[RankingGroup]) -> float:
    """The groups' NDCG@10 under ``scores``, averaged with the groups' weights."""
    if not groups:
        return 0.0
    return float(np.average([listwise_ndcg(s, g.target) for s, g in zip(scores, groups)],
                            weights=[g.weight for g in groups]))


def _recall_order(g: RankingGroup) -> np.ndarray:
    return -np.arange(len(g.rows), dtype=np.float32)


def fit_blend(head_scores: Sequence[np.ndarray], text_scores: Sequence[np.ndarray], groups: Sequence[RankingGroup],
              top: int, grid: Sequence[float] = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)) -> tuple[float, dict[str, float]]:
    """The cross-encoder weight (from ``grid``) with the best NDCG@10 on ``groups``; ties keep the smaller.

    ``text_scores[i]`` scores the head's top ``top`` candidates of group ``i`` (head order).
    """
    table = {}
    for w in grid:
        finals = [blend_scores(hs, ts, np.argsort(-hs, kind="stable")[:top], w)
                  for hs, ts in zip(head_scores, text_scores)]
        table[str(w)] = _mean_ndcg(finals, groups)
    best = max(grid, key=lambda w: (table[str(w)], -w))
    return float(best), table


def split_users(groups: Sequence[RankingGroup], valid_fraction: float,
                 seed: int) -> tuple[list[RankingGroup], list[RankingGroup]]:
    """(train, valid) groups: users drawn at random into validation (at least one of two or more)."""
    rng = np.random.default_rng(seed)
    user_ids = sorted({g.user_id for g in groups})
    valid_users = {u for u, v in zip(user_ids, rng.random(len(user_ids)) < valid_fraction) if v}
    if not valid_users and len(user_ids) >= 2:  # a small log: still hold one user out
        valid_users = {user_ids[int(rng.integers(len(user_ids)))]}
    return [g for g in groups if g.user_id not in valid_users], [g for g in groups if g.user_id in valid_users]


def train_engine_ranker(
    engine: Engine,
    out: str | Path,
    events: Sequence[Event] | None = None,
    *,
    users: int | None = RANKER_USERS,
    steps_per_user: int = 3,
    instruction_share: float = 0.0,
    valid_fraction: float = 0.1,
    cv_folds: int = 5,
    hidden: int = 32,
    epochs: int = 60,
    train_cross_encoder: Callable[[Path], TrainReport] | None = None,
    blend_top: int = 20,
    blend_groups: int = 300,
    context: ContextModel | None = None,
    tune_users: int = 400,
    ablate: tuple[str, str | Path] | None = None,
    cold_share: float = 0.0,
    among: Collection[str] | None = None,
    refit: Callable[[], dict[str, Any]] | None = None,
    refit_ablation: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the engine's re-ranker into the folder ``out``: a ranking head over recall's
    features and, when ``train_cross_encoder`` is given (a function that trains a cross-encoder
    into the folder it is passed, e.g. a :func:`functools.partial` of
    :func:`train_engine_reranker`), a cross-encoder whose weight in the ``full`` tier is fitted
    on (at most ``blend_groups`` of) the head's validation examples, re-scoring the head's top
    ``blend_top``. Returns the training report.

    ``users``: a seeded sample of users whose steps become examples (default
    :data:`~recsieve.training.examples.RANKER_USERS`, 4,000; ``None``: every user), which bounds
    the examples' cost however long the log; they are built in batches (:func:`ranking_groups`).
    Users are split at random into training and validation (``valid_fraction``); each
    contributes its last ``steps_per_user`` steps (see :func:`ranking_groups`). The head's epoch
    count is chosen by ``cv_folds``-fold cross-validation over the training users
    (:func:`fit_head_cv`); validation then only reports, fits the cross-encoder's weight and pairs
    the ablation (``cv_folds=0``: early stopping on validation, as before). With
    ``instruction_share`` > 0, that share of examples carries a plain-words request made from
    the target's own attributes (:func:`~recsieve.engine.requests.request_for`), so the head
    learns how much an instruction should count. The folder is assembled next to ``out`` and
    renamed into place when complete; an existing ``out`` is replaced only with ``overwrite``.

    ``context``: a trained context model (:mod:`recsieve.training.context_model`), saved into the
    folder; recall then runs with its behaviour index and the head reads its two scores (the
    encoder's and the candidate scorer's), so the head stacks them with recall's features; before
    the head's examples are built, the context channel's fusion weight is chosen on ``tune_users``
    users' held-out steps (:func:`~recsieve.training.fusion.tune_context_weight`; 0: keep the
    engine config's ``context_weight``) and saved with the model.

    ``cold_share`` > 0: the head also learns from pseudo-cold examples
    (:func:`~recsieve.training.cold.pseudo_cold_groups`): the last step of (another seeded sample
    of) ``users`` users in a world where that share of the items has no behaviour and, with
    ``context``, no ID residual, so it learns how an item without behaviour ranks against warm
    ones (cold items).

    ``among``: every sample above (examples, fusion tuning, pseudo-cold) is drawn from these users
    only: with ``context``, those whose last steps its encoder never trained on.

    ``refit`` (with ``context``): called once the head (and its ablation) are fitted; it
    continues training ``context`` in place (e.g. on the steps held out from it, which the head
    has read) and returns its report. The continued model is what the folder and the ablation's
    keep; ``refit_ablation``: also write there this head with the context model it was trained
    with (the refit's ablation).
    """
    t0 = time.perf_counter()
    if refit is not None and context is None:
        raise InvalidInputError("refit", "given", "continues a context model: give context too")
    out_path = Path(out).expanduser().absolute()
    if out_path.exists() and not overwrite:
        raise InvalidInputError("out", str(out_path), "already exists; pass overwrite=True to replace it")
    if not 0.0 < valid_fraction < 1.0:
        raise InvalidInputError("valid_fraction", valid_fraction, "must be between 0 and 1")
    if not 0.0 <= instruction_share <= 1.0:
        raise InvalidInputError("instruction_share", instruction_share, "must be between 0 and 1")
    if isinstance(cv_folds, bool) or not isinstance(cv_folds, int) or cv_folds < 0 or cv_folds == 1:
        raise InvalidInputError("cv_folds", cv_folds, "must be 0 (early stopping on validation) or 2 or more")
    sequences = engine_sequences(engine, events)
    instruction_for = None
    if instruction_share > 0:
        from recsieve.engine.requests import request_for

        ask = np.random.default_rng(seed + 1)

        def instruction_for(row: int) -> str | None:
            if ask.random() >= instruction_share:
                return None
            request = request_for(engine.catalog.get(engine.catalog.item_id(row)), ask)
            return None if request is None else request.text

    with replacing_folder(out_path) as work:
        model, fusion = None, None
        if context is not None:
            context.save(work / CONTEXT_DIR)
            model = engine.load_model(work)  # recall with its behaviour index, features with its scores
            if tune_users:
                weight, table = tune_context_weight(engine, sequences, model, steps_per_user=steps_per_user,
                                                    users=tune_users, seed=seed, among=among)
                for settings in (context.settings, model.context.model.settings):
                    settings.extra["recall_weight"] = weight
                context.save(work / CONTEXT_DIR)  # the weight travels with the model
                fusion = {"context_weight": weight, "tried": table}
        groups, tried = ranking_groups(engine, sequences, users=users, steps_per_user=steps_per_user, seed=seed,
                                       among=among, progress=progress, instruction_for=instruction_for, model=model)
        cold_report, cold_groups = None, []
        if cold_share > 0:
            from recsieve.training.cold import pseudo_cold_groups

            cold_groups, cold_report = pseudo_cold_groups(engine, sequences, cold_share, context=context,
                                                          users=users, seed=seed, progress=progress, among=among)
            cold_report = {"cold_share": cold_share, "examples": len(cold_groups), **cold_report}
        groups = groups + cold_groups
        train, valid = split_users(groups, valid_fraction, seed)
        if len(train) < 2 or not valid:
            raise InvalidInputError("events", len(sequences),
                                    "too few users whose next item recall finds to train and validate")
        names = engine.feature_names(context=model is not None)
        fit = head_fitter(train, valid, names, cv_folds=cv_folds, hidden=hidden, epochs=epochs, seed=seed)
        head = fit([g.features for g in train], [g.features for g in valid])
        head_scores = [head.score(g.features) for g in valid]
        report: dict[str, Any] = {
            "users_tried": tried, "examples": len(groups),
            "train_users": len({g.user_id for g in train}), "valid_users": len({g.user_id for g in valid}),
            "train_examples": len(train), "valid_examples": len(valid),
            "valid_ndcg@10_recall_order": _mean_ndcg([_recall_order(g) for g in valid], valid),
            "valid_ndcg@10_head": _mean_ndcg(head_scores, valid),
        }
        if fusion is not None:
            report["fusion"] = fusion
        if cold_report is not None:
            pseudo = {id(g) for g in cold_groups}
            for kind, keep in (("warm", False), ("pseudo_cold", True)):
                part = [(s, g) for s, g in zip(head_scores, valid) if (id(g) in pseudo) == keep]
                cold_report[f"valid_ndcg@10_head_{kind}"] = _mean_ndcg([s for s, _ in part], [g for _, g in part])
                cold_report[f"valid_ndcg@10_recall_order_{kind}"] = _mean_ndcg([_recall_order(g) for _, g in part],
                                                                               [g for _, g in part])
            report["pseudo_cold"] = cold_report
        if train_cross_encoder is not None:
            from recsieve.rerankers.cross_encoder import CrossEncoderReranker

            ce_report = train_cross_encoder(work / "cross-encoder")
            ce = CrossEncoderReranker(str(work / "cross-encoder"))
            text_scores = []
            fit_on = valid[:blend_groups]
            for g, hs in zip(tqdm(fit_on, desc="blend", unit="user", disable=not progress, leave=False), head_scores):
                order = np.argsort(-hs, kind="stable")[:blend_top]
                text_scores.append(ce.score(g.context, [engine.item_text(int(r)) for r in g.rows[order]]))
            head.blend, table = fit_blend(head_scores[: len(fit_on)], text_scores, fit_on, blend_top)
            report["blend_groups"] = len(fit_on)
            head.cross_encoder, head.blend_top = "cross-encoder", blend_top
            report.update(cross_encoder=ce_report.to_dict(), blend_table=table, blend=head.blend)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        report["trained_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["journal_seq"] = engine.applied_seq if events is None else 0  # what this process applied
        if ablate is not None:
            report["ablation"] = _ablation(work, head, names, train, valid, ablate, fit, seed)
        head.report = {**head.report, **report}
        if refit is not None:
            if refit_ablation is not None:  # this head with the context model it was trained with
                with replacing_folder(Path(refit_ablation)) as dest:
                    shutil.copytree(work / CONTEXT_DIR, dest / CONTEXT_DIR)
                    head.save(dest)
            head.report["refit"] = refit()
            for folder in [work] + ([Path(ablate[1])] if ablate is not None else []):
                context.save(folder / CONTEXT_DIR)
        head.save(work)
        save_replay(work, train)
    return head.report


def _ablation(work: Path, head: RankingHead, names: Sequence[str], train: list[RankingGroup],
              valid: list[RankingGroup], ablate: tuple[str, str | Path],
              fit: HeadFit, seed: int) -> dict[str, Any]:
    """A head fitted as ``head`` was (``fit``) on the same groups with feature ``ablate[0]`` held
    constant, saved (with the context model of ``work``) to ``ablate[1]``; its held-out NDCG@10
    paired with ``head``'s."""
    feature, folder = ablate
    if feature not in names:
        raise InvalidInputError("ablate", feature, f"not one of the head's features {tuple(names)}")
    col = list(names).index(feature)
    valid_x = without_feature(valid, col)
    other = fit(without_feature(train, col), valid_x)
    full = [listwise_ndcg(head.score(g.features), g.target) for g in valid]
    ablated = [listwise_ndcg(other.score(x), g.target) for x, g in zip(valid_x, valid)]
    other.report = {**other.report, "ablated_feature": feature, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    with replacing_folder(Path(folder)) as dest:
        if (work / CONTEXT_DIR).exists():
            shutil.copytree(work / CONTEXT_DIR, dest / CONTEXT_DIR)
        other.save(dest)
    return {"feature": feature, "folder": str(folder), "valid_ndcg@10_without": float(np.mean(ablated)),
            "gain_of_feature": paired_gain(full, ablated, seed=seed)}

