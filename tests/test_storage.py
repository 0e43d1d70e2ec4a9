"""Atomic writes and generation directories: a failed commit leaves the previous state."""

import json

import pytest

from recsieve.errors import CorruptStoreError, IncompatibleVersionError, StoreError
from recsieve.storage import GenerationDir, atomic_write_bytes, read_json


def write_files(content):
    def write(folder):
        (folder / "a.txt").write_text(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "b.bin").write_bytes(content.encode() * 3)

    return write


def test_commit_and_open(tmp_path):
    g = GenerationDir(tmp_path / "d", "engine")
    assert not g.exists()
    g.commit(write_files("one"), {"n": 1})
    folder, meta = g.open()
    assert (folder / "a.txt").read_text() == "one" and meta == {"n": 1}
    g.commit(write_files("two"), {"n": 2})
    folder, meta = g.open()
    assert (folder / "a.txt").read_text() == "two" and meta == {"n": 2}
    assert len([p for p in (tmp_path / "d").iterdir() if p.name.startswith("gen-")]) == 1


def test_failed_commit_keeps_previous(tmp_path):
    g = GenerationDir(tmp_path, "engine")
    g.commit(write_files("one"))

    def boom(folder):
        (folder / "a.txt").write_text("partial")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        g.commit(boom)
    folder, _ = g.open()
    assert (folder / "a.txt").read_text() == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-gen")]


def test_corruption_detected(tmp_path):
    g = GenerationDir(tmp_path, "engine")
    folder = g.commit(write_files("one"))
    (folder / "sub" / "b.bin").write_bytes(b"onxone")  # same size, other bytes
    with pytest.raises(CorruptStoreError, match="sub/b.bin"):
        g.open()
    (folder / "sub" / "b.bin").write_bytes(b"on")  # truncated
    with pytest.raises(CorruptStoreError, match="truncated"):
        g.open()


def test_version_kind_and_traversal(tmp_path):
    g = GenerationDir(tmp_path, "engine")
    g.commit(write_files("one"))
    manifest = json.loads(g.manifest_path.read_text())
    with pytest.raises(IncompatibleVersionError):
        GenerationDir(tmp_path, "index").open()
    bad = dict(manifest, version=99)
    g.manifest_path.write_text(json.dumps(bad))
    with pytest.raises(IncompatibleVersionError, match="99"):
        g.open()
    evil = dict(manifest, files={"../../etc/passwd": {"size": 1, "sha256": "x"}})
    g.manifest_path.write_text(json.dumps(evil))
    with pytest.raises(CorruptStoreError, match="leaves the directory"):
        g.open()
    g.manifest_path.write_text("{not json")
    with pytest.raises(CorruptStoreError):
        g.open()


def test_missing_and_wrong_paths(tmp_path):
    with pytest.raises(StoreError, match="not a directory"):
        GenerationDir(tmp_path / "nope", "engine").open()
    with pytest.raises(StoreError, match="nothing was saved"):
        GenerationDir(tmp_path, "engine").open()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError):
        GenerationDir(f, "engine").commit(write_files("x"))
    with pytest.raises(StoreError, match="directory"):
        read_json(tmp_path, "thing")


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f"
    atomic_write_bytes(p, b"old content")
    atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]
