"""The distributed build on a local Ray instance (``slow``: Ray takes seconds to start): it equals
the single-process build, reads folders of shards, and refuses bad input with the same errors,
leaving no directory behind."""

from __future__ import annotations

import csv
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("lance")

from test_config import WordHashEmbedder  # noqa: E402

from recsieve import Engine, EngineConfig  # noqa: E402
from recsieve.cli import main  # noqa: E402
from recsieve.distributed import build_index  # noqa: E402
from recsieve.engine.engine import build_index as local_build_index  # noqa: E402
from recsieve.errors import DuplicateIdError, InvalidInputError, RecsieveError  # noqa: E402
from recsieve.items_io import read_items  # noqa: E402

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))
QUERIES = ["kitchen kettle", "romance novel about Lisbon", "toys for children", "waterproof jacket",
           "history of Rome"]
FILTERS = [None, "price < 30", 'category == "books" and in_stock == true']


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module; its workers import this folder's modules (the test embedders)."""
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


class FailingEmbedder(WordHashEmbedder):
    """Embeds like :class:`WordHashEmbedder` and fails on a text holding ``"romance"``."""

    def embed(self, texts, *, show_progress=None):
        if any("romance" in t.lower() for t in texts):
            raise RuntimeError("the embedder failed")
        return super().embed(texts)


def demo_records() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def assert_same_engine(distributed: Path, local: Path, embedder=None, atol: float = 1e-6) -> None:
    """Same rows, items, vectors (within ``atol``), manifest facts and search results."""
    ours = json.loads((distributed / "MANIFEST.json").read_text())["meta"]
    theirs = json.loads((local / "MANIFEST.json").read_text())["meta"]
    for key in ("backend", "index", "dim", "items", "embedding_model", "embedding_backend", "field_kinds"):
        assert ours[key] == theirs[key], key
    assert (distributed / "recsieve.toml").read_text() == (local / "recsieve.toml").read_text()
    with Engine.open(distributed, embedder=embedder) as a, Engine.open(local, embedder=embedder) as b:
        assert a.catalog.num_rows == b.catalog.num_rows == len(b.catalog)
        for row in range(b.catalog.num_rows):
            assert a.catalog.item_at(row) == b.catalog.item_at(row)
            assert a.catalog.text(row) == b.catalog.text(row)
        np.testing.assert_allclose(a.text_vectors(), b.text_vectors(), atol=atol, rtol=0)
        assert len(a.index) == len(b.index)
        for query in QUERIES:
            for flt in FILTERS:
                assert_same_results(a.search(query, 11, filters=flt), b.search(query, 11, filters=flt))
    assert main(["verify", str(distributed)]) == 0


def assert_same_results(got: list[tuple[str, float]], want: list[tuple[str, float]], tol: float = 1e-5) -> None:
    """The same scores rank by rank and the same items, up to the order of items whose scores tie
    (a backend returns tied items in its storage order). The last result only tells where the
    cut-off is: the items tied with it may be other ones."""
    assert len(got) == len(want)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=tol, rtol=0)
    start = 0
    for end in range(1, len(want) + 1):
        if end == len(want) or abs(want[end][1] - want[start][1]) > tol:
            if end < len(want):  # a whole group of tied scores (one item if none tie) above the cut-off
                assert {i for i, _ in got[start:end]} == {i for i, _ in want[start:end]}, (got, want)
            start = end


def nothing_left(parent: Path, name: str) -> bool:
    return not (parent / name).exists() and not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


@pytest.mark.parametrize("backend, index", [("faiss", "hnsw"), ("lance", "hnsw"), ("faiss", "ivf")])
def test_distributed_build_equals_the_local_build(tmp_path, backend, index):
    config = EngineConfig(backend=backend, index=index)
    report = build_index(DEMO, tmp_path / "ray", config, actors=2, batch_size=16, embedder=WordHashEmbedder,
                         chunk_rows=64)
    assert report.items == 200 and report.actors == 2 and report.gpus_per_actor == 0
    engine, _ = local_build_index(DEMO, tmp_path / "local", config, embedder=WordHashEmbedder(), show_progress=False)
    engine.close()
    assert_same_engine(tmp_path / "ray", tmp_path / "local", WordHashEmbedder())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "ray"]  # no staging or temp folder left


def test_a_folder_of_shards_of_every_format(tmp_path):
    records = demo_records()
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", records[:70])
    with open(shards / "part-1.csv", "w", newline="", encoding="utf-8") as fh:
        columns = ["id", "title", "description", "categories", "price", "category", "in_stock"]
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for r in records[70:130]:
            writer.writerow({**r, "categories": "|".join(r["categories"]), "in_stock": str(r["in_stock"]).lower()})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records[130:]), shards / "part-2.parquet")
    (shards / "_SUCCESS").write_text("")  # what Spark and Ray leave beside their shards: skipped
    report = build_index(shards, tmp_path / "ray", EngineConfig(index="flat"), actors=2, batch_size=32,
                         embedder=WordHashEmbedder)
    assert report.items == 200
    items = [it for name in ("part-0.jsonl", "part-1.csv", "part-2.parquet") for it in read_items(shards / name)]
    engine, _ = local_build_index(items, tmp_path / "local", EngineConfig(index="flat"), embedder=WordHashEmbedder(),
                                  show_progress=False)
    engine.close()
    assert_same_engine(tmp_path / "ray", tmp_path / "local", WordHashEmbedder())


def local_error(path: Path, tmp_path: Path) -> RecsieveError:
    with pytest.raises(RecsieveError) as caught:
        local_build_index(path, tmp_path / "local-out", EngineConfig(index="flat"), embedder=WordHashEmbedder(),
                          show_progress=False)
    return caught.value


@pytest.mark.parametrize("case", ["malformed line", "missing id", "no text", "duplicate id", "two kinds of price",
                                  "not UTF-8"])
def test_bad_input_gives_the_local_builds_error_and_no_directory(tmp_path, case):
    records = demo_records()[:40]
    lines = [json.dumps(r) for r in records]
    if case == "malformed line":
        lines[17] = '{"id": "x", "title": '
    elif case == "missing id":
        lines[9] = json.dumps({"title": "no id here"})
    elif case == "no text":
        lines[25] = json.dumps({"id": "empty-1", "price": 3.0})
    elif case == "duplicate id":
        lines[30] = json.dumps({**records[4], "title": "another"})
    else:
        lines[22] = json.dumps({**records[22], "price": "cheap"})
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if case == "not UTF-8":  # the error's value is the line's bytes
        data = data.replace(lines[12].encode("utf-8"), b'{"id": "latin-1", "title": "caf\xe9"}')
    path = tmp_path / "items.jsonl"
    path.write_bytes(data)
    want = local_error(path, tmp_path)
    with pytest.raises(type(want)) as caught:
        build_index(path, tmp_path / "out", EngineConfig(index="flat"), actors=1, embedder=WordHashEmbedder)
    assert str(caught.value) == str(want)
    assert nothing_left(tmp_path, "out")


def test_a_duplicate_across_shards_names_both(tmp_path):
    records = demo_records()[:60]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "a.jsonl", records[:30])
    write_jsonl(shards / "b.jsonl", records[30:45] + [{**records[7], "title": "again"}] + records[45:])
    with pytest.raises(DuplicateIdError) as caught:
        build_index(shards, tmp_path / "out", actors=1, embedder=WordHashEmbedder)
    assert caught.value.field == "b.jsonl line 16: id" and caught.value.value == records[7]["id"]
    assert "duplicate of the id in a.jsonl line 8" in str(caught.value)
    assert nothing_left(tmp_path, "out")


def test_the_first_error_in_catalog_order_wins(tmp_path):
    """A bad line in a later shard does not hide an earlier shard's error, whichever task ends first."""
    records = demo_records()[:60]
    shards = tmp_path / "shards"
    shards.mkdir()
    bad = [json.dumps(r) for r in records[:30]]
    bad[20] = json.dumps({"id": 7})
    (shards / "a.jsonl").write_text("\n".join(bad) + "\n", encoding="utf-8")
    (shards / "b.jsonl").write_text("not json\n", encoding="utf-8")
    with pytest.raises(InvalidInputError) as caught:
        build_index(shards, tmp_path / "out", actors=1, embedder=WordHashEmbedder)
    assert caught.value.field == "a.jsonl line 21: id"
    assert nothing_left(tmp_path, "out")


def test_a_failure_while_embedding_leaves_no_directory(tmp_path):
    with pytest.raises(Exception, match="the embedder failed"):
        build_index(DEMO, tmp_path / "out", actors=2, batch_size=16, embedder=FailingEmbedder)
    assert nothing_left(tmp_path, "out")


def test_an_empty_catalog_gives_an_empty_engine(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    report = build_index(tmp_path / "empty.jsonl", tmp_path / "out", actors=1, embedder=WordHashEmbedder)
    assert report.items == 0
    with Engine.open(tmp_path / "out", embedder=WordHashEmbedder()) as engine:
        assert len(engine.catalog) == 0 and engine.dim == 16 and engine.search("anything", 3) == []
        assert len(engine.recommend("someone", 3)) == 0


def test_an_existing_directory_is_refused_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RecsieveError, match="exists and is not empty"):
        build_index(DEMO, out, actors=1, embedder=WordHashEmbedder)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_command_line_with_the_real_model(tmp_path, capsys, torch_embedder):
    """``build-index --ray`` with the bundled MiniLM (each actor loads it): the local build's vectors.
    On the fp32 torch backend: on a bf16 one (``auto`` with AMX) a text's vector moves by up to 7e-4
    with the batch it is embedded in, and the Ray build batches differently."""
    assert main(["build-index", str(DEMO), "--out", str(tmp_path / "ray"), "--index", "flat", "--ray",
                 "--actors", "1", "--batch-size", "64", "--embedding-backend", "torch"]) == 0
    assert "200 items backend=faiss index=flat on Ray, 1 embedding actors" in capsys.readouterr().out
    config = EngineConfig(index="flat", embedding_backend="torch")
    engine, _ = local_build_index(DEMO, tmp_path / "local", config, embedder=torch_embedder, show_progress=False)
    engine.close()
    assert json.loads((tmp_path / "ray" / "MANIFEST.json").read_text())["meta"]["embedding_backend"] == "torch"
    assert_same_engine(tmp_path / "ray", tmp_path / "local", torch_embedder, atol=1e-5)
