"""Fine-tuning the word-level MiniLM cross-encoder on an engine's interactions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recsieve.engine.engine import Engine
from recsieve.errors import InvalidInputError
from recsieve.rerankers.training import TrainReport, train_reranker
from recsieve.training.examples import engine_examples, engine_sequences
from recsieve.types import Event

__all__ = ["train_engine_reranker"]


def train_engine_reranker(
    engine: Engine,
    out: str | Path,
    events: Sequence[Event] | None = None,
    *,
    users: int | None = None,
    steps_per_user: int = 3,
    n_hard: int = 7,
    n_random: int = 2,
    epochs: float = 1,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 128,
    loss: str = "bce",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainReport:
    """Fine-tune a cross-encoder (from the bundled MiniLM) on the engine's interactions; save to ``out``."""
    sequences = engine_sequences(engine, events)
    if not sequences:
        raise InvalidInputError("events", 0, "no events to train on")
    train, valid = engine_examples(engine, sequences, users=users, steps_per_user=steps_per_user, n_hard=n_hard,
                                   n_random=n_random, seed=seed)
    if not train or not valid:
        raise InvalidInputError("events", len(sequences), "too few users with 3+ events to train and validate")
    return train_reranker(train, valid, out=out, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                          loss=loss, seed=seed, progress=progress, overwrite=overwrite)


