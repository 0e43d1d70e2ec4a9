"""Language-model vectors of generated item texts for the ``index`` section, cached on disk.

Clustered gaussian vectors (:func:`~recsieve.bench.common.clustered_vectors`) have round
clusters, the shape IVF's quantiser assumes. The index section can instead run on MiniLM vectors
(:class:`~recsieve.embedding.SentenceTransformerEmbedder`) of generated texts from one of two
sources:

- the bench's generated catalog (default): :func:`~recsieve.bench.common.synthetic_items`
  rendered as a :class:`~recsieve.catalog.Catalog` renders them -- templated texts (an
  adjective, a noun, a topic and a running number), so most have near-copies;
- :class:`MarkovTexts` over a corpus of real texts (e.g. product descriptions): each text a
  walk of 6-18 words along the corpus's word bigrams, so texts mix the corpus's vocabulary and
  topics without copying its items.

Embedding a million texts takes a while on 2 cores (about 22 minutes for the catalog's with
``openvino-bf16``), so the vectors are cached in ``cache_dir``, one ``.npy`` file per chunk of
:data:`CHUNK` texts, each written atomically: an interrupted run resumes at its first missing
chunk, and every size reads the prefix it needs of one seed's stream (a text never depends on
how many follow it). A folder's name keys the source, the seed and the model and backend
(``model_id``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsieve.bench.common import synthetic_items
from recsieve.catalog import Catalog
from recsieve.errors import InvalidInputError
from recsieve.storage import atomic_write_bytes, user_cache_dir

__all__ = ["CHUNK", "CatalogTexts", "MarkovTexts", "TextSource", "default_vector_cache", "read_corpus", "text_vectors"]

#: Texts per cached chunk (one ``.npy`` file each).
CHUNK = 50_000


class TextSource(Protocol):
    """Generated texts: ``texts(seed, count)`` gives a seed's first ``count`` (a prefix of any
    longer call's); ``key`` names the source in cache folders."""

    key: str

    def texts(self, seed: int, count: int) -> list[str]: ...


class CatalogTexts:
    """The bench's generated catalog items as a catalog renders them."""

    def __init__(self) -> None:
        self._catalog = Catalog()
        self.key = "catalog-" + hashlib.sha256(self._catalog.render(synthetic_items(1, 0)[0]).encode()).hexdigest()[:8]

    def texts(self, seed: int, count: int) -> list[str]:
        return [self._catalog.render(it) for it in synthetic_items(count, seed)]


class MarkovTexts:
    """Walks of ``min_words``-``max_words`` words along the word bigrams of ``corpus`` (texts
    split on whitespace): a walk starts at a text's first word, each next word follows the
    current one somewhere in the corpus, and a word nothing follows restarts at a first word."""

    def __init__(self, corpus: Sequence[str], *, min_words: int = 6, max_words: int = 18) -> None:
        split = [t.split() for t in corpus]
        split = [w for w in split if w]
        if not split:
            raise InvalidInputError("corpus", len(corpus), "needs at least one text with a word")
        if not 1 <= min_words <= max_words:
            raise InvalidInputError("min_words", (min_words, max_words), "need 1 <= min_words <= max_words")
        self.starts = [w[0] for w in split]
        follows: dict[str, list[str]] = {}
        for words in split:
            for a, b in zip(words, words[1:]):
                follows.setdefault(a, []).append(b)
        self.follows = follows
        self.min_words, self.max_words = min_words, max_words
        digest = hashlib.sha256(json.dumps([split, min_words, max_words]).encode()).hexdigest()[:8]
        self.key = f"markov-{digest}"

    def texts(self, seed: int, count: int) -> list[str]:
        rng = random.Random(seed)
        out = []
        for _ in range(count):
            length = rng.randint(self.min_words, self.max_words)
            word = rng.choice(self.starts)
            words = [word]
            while len(words) < length:
                nxt = self.follows.get(word)
                word = rng.choice(nxt) if nxt else rng.choice(self.starts)
                words.append(word)
            out.append(" ".join(words))
        return out


def read_corpus(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of UTF-8 text file ``path`` (one text per line)."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError("text_corpus", str(path), f"cannot be read as UTF-8 text ({exc})") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InvalidInputError("text_corpus", str(path), "holds no text")
    return texts


def default_vector_cache() -> Path:
    """``$XDG_CACHE_HOME/recsieve/bench-vectors`` (else ``~/.cache/recsieve/bench-vectors``)."""
    return user_cache_dir("bench-vectors")


def text_vectors(n: int, queries: int, *, seed: int, source: TextSource | None = None,
                 cache_dir: str | os.PathLike | None = None, backend: str = "auto",
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Unit ``float32`` vectors of the first ``n`` texts of ``source`` (default
    :class:`CatalogTexts`) for ``seed`` (the base) and of the first ``queries`` for ``seed + 1``
    (the queries: generated alike, apart from the base), and a description of where they came
    from (source, model, backend, chunks embedded now)."""
    from recsieve.embedding import SentenceTransformerEmbedder

    for name, v in (("n", n), ("queries", queries)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidInputError(name, v, "must be a positive integer")
    source = source if source is not None else CatalogTexts()
    embedder = SentenceTransformerEmbedder(backend=backend, show_progress=False)
    root = Path(cache_dir if cache_dir is not None else default_vector_cache()).expanduser()
    base, made = _stream(embedder, source, root, seed, n, progress)
    query, made_q = _stream(embedder, source, root, seed + 1, queries, progress)
    info = {"source": f"MiniLM vectors of generated texts ({type(source).__name__}, {source.key}); "
                      f"base: seed {seed}, queries: seed {seed + 1}",
            "model": embedder.model_id, "backend": embedder.backend, "chunks_embedded": made + made_q}
    return base, query, info


def _stream(embedder: Any, source: TextSource, root: Path, seed: int, count: int,
            progress: bool) -> tuple[np.ndarray, int]:
    """The first ``count`` vectors of ``seed``'s generated texts, embedding (whole chunks) what
    the cache lacks; and how many chunks were embedded."""
    key = hashlib.sha256(json.dumps([source.key, seed, embedder.model_id]).encode()).hexdigest()[:12]
    folder = root / f"{source.key}-seed{seed}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    chunks = range(0, count, CHUNK)
    missing = [lo for lo in chunks if not (folder / f"{lo // CHUNK:05d}.npy").is_file()]
    if missing:
        texts = source.texts(seed, missing[-1] + CHUNK)  # a seed's texts do not depend on the count
        bar = _bar(progress, len(missing) * CHUNK, f"embedding generated texts (seed {seed})")
        for lo in missing:
            vecs = embedder.embed(texts[lo:lo + CHUNK]).astype(np.float32)
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            buffer = io.BytesIO()
            np.save(buffer, vecs, allow_pickle=False)
            atomic_write_bytes(folder / f"{lo // CHUNK:05d}.npy", buffer.getvalue())
            if bar is not None:
                bar.update(CHUNK)
        if bar is not None:
            bar.close()
    parts = [_chunk(folder / f"{lo // CHUNK:05d}.npy") for lo in chunks]
    vectors = np.concatenate(parts)[:count]
    if vectors.shape[0] != count:
        raise InvalidInputError("cache_dir", str(folder), f"holds {vectors.shape[0]} vectors, expected {count}")
    return vectors, len(missing)


def _chunk(path: Path) -> np.ndarray:
    """One cached chunk, or an error naming it (delete it and it is embedded again)."""
    try:
        vecs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError("cache_dir", str(path), f"chunk {path.name} unreadable, delete it to embed it again ({exc})") from None
    if vecs.ndim != 2 or vecs.shape[0] != CHUNK or vecs.dtype != np.float32:
        raise InvalidInputError("cache_dir", str(path), f"chunk {path.name} of shape {vecs.shape} {vecs.dtype}, expected "
                                f"({CHUNK}, dim) float32: delete it to embed it again")
    return vecs


def _bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text")
