"""Training of the context model's item tower and context encoder.

The candidate scorer trains in :mod:`recsieve.training.scorer`.

**Next-item training** (:func:`train_next_item`, used by :func:`fit_context_model` and by the
SASRec yardstick): every position of a user's last ``max_len + 1`` training items is a target;
the loss is cross-entropy over the whole catalog's item tokens (full softmax) up to
``sampled_above`` items, and above it a sampled softmax (``n_negatives`` items drawn from
popularity^0.75, shared by the batch) with the logQ correction ``s - log(K q)``. On a CPU with
bf16 arithmetic (:func:`native_bf16`: AMX or AVX-512 BF16) the forward pass runs under bf16
autocast and the full softmax multiplies in bf16, else fp32. AdamW, linear warmup then cosine decay;
the schedule's clock is ``max(step share, time share of budget_s)``, so a time-budgeted run still
ends at a low learning rate. Early stopping and the choice of the best epoch use NDCG@10 (full
ranking, history excluded) on the validation position of up to ``valid_users`` held-out users (each
user with 3+ items; ``valid_share`` caps their share): their last training item is the validation
target and never trained on. Where ``plateau`` epochs pass without a better held-out score, the best
epoch comes back at a cut rate. Nothing from the caller's test or validation position is needed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from recsieve.context.model import ContextModel, ContextSettings
from recsieve.errors import InvalidInputError
from recsieve.quantization import cpuinfo_flags
from recsieve.training.batches import (
    BATCHING,
    bucketed,
    check_sequences,
    right_pad,
    shifted,
    unseen_items,
)
from recsieve.training.data_parallel import DataParallel
from recsieve.training.softmax import full_softmax_ce, sampled_softmax_ce, seen_pairs
from recsieve.training.validation import validate, validation_rows

__all__ = [
    "TrainConfig",
    "native_bf16",
    "check_sequences",
    "right_pad",
    "train_next_item",
    "fit_context_model",
    "unseen_items",
    "ContextScorer",
]


def native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU computes in bf16 itself -- AMX tiles (``amx_bf16``) or AVX-512 BF16
    (``avx512_bf16``) -- so bf16 autocast is fast, not emulated (and on ML-1M it validated higher
    than fp32 at an equal budget: bench/results/bf16_ml1m.json)."""
    return not {"amx_bf16", "avx512_bf16"}.isdisjoint(cpuinfo_flags(cpuinfo))


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train_next_item` trains (see the module docstring)."""

    epochs: int = 200
    budget_s: float | None = None
    #: peak learning rate. 2e-3: on ML-1M (width 128, fp32, 1,200 s, one thread) the encoder alone
    #: scored test NDCG@10 0.1678 against 0.1538 for SASRec's 1e-3, paired +0.0140 [+0.0102,
    #: +0.0176]; 3e-3 0.1696 on test but a lower best held-out NDCG@10 (0.1651 against 0.1667),
    #: so 2e-3 (bench/results/encoder_lr_ml1m.json). The SASRec yardstick keeps 1e-3.
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's default, as SASRec's reference code
    warmup: float = 0.02  # share of the schedule
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.05
    #: users per step. 64 was measured and not kept: encoder alone, test NDCG@10 paired with 128, ML-1M
    #: +0.0015 [-0.0019, +0.0048], Amazon Scientific -0.0015 [-0.0037, +0.0008] (bench/results/batch_size.json)
    batch_size: int = 128
    #: ``bucket`` (default): every epoch deals fresh random pools of ``batches.BUCKET_POOL`` batches'
    #: users, sorts each pool by length and cuts it into batches, in random order, and weighs every
    #: position alike whatever its batch's size (a batch's gradient is its positions' sum over the
    #: epoch's mean positions per batch). ``random``: fresh random batches every epoch (SASRec's
    #: reference loader; on ML-1M 46% of a batch's positions are padding). ``length``: fixed batches
    #: of users of similar length (ML-1M NDCG@10 0.1470 after 25 epochs against 0.1599 for
    #: ``random``). On ML-1M bucket epochs take 12.6-12.8 s against 20.0-20.9 (2 threads); equal
    #: 1,200 s budgets, one thread each: test NDCG@10 0.1558 against 0.1489, paired +0.0069
    #: [+0.0042, +0.0097] (bench/results/batching_ml1m.json); end to end (recsieve evaluate, ML-1M
    #: and Amazon Scientific) nothing measurable moved. The SASRec yardstick keeps ``random``.
    batching: str = "bucket"
    bf16: bool | None = None  # None: where the CPU has bf16 arithmetic (:func:`native_bf16`)
    sampled_above: int = 50_000
    n_negatives: int = 8192
    #: the most users held out for early stopping and the best epoch (each user with 3+ items up to
    #: this many, as SASRec's reference validates every user's second-to-last item). On ML-1M, 512
    #: held out gave a jumpy curve that patience stopped early (test NDCG@10 0.1628), 1,208 a
    #: steady one (0.1644; bench/results/early_stopping_ml1m.json)
    valid_users: int = 2048
    #: the largest share of the users with 3+ items held out. It was a fifth: on ML-100K, 188 users,
    #: on which the yardstick stopped at test NDCG@10 0.0723 against 0.1027 on all 943 (README)
    valid_share: float = 1.0
    eval_every: int = 1
    patience: int | None = 8
    #: epochs without a better held-out NDCG@10 before the learning rate is cut: the best epoch's
    #: weights and optimiser state come back and the rate is multiplied by ``cut_factor``, at most
    #: ``cuts`` times (``patience`` still stops training; it counts again from each cut). None: no
    #: cuts. 8 (= patience): where patience would stop, the best epoch goes on at a quarter of the
    #: rate, twice. Encoder alone, test NDCG@10, paired against no cuts: Amazon Scientific +0.0034
    #: [+0.0015, +0.0052], ML-100K +0.0029 [-0.0073, +0.0127]; ML-1M's budget ends before 8 stale
    #: epochs. 2 and 3 cut on noise within ML-1M's budget (2: -0.0055 [-0.0082, -0.0028];
    #: bench/results/plateau.json)
    plateau: int | None = 8
    cut_factor: float = 0.25
    cuts: int = 2
    seed: int = 0
    threads: int | None = None
    progress: bool = False
    name: str = "context"
    #: share of the catalog whose ID residual is dropped in each training batch (one Bernoulli
    #: draw per item, for input and output tokens alike), so an item's text-only token -- all a
    #: cold item has -- is trained to stand on its own; 0: never. Read by :func:`fit_context_model`
    #: where the tower has both text and IDs; other tasks ignore it.
    id_dropout: float = 0.0
    #: a user's earlier items out of each position's full softmax (:func:`seen_pairs`; README)
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_negatives", "eval_every", "sampled_above", "cuts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(name, v, "must be a positive integer")
        if self.budget_s is not None and not self.budget_s > 0:
            raise InvalidInputError("budget_s", self.budget_s, "must be positive seconds or None")
        if self.plateau is not None and (isinstance(self.plateau, bool) or not isinstance(self.plateau, int)
                                         or self.plateau < 1):
            raise InvalidInputError("plateau", self.plateau, "must be a positive integer or None")
        if not 0.0 < self.cut_factor < 1.0:
            raise InvalidInputError("cut_factor", self.cut_factor, "must be in (0, 1)")
        if not self.lr > 0:
            raise InvalidInputError("lr", self.lr, "must be positive")
        if self.batching not in BATCHING:
            raise InvalidInputError("batching", self.batching, f"one of {BATCHING}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise InvalidInputError("schedule", self.schedule, "cosine, linear or constant")
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise InvalidInputError("threads", self.threads, "must be a positive integer or None")
        if isinstance(self.valid_share, bool) or not isinstance(self.valid_share, (int, float)) \
                or not 0.0 < self.valid_share <= 1.0:
            raise InvalidInputError("valid_share", self.valid_share, "must be a share in (0, 1]")
        if isinstance(self.id_dropout, bool) or not isinstance(self.id_dropout, (int, float)) \
                or not 0.0 <= self.id_dropout < 1.0:
            raise InvalidInputError("id_dropout", self.id_dropout, "must be a share in [0, 1)")


def _lr_factor(cfg: TrainConfig, progress: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup > 0 and p < cfg.warmup:
        return max(p / cfg.warmup, 1e-3)
    if cfg.schedule == "constant":
        return 1.0
    q = (p - cfg.warmup) / max(1.0 - cfg.warmup, 1e-9)
    shape = 0.5 * (1 + math.cos(math.pi * q)) if cfg.schedule == "cosine" else 1.0 - q
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


@dataclass
class NextItemTask:
    """What :func:`train_next_item` needs from a model.

    ``table(rows)``: item tokens ``(k, dim)`` for catalog ``rows`` (``None``: all rows);
    ``hidden(table, inputs)``: hidden states ``(b, n, dim)`` of right-padded ``inputs`` (``-1`` =
    padding), rows of ``table`` (every row's tokens, or the sampled softmax's rows in play);
    ``user(table, rows)``: ``(b, dim)`` at the newest event; ``modules``: what is trained.
    """

    modules: list[nn.Module]
    table: Callable[[torch.Tensor | None], torch.Tensor]
    hidden: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    user: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def train_next_item(
    task: NextItemTask,
    sequences: Sequence[np.ndarray],
    n_items: int,
    max_len: int,
    cfg: TrainConfig,
    *,
    parallel: DataParallel | None = None,
    valid: Sequence[int] | None = None,
    validate_first: bool = False,
) -> dict[str, Any]:
    """Train ``task`` on next-item prediction (see the module docstring). Returns a history.

    The modules are left in eval mode with the weights of the best validation epoch.
    ``valid``: the rows whose last item is validated on (default :func:`validation_rows`);
    ``validate_first``: the modules as given count as "epoch 0" (a continued training keeps them
    unless an epoch validates higher).
    ``parallel``: run as one worker of a data-parallel group
    (:mod:`recsieve.training.data_parallel`): every worker calls this with the same arguments,
    each trains on its share of every batch, and all end with the same weights and history.
    """
    seqs = check_sequences(sequences, n_items)
    rng = np.random.default_rng(cfg.seed)
    # held-out users: last training item = validation target, never trained on
    valid = validation_rows(seqs, cfg, rng) if valid is None else np.unique(np.asarray(valid, np.int64))
    if valid.size and (valid[0] < 0 or valid[-1] >= len(seqs) or min(len(seqs[u]) for u in valid) < 2):
        raise InvalidInputError("valid", valid.size, f"rows of sequences with 2+ items among {len(seqs)}")
    n_valid = int(valid.size)
    train = list(seqs)
    for u in valid:
        train[u] = seqs[u][:-1]
    v_ctx = [seqs[u][:-1] for u in valid]
    v_tgt = np.array([seqs[u][-1] for u in valid], np.int64)
    train = [s for s in train if len(s) >= 2]
    windows = right_pad(train, max_len + 1)

    def deal(order: np.ndarray) -> list[np.ndarray]:
        chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if parallel is not None:  # each worker its rows of every batch: the group's step is one batch
            chunks = [parallel.shard(c) for c in chunks]
        return chunks

    lengths = (windows >= 0).sum(1)
    if cfg.batching == "length":  # fixed batches of similar length: less padding
        chunks = deal(np.argsort(lengths, kind="stable"))
    else:
        chunks = deal(np.arange(len(windows)))  # dealt afresh every epoch
    # bucket: a batch's gradient is its positions' sum over the mean positions per batch
    per_batch = (lengths - 1).sum() / max(math.ceil(len(windows) / cfg.batch_size), 1)
    bf16 = native_bf16() if cfg.bf16 is None else bool(cfg.bf16)
    sampled = n_items > cfg.sampled_above
    sampler = None  # sampled softmax: the negatives' distribution and log(n_negatives * it)
    if sampled:
        counts = np.bincount(np.concatenate(train), minlength=n_items).astype(np.float64)
        q = (counts + 1.0) ** 0.75
        q /= q.sum()
        q_t = torch.from_numpy(q.astype(np.float32))
        sampler = (q_t, torch.log(q_t * cfg.n_negatives))  # the logQ correction, once
    params = [p for m in task.modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    total_steps = cfg.epochs * len(chunks)
    history: dict[str, Any] = {
        "bf16": bf16,
        "sampled_softmax": sampled, "exclude_seen": bool(cfg.exclude_seen and not sampled),
        "train_users": len(train),
        "valid_users": int(n_valid),
        "losses": [],
        "valid_ndcg@10": [],
        "valid_hr@10": [],
        "epoch_seconds": [],
        "lr": [],  # each epoch's last learning rate
        "cuts": [],  # the epochs after which the learning rate was cut (``plateau``)
    }
    best, best_state, best_opt, best_epoch, stale, scale = -1.0, None, None, 0, 0, 1.0
    if parallel is not None:
        parallel.broadcast([t for m in task.modules for t in m.state_dict().values()])
    if validate_first and n_valid:
        for m in task.modules:
            m.eval()
        best, _ = validate(task, v_ctx, v_tgt, max_len, bf16, parallel)
        best_state, best_opt = [copy.deepcopy(m.state_dict()) for m in task.modules], copy.deepcopy(opt.state_dict())
        history["valid_ndcg@10_before"] = round(best, 5)
    start = time.perf_counter()
    step, done, clock = 0, 0.0, 0.0  # clock: the group's elapsed seconds, agreed at each step
    before_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    bar = tqdm(total=cfg.epochs, desc=cfg.name, unit="epoch", disable=not cfg.progress, leave=False)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + (parallel.rank if parallel is not None else 0))
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                for m in task.modules:
                    m.train()
                total, count, out_of_time = 0.0, 0, False
                if cfg.batching == "random":  # the same draw on every worker of a group
                    chunks = deal(rng.permutation(len(windows)))
                    perm = np.arange(len(chunks))
                elif cfg.batching == "bucket":
                    chunks = deal(bucketed(rng.permutation(len(windows)), lengths, cfg.batch_size))
                    perm = rng.permutation(len(chunks))
                else:
                    perm = rng.permutation(len(chunks))
                for b, ci in enumerate(perm):
                    elapsed = time.perf_counter() - start if parallel is None else clock
                    prog = step / max(total_steps, 1)
                    if cfg.budget_s is not None:
                        prog = max(prog, elapsed / cfg.budget_s)
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * scale * _lr_factor(cfg, prog)
                    opt.zero_grad(set_to_none=True)
                    loss, n = _batch_loss(task, windows[chunks[ci]], cfg, bf16, sampler)
                    loss_sum = 0.0
                    if loss is not None:
                        loss.backward()
                        loss_sum = float(loss.detach()) * n
                    if parallel is not None:  # the batch's gradient, positions, loss and clock
                        n, (loss_sum, clock) = parallel.average_gradients(
                            params, n, (loss_sum, time.perf_counter() - start))
                        clock /= parallel.world_size
                    if cfg.batching == "bucket" and n:  # the mean over n positions -> their sum / per_batch
                        for p in params:
                            if p.grad is not None:
                                p.grad.mul_(n / per_batch)
                    opt.step()
                    step += 1
                    total += loss_sum
                    count += n
                    elapsed = time.perf_counter() - start if parallel is None else clock
                    if cfg.budget_s is not None and elapsed > cfg.budget_s:
                        out_of_time = True
                        done += (b + 1) / len(chunks)
                        break
                else:
                    done += 1.0
                history["losses"].append(total / max(count, 1))
                history["lr"].append(float(opt.param_groups[0]["lr"]))
                history["epoch_seconds"].append(round(time.perf_counter() - t0, 2))
                last = out_of_time or epoch == cfg.epochs - 1
                if n_valid and ((epoch + 1) % cfg.eval_every == 0 or last):
                    for m in task.modules:
                        m.eval()
                    nd, hr = validate(task, v_ctx, v_tgt, max_len, bf16, parallel)
                    history["valid_ndcg@10"].append(round(nd, 5))
                    history["valid_hr@10"].append(round(hr, 5))
                    if nd > best:
                        best, best_epoch, stale = nd, epoch + 1, 0
                        best_state = [copy.deepcopy(m.state_dict()) for m in task.modules]
                        if cfg.plateau and len(history["cuts"]) < cfg.cuts:  # a cut may still come
                            best_opt = copy.deepcopy(opt.state_dict())
                    else:
                        stale += 1
                    if cfg.plateau and stale >= cfg.plateau and len(history["cuts"]) < cfg.cuts and best_state:
                        _load_states(task.modules, best_state)
                        opt.load_state_dict(copy.deepcopy(best_opt))  # loading aliases its tensors
                        scale *= cfg.cut_factor
                        stale = 0
                        history["cuts"].append(epoch + 1)
                    bar.set_postfix(loss=f"{history['losses'][-1]:.3f}", ndcg=f"{nd:.4f}")
                    if cfg.progress:
                        tqdm.write(f"{cfg.name} epoch {epoch + 1} loss {history['losses'][-1]:.4f} valid ndcg@10 {nd:.4f} hr@10 {hr:.4f} epoch_s {history['epoch_seconds'][-1]} elapsed {time.perf_counter() - start:.0f}")
                else:
                    bar.set_postfix(loss=f"{history['losses'][-1]:.3f}")
                bar.update(1)
                if out_of_time or (cfg.patience is not None and stale >= cfg.patience):
                    break
    finally:
        bar.close()
        if cfg.threads is not None:
            torch.set_num_threads(before_threads)
    if best_state is not None:
        _load_states(task.modules, best_state)
    for m in task.modules:
        m.eval()
    history.update(
        epochs=round(done, 3),
        seconds=round(time.perf_counter() - start, 2),
        best_epoch=best_epoch,
        best_valid_ndcg10=round(best, 5) if n_valid else None,
    )
    return history


def _load_states(modules: list[nn.Module], states: list[dict[str, Any]]) -> None:
    for m, st in zip(modules, states, strict=True):
        m.load_state_dict(st)


def _batch_loss(task: NextItemTask, batch: np.ndarray, cfg: TrainConfig, bf16: bool,
                sampler: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor | None, int]:
    """Mean next-item loss over the real positions of right-padded ``batch`` rows and their number
    (``(None, 0)`` for none); ``sampler``: the sampled softmax's distribution and logQ, or ``None``."""
    if not len(batch):
        return None, 0
    inputs, targets, real = shifted(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if sampler is not None:
            return _sampled_batch_loss(task, inputs, targets, real, cfg.n_negatives, sampler), int(real.sum())
        table = task.table(None)
        h = task.hidden(table, inputs)[real]
        seen = seen_pairs(inputs, targets, real) if cfg.exclude_seen else None
        loss = full_softmax_ce(h, table, targets[real], exclude=seen, bf16=bf16)
    return loss, int(real.sum())


def _sampled_batch_loss(task: NextItemTask, inputs: torch.Tensor, targets: torch.Tensor, real: torch.Tensor,
                        n_negatives: int, sampler: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The sampled softmax's loss with the tokens of the rows in play only (the batch's items and
    its negatives), the indices mapped into them: the catalog's other rows take no part in the
    loss, so computing their tokens every step would only cost time -- the item tower over every
    row was more than half of a step on a 26,000-item catalog of short sequences."""
    q_t, log_q = sampler
    negs = torch.multinomial(q_t, n_negatives, replacement=True)
    tgt = targets[real]
    rows = torch.unique(torch.cat([inputs[inputs >= 0], tgt, negs]))  # sorted

    def local(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t >= 0, torch.searchsorted(rows, t.clamp(min=0)), t)

    table = task.table(rows)
    h = task.hidden(table, local(inputs))[real]
    return sampled_softmax_ce(h, table, local(tgt), local(negs), log_q[rows])


def _tower_table(model: ContextModel, text: torch.Tensor | None, cold: torch.Tensor | None,
                 id_dropout: float = 0.0) -> Callable:
    """The task's table: the tokens of ``rows`` (``None``: every row's), with (while the tower
    trains and ``id_dropout`` > 0) the ID residual of a fresh random ``id_dropout`` share of them
    dropped on each call -- one draw per batch, shared by the batch's input and output tokens."""

    def table(rows: torch.Tensor | None) -> torch.Tensor:
        drop = cold if rows is None or cold is None else cold[rows]
        if id_dropout > 0 and model.tower.training and text is not None:
            fresh = torch.rand(text.shape[0] if rows is None else len(rows)) < id_dropout
            drop = fresh if drop is None else drop | fresh
        if rows is None:
            return model.tower(text, drop)
        return model.tower.rows(None if text is None else text[rows], rows, drop)

    return table


def fit_context_model(
    sequences: Sequence[np.ndarray],
    n_items: int,
    text_vectors: np.ndarray | None,
    *,
    settings: ContextSettings | None = None,
    config: TrainConfig | None = None,
    parallel: DataParallel | None = None,
    model: ContextModel | None = None,
    valid: Sequence[int] | None = None,
) -> tuple[ContextModel, dict[str, Any]]:
    """Train an item tower + context encoder on training ``sequences`` (catalog rows, oldest first).

    ``text_vectors``: float32 ``(n_items, text_dim)`` frozen text vectors (``None`` with
    ``settings.text_dim == 0``: ID-only tokens). All ``n_items`` rows are warm (own an ID
    residual). Returns the model (item table set, eval mode) and the training history.
    ``parallel``: train as one worker of a data-parallel group (see :func:`train_next_item`;
    :mod:`recsieve.training.ray_train` runs the group on Ray). ``model``: continue training this
    model (trained on the same ``n_items``) from its weights instead of a new one (its own
    settings; ``settings`` is ignored); it is trained in place and returned, validated first, so
    it keeps its given weights unless an epoch validates higher. ``valid``: the rows of
    ``sequences`` validated on (default: :func:`validation_rows`).
    """
    continued = model is not None
    if continued:
        settings = model.settings
        if settings.n_warm != n_items:
            raise InvalidInputError("n_items", n_items, f"the model to continue has {settings.n_warm} warm rows")
    settings = settings or ContextSettings(n_warm=n_items, text_dim=0 if text_vectors is None else 384)
    if settings.n_warm != n_items:
        settings = replace(settings, n_warm=n_items)
    config = config or TrainConfig()
    text = None
    if settings.text_dim:
        arr = np.ascontiguousarray(text_vectors, np.float32)
        if arr.shape != (n_items, settings.text_dim):
            raise InvalidInputError("text_vectors", arr.shape, f"expected ({n_items}, {settings.text_dim})")
        text = torch.from_numpy(arr)
    # an item no training sequence holds would only ever be pushed down as a negative: it gets
    # no ID residual (its token comes from text alone, like an item upserted after training)
    cold = unseen_items(sequences, n_items) if settings.use_ids and text is not None else None
    cold_t = None if cold is None or not cold.any() else torch.from_numpy(cold)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # initialisation is seeded too
        model = model if model is not None else ContextModel(settings, threads=config.threads)
        encoder = model.encoder
        task = NextItemTask(
            modules=[model.tower, model.encoder],
            table=_tower_table(model, text, cold_t, config.id_dropout if settings.use_ids else 0.0),
            hidden=lambda table, rows: encoder(table, rows),
            user=lambda table, rows: encoder.user(table, rows),
        )
    hist = train_next_item(task, sequences, n_items, settings.max_len, config, parallel=parallel, valid=valid,
                           validate_first=continued)
    if cold_t is not None:
        with torch.no_grad():  # so that every later set_items() gives them text alone too
            model.tower.ids.weight[cold_t] = 0.0
        hist["items_without_id"] = int(cold_t.sum())
    model.set_items(None if text is None else text.numpy())
    return model, hist


class ContextScorer:
    """The context encoder as an evaluation-harness ``Scorer`` (``fit`` / ``score``)."""

    def __init__(
        self,
        text_vectors: np.ndarray | None,
        *,
        settings: ContextSettings | None = None,
        config: TrainConfig | None = None,
        name: str = "context-encoder",
    ) -> None:
        self.text_vectors, self.settings, self.config, self.name = text_vectors, settings, config, name
        self.model: ContextModel | None = None
        self.history: dict[str, Any] = {}

    def fit(self, train_sequences: Sequence[np.ndarray], n_items: int) -> None:
        self.model, self.history = fit_context_model(
            train_sequences, n_items, self.text_vectors, settings=self.settings, config=self.config
        )
        self.model.threads = self.config.threads if self.config else None

    def score(self, contexts: Sequence[np.ndarray]) -> np.ndarray:
        from recsieve.errors import ModelNotTrainedError

        if self.model is None:
            raise ModelNotTrainedError(f"{self.name}: call fit() first")
        return self.model.score_items(contexts)
