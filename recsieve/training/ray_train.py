"""The context encoder trained data-parallel on Ray Train (the optional ``recsieve[ray]`` extra).

:func:`fit_context_model_on_ray` is :func:`~recsieve.training.context_model.fit_context_model`
run by ``workers`` Ray Train workers: a ``TorchTrainer`` (CPU workers, a gloo process group)
whose every worker calls ``fit_context_model(..., parallel=DataParallel.current())`` on the same
inputs -- the one training loop, each worker on its share of every batch, gradients averaged
after each backward pass (:mod:`recsieve.training.data_parallel`). The group takes the single
process's steps with the single process's batch size and learning rate, so the model it trains
is the single process's model up to floating-point order and dropout masks; what changes is who
does the work.

- **In**: the training sequences (one flat int64 array and its offsets), the text vectors, and
  the settings go to the workers through Ray's object store.
- **Out**: rank 0 writes its model with :meth:`ContextModel.save` and returns the folder's files
  and the history as the run's return value (Ray Train V2); the driver loads them with
  :meth:`ContextModel.load`, checksums checked. No shared filesystem is needed: Ray Train's run
  folder is a temporary one on the driver's machine (its controller runs there; nothing is
  checkpointed), removed after the run.
- **Threads**: a worker trains on ``cpus_per_worker`` torch threads (its CPU reservation) unless
  the config names ``threads``.

The model's modules are importable on every node (recsieve installed there); Ray is imported
only when :func:`fit_context_model_on_ray` runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.context.model import ContextModel, ContextSettings
from recsieve.distributed.connect import ray_session, require_ray
from recsieve.errors import InvalidInputError, MissingDependencyError, RecsieveError
from recsieve.indexes.checks import check_positive
from recsieve.training.batches import check_sequences
from recsieve.training.context_model import TrainConfig, fit_context_model
from recsieve.training.data_parallel import DataParallel

__all__ = ["fit_context_model_on_ray"]


def _train_worker(config: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]] | None:
    """One Ray Train worker: the encoder's training as one of the group; rank 0 returns the
    model folder's files and the history (``config``: Ray Train's ``train_loop_config``)."""
    import ray

    flat, offsets, text = ray.get([config["flat"], config["offsets"], config["text"]])
    sequences = np.split(flat, offsets[1:-1])
    parallel = DataParallel.current()
    train_config: TrainConfig = config["config"]
    if parallel.rank:
        train_config = replace(train_config, progress=False)
    model, history = fit_context_model(sequences, config["n_items"], text, settings=config["settings"],
                                       config=train_config, parallel=parallel)
    if parallel.rank:
        return None
    with tempfile.TemporaryDirectory(prefix="recsieve-encoder-") as tmp:
        folder = model.save(Path(tmp) / "context")
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}, history


def _worker_error(exc: BaseException) -> BaseException:
    """The recsieve error a worker raised (rank order), else ``exc`` itself."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], RecsieveError):
            return failures[rank]
    return exc


def fit_context_model_on_ray(
    sequences: Sequence[np.ndarray],
    n_items: int,
    text_vectors: np.ndarray | None,
    *,
    settings: ContextSettings | None = None,
    config: TrainConfig | None = None,
    workers: int = 2,
    address: str | None = None,
    cpus_per_worker: int = 1,
    num_cpus: int | None = None,
) -> tuple[ContextModel, dict[str, Any]]:
    """:func:`~recsieve.training.context_model.fit_context_model` on ``workers`` Ray Train
    workers (see the module docstring): the same arguments, the same model and history (the
    history adds ``workers``).

    ``address``: the Ray cluster to join (as :func:`recsieve.distributed.connect` reads it;
    ``None``: a local Ray instance, ``num_cpus`` CPUs, started and stopped here unless this
    process is connected already). ``cpus_per_worker``: CPUs each worker reserves and trains on.
    A cluster with fewer CPUs than ``workers * cpus_per_worker`` is refused before anything
    starts. Raises :class:`~recsieve.errors.MissingDependencyError` without Ray Train (V2),
    :class:`~recsieve.errors.ClusterUnavailableError` when no cluster answers at ``address``,
    and the error a worker raised on bad input.
    """
    workers = check_positive("workers", workers)
    cpus_per_worker = check_positive("cpus_per_worker", cpus_per_worker)
    seqs = check_sequences(sequences, n_items)
    config = config or TrainConfig()
    threads = config.threads  # the returned model's, as fit_context_model leaves it
    if config.threads is None:
        config = replace(config, threads=cpus_per_worker)
    ray = require_ray("train")
    if not hasattr(ray.train.Result, "return_value"):
        raise MissingDependencyError("training on Ray needs Ray Train V2 (Ray >= 2.43 with RAY_TRAIN_V2_ENABLED "
                                     "unset or 1): its results carry the model back")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with ray_session(address, num_cpus=num_cpus):
        cpus = float(ray.cluster_resources().get("CPU", 0.0))
        if cpus < workers * cpus_per_worker:
            raise InvalidInputError("workers", workers, f"{workers} workers x {cpus_per_worker} CPUs do not fit the "
                                    f"cluster's {cpus:g} CPUs")
        lengths = np.array([len(s) for s in seqs], np.int64)
        inputs = {
            "flat": ray.put(np.concatenate(seqs) if seqs else np.zeros(0, np.int64)),
            "offsets": ray.put(np.concatenate([[0], np.cumsum(lengths)])),
            "text": ray.put(None if text_vectors is None else np.ascontiguousarray(text_vectors, np.float32)),
            "n_items": n_items, "settings": settings, "config": config,
        }
        with tempfile.TemporaryDirectory(prefix="recsieve-ray-train-") as runs:
            trainer = TorchTrainer(
                _train_worker, train_loop_config=inputs,
                scaling_config=ScalingConfig(num_workers=workers, use_gpu=False,
                                             resources_per_worker={"CPU": cpus_per_worker}),
                run_config=RunConfig(name="context-encoder", storage_path=runs),
            )
            try:
                result = trainer.fit()
            except ray.train.TrainingFailedError as exc:
                raise _worker_error(exc) from None
    files, history = result.return_value
    with tempfile.TemporaryDirectory(prefix="recsieve-encoder-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        model = ContextModel.load(tmp, threads=threads)
    history["workers"] = workers
    return model, history
