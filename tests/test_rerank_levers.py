"""The cross-encoder's speed levers score like the model they speed up.

ONNX Runtime fp32 must reproduce torch's logits; int8 and bf16 may move them a little but
must keep the order; a shorter ``max_length`` changes only pairs that were longer; a
distilled student is a smaller model that agrees with its teacher better than before
training; the engine serves whichever backend its config names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_rerankers import CONTEXT, ITEMS, RerankerContract

from recsieve.engine.config import CE_BACKENDS, EngineConfig
from recsieve.errors import CorruptStoreError, InvalidInputError, ModelNotTrainedError
from recsieve.quantization import cpu_isa, int8_settings
from recsieve.rerankers.base import Reranker
from recsieve.rerankers.cross_encoder import CrossEncoderReranker
from recsieve.rerankers.distill import distill_reranker, spearman
from recsieve.rerankers.factory import CE_BACKENDS as BACKENDS
from recsieve.rerankers.factory import open_cross_encoder
from recsieve.rerankers.folder import MARKER_FILE
from recsieve.rerankers.onnx import OnnxReranker, export_onnx

pytest.importorskip("onnxruntime")

CONTEXTS = [CONTEXT, "recent: purchased Nixon (1995) (3 days ago)",
            "request: a sci-fi classic | recent: clicked Alien (1979) (2 hours ago), clicked Heat (1995) (1 day ago)"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, marked_model: str) -> str:
    """A private copy of the marked cross-encoder (exports are written into the folder)."""
    folder = tmp_path_factory.mktemp("levers") / "model"
    shutil.copytree(marked_model, folder)
    return str(folder)


@pytest.fixture(scope="module")
def torch_scores(model: str) -> list[np.ndarray]:
    rr = CrossEncoderReranker(model, max_length=64)
    return [rr.score(c, ITEMS) for c in CONTEXTS]


@pytest.fixture(scope="module")
def onnx_reranker(model: str) -> OnnxReranker:
    return OnnxReranker(model, max_length=64, batch_size=3)


class TestOnnxContract(RerankerContract):
    @pytest.fixture
    def reranker(self, onnx_reranker: OnnxReranker) -> Reranker:
        return onnx_reranker


def test_onnx_fp32_reproduces_torch(onnx_reranker: OnnxReranker, torch_scores: list[np.ndarray]) -> None:
    for context, want in zip(CONTEXTS, torch_scores):
        got = onnx_reranker.score(context, ITEMS)  # batch 3 of length-sorted pairs: padding differs from torch's
        spread = float(np.ptp(want))
        assert spread > 0
        np.testing.assert_allclose(got, want, atol=1e-4 * spread + 1e-6, rtol=0)


def test_onnx_int8_is_quantised_and_keeps_the_order(model: str, torch_scores: list[np.ndarray]) -> None:
    """int8 keeps the order on this CPU, and in the form an AVX2-only CPU gets (7-bit weights,
    so its 16-bit pair sums cannot saturate: full-range int8 there correlated only 0.937)."""
    record = Path(model) / "onnx" / "export.json"
    fp32_file = Path(model) / "onnx" / "model.onnx"
    int8_file = Path(model) / "onnx" / "model-int8.onnx"
    want = np.concatenate(torch_scores)
    for isa in ("avx2", None):  # forced AVX2 first, then this CPU's own choice (re-exported)
        q8 = OnnxReranker(model, int8=True, max_length=64, isa=isa)
        got = np.concatenate([q8.score(c, ITEMS) for c in CONTEXTS])
        chosen = json.loads(record.read_text())["int8"]
        assert chosen == int8_settings(isa) and chosen["isa"] == (isa or cpu_isa())
        assert chosen["reduce_range"] == (chosen["isa"] not in ("avx512_vnni", "avx_vnni", "arm64"))
        assert int8_file.stat().st_size < 0.4 * fp32_file.stat().st_size  # int8 weights, not a copy
        assert not np.array_equal(want, got)
        assert np.corrcoef(want, got)[0, 1] > 0.95, chosen


def test_bf16_keeps_the_order(model: str, torch_scores: list[np.ndarray]) -> None:
    bf16 = CrossEncoderReranker(model, max_length=64, dtype="bfloat16")
    got = np.concatenate([bf16.score(c, ITEMS) for c in CONTEXTS])
    want = np.concatenate(torch_scores)
    assert got.dtype == np.float32
    assert np.corrcoef(got, want)[0, 1] > 0.98
    ids = {CrossEncoderReranker(model).model_id, bf16.model_id, CrossEncoderReranker(model, max_length=32).model_id,
           OnnxReranker(model).model_id, OnnxReranker(model, int8=True).model_id}
    assert len(ids) == 5  # score caches never mix two ways of scoring


def test_shorter_inputs_change_only_long_pairs(model: str) -> None:
    long_item = "Jumanji (1995). " + "A board game that releases jungle dangers on the town. " * 12
    items = ["Babe (1995)", long_item]
    full = CrossEncoderReranker(model, max_length=256).score(CONTEXT, items)
    short = CrossEncoderReranker(model, max_length=48).score(CONTEXT, items)
    assert full[0] == pytest.approx(short[0], abs=1e-5)
    assert abs(full[1] - short[1]) > 1e-5


def test_export_is_reused_and_redone_for_a_retrained_model(tmp_path: Path, model: str) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("onnx"))
    path = export_onnx(folder)
    stamp = path.stat().st_mtime_ns
    assert export_onnx(folder) == path and path.stat().st_mtime_ns == stamp
    marker = json.loads((folder / MARKER_FILE).read_text())
    (folder / MARKER_FILE).write_text(json.dumps({**marker, "trained_at": "2030-01-01T00:00:00+00:00"}))
    assert export_onnx(folder).stat().st_mtime_ns != stamp


def test_corrupt_export_is_a_clear_error(tmp_path: Path, model: str) -> None:
    folder = tmp_path / "m"
    shutil.copytree(model, folder)
    export_onnx(folder)
    (folder / "onnx" / "model.onnx").write_bytes(b"half a graph")
    with pytest.raises(CorruptStoreError, match="model.onnx"):
        OnnxReranker(folder).score(CONTEXT, ITEMS)


def test_onnx_refuses_an_untrained_folder(base_path: str) -> None:
    with pytest.raises(ModelNotTrainedError):
        OnnxReranker(base_path).score(CONTEXT, ITEMS)


def test_open_cross_encoder_backends(model: str) -> None:
    assert BACKENDS == CE_BACKENDS
    assert isinstance(open_cross_encoder(model), CrossEncoderReranker)
    assert open_cross_encoder(model, backend="torch-bf16").dtype == "bfloat16"
    assert isinstance(open_cross_encoder(model, backend="onnx"), OnnxReranker)
    assert open_cross_encoder(model, backend="onnx-int8").int8
    with pytest.raises(InvalidInputError, match="backend"):
        open_cross_encoder(model, backend="tensorrt")
    with pytest.raises(InvalidInputError, match="ce_backend"):
        EngineConfig(ce_backend="tensorrt")
    with pytest.raises(InvalidInputError, match="ce_max_length"):
        EngineConfig(ce_max_length=-1)
    with pytest.raises(InvalidInputError, match="dtype"):
        CrossEncoderReranker(model, dtype="float16")


@pytest.mark.slow  # 25 s of training
def test_distilled_student_is_smaller_and_learns_its_teacher(tmp_path: Path, model: str) -> None:
    rng = np.random.default_rng(0)
    titles = [f"{name} ({1960 + 3 * i}). {genre}" for i, (name, genre) in enumerate(
        (n, g) for n in ("Alien", "Heat", "Babe", "Fargo", "Casino", "Twister") for g in ("Comedy", "Horror", "Drama"))]
    groups = [("recent: " + ", ".join(f"clicked {t}" for t in rng.choice(titles, 3, replace=False)),
               list(rng.choice(titles, 8, replace=False))) for _ in range(28)]
    report = distill_reranker(model, groups, out=tmp_path / "student", layers=2, max_length=48, epochs=6,
                              lr=5e-4, progress=False)
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and report["kept_layers"] == [0, 5]
    assert report["valid_spearman_after"] > report["valid_spearman_before"]
    student = CrossEncoderReranker(tmp_path / "student")
    assert student.marker["kind"] == "distilled" and student.max_length == 48  # serves at its trained length
    # independently of the report: the saved student agrees with its teacher on every context
    teacher = CrossEncoderReranker(model)
    rho = np.mean([spearman(student.score(c, items), teacher.score(c, items)) for c, items in groups])
    assert rho > 0.3


def test_engine_serves_the_configured_backend(tmp_path: Path, embedder, model: str) -> None:
    from test_engine import DEMO

    from recsieve.engine.engine import Engine

    lists = {}
    for backend in ("torch", "onnx"):
        eng = Engine.create(tmp_path / backend, EngineConfig(index="flat", reranker_model=model, ce_backend=backend,
                                                             ce_max_length=64, rerank_n=20, cache="none",
                                                             refresh_threads=0), embedder=embedder)
        try:
            eng.upsert_items(DEMO)
            assert isinstance(eng.reranker, OnnxReranker if backend == "onnx" else CrossEncoderReranker)
            lists[backend] = [r.item_id for r in eng.recommend("u1", 10, instruction="something funny")]
        finally:
            eng.close()
    assert lists["onnx"] == lists["torch"]
