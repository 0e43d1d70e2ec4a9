"""A trained cross-encoder served by ONNX Runtime, in fp32 or with int8 dynamic quantisation.

:func:`export_onnx` turns a folder written by ``train-reranker`` (or
:func:`~recsieve.rerankers.distill.distill_reranker`) into ``onnx/model.onnx`` inside that
folder -- traced with dynamic batch and sequence axes -- and, for ``int8=True``,
``onnx/model-int8.onnx``: weights of the matrix multiplications quantised to int8 per
channel, activations quantised on the fly (``onnxruntime.quantization.quantize_dynamic``), in
the form this CPU's instruction set multiplies without saturating
(:func:`recsieve.quantization.int8_settings`: full range with VNNI, 7-bit weights on AVX2 or
AVX-512 without VNNI). Each file is written atomically, with ``onnx/export.json`` naming the
training run it was made from and the int8 choice with its instruction set, so a retrained
model, or a folder moved to a CPU of another instruction set, is re-exported instead of
silently serving the old graph.

:class:`OnnxReranker` scores like :class:`~recsieve.rerankers.cross_encoder.CrossEncoderReranker`
(same tokenizer, same truncation, raw logits) and sorts pairs by length before batching so
short pairs are not padded to the longest one. Needs the ``onnx`` extra
(``onnxruntime``, ``onnx``).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import CorruptStoreError, InvalidInputError
from recsieve.quantization import int8_settings, needs_requantizing, quantize_int8
from recsieve.rerankers.base import Reranker, check_pair_input, check_scores
from recsieve.rerankers.folder import read_marker, trained_max_length
from recsieve.storage import atomic_write_json, read_json

__all__ = ["export_onnx", "OnnxReranker", "ONNX_FOLDER"]

#: Sub-folder of a model folder that holds its ONNX exports.
ONNX_FOLDER = "onnx"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("ONNX serving needs the onnx extra: pip install 'recsieve[onnx]'") from exc


def _stamp(marker: dict[str, Any]) -> dict[str, Any]:
    return {"trained_at": marker.get("trained_at"), "max_length": marker.get("max_length"),
            "steps": marker.get("steps")}


def export_onnx(model: str | os.PathLike, *, int8: bool = False, force: bool = False,
                isa: str | None = None) -> Path:
    """Export the trained cross-encoder in folder ``model`` to ONNX; returns the ``.onnx`` path.

    ``int8=True`` returns the dynamically quantised graph (exporting the fp32 one first if
    needed), quantised for instruction set ``isa`` (``None``: this CPU's; one of
    :data:`recsieve.quantization.ISAS`). An export made from the same training run (and, for
    int8, for the same instruction set) is reused unless ``force``.
    """
    _require_onnx()
    folder = Path(model)
    marker = read_marker(folder)  # refuses a folder not trained by recsieve
    out = folder / ONNX_FOLDER
    fp32, q8, info_path = out / "model.onnx", out / "model-int8.onnx", out / "export.json"
    target = q8 if int8 else fp32
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = read_json(info_path, "ONNX export record")
        except Exception:  # noqa: BLE001 - a damaged record means: export again
            info = {}
    fresh = not force and isinstance(info, dict) and info.get("source") == _stamp(marker)
    stale_int8 = int8 and needs_requantizing(info.get("int8") if fresh else None, isa)
    if fresh and target.name in info.get("files", []) and target.is_file() and not stale_int8:
        return target
    out.mkdir(exist_ok=True)
    files = set(info.get("files", [])) if fresh else set()
    if not (fresh and "model.onnx" in files and fp32.is_file()):
        _export_fp32(folder, fp32)
        files = {"model.onnx"}
    record = {"source": _stamp(marker)}
    if fresh and "model-int8.onnx" in files and not needs_requantizing(info.get("int8"), isa if int8 else None):
        record["int8"] = info["int8"]  # a valid int8 export of this run stays listed
    else:
        files.discard("model-int8.onnx")
    if int8:
        record["int8"] = quantize_int8(fp32, q8, isa=isa)
        files.add("model-int8.onnx")
    atomic_write_json(info_path, {**record, "files": sorted(files)})
    return target


def _export_fp32(folder: Path, path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    net = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True).eval()
    enc = tokenizer(["an example context", "a second, longer example context"], ["an item", "another item"],
                    padding=True, return_tensors="pt")
    names = [k for k in _INPUTS if k in enc]
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; the axes stay dynamic (tested)
        torch.onnx.export(
            net, tuple(enc[k] for k in names), str(tmp), input_names=names, output_names=["logits"],
            dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    os.replace(tmp, path)


class OnnxReranker(Reranker):
    """Scores (context, item) pairs with an ONNX export of a trained cross-encoder.

    ``model``: the trained folder (exported on first use if needed); ``int8``: serve the
    dynamically quantised graph, quantised for this CPU's instruction set (``isa`` forces
    another, one of :data:`recsieve.quantization.ISAS`: e.g. ``"avx2"`` to check on a VNNI
    machine what an AVX2-only one would serve); ``max_length``: token limit per pair (``None``: the length
    the model was trained with); ``batch_size`` pairs per run, grouped by length; ``threads``:
    ONNX Runtime's intra-op threads (``None``: its default). Thread-safe; runs are serialised.
    """

    name = "cross-encoder-onnx"

    def __init__(self, model: str | os.PathLike, *, int8: bool = False, max_length: int | None = None,
                 batch_size: int = 32, threads: int | None = None, isa: str | None = None) -> None:
        if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
            raise InvalidInputError("model", model, "must be the path of a trained re-ranker folder")
        for field, value in (("batch_size", batch_size), ("max_length", max_length or 1), ("threads", threads or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(field, value, "must be a positive integer")
        if isa is not None:
            int8_settings(isa)  # checks the name
        self.model_id = f"{model}#{'onnx-int8' if int8 else 'onnx'}" + (
            "" if max_length is None else f"#max_length={max_length}") + ("" if isa is None else f"#isa={isa}")
        self.folder, self.int8, self.max_length, self.isa = Path(model), int8, max_length, isa
        self.batch_size, self.threads = batch_size, threads
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._names: list[str] = []
        self._pad = 0

    def __repr__(self) -> str:
        return f"OnnxReranker({str(self.folder)!r}, int8={self.int8}, max_length={self.max_length})"

    def load(self) -> None:
        """Export if needed and open the ONNX Runtime session (idempotent, thread-safe)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            marker = read_marker(self.folder)
            path = export_onnx(self.folder, int8=self.int8, isa=self.isa)
            import onnxruntime as ort
            from transformers import AutoTokenizer

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
                raise CorruptStoreError(f"{path}: not a loadable ONNX model ({exc}); delete "
                                        f"{path.parent} to export it again") from None
            if self.max_length is None:
                self.max_length = trained_max_length(marker)
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self._names = [i.name for i in session.get_inputs()]
            self._pad = int(self._tokenizer.pad_token_id or 0)
            self._session = session

    def score(self, context: str, items: Sequence[str]) -> np.ndarray:
        """Raw logits of ``(context, item)`` for each item, ``float32`` of shape ``(len(items),)``."""
        check_pair_input(context, items)
        self.load()
        out = np.empty(len(items), dtype=np.float32)
        if not items:
            return out
        with self._lock:
            enc = self._tokenizer([context] * len(items), list(items), truncation=True, max_length=self.max_length)
            lengths = np.array([len(ids) for ids in enc["input_ids"]])
            order = np.argsort(-lengths, kind="stable")
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                width = int(lengths[idx].max())
                feed = {}
                for name in self._names:
                    fill = self._pad if name == "input_ids" else 0
                    arr = np.full((len(idx), width), fill, dtype=np.int64)
                    for r, i in enumerate(idx):
                        row = enc[name][i]
                        arr[r, : len(row)] = row
                    feed[name] = arr
                out[idx] = self._session.run(None, feed)[0][:, 0]
        return check_scores(np.ascontiguousarray(out, dtype=np.float32), len(items))
