"""What ``recsieve bench`` hands back besides the JSON: the text summary
(:func:`format_summary`), PNG plots (:func:`write_plots`), and ``rerank_ndcg_ratio`` from an
evaluation report (:func:`quality_ratio`: the fine sieve against the best other re-ranker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsieve.bench.common import DIM, RECALL_TARGET
from recsieve.errors import InvalidInputError

__all__ = ["FINE_SIEVE_SYSTEM", "OTHER_RERANKERS", "format_summary", "quality_ratio", "write_plots"]


#: The row of an evaluation report that is the fine sieve: the whole engine with its context model.
FINE_SIEVE_SYSTEM = "recsieve"
#: Other re-rankers of recall's candidates a report may hold, compared with the fine sieve.
OTHER_RERANKERS = ("recsieve-without-cross-encoder", "recsieve-fast")


def _what(row: dict[str, Any]) -> str:
    """What an evaluation row's system orders candidates with, from its name and training report."""
    report = row.get("train_report") or {}
    if row["system"] == "recsieve-without-cross-encoder":
        return "the ranking head over recall's and the context encoder's features, no candidate scorer"
    if report.get("cross_encoder") is not None or "blend" in report:
        return (f"the ranking head over recall's features + the MiniLM cross-encoder "
                f"(fitted weight {report.get('blend')})")
    return "the ranking head over recall's features alone"


def quality_ratio(report: dict[str, Any]) -> dict[str, Any]:
    """``rerank_ndcg_ratio`` from an evaluation report (``recsieve evaluate --json``): the fine
    sieve's NDCG@10 (row ``recsieve``, trained with the context model: its encoder, candidate
    scorer and ranking head) / the best NDCG@10 among the report's other re-rankers of recall's
    candidates (rows ``recsieve-without-cross-encoder``, ``recsieve-fast``), on the same users
    (every row of a report is evaluated on the same users). The fine sieve is never compared
    with itself: where the ``recsieve`` row has no context model (a report from before
    :func:`~recsieve.training.train_engine`) or no other re-ranker row is there, ``ratio`` is
    ``None`` and ``note`` says why. Where the best row carries its paired per-user difference
    from ``recsieve`` (``vs_recsieve``), it is given as ``fine_minus_best`` (negated: the fine
    sieve minus the best). A report without a ``recsieve`` row is refused."""
    rows = {r["system"]: r for r in report.get("results", [])}
    if FINE_SIEVE_SYSTEM not in rows:
        raise InvalidInputError("quality report", sorted(rows), f"needs a {FINE_SIEVE_SYSTEM!r} row (the fine sieve)")
    fine = rows[FINE_SIEVE_SYSTEM]
    out: dict[str, Any] = {"dataset": report.get("dataset"), "users": report.get("users"),
                           "fine_sieve": {"system": FINE_SIEVE_SYSTEM, "ndcg@10": fine["ndcg@10"]},
                           "compared": [{"system": name, "ndcg@10": rows[name]["ndcg@10"], "what": _what(rows[name])}
                                        for name in OTHER_RERANKERS if name in rows],
                           "best": None, "best_ndcg@10": None, "ratio": None}
    if "encoder" not in (fine.get("train_report") or {}):
        out["note"] = (f"null: the report's {FINE_SIEVE_SYSTEM!r} row was trained without the context model (no "
                       "encoder in its train_report, a report from before train_engine), so it is not the fine sieve")
        return out
    if not out["compared"]:
        out["note"] = (f"null: the report holds no other re-ranker ({', '.join(OTHER_RERANKERS)}) to compare the fine "
                       "sieve with")
        return out
    best = max(out["compared"], key=lambda c: c["ndcg@10"])
    out["best"], out["best_ndcg@10"] = best["system"], best["ndcg@10"]
    out["ratio"] = fine["ndcg@10"] / best["ndcg@10"] if best["ndcg@10"] else None
    gain = (rows[best["system"]].get(f"vs_{FINE_SIEVE_SYSTEM}") or {}).get("ndcg@10")
    if gain and gain.get("mean") is not None:
        out["fine_minus_best"] = {"mean": -gain["mean"], "ci95": [-gain["ci95"][1], -gain["ci95"][0]],
                                  "users": gain["users"]}
    compared = "; ".join(f"{c['system']} ({c['what']}) {c['ndcg@10']:.4f}" for c in out["compared"])
    out["note"] = (f"fine sieve ('{FINE_SIEVE_SYSTEM}': context encoder + candidate scorer + ranking head, NDCG@10 "
                   f"{fine['ndcg@10']:.4f}) / the best other re-ranker of the same candidates on the same "
                   f"{report.get('users')} users of {report.get('dataset')}, {best['system']}; compared: {compared}"
                   if out["ratio"] is not None else "null: the best other re-ranker's NDCG@10 is 0")
    return out


# ---------------------------------------------------------------------------------- plots


def write_plots(result: dict[str, Any], stage_samples: dict[str, list[float]], plots_dir: Path) -> list[str]:
    """Write ``latency_cdf.png`` (per engine stage), ``recall_vs_latency.png`` (per index size) and
    ``throughput.png`` into ``plots_dir``, each where its data was measured; the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sizes = (result.get("index") or {}).get("sizes") or {}
    eng = result.get("engine") or {}
    for name, draw, data in (("latency_cdf.png", _latency_cdf, stage_samples),
                             ("recall_vs_latency.png", _recall_vs_latency, sizes),
                             ("throughput.png", _throughput, eng if eng.get("throughput_uncached") else None)):
        if not data:
            continue
        fig = draw(plt, data)
        fig.tight_layout()
        path = plots_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _latency_cdf(plt: Any, stage_samples: dict[str, list[float]]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, samples in sorted(stage_samples.items()):
        ms = np.sort(np.asarray(samples) * 1000)
        ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Engine: single-request latency CDF per stage")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _recall_vs_latency(plt: Any, sizes: dict[str, Any]) -> Any:
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.2), squeeze=False)
    for ax, (n, res) in zip(axes[0], sorted(sizes.items(), key=lambda kv: int(kv[0])), strict=False):
        for name, idx in res["indexes"].items():
            rows = idx.get("settings") or []
            if not rows:
                continue
            x = [r["latency"]["p50_ms"] for r in rows]
            y = [r["recall_at_100"] for r in rows]
            (line,) = ax.plot(x, y, marker="o", label=name)
            ax.plot([r["latency"]["p99_ms"] for r in rows], y, linestyle="--", marker=".",
                    linewidth=0.8, alpha=0.6, color=line.get_color())
            for r, xi, yi in zip(rows, x, y, strict=True):
                if r["setting"]:
                    ax.annotate(str(next(iter(r["setting"].values()))), (xi, yi), fontsize=6,
                                textcoords="offset points", xytext=(3, -8))
        ax.axhline(RECALL_TARGET, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("single-query latency, ms (log): p50 solid, p99 dashed")
        ax.set_ylabel("recall@100 vs exact")
        ax.set_title(f"{int(n):,} x {DIM}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def _throughput(plt: Any, eng: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in (("uncached", eng["throughput_uncached"]),
                        ("zipf load, cached", (eng.get("zipf") or {}).get("throughput") or [])):
        if rows:
            ax.plot([r["threads"] for r in rows], [r["requests_per_s"] for r in rows], marker="o", label=label)
    ax.set_xlabel("concurrent caller threads")
    ax.set_ylabel("requests / s")
    ax.set_xscale("log", base=2)
    ax.set_title("Engine throughput")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------- text summary


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def format_summary(result: dict[str, Any]) -> str:
    """A few lines of text with the headline figures of a :func:`~recsieve.bench.run_bench` result."""
    m = result["machine"]
    lines = [
        f"recsieve bench ({'quick' if result['quick'] else 'full'}) on {m['cpu_model']}, "
        f"{m['usable_cpus']} cpus, {result['threads']} threads; wall {result['wall_s']:.0f}s; "
        f"load avg start {result['load_avg']['start']} end {result['load_avg']['end']}",
    ]
    rd = result.get("recall_default")
    if rd:
        data = result.get("parameters", {}).get("index_data", "clustered")
        lines.append(
            f"recall ({'clustered vectors' if data == 'clustered' else 'MiniLM text vectors'}): "
            f"{rd['size']:,} items, {rd['index']} {rd['setting']}: recall@100 "
            f"{rd['recall_at_100']:.3f}, p50 {rd['latency']['p50_ms']:.2f} ms, p99 {rd['latency']['p99_ms']:.2f} ms "
            f"(target p99 <= 2 ms, recall >= {RECALL_TARGET}); {_fmt(rd.get('speedup_p50_vs_flat'), '.0f')}x faster than flat"
        )
    eng = result.get("engine")
    if eng:
        st = eng["stages"]
        parts = [f"{k} p50 {v['p50_ms']:.2f}/p99 {v['p99_ms']:.2f}" for k, v in st.items()]
        lines.append("engine stages (ms): " + "; ".join(parts))
        lines.append(
            f"cold p95 {_fmt(result['cold_p95_ms'], '.1f')} ms (target <= 60), hot p99 {_fmt(result['hot_p99_ms'], '.3f')} ms, "
            f"zipf hit ratio {eng['zipf']['hit_ratio_steady']:.2f}, event->refresh p95 "
            f"{eng['event_to_refresh']['latency']['p95_ms']:.1f} ms"
        )
        cs = eng.get("context_stages") or {}
        if cs:
            fine100 = st["fine_sieve_100"]
            lines.append(
                f"context model ({cs['inference_threads']} torch thread(s), {cs['events_read_mean']:.0f} events read): "
                f"encoder p95 {_fmt(result['context_encoder_p95_ms'], '.2f')} ms (target <= 3); fine sieve "
                f"{cs['candidates_mean']['fine_sieve']:.0f} candidates p95 {_fmt(result['fine_sieve_p95_ms'], '.2f')} ms "
                f"(target <= 10; {st['fine_sieve_1_thread']['p95_ms']:.2f} ms with torch on 1 thread, "
                f"run pinned to {cs['torch_threads']}), 100 candidates p50 {fine100['p50_ms']:.2f} ms"
            )
        lines.append("throughput req/s (1/2/4/8 threads): uncached "
                     + "/".join(f"{r['requests_per_s']:.0f}" for r in eng["throughput_uncached"])
                     + ", zipf cached " + "/".join(f"{r['requests_per_s']:.0f}" for r in eng["zipf"]["throughput"]))
    rr = result.get("rerank")
    if rr:
        lines.append(
            f"rerank: CrossEncoder.predict {rr['pairs_per_s']:.0f} pairs/s ({rr['tokens_mean']:.0f} tokens/pair), "
            f"{rr['achieved_gflops']:.0f} GFLOP/s of {rr['gemm_peak']['best_gflops']:.0f} peak: MFU {rr['mfu']:.2f}; "
            f"fine-sieve speed-up {_fmt(result['rerank_speedup_vs_naive'], '.1f')}x (target >= 20)"
        )
    q = result.get("rerank_quality")
    lines.append(f"rerank_ndcg_ratio {_fmt(result.get('rerank_ndcg_ratio'), '.3f')}"
                 + (f": {q['note']}" if q else " (no quality report)"))
    return "\n".join(lines)
