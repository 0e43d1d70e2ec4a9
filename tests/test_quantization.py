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


@pytest.mark.parametrize(
    ("cpuid", "proc", "isa"),
    [
        ({"avx2"}, {"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "avx2"),  # emulated Haswell on a VNNI host
        ({"avx2", "avx512f", "avx512bw"}, {"avx2", "avx512f", "avx512bw"}, "avx512"),
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, set(), "avx512_vnni"),  # /proc/cpuinfo unreadable
        ({"avx2"}, {"avx2", "avx_vnni"}, "avx_vnni"),  # numpy's table has no AVX-VNNI: /proc/cpuinfo's
        (set(), {"avx2", "avx_vnni"}, "x86"),  # ... only on a CPU whose CPUID has AVX2
        (None, {"avx2", "avx512f", "avx512bw"}, "avx512"),  # no numpy table: /proc/cpuinfo alone
        (None, set(), "x86"),
    ],
)
def test_the_isa_is_what_cpuid_reports(monkeypatch, cpuid, proc, isa) -> None:
    """The kernels dispatch on CPUID, so the choice follows it where /proc/cpuinfo disagrees."""
    import recsieve.quantization as q

    monkeypatch.setattr(q.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(q, "_cpuid_flags", lambda: cpuid)
    monkeypatch.setattr(q, "cpuinfo_flags", lambda: proc)
    q.cpu_isa.cache_clear()
    try:
        assert q.cpu_isa() == isa
    finally:
        q.cpu_isa.cache_clear()


def test_cpuid_flags_are_numpys() -> None:
    """On this CPU the flags read are numpy's dispatch table's (the names mapped)."""
    from recsieve.quantization import _cpuid_flags

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_features__ as features
    flags = _cpuid_flags()
    assert flags is not None
    assert ("avx2" in flags) == bool(features.get("AVX2"))
    assert ("avx512_vnni" in flags) == bool(features.get("AVX512VNNI"))


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
