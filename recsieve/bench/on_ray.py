"""The ``ray`` section of ``recsieve bench`` (issue #16): distributed builds and replicated
serving on a local Ray (``num_cpus`` CPUs, started and shut down here) or a cluster, each against
its naive baseline measured in the same run.

1. **Build** (:mod:`recsieve.bench.on_ray_build`): the same generated catalog built into a new
   engine directory by the single-process :func:`recsieve.engine.engine.build_index` and by
   :func:`recsieve.distributed.build_index` with 1 and 2 embedding actors (``actors``), in
   rounds; items/s of the whole build, ``ratio_vs_single_process`` within each round; and, from
   a second, smaller size (``fit_items``), each configuration's fixed seconds and marginal items/s.
2. **Serving**: the single-process build's directory, with generated users' histories recorded,
   served by :func:`recsieve.distributed.serve.serve_directory` with 1 and 2 replicas
   (``replicas``); concurrent HTTP clients ask ``POST /recommend`` for ``load_seconds`` with the
   same seeded request mix each time (:mod:`recsieve.bench.on_ray_serving`): requests/s and
   p50/p95/p99, with ratios against 1 replica. The result cache is off (every request runs
   recall and ordering); each replica applies the journal's tail before it answers.
3. **Visibility**: with the largest replica count (at least 2), event -> visible on another
   replica (:func:`~recsieve.bench.on_ray_serving.visibility`).

``embedder="model"`` (the default) embeds with the config's sentence-transformers model and
backend everywhere; ``"hash"`` with :class:`~recsieve.bench.processes.HashEmbedder`, a stand-in
that makes the mechanics cheap (tests). The journal is ``journal.sqlite`` in the directory (the
replicas share one machine), or the Redis stream ``journal`` names. Ray is imported only when
the section runs; without it, :class:`~recsieve.errors.MissingDependencyError` names the extra.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recsieve.bench.common import ProgressBar, SyntheticUsers, load_average, synthetic_items
from recsieve.bench.on_ray_build import build_comparison
from recsieve.bench.on_ray_serving import request_mix, serving_load, visibility, warm_up
from recsieve.bench.processes import HashEmbedder
from recsieve.errors import InvalidInputError

__all__ = ["RaySettings", "format_ray", "plot_ray", "ray_section"]

#: Environment of the section's Ray workers: Serve's proxy must answer its readiness check within 5 s
#: by default, too short on a busy 2-core machine; Serve's per-request log lines stay in Ray's log files.
RAY_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "120",
           "RAY_SERVE_LOG_TO_STDERR": "0"}
EMBEDDERS = ("model", "hash")
_PRESETS: dict[bool, dict[str, Any]] = {
    True: {"items": 500, "fit_items": 100, "users": 200, "load_seconds": 5.0, "visibility_samples": 30, "rounds": 1},
    False: {"items": 5000, "fit_items": 1000, "users": 2000, "load_seconds": 15.0, "visibility_samples": 90,
            "rounds": 2},
}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(name, value, "must be a positive integer")


def _counts(name: str, value: Any) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for v in values:
        _positive_int(name, v)
    if not values or len(set(values)) != len(values):
        raise InvalidInputError(name, list(values), "must be distinct positive integers")
    return tuple(sorted(values))


@dataclass(frozen=True)
class RaySettings:
    """What the ``ray`` section measures and how (see the module docstring); checked on creation.

    ``address``: a Ray cluster (``None``: a local Ray of ``num_cpus`` CPUs, started and shut down
    by the section). ``items`` / ``users`` / ``events_per_user``: the generated catalog and histories.
    ``actors``: embedding actor counts built with; ``replicas``: replica counts served with (must
    hold 1, the baseline); ``clients``: concurrent HTTP clients; ``load_seconds``: per serving point;
    ``visibility_samples``; ``rounds``: build rounds; ``batch_size``: items per actor batch;
    ``replica_cpus``: CPUs per replica (``None``: ``num_cpus`` / the largest replica count, 1 on a
    cluster); ``embedder``: ``"model"`` or ``"hash"``; ``journal``: a Redis journal URL (``""``:
    ``journal.sqlite``; the stream must be new).
    """

    items: int = 500
    fit_items: int = 100
    users: int = 200
    load_seconds: float = 5.0
    visibility_samples: int = 30
    rounds: int = 1
    address: str | None = None
    num_cpus: int = 2
    events_per_user: int = 10
    actors: tuple[int, ...] = (1, 2)
    replicas: tuple[int, ...] = (1, 2)
    clients: int = 4
    batch_size: int = 256
    replica_cpus: float | None = None
    embedder: str = "model"
    journal: str = ""
    mix_size: int = 2000

    def __post_init__(self) -> None:
        for name in ("items", "users", "visibility_samples", "rounds", "num_cpus", "events_per_user", "clients",
                     "batch_size", "mix_size"):
            _positive_int(name, getattr(self, name))
        object.__setattr__(self, "actors", _counts("actors", self.actors))
        object.__setattr__(self, "replicas", _counts("replicas", self.replicas))
        if 1 not in self.replicas:
            raise InvalidInputError("replicas", list(self.replicas), "must include 1 (the baseline)")
        if isinstance(self.load_seconds, bool) or not isinstance(self.load_seconds, (int, float)) \
                or not self.load_seconds > 0:
            raise InvalidInputError("load_seconds", self.load_seconds, "must be positive seconds")
        if self.replica_cpus is not None and (isinstance(self.replica_cpus, bool)
                                              or not isinstance(self.replica_cpus, (int, float))
                                              or not self.replica_cpus > 0):
            raise InvalidInputError("replica_cpus", self.replica_cpus, "must be a positive number")
        if isinstance(self.fit_items, bool) or not isinstance(self.fit_items, int) \
                or not 0 <= self.fit_items < self.items:
            raise InvalidInputError("fit_items", self.fit_items, f"must be an integer from 0 to items - 1 ({self.items - 1})")
        if self.embedder not in EMBEDDERS:
            raise InvalidInputError("embedder", self.embedder, f"expected one of {EMBEDDERS}")
        if self.journal and not self.journal.startswith(("redis://", "rediss://", "unix://")):
            raise InvalidInputError("journal", self.journal, 'expected "" (journal.sqlite) or redis://HOST:PORT/DB?stream=NAME')

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> RaySettings:
        """The quick (500 items and 100 for the fit, 5 s per serving point) or full (5,000 and 1,000
        items, 15 s, 2 build rounds) preset with ``overrides`` that are not ``None`` applied."""
        return cls(**{**_PRESETS[quick], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def cpus_per_replica(self) -> float:
        if self.replica_cpus is not None:
            return float(self.replica_cpus)
        return 1.0 if self.address is not None else self.num_cpus / max(self.replicas)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_section(settings: RaySettings, seed: int, bar: ProgressBar, notes: list[str], workdir: Path) -> dict[str, Any]:
    """Run the section in ``workdir`` (see the module docstring); return its result."""
    from recsieve.distributed.connect import ray_session, require_ray

    require_ray("data", "serve")  # before anything is generated: a clear error without the extra
    from recsieve.engine.config import EngineConfig
    from recsieve.engine.engine import Engine

    items = synthetic_items(settings.items, seed)
    pop = SyntheticUsers(items, settings.users, random.Random(seed))
    events = [ev for u in pop.users for ev in pop.history(u, settings.events_per_user)]
    config = EngineConfig(cache="none", refresh_threads=0)
    res: dict[str, Any] = {
        "settings": {**asdict(settings), "replica_cpus": settings.cpus_per_replica},
        "cpu_count": os.cpu_count(), "load_avg": {"start": load_average()},
        "catalog": {"items": len(items), "users": len(pop.users), "events": len(events)},
        "config": {"index": config.index, "backend": config.backend, "cache": config.cache,
                   "recall_n": config.recall_n, "embedding_backend": config.embedding_backend,
                   "journal": "redis stream" if settings.journal else "journal.sqlite"},
        "embedder": ("the config's sentence-transformers model" if settings.embedder == "model"
                     else "hashing stand-in, 384 dims (recsieve.bench.processes.HashEmbedder)"),
    }
    bar.step("ray: starting Ray")
    t0 = time.perf_counter()
    with ray_session(settings.address, num_cpus=None if settings.address else settings.num_cpus,
                     runtime_env={"env_vars": RAY_ENV}) as ray:
        res["ray"] = {"version": ray.__version__, "address": settings.address or "local",
                      "cluster_cpus": ray.cluster_resources().get("CPU"), "start_s": time.perf_counter() - t0}
        res["build"], served = build_comparison(items, config, workdir, bar, actors=settings.actors,
                                                rounds=settings.rounds, batch_size=settings.batch_size,
                                                fit_items=settings.fit_items, embedder=settings.embedder)
        bar.step("ray: recording users' histories")
        directory = _serving_directory(served, items, config, settings, workdir)
        with Engine.open(directory, embedder=_local_embedder(settings)) as engine:
            engine.record(events)
            engine.save()
        res["serving"], res["visibility"] = _serving(directory, pop, settings, seed, bar)
    res["load_avg"]["end"] = load_average()
    res.update(_ratios(res))
    res["capacity"] = _capacity(res)
    notes.append("ray: build items/s = catalog items / wall time of the whole build, the embedder's loading "
                 "included, Ray's start-up not; serving: HTTP POST /recommend through Serve's ingress from "
                 "client threads in the bench process, which shares the machine with the replicas; the result "
                 "cache is off; ratios against the single-process build and 1 replica in the same run; on a "
                 "machine shared with other work, more processes (actors, replicas) also take a larger share of "
                 "its CPUs, which a ratio above 1 may reflect rather than parallel speed-up")
    res["summary"] = format_ray(res)
    return res


def _local_embedder(settings: RaySettings) -> Any:
    """The embedder of builds and engines in this process (``None``: the config's model)."""
    return HashEmbedder() if settings.embedder == "hash" else None


def _serving_directory(built: Path, items: list[Any], config: Any, settings: RaySettings, workdir: Path) -> Path:
    """The directory served: the single-process build's, or, with a Redis journal, a new one
    journaled there (a directory cannot change its journal)."""
    if not settings.journal:
        return built
    from recsieve.engine.engine import Engine

    directory = workdir / "ray-serving"
    with Engine.create(directory, replace(config, journal=settings.journal),
                       embedder=_local_embedder(settings)) as engine:
        engine.upsert_items(items, show_progress=False)
        engine.save()
    shutil.rmtree(built, ignore_errors=True)
    return directory


def _serving(directory: Path, pop: SyntheticUsers, settings: RaySettings, seed: int,
             bar: ProgressBar) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One deployment per replica count: warm-up, load; visibility with the largest (if >= 2)."""
    from ray import serve

    from recsieve.distributed.serve import serve_directory

    mix = request_mix(pop, settings.mix_size, seed)
    shares = {"known_user": 0, "new_user": 0, "instruction": 0}
    for body in mix:
        shares["instruction" if "instruction" in body else "new_user" if body["user_id"].startswith("new-")
               else "known_user"] += 1
    out: dict[str, Any] = {"clients": settings.clients, "load_seconds": settings.load_seconds,
                           "replica_cpus": settings.cpus_per_replica,
                           "request_mix": {"requests": len(mix), **shares, "k": 10}, "replicas": {}}
    vis = None
    embedder = _local_embedder(settings)
    for count in settings.replicas:
        bar.step(f"ray: serving with {count} replica(s): starting")
        t0 = time.perf_counter()
        report = serve_directory(directory, replicas=count, port=_free_port(), embedder=embedder,
                                 replica_cpus=settings.cpus_per_replica)
        try:
            started = time.perf_counter() - t0
            warm = warm_up(report.url, mix, count)
            bar.step(f"ray: serving with {count} replica(s): load")
            load0 = load_average()
            row = serving_load(report.url, mix, settings.clients, settings.load_seconds, seed)
            row.update(start_s=started, warm_up_requests=warm, load_avg={"start": load0, "end": load_average()})
            out["replicas"][str(count)] = row
            if count == max(settings.replicas) and count >= 2:
                bar.step(f"ray: event -> visible on another replica ({count} replicas)")
                vis = {"replicas": count, **visibility(report.url, settings.visibility_samples, seed)}
        finally:
            serve.shutdown()
    return out, vis


def _ratios(res: dict[str, Any]) -> dict[str, Any]:
    """The headline ratios against the naive baselines of the same run."""
    build, serving = res["build"], res["serving"]["replicas"]
    one = serving["1"]
    for row in serving.values():
        row["qps_ratio_vs_1_replica"] = row["requests_per_s"] / one["requests_per_s"]
        row["p99_ratio_vs_1_replica"] = row["latency"]["p99_ms"] / one["latency"]["p99_ms"]
    return {
        "build_items_per_s_ratio_vs_single_process": {a: r["ratio_vs_single_process_median"]
                                                      for a, r in build["actors"].items()},
        "serving_qps_ratio_vs_1_replica": {n: r["qps_ratio_vs_1_replica"] for n, r in serving.items()},
        "serving_p99_ratio_vs_1_replica": {n: r["p99_ratio_vs_1_replica"] for n, r in serving.items()},
    }


def _capacity(res: dict[str, Any]) -> dict[str, Any]:
    """The measured quantities a capacity model needs, named for what they are: whole-build items/s
    per configuration, the two-point fits (fixed seconds, marginal items/s) where a second size was
    built, requests/s per replica and how it scaled, the visibility p99."""
    build, serving = res["build"], res["serving"]["replicas"]
    configs = {"single_process": build["single_process"], **{f"actors_{a}": r for a, r in build["actors"].items()}}
    counts = sorted(int(a) for a in build["actors"])
    qps = {int(n): r["requests_per_s"] for n, r in serving.items()}
    out: dict[str, Any] = {
        "measured_on": f"{res['ray']['cluster_cpus']:g} Ray CPUs ({res['ray']['address']}), {res['cpu_count']} "
                       f"logical CPUs, load average {res['load_avg']['start']} -> {res['load_avg']['end']}",
        "whole_build_items_per_s": {name: r["items_per_s_median"] for name, r in configs.items()},
        "build_fit": {name: r["fit"] for name, r in configs.items() if "fit" in r} or None,
        "qps_per_replica": qps[1],
        "p99_ms_1_replica": serving["1"]["latency"]["p99_ms"],
    }
    low = counts[0]
    rate = (out["build_fit"] or {}).get(f"actors_{low}", {}).get("marginal_items_per_s")
    out["marginal_items_per_s_per_actor"] = rate / low if rate else None
    if len(counts) > 1:
        high = counts[-1]
        whole = out["whole_build_items_per_s"]
        out[f"whole_build_actor_scaling_{high}_vs_{low}"] = whole[f"actors_{high}"] / whole[f"actors_{low}"] / (high / low)
        top = (out["build_fit"] or {}).get(f"actors_{high}", {}).get("marginal_items_per_s")
        out[f"marginal_actor_scaling_{high}_vs_{low}"] = top / rate / (high / low) if rate and top else None
    if len(qps) > 1:
        top = max(qps)
        out[f"replica_scaling_{top}_vs_1"] = qps[top] / qps[1] / top
    if res.get("visibility"):
        out["visible_on_another_replica_p99_ms"] = res["visibility"]["probes"]["recommend"]["p99_ms"]
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def format_ray(res: dict[str, Any]) -> str:
    """A few lines of text with the section's figures."""
    b, s, v = res["build"], res["serving"], res.get("visibility")
    lines = [f"ray (Ray {res['ray']['version']}, {res['ray']['address']}, {res['ray']['cluster_cpus']:g} CPUs; "
             f"{res['cpu_count']} logical CPUs, load {res['load_avg']['start']} -> {res['load_avg']['end']}; "
             f"{res['embedder']})",
             f"  build {b['items']:,} items ({len(b['rounds'])} round(s)): single process "
             f"{b['single_process']['items_per_s_median']:.0f} items/s; "
             + "; ".join(f"{a} actor(s) {r['items_per_s_median']:.0f} items/s ({r['ratio_vs_single_process_median']:.2f}x)"
                         for a, r in b["actors"].items())]
    if b["fit_items"]:
        fits = {"single process": b["single_process"]["fit"],
                **{f"{a} actor(s)": r["fit"] for a, r in b["actors"].items()}}
        lines.append(f"  build fit through {b['fit_items']:,} and {b['items']:,} items (fixed s + items / marginal rate): "
                     + "; ".join(f"{name} {_fmt(f['fixed_s'], '.1f')} s + {_fmt(f['marginal_items_per_s'], '.0f')} items/s"
                                 for name, f in fits.items()))
    lines.append(f"  serving ({s['clients']} HTTP clients, {s['load_seconds']:g} s, {s['replica_cpus']:g} CPU/replica): "
                 + "; ".join(f"{n} replica(s) {r['requests_per_s']:.0f} req/s p50/p95/p99 {r['latency']['p50_ms']:.1f}/"
                             f"{r['latency']['p95_ms']:.1f}/{r['latency']['p99_ms']:.1f} ms ({r['qps_ratio_vs_1_replica']:.2f}x "
                             f"req/s, p99 {r['p99_ratio_vs_1_replica']:.2f}x; errors {r['errors']})"
                             for n, r in s["replicas"].items()))
    if v:
        lines.append(f"  event -> visible on another replica ({v['replicas']} replicas, {v['samples']} samples): "
                     + "; ".join(f"{p} p50/p95/p99 {r['p50_ms']:.1f}/{r['p95_ms']:.1f}/{r['p99_ms']:.1f} ms"
                                 for p, r in v["probes"].items())
                     + f"; stale answers {v['stale_answers']}")
    return "\n".join(lines)


def plot_ray(res: dict[str, Any], plots_dir: Path) -> str:
    """``ray.png`` in ``plots_dir``: build items/s, serving req/s with p50/p95/p99, and the
    visibility latencies; returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    b, s, v = res["build"], res["serving"]["replicas"], res.get("visibility")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = ["single process", *[f"{a} actor(s)" for a in b["actors"]]]
    speeds = [b["single_process"]["items_per_s_median"], *[r["items_per_s_median"] for r in b["actors"].values()]]
    axes[0].bar(labels, speeds, color=["grey", *["C0"] * len(b["actors"])])
    axes[0].set_ylabel("items / s (median of rounds)")
    axes[0].set_title(f"Build, {b['items']:,} items")
    names = list(s)
    axes[1].bar([f"{n} replica(s)" for n in names], [s[n]["requests_per_s"] for n in names], color="C1")
    axes[1].set_ylabel("requests / s")
    twin = axes[1].twinx()
    for q, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        twin.plot([f"{n} replica(s)" for n in names], [s[n]["latency"][q] for n in names], style, color="k",
                  label=q[:3])
    twin.set_ylabel("latency, ms")
    twin.legend(fontsize=8, loc="upper left")
    axes[1].set_title("Serving: POST /recommend over HTTP")
    if v:
        probes = list(v["probes"])
        for q, style in (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^")):
            axes[2].plot(probes, [v["probes"][p][q] for p in probes], style, label=q[:3])
        axes[2].set_ylabel("ms from POST /events")
        axes[2].legend(fontsize=8)
    axes[2].set_title(f"Event -> visible on another replica ({v['replicas'] if v else '-'} replicas)")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"recsieve on Ray; load average {res['load_avg']['start']} -> {res['load_avg']['end']}", fontsize=9)
    fig.tight_layout()
    plots_dir.mkdir(parents=True, exist_ok=True)
    path = plots_dir / "ray.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
