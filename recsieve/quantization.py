"""int8 dynamic quantisation of an ONNX graph, chosen by the CPU's instruction set.

ONNX Runtime multiplies uint8 activations by int8 weights. With VNNI (``avx512_vnni``,
``avx_vnni``; AMX CPUs have it too) or on ARM64 the products accumulate in 32 bits. Without
it (AVX2 or AVX-512 alone) the kernel adds pairs of products in 16 bits (``VPMADDUBSW``), which
saturates when full-range int8 weights meet large activations: on an AVX2-only AMD EPYC a
quantised cross-encoder's scores correlated only 0.937 with fp32. There, weights are quantised
to 7 bits (``reduce_range``: ``[-64, 64]``, so ``2 * 255 * 64 < 2**15`` and no pair can
saturate). These are the choices of sentence-transformers' ``export_dynamic_quantized_onnx_model``
configurations and of ONNX Runtime's own guidance.

:func:`cpu_isa` names the instruction set, :func:`int8_settings` the quantisation it gets, and
:func:`quantize_int8` writes the quantised graph and returns the record an export keeps next
to it, so an export made for another CPU is redone (:func:`needs_requantizing`).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Any

from recsieve.errors import InvalidInputError

__all__ = ["ISAS", "cpu_isa", "cpuinfo_flags", "int8_settings", "quantize_int8", "needs_requantizing", "usable_cpus"]

#: Instruction sets told apart, best first. ``x86``: an x86-64 CPU without AVX2.
ISAS = ("avx512_vnni", "avx_vnni", "arm64", "avx512", "avx2", "x86")
#: Those whose int8 products cannot saturate: full-range int8 weights.
_NO_SATURATION = ("avx512_vnni", "avx_vnni", "arm64")


#: numpy's runtime CPU-feature names -> ``/proc/cpuinfo``'s, for the flags :func:`cpu_isa` reads.
_CPUID_NAMES = {"AVX512VNNI": "avx512_vnni", "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX2": "avx2"}


def _cpuid_flags() -> set[str] | None:
    """The int8-relevant flags this process's CPUID reports, as numpy's runtime dispatch reads
    them (the same instruction ONNX Runtime's kernels and FAISS's loader consult); ``None``
    where numpy does not expose its table."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return {name for key, name in _CPUID_NAMES.items() if features.get(key)}


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU flags ``path`` lists (empty where it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity; every CPU where that cannot be read)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@functools.cache
def cpu_isa() -> str:
    """The int8-relevant instruction set of this CPU, one of :data:`ISAS`.

    Read from CPUID through numpy's runtime feature table: what the kernels themselves see,
    also where ``/proc/cpuinfo`` names another CPU (under an emulator such as ``qemu-x86_64
    -cpu Haswell``, it lists the host's flags). ``avx_vnni``, which that table lacks, and every
    flag where numpy has no table, come from ``/proc/cpuinfo``; an x86 CPU whose flags cannot
    be read counts as ``x86`` (the safe, 7-bit choice).
    """
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    proc = cpuinfo_flags()
    cpuid = _cpuid_flags()
    flags = proc if cpuid is None else cpuid | ({"avx_vnni"} & proc if "avx2" in cpuid else set())
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "x86"


def _check_isa(isa: str | None) -> str:
    if isa is None:
        return cpu_isa()
    if isa not in ISAS:
        raise InvalidInputError("isa", isa, f"expected one of {ISAS}")
    return isa


def int8_settings(isa: str | None = None) -> dict[str, Any]:
    """The quantisation for ``isa`` (``None``: this CPU's): uint8 activations quantised on the
    fly, int8 weights per output channel, 7-bit weights (``reduce_range``) where products could
    saturate. The dict is what an export records."""
    isa = _check_isa(isa)
    return {"isa": isa, "activations": "uint8", "weights": "int8", "per_channel": True,
            "reduce_range": isa not in _NO_SATURATION}


def needs_requantizing(record: Any, isa: str | None = None) -> bool:
    """Whether an int8 export recorded as ``record`` was made for another CPU than ``isa``
    (``None``: this one), or records nothing usable."""
    return not isinstance(record, dict) or record != int8_settings(isa)


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, *, isa: str | None = None) -> dict[str, Any]:
    """Quantise the fp32 ONNX graph ``src`` into ``dst`` (written atomically) for ``isa``
    (``None``: this CPU); returns :func:`int8_settings` of that choice, to be recorded."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = int8_settings(isa)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a generic pre-processing hint as a warning
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=settings["reduce_range"])
        os.replace(tmp, dst)
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)
    return settings
