"""int8 quantisation is chosen by the CPU's instruction set, recorded, and redone for another.

Whether the chosen form keeps the cross-encoder's order (also in the AVX2 form) is checked in
test_rerank_levers.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recsieve.errors import InvalidInputError
from recsieve.quantization import ISAS, cpu_isa, int8_settings, needs_requantizing
from recsieve.rerankers.onnx import OnnxReranker, export_onnx

pytest.importorskip("onnxruntime")


def test_settings_follow_the_instruction_set() -> None:
    assert cpu_isa() in ISAS
    for isa in ("avx512_vnni", "avx_vnni", "arm64"):
        assert int8_settings(isa)["reduce_range"] is False  # products accumulate in 32 bits
    for isa in ("avx512", "avx2", "x86"):
        assert int8_settings(isa)["reduce_range"] is True  # 16-bit pair sums: 7-bit weights
    assert int8_settings() == int8_settings(cpu_isa())
    assert not needs_requantizing(int8_settings())
    assert needs_requantizing(None) and needs_requantizing({"isa": cpu_isa()})
    assert needs_requantizing(int8_settings("avx2"), "avx512_vnni")
    with pytest.raises(InvalidInputError, match="isa"):
        int8_settings("sse2")


def test_int8_isa_choice_and_reexport(tmp_path: Path, marked_model: str) -> None:
    with pytest.raises(InvalidInputError, match="isa"):
        OnnxReranker(marked_model, int8=True, isa="sse2")
    folder = tmp_path / "m"
    shutil.copytree(marked_model, folder, ignore=shutil.ignore_patterns("onnx"))
    path = export_onnx(folder, int8=True, isa="avx2")
    stamp = path.stat().st_mtime_ns
    assert export_onnx(folder, int8=True, isa="avx2").stat().st_mtime_ns == stamp  # same ISA: reused
    other = "avx512_vnni" if cpu_isa() != "avx512_vnni" else "arm64"
    assert export_onnx(folder, int8=True, isa=other).stat().st_mtime_ns != stamp  # another ISA: redone
    assert json.loads((folder / "onnx" / "export.json").read_text())["int8"]["isa"] == other
