"""The bi-encoder outside torch: an ONNX export kept in a cache folder, run by ONNX Runtime
(fp32, or int8 for this CPU's instruction set) or by OpenVINO (fp32, or bf16 on CPUs with AMX /
AVX-512 BF16).

sentence-transformers' own ONNX and OpenVINO backends need ``optimum-onnx`` (which pins
``transformers<4.58``) or ``optimum-intel`` (which moves torch and transformers), so they cannot
share an install with this stack; the export here is the same graph made locally, with no hub:
the sentence-transformers folder's transformer and its mean (or CLS) pooling are traced into one
ONNX graph (dynamic batch and sequence axes) by :func:`export_encoder`, into
``<cache_dir>/<model>-<key>/`` where ``key`` hashes the folder's path and weight files, so a
changed model is exported anew. ``export.json`` records what was exported from what, and the int8
graph's quantisation with its instruction set (:mod:`recsieve.quantization`); an int8 graph made
for another instruction set is redone. A file lock serialises exports of one folder between
processes; every file is written atomically.

:class:`GraphEncoder` runs a graph: texts are tokenized as sentence-transformers does (same
tokenizer, same ``max_seq_length``), sorted by length into batches so short texts are not padded
to long ones, and returned in input order, pooled and not yet normalised.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import InvalidInputError, MissingDependencyError
from recsieve.locks import FileLock
from recsieve.quantization import needs_requantizing, quantize_int8, usable_cpus
from recsieve.storage import atomic_write_json, read_json, user_cache_dir

__all__ = ["EXPORT_FORMAT", "GraphEncoder", "bf16_supported", "default_cache_dir", "export_encoder", "export_folder",
           "export_info"]

#: Layout of an export folder; a folder of another format is exported again.
EXPORT_FORMAT = 1
_POOLING = ("mean", "cls")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/recsieve/embedders``, else ``~/.cache/recsieve/embedders``: where
    exports go when no cache folder is given."""
    return user_cache_dir("embedders")


def _source(model_path: Path) -> dict[str, Any]:
    """What identifies the model folder an export is made from: path, weight files, configs."""
    files = {}
    for p in sorted(model_path.iterdir()):
        if p.is_file() and (p.suffix in (".safetensors", ".bin", ".json") or p.name == "vocab.txt"):
            st = p.stat()
            files[p.name] = [st.st_size, st.st_mtime_ns]
    return {"path": str(model_path), "files": files}


def export_folder(model_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder that holds the exports of ``model_path``."""
    model_path = Path(model_path).resolve()
    key = hashlib.sha256(json.dumps(_source(model_path), sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{model_path.name}-{key}"


def export_encoder(model_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                   int8: bool = False, isa: str | None = None) -> Path:
    """Export the sentence-transformers model in folder ``model_path`` to ONNX (once) and return
    the graph's path: ``model.onnx`` (fp32) or, with ``int8``, ``model-int8.onnx`` quantised for
    instruction set ``isa`` (``None``: this CPU's).

    ``cache_dir``: the folder of exports (``None``: :func:`default_cache_dir`); it must be
    writable the first time. Raises :class:`InvalidInputError` for a model that is not a
    transformer followed by mean or CLS pooling (and optionally normalisation).
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "this embedding backend exports the model to ONNX, which needs the onnx extra: "
            "pip install 'recsieve[onnx]'") from None
    model_path = Path(model_path).resolve()
    folder = export_folder(model_path, cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError("cache_dir", str(folder.parent), f"cannot create the export folder ({exc})") from None
    fp32, q8, info_path = folder / "model.onnx", folder / "model-int8.onnx", folder / "export.json"
    with FileLock(folder / ".lock").exclusive():
        info = _read_info(info_path, model_path)
        files, changed = set(info.get("files", [])), False
        if "model.onnx" not in files or not fp32.is_file():
            info = {"format": EXPORT_FORMAT, "source": _source(model_path), **_export_fp32(model_path, fp32)}
            files, changed = {"model.onnx"}, True
        if int8 and ("model-int8.onnx" not in files or not q8.is_file() or needs_requantizing(info.get("int8"), isa)):
            info["int8"] = quantize_int8(fp32, q8, isa=isa)
            files.add("model-int8.onnx")
            changed = True
        if changed:
            atomic_write_json(info_path, {**info, "files": sorted(files)})
    return q8 if int8 else fp32


def _read_info(path: Path, model_path: Path) -> dict[str, Any]:
    """The export record if it describes an export of this very model folder, else ``{}``."""
    if not path.is_file():
        return {}
    try:
        info = read_json(path, "embedding export record")
    except Exception:  # noqa: BLE001 - a damaged record means: export again
        return {}
    ok = isinstance(info, dict) and info.get("format") == EXPORT_FORMAT and info.get("source") == _source(model_path)
    return info if ok else {}


def export_info(model_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The record of the current export of ``model_path`` (``{}`` when there is none)."""
    model_path = Path(model_path).resolve()
    return _read_info(export_folder(model_path, cache_dir) / "export.json", model_path)


def _pooling(model: Any) -> tuple[Any, str]:
    """The transformer module and the pooling of a sentence-transformers model, or an error."""
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if len(modules) < 2 or kinds[0] != "Transformer" or kinds[1] != "Pooling" or \
            any(k != "Normalize" for k in kinds[2:]):
        raise InvalidInputError("embedding_backend", kinds,
                                "ONNX/OpenVINO backends run a transformer + pooling (+ normalize) model; use torch")
    mode = getattr(modules[1], "pooling_mode", None) or (
        "mean" if modules[1].get_config_dict().get("pooling_mode_mean_tokens") else
        "cls" if modules[1].get_config_dict().get("pooling_mode_cls_token") else None)
    if mode not in _POOLING:
        raise InvalidInputError("embedding_backend", mode, f"pooling must be one of {_POOLING} for ONNX/OpenVINO; use torch")
    return modules[0], mode


def _export_fp32(model_path: Path, path: Path) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
    transformer, mode = _pooling(st)
    net = transformer.auto_model.eval()
    tokenizer = transformer.tokenizer
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            feed = dict(zip(names, inputs))
            hidden = self.net(**feed)[0]
            if mode == "cls":
                return hidden[:, 0]
            mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    enc = tokenizer(["an example text", "a second, somewhat longer example text"], padding=True, return_tensors="pt")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic; the axes stay dynamic (tested)
            torch.onnx.export(Pooled().eval(), tuple(enc[k] for k in names), str(tmp), input_names=names,
                              output_names=["embedding"],
                              dynamic_axes={**{k: {0: "batch", 1: "sequence"} for k in names}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"pooling": mode, "inputs": names, "max_seq_length": int(st.max_seq_length),
            "dim": int(st.get_embedding_dimension())}


def _one_at_a_time(infer: Any) -> Any:
    """``run(batches, sink)`` over a synchronous ``infer(feed) -> vectors``, batch after batch."""
    def run(batches: Any, sink: Any) -> None:
        for rows, feed in batches:
            sink(rows, infer(feed))
    return run


def _streams(infer: Any, streams: int) -> Any:
    """``run(batches, sink)`` with up to ``streams`` batches in flight at once, each on a pool
    thread calling the thread-safe ``infer(feed) -> vectors`` (which releases the GIL); ``sink``
    runs on the caller's thread, batch by batch in order, and an exception reaches the caller.
    Batches are taken a few per stream at a time, so their feeds are not all held at once."""
    if streams <= 1:
        return _one_at_a_time(infer)

    def run(batches: Any, sink: Any) -> None:
        source = iter(batches)
        with ThreadPoolExecutor(streams) as pool:
            while window := list(itertools.islice(source, 4 * streams)):
                for (rows, _), vecs in zip(window, pool.map(lambda batch: infer(batch[1]), window)):
                    sink(rows, vecs)
    return run


@functools.cache
def bf16_supported() -> bool:
    """Whether OpenVINO runs bf16 on this CPU (AMX or AVX-512 BF16); elsewhere it runs fp32."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class GraphEncoder:
    """Runs an exported graph on ``runtime`` (``"onnxruntime"`` or ``"openvino"``).

    ``precision`` (OpenVINO only): ``"f32"`` or ``"bf16"`` (fp32 where the CPU has no bf16).
    ``threads``: ONNX Runtime runs that many batches at once (``None``: one per core), each on one
    thread of one shared session -- on two AVX2 cores 320-322 texts/s against 298-317 with one
    batch at a time on both (README, "Index build"); OpenVINO's intra-op threads (``None``: the
    runtime's default, every core).
    A call with one text runs on a second, lazily made session of ``query_threads`` threads
    when that is set (one short text is too little work to split between cores). Not for
    concurrent calls: the embedder serialises them.

    OpenVINO runs a call's batches on its ``THROUGHPUT`` hint: as many streams (each a share of
    the cores) as the runtime finds best, every stream busy with its own batch at once through an
    ``AsyncInferQueue``, instead of one batch at a time split over every core (on two cores with
    bf16: 818–873 texts/s against 656–692, the same vectors). A single text keeps the ``LATENCY`` hint.
    """

    def __init__(self, graph: Path, tokenizer: Any, *, inputs: Sequence[str], max_length: int,
                 runtime: str, precision: str = "f32", threads: int | None = None,
                 query_threads: int | None = None) -> None:
        if runtime not in ("onnxruntime", "openvino"):
            raise InvalidInputError("runtime", runtime, "expected 'onnxruntime' or 'openvino'")
        self.graph, self.tokenizer, self.inputs = graph, tokenizer, list(inputs)
        self.max_length, self.runtime, self.precision = max_length, runtime, precision
        self.threads, self.query_threads = threads, query_threads
        self._sessions: dict[tuple[int | None, bool], Any] = {}
        self._lock = threading.Lock()
        self._pad = int(tokenizer.pad_token_id or 0)

    def _session(self, threads: int | None, single: bool) -> Any:
        with self._lock:
            if (threads, single) not in self._sessions:
                self._sessions[threads, single] = self._open(threads, single)
            return self._sessions[threads, single]

    def _open(self, threads: int | None, single: bool) -> Any:
        """A function ``run(batches, sink)`` that calls ``sink(rows, vectors)`` for each
        ``(rows, feed)`` of ``batches`` (in any order) and returns when all are done."""
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            streams = 1 if single else threads or usable_cpus()
            options.intra_op_num_threads = (threads or 0) if single else 1
            if not single:
                options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(self.graph), options, providers=["CPUExecutionProvider"])
            return _streams(lambda feed: session.run(None, feed)[0], streams)
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("the openvino backends need the openvino extra: "
                                         "pip install 'recsieve[openvino]'") from None
        precision = self.precision if self.precision != "bf16" or bf16_supported() else "f32"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY" if single else "THROUGHPUT",
                                  "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(self.graph)), "CPU", config)
        if single:
            request = compiled.create_infer_request()
            return _one_at_a_time(lambda feed: request.infer(feed)[0])
        queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

        def run_queued(batches: Any, sink: Any) -> None:
            failures: list[BaseException] = []

            def done(request: Any, rows: Any) -> None:
                try:  # an exception raised here would be lost in the runtime's thread
                    sink(rows, request.get_output_tensor(0).data)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, on the caller's thread
                    failures.append(exc)
            queue.set_callback(done)
            for rows, feed in batches:
                queue.start_async(feed, rows)
            queue.wait_all()
            if failures:
                raise failures[0]
        return run_queued

    def load(self) -> None:
        """Open the batch session now (it opens on first use otherwise)."""
        self._session(self.threads, False)

    def encode(self, texts: Sequence[str], batch_size: int, *, progress: Any = None) -> np.ndarray:
        """Pooled, unnormalised float32 ``(len(texts), dim)`` in input order. ``progress``: an
        object with ``update(n)`` told of each batch (a tqdm bar)."""
        single = len(texts) == 1 and self.query_threads is not None
        run = self._session(self.query_threads if single else self.threads, single)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = np.fromiter((len(ids) for ids in enc["input_ids"]), dtype=np.int64, count=len(texts))
        order = np.argsort(-lengths, kind="stable")

        def batches() -> Any:
            for lo in range(0, len(order), batch_size):
                rows = order[lo:lo + batch_size]
                width = int(lengths[rows].max())
                feed = {}
                for name in self.inputs:
                    arr = np.full((len(rows), width), self._pad if name == "input_ids" else 0, dtype=np.int64)
                    column = enc[name]
                    for r, i in enumerate(rows):
                        row = column[i]
                        arr[r, : len(row)] = row
                    feed[name] = arr
                yield rows, feed

        parts: list[tuple[np.ndarray, np.ndarray]] = []

        def sink(rows: np.ndarray, vecs: Any) -> None:
            parts.append((rows, np.array(vecs, dtype=np.float32)))  # a copy: the runtime reuses its buffer
            if progress is not None:
                progress.update(len(rows))

        run(batches(), sink)
        out = np.empty((len(texts), parts[0][1].shape[1]), dtype=np.float32)
        for rows, vecs in parts:
            out[rows] = vecs
        return out

