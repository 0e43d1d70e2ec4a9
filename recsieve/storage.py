"""Durable files: atomic writes and generation directories committed by a manifest.

A directory that holds several files (catalog, vectors, index) is saved as a new
*generation* folder; only when every file in it is written and fsynced does an atomic
rename of ``MANIFEST.json`` make it current. A crash at any point leaves the previous
generation loadable. The manifest records, for every file, its size, its sha256 and a *quick*
hash (sha256 of its size, first MiB and last MiB). Opening checks sizes and quick hashes: cheap
at any size, it still refuses a truncated, swapped or replaced file, and a file of up to 2 MiB
is hashed whole. :meth:`GenerationDir.verify` (``recsieve verify DIR``) does the full check,
sha256 of every byte, and names each file that fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsieve.errors import CorruptStoreError, IncompatibleVersionError, StoreError

__all__ = [
    "sha256_file",
    "quick_hash_file",
    "quick_hash_bytes",
    "QUICK_SPAN",
    "FileProblem",
    "pack_strings",
    "unpack_strings",
    "replacing_folder",
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "fsync_dir",
    "read_json",
    "user_cache_dir",
    "GenerationDir",
]

#: Version of the on-disk layout; a directory with another version is refused.
FORMAT_VERSION = 1
MANIFEST = "MANIFEST.json"
_GEN_RE = re.compile(r"^gen-(\d{8})$")


def user_cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/recsieve/<name>``, else ``~/.cache/recsieve/<name>``: where a cache
    goes when no folder is given."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "recsieve" / name


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync of the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


@contextmanager
def replacing_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Assemble a folder in a temporary sibling; when the block completes it replaces ``folder``
    (renamed into place), and on any failure it is deleted and ``folder`` stays as it was."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield work
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
        fsync_dir(folder.parent)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing, unreadable or malformed file into a clear error."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{what}: expected a file, got a directory: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{what}: missing file {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStoreError(f"{what}: {path} is not valid JSON ({exc})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Bytes hashed at each end of a file by :func:`quick_hash_file` (1 MiB).
QUICK_SPAN = 1 << 20


def quick_hash_file(path: Path, size: int | None = None) -> str:
    """sha256 of a file's size, its first :data:`QUICK_SPAN` bytes and its last ones (the whole
    file when it is at most twice that): what opening checks, in two reads at most."""
    size = path.stat().st_size if size is None else size
    h = hashlib.sha256(b"%d:" % size)
    with open(path, "rb") as fh:
        if size <= 2 * QUICK_SPAN:
            h.update(fh.read())
        else:
            h.update(fh.read(QUICK_SPAN))
            fh.seek(size - QUICK_SPAN)
            h.update(fh.read(QUICK_SPAN))
    return h.hexdigest()


def quick_hash_bytes(data: bytes) -> str:
    """:func:`quick_hash_file` of a file that would hold ``data``."""
    size = len(data)
    h = hashlib.sha256(b"%d:" % size)
    if size <= 2 * QUICK_SPAN:
        h.update(data)
    else:
        h.update(data[:QUICK_SPAN])
        h.update(data[size - QUICK_SPAN :])
    return h.hexdigest()


@dataclass(frozen=True)
class FileProblem:
    """A file of a generation that failed a check: its path in the generation and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as one UTF-8 byte array (``uint8``) and ``len + 1`` offsets (``int64``): arrays an
    ``.npz`` holds without pickling, for any characters."""
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings :func:`pack_strings` packed."""
    data, bounds = np.asarray(blob, dtype=np.uint8).tobytes(), np.asarray(offsets, dtype=np.int64).tolist()
    return [data[a:b].decode("utf-8", "surrogatepass") for a, b in zip(bounds[:-1], bounds[1:])]


def _fsync_tree(root: Path) -> dict[str, dict[str, Any]]:
    """fsync every file and folder below ``root``; return {relative path: {size, sha256, quick}},
    hashed from the files as they lie on disk after the fsync."""
    files: dict[str, dict[str, Any]] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
            size = p.stat().st_size
            files[p.relative_to(root).as_posix()] = {"size": size, "sha256": sha256_file(p),
                                                     "quick": quick_hash_file(p, size)}
        fsync_dir(Path(dirpath))
    return files


def _check_file(folder: Path, root: Path, rel: str, info: Any, full: bool) -> FileProblem | None:
    """Check one manifest entry: its path stays inside, the file exists, its size, then the quick
    hash (or, with ``full`` or a manifest from before quick hashes, the sha256)."""
    path = (folder / rel).resolve()
    if root not in path.parents:
        raise CorruptStoreError(f"{folder.parent / MANIFEST}: path {rel!r} leaves the directory")
    if not isinstance(info, dict):
        return FileProblem(rel, "without a checksum in the manifest")
    if not path.is_file():
        return FileProblem(rel, "missing")
    size = path.stat().st_size
    if size != info.get("size"):
        return FileProblem(rel, f"truncated or replaced: {size} bytes, the manifest says {info.get('size')} "
                                "(checksum mismatch)")
    if not full and "quick" in info:
        if quick_hash_file(path, size) != info["quick"]:
            return FileProblem(rel, "corrupted or replaced (checksum mismatch at its start or end)")
        return None
    if sha256_file(path) != info.get("sha256"):
        return FileProblem(rel, "corrupted (sha256 checksum mismatch)")
    return None


class GenerationDir:
    """A folder whose content is replaced atomically, one generation at a time.

    ``kind`` is a label stored in the manifest (``"engine"``, ``"index"``) and checked on
    open, so a folder of one kind is never read as another.
    """

    def __init__(self, root: str | os.PathLike, kind: str) -> None:
        self.root = Path(root)
        self.kind = kind

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        """Whether a committed generation exists."""
        return self.manifest_path.is_file()

    def commit(self, write: Callable[[Path], None], meta: dict[str, Any] | None = None) -> Path:
        """Create a new generation: ``write(folder)`` fills an empty folder, then it is made current.

        Returns the new generation's folder. Older generations are deleted afterwards.
        """
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.kind} directory: {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        gen = self._next_generation()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-gen-{gen:08d}-", dir=self.root))
        try:
            write(tmp)
            files = _fsync_tree(tmp)
            final = self.root / f"gen-{gen:08d}"
            os.replace(tmp, final)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        manifest = {
            "format": "recsieve",
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "generation": final.name,
            "files": files,
            "meta": meta or {},
        }
        atomic_write_json(self.manifest_path, manifest)
        self._collect_garbage(keep=final.name)
        return final

    def open(self, verify: bool | str = True) -> tuple[Path, dict[str, Any]]:
        """Return ``(folder, meta)`` of the current generation, after checking it.

        ``verify``: ``True`` (or ``"quick"``) checks every file's size and quick hash (see the
        module), ``"full"`` its sha256, ``False`` nothing. Raises :class:`StoreError` when there
        is none, :class:`IncompatibleVersionError` for another format version or kind,
        :class:`CorruptStoreError` naming the first file that is missing, truncated or altered.
        """
        folder, files, meta = self._read_manifest()
        if verify:
            root = folder.resolve()
            for rel, info in files.items():
                problem = _check_file(folder, root, rel, info, full=verify == "full")
                if problem is not None:
                    raise CorruptStoreError(f"{self.root}: file {problem.path} is {problem.reason}")
        return folder, meta

    def verify(self) -> tuple[Path, dict[str, dict[str, Any]], list[FileProblem]]:
        """The full check: ``(folder, manifest files, problems)``, every file's size and sha256
        compared with the manifest (each file that fails is listed, not only the first).

        Raises as :meth:`open` does when there is no readable manifest or generation."""
        folder, files, _meta = self._read_manifest()
        root = folder.resolve()
        problems = [p for rel, info in files.items() if (p := _check_file(folder, root, rel, info, full=True))]
        return folder, files, problems

    def _read_manifest(self) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """The current generation's folder, manifest files and meta (the manifest checked, not the files)."""
        if not self.root.is_dir():
            raise StoreError(f"{self.kind} directory: {self.root} is not a directory")
        if not self.exists():
            raise StoreError(f"{self.kind} directory: {self.root} holds no {MANIFEST}; nothing was saved there")
        manifest = read_json(self.manifest_path, f"{self.kind} manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != "recsieve":
            raise CorruptStoreError(f"{self.manifest_path} is not a recsieve manifest")
        if manifest.get("version") != FORMAT_VERSION:
            raise IncompatibleVersionError(
                f"{self.root}: format version {manifest.get('version')!r}; "
                f"this recsieve reads version {FORMAT_VERSION}"
            )
        if manifest.get("kind") != self.kind:
            raise IncompatibleVersionError(
                f"{self.root}: holds a {manifest.get('kind')!r} directory, expected {self.kind!r}"
            )
        name = manifest.get("generation")
        if not isinstance(name, str) or not _GEN_RE.match(name):
            raise CorruptStoreError(f"{self.manifest_path}: bad generation name {name!r}")
        folder = self.root / name
        files = manifest.get("files")
        if not folder.is_dir() or not isinstance(files, dict):
            raise CorruptStoreError(f"{self.root}: generation {name} is missing")
        return folder, files, dict(manifest.get("meta") or {})

    def _generations(self) -> list[int]:
        gens = []
        for p in self.root.iterdir():
            m = _GEN_RE.match(p.name)
            if m:
                gens.append(int(m.group(1)))
        return sorted(gens)

    def _next_generation(self) -> int:
        gens = self._generations()
        return gens[-1] + 1 if gens else 1

    def _collect_garbage(self, keep: str) -> None:
        for p in self.root.iterdir():
            if (_GEN_RE.match(p.name) and p.name != keep) or p.name.startswith(".tmp-gen-"):
                shutil.rmtree(p, ignore_errors=True)
