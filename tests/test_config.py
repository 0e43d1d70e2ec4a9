"""EngineConfig: validation, TOML round trip, unknown keys rejected."""

import pytest

from recsieve.engine.config import EngineConfig
from recsieve.errors import InvalidInputError


def test_toml_round_trip(tmp_path):
    cfg = EngineConfig(backend="lance", index="ivf", recall_n=50, channels=("vector",), channel_weights=(1.0,),
                       template="{title}", reranker_model="models/r1")
    path = tmp_path / "recsieve.toml"
    path.write_text(cfg.to_toml())
    assert EngineConfig.load(path) == cfg
    assert EngineConfig.load(tmp_path) == cfg


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"backend": "milvus"}, "backend"),
        ({"index": "annoy"}, "index"),
        ({"recall_n": 0}, "recall_n"),
        ({"rerank_n": True}, "rerank_n"),
        ({"half_life_days": 0.0}, "half_life_days"),
        ({"blend": float("nan")}, "blend"),
        ({"channels": ("vector", "magic"), "channel_weights": (1.0, 1.0)}, "channels"),
        ({"channels": ("vector",)}, "channel_weights"),
        ({"embedding_model": " "}, "embedding_model"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidInputError) as info:
        EngineConfig(**kwargs)
    assert info.value.field == field


def test_unknown_key_rejected(tmp_path):
    path = tmp_path / "recsieve.toml"
    path.write_text('[recsieve]\nbackend = "faiss"\nrecal_n = 10\n')
    with pytest.raises(InvalidInputError, match="recal_n"):
        EngineConfig.load(path)
    path.write_text("[recsieve\n")
    with pytest.raises(InvalidInputError, match="malformed TOML"):
        EngineConfig.load(path)
