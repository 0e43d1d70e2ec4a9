"""Where a context-encoder training step spends its time, and levers against it.

python bench/train_step_profile.py [--threads 1] [--dim 128] [--repeats 5] [--compile] [--bf16] [--json FILE]

One step = ``train_next_item``'s work on one batch of 128 right-padded rows (random items of an
ML-1M-sized catalog, 3,706 items with 384-dim text vectors): the item tower, the encoder's
forward, the seen pairs, the full-softmax loss (which computes its gradients in its forward),
the backward pass and AdamW, each timed (median of ``--repeats`` after a warm-up), for long rows
(190-200 positions, ML-1M's longest users) and mid ones (60-80). Then:

- ``--compile``: the same step with the tower and the encoder under ``torch.compile``
  (``dynamic=True``: batches change width), against eager, interleaved round-robin;
- ``--bf16``: the step under bf16 autocast (as ``train_next_item`` runs where the CPU has bf16
  arithmetic), with the full softmax's products in fp32 and in bf16, interleaved likewise;
- GEMM rates of torch (its bundled BLAS) and numpy (its own) on one thread, for 1024^3 and the
  full softmax's three chunk products, as the BLAS libraries differ by CPU vendor; and torch's on
  bf16 operands.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from recsieve.bench.common import machine_info
from recsieve.context import ContextModel, ContextSettings
from recsieve.training.batches import right_pad, shifted
from recsieve.training.softmax import CHUNK, full_softmax_ce, seen_pairs

N_ITEMS, TEXT_DIM, ROWS = 3706, 384, 128


def batch(rng: np.random.Generator, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, targets and the real mask of ``ROWS`` random rows of ``lo``..``hi`` positions, as
    ``train_next_item`` builds them (:func:`~recsieve.training.batches.shifted`)."""
    seqs = [rng.integers(0, N_ITEMS, n + 1) for n in rng.integers(lo, hi + 1, ROWS)]
    return shifted(right_pad(seqs, hi + 1))


def stepper(dim: int, text: torch.Tensor, compiled: bool, bf16: bool = False,
            bf16_loss: bool = False) -> Callable[..., dict[str, float]]:
    """One training step of a fresh seeded model; returns each stage's seconds. ``bf16``: under
    bf16 autocast, as ``train_next_item`` runs where the CPU has bf16 arithmetic; ``bf16_loss``:
    the full softmax's products in bf16 too (``full_softmax_ce(bf16=True)``)."""
    torch.manual_seed(0)
    m = ContextModel(ContextSettings(n_warm=N_ITEMS, text_dim=TEXT_DIM, dim=dim))
    m.tower.train()
    m.encoder.train()
    tower = torch.compile(m.tower, dynamic=True) if compiled else m.tower
    encoder = torch.compile(m.encoder, dynamic=True) if compiled else m.encoder
    opt = torch.optim.AdamW(list(m.tower.parameters()) + list(m.encoder.parameters()), lr=1e-3)

    def step(inputs: torch.Tensor, targets: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        t = time.perf_counter()

        def tick(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            out[name] = now - t
            t = now

        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            table = tower(text)
            tick("tower")
            h = encoder(table, inputs)[real]
            tick("encoder_forward")
            seen = seen_pairs(inputs, targets, real)
            tick("seen_pairs")
            loss = full_softmax_ce(h, table, targets[real], exclude=seen, bf16=bf16_loss)
            tick("loss_with_its_gradients")
        loss.backward()
        tick("backward")
        opt.step()
        tick("adamw")
        out["step"] = sum(out.values())
        return out

    return step


def gemm_rates(repeats: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of torch and numpy on one thread (median of ``repeats``) per product shape, and of
    torch on bf16 operands (what ``full_softmax_ce(bf16=True)`` multiplies)."""
    rng = np.random.default_rng(0)
    shapes = {"1024x1024x1024": (1024, 1024, 1024), "logits (256x128 @ 128x3706)": (CHUNK, 128, N_ITEMS),
              "user grad (256x3706 @ 3706x128)": (CHUNK, N_ITEMS, 128),
              "item grad (3706x256 @ 256x128)": (N_ITEMS, CHUNK, 128)}
    out = {}
    with threadpool_limits(1, user_api="blas"):
        for name, (m, k, n) in shapes.items():
            a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            row = {}
            for lib, x, y in (("torch", ta, tb), ("numpy", a, b), ("torch_bf16", ta.bfloat16(), tb.bfloat16())):
                x @ y
                times = []
                for _ in range(3 * repeats):
                    t = time.perf_counter()
                    x @ y
                    times.append(time.perf_counter() - t)
                row[f"{lib}_gflops"] = round(2 * m * k * n / float(np.median(times)) / 1e9, 1)
            row["numpy_over_torch"] = round(row["numpy_gflops"] / row["torch_gflops"], 2)
            out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--dim", type=int, default=128, help="token width (default 128, the default model's)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per shape and setting (default 5)")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--bf16", action="store_true",
                    help="also time the step under bf16 autocast, with the loss's products in fp32 and in bf16")
    ap.add_argument("--json", help="write the figures here as JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    text = torch.from_numpy(rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32))
    shapes = {"long (190-200 positions)": batch(rng, 190, 200), "mid (60-80 positions)": batch(rng, 60, 80)}
    settings = {"eager": stepper(a.dim, text, False)}
    if a.compile:
        settings["torch.compile"] = stepper(a.dim, text, True)
    if a.bf16:
        settings["bf16 autocast"] = stepper(a.dim, text, False, bf16=True)
        settings["bf16 autocast, bf16 loss"] = stepper(a.dim, text, False, bf16=True, bf16_loss=True)
    warm = {}
    for name, step in settings.items():  # warm-up, compilation included
        t = time.perf_counter()
        for b in shapes.values():
            step(*b)
        warm[name] = round(time.perf_counter() - t, 1)
    result: dict = {"threads": a.threads, "dim": a.dim, "rows": ROWS, "items": N_ITEMS,
                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "cpu_flags": machine_info()["cpu_flags"],
                    "blas": [(i["internal_api"], i.get("architecture"), i["version"]) for i in threadpool_info()
                             if i["user_api"] == "blas"],
                    "warm_up_s": warm, "seconds_median": {}}
    for shape, b in shapes.items():
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in settings}
        for _ in range(a.repeats):  # round-robin: a busy machine slows every setting alike
            for name, step in settings.items():
                runs[name].append(step(*b))
        result["seconds_median"][shape] = {
            name: {k: round(float(np.median([r[k] for r in rs])), 3) for k in rs[0]} for name, rs in runs.items()}
    result["gemm_one_thread"] = gemm_rates(a.repeats)
    text_out = json.dumps(result, indent=1)
    print(text_out)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text_out + "\n")


if __name__ == "__main__":
    main()
