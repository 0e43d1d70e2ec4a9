"""Bad input, damaged directories and hostile input: one clear error each, state unchanged.

Complements ``test_engine.py`` (unknown items, bad k/user/instruction), ``test_catalog.py``
(item file parsing), ``test_storage.py`` (GenerationDir), ``test_filters.py`` and
``test_crash.py`` (kill -9). Every engine-level case here checks that after the error the
engine still answers and its state (journal seq, catalog version, users, a recommend list)
is what it was; every directory-level case checks the directory's bytes were not touched and
that it opens again once the damage is undone.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import recsieve
from recsieve import Engine, EngineConfig, Event, Item
from recsieve.catalog import read_items
from recsieve.cli import main
from recsieve.engine.checks import MAX_K
from recsieve.errors import (
    CorruptStoreError,
    DuplicateIdError,
    FilterSyntaxError,
    IncompatibleVersionError,
    InvalidInputError,
    StoreError,
)
from recsieve.events_io import read_events

DEMO = Path(str(resources.files("recsieve") / "data" / "demo_items.jsonl"))
MB = 1_000_000


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    """A saved demo engine (embedded once) with one user who has history."""
    path = tmp_path_factory.mktemp("reliability") / "base"
    eng = Engine.create(path, EngineConfig(index="flat", refresh_threads=0), embedder=embedder)
    eng.upsert_items(read_items(DEMO))
    eng.record([Event("u", "out-001", "click", ts=1000.0), Event("u", "out-002", "purchase", ts=2000.0)])
    eng.save()
    eng.close()
    return path


@pytest.fixture
def engine_dir(built, tmp_path):
    path = tmp_path / "eng"
    shutil.copytree(built, path)
    return path


@pytest.fixture
def engine(engine_dir, embedder):
    eng = Engine.open(engine_dir, embedder=embedder)
    yield eng
    eng.close()


def state(eng: Engine) -> tuple:
    """What must not change when a call is refused."""
    view = eng.users.get("u")
    recs = [r.item_id for r in eng.recommend("u", 10)]
    cold = [r.item_id for r in eng.recommend("cold", 5, filters="price < 50")]
    return (eng.journal.last_seq, eng.catalog.version, len(eng.catalog), eng.catalog.num_rows, len(eng.users),
            view.version, recs, cold)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (to prove a failed open wrote nothing)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_cli_error(capsys, needle: str, *argv: str) -> str:
    """The CLI exits 2 with exactly one line on stderr that names the problem."""
    rc, _out, err = run_cli(capsys, *argv)
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith(f"recsieve {argv[0]}: error: ") and needle in lines[0], lines[0]
    return lines[0]


# -- bad input to a live engine ----------------------------------------------------------------


@pytest.mark.parametrize(
    "item",
    [
        Item("bad", title=""),
        Item("bad", title=" \t\n ", description="   "),
        Item("bad", title="x" * MB),
        Item("bad", title="ok", description="y" * MB),
        Item("bad", title="ok", attributes={"notes": "z" * MB}),
    ],
    ids=["empty", "whitespace", "huge-title", "huge-description", "huge-attribute"],
)
def test_bad_item_text_names_the_item(engine, item):
    before = state(engine)
    with pytest.raises(InvalidInputError) as info:
        engine.upsert_items([Item("ok-1", title="A perfectly fine item"), item])
    assert info.value.field == "items[1].text"
    assert state(engine) == before and "ok-1" not in engine.catalog


def test_huge_item_text_in_a_file_names_the_line(engine, tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "ok-1", "title": "fine"}) + "\n" + json.dumps({"id": "big", "title": "x" * MB}) + "\n")
    before = state(engine)
    with pytest.raises(InvalidInputError) as info:
        engine.upsert_items(path)
    assert info.value.field == "items.jsonl line 2: text"
    assert state(engine) == before


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "non-empty"), ("   \n\t", "non-empty"), ("x" * MB, "longer than"), (5, "non-empty text")],
    ids=["empty", "whitespace", "huge", "not-a-string"],
)
def test_bad_event_text(engine, text, needle):
    before = state(engine)
    with pytest.raises(InvalidInputError, match=needle) as info:
        engine.record([Event("u", "boo-001", "click"), Event("u", "boo-002", "click", text=text)])
    assert info.value.field == "events[1].text"
    assert state(engine) == before
    assert engine.record([Event("u", "boo-002", "click", text="loved it")]) == 1  # real text is fine


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_item_file_names_the_line(engine, tmp_path, suffix):
    path = tmp_path / f"items{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(b'{"id": "ok-1", "title": "fine"}\n{"id": "bad", "title": "caf\xe9"}\n')
        line = 2
    else:
        path.write_bytes(b"id,title\nok-1,fine\nok-2,also fine\nbad,caf\xe9\n")
        line = 4
    before = state(engine)
    with pytest.raises(InvalidInputError, match="UTF-8") as info:
        engine.upsert_items(path)
    assert info.value.field == f"{path.name} line {line}"
    assert state(engine) == before


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_event_file_names_the_line_and_can_be_skipped(tmp_path, suffix):
    path = tmp_path / f"events{suffix}"
    if suffix == ".jsonl":
        good = [json.dumps({"user_id": "u", "item_id": f"boo-00{i}", "kind": "click", "ts": 10.0 + i}).encode()
                for i in (1, 2)]
        path.write_bytes(good[0] + b"\n\n" + b'{"user_id": "caf\xe9", "item_id": "boo-003"}\n' + good[1] + b"\n")
        line = 3  # the blank line 2 still counts
    else:
        path.write_bytes(b"user_id,item_id,kind,ts\nu,boo-001,click,11\ncaf\xe9,boo-003,click,12\nu,boo-002,click,12\n")
        line = 3
    with pytest.raises(InvalidInputError, match="UTF-8") as info:
        read_events(path)
    assert info.value.field == f"{path.name} line {line}"
    events, skipped = read_events(path, skip_invalid=True)
    assert skipped == 1 and [e.item_id for e in events] == ["boo-001", "boo-002"]


def test_duplicate_ids_in_one_batch(engine):
    before = state(engine)
    with pytest.raises(DuplicateIdError) as info:
        engine.upsert_items([Item("n-1", title="One"), Item("n-2", title="Two"), Item("n-1", title="One again")])
    assert info.value.field == "items[2].id" and "items[0]" in str(info.value)
    with pytest.raises(DuplicateIdError):  # a new item repeating an existing id in the batch
        engine.upsert_items([Item("boo-001", title="x"), Item("boo-001", title="y")])
    assert state(engine) == before
    # in a removal the same id twice means once (idempotent), not an error
    assert engine.remove_items(["boo-003", "boo-003"]) == 1 and "boo-003" not in engine.catalog


def test_ids_of_the_wrong_type(engine):
    before = state(engine)
    with pytest.raises(InvalidInputError) as info:
        engine.upsert_items([Item("ok-1", title="fine"), Item(7, title="int id")])  # type: ignore[arg-type]
    assert info.value.field == "items[1].id" and info.value.value == 7
    with pytest.raises(InvalidInputError) as info:
        Event(7, "boo-001")  # type: ignore[arg-type]
    assert info.value.field == "event.user_id"
    with pytest.raises(InvalidInputError) as info:
        Event("u", 1.5)  # type: ignore[arg-type]
    assert info.value.field == "event.item_id"
    with pytest.raises(InvalidInputError) as info:
        engine.record([Event("u", "boo-001"), ("u", "boo-002")])  # type: ignore[list-item]
    assert info.value.field == "events[1]"
    with pytest.raises(InvalidInputError) as info:
        engine.remove_items(["boo-001", 3])  # type: ignore[list-item]
    assert info.value.field == "ids[1]"
    with pytest.raises(InvalidInputError) as info:
        engine.recommend(42)  # type: ignore[arg-type]
    assert info.value.field == "user_id"
    with pytest.raises(InvalidInputError) as info:
        engine.search(b"bytes")  # type: ignore[arg-type]
    assert info.value.field == "text"
    assert state(engine) == before


@pytest.mark.parametrize("ts", [-1.0, -1e-9, math.nan, math.inf, -math.inf, True, "1000"])
def test_event_rejects_negative_and_non_finite_times(ts):
    with pytest.raises(InvalidInputError) as info:
        Event("u", "boo-001", "click", ts=ts)
    assert info.value.field == "event.ts"


def test_engine_rejects_times_more_than_a_day_ahead(engine):
    before = state(engine)
    now = time.time()
    with pytest.raises(InvalidInputError, match="future") as info:
        engine.record([Event("u", "boo-001", "click", ts=now), Event("u", "boo-002", "click", ts=now + 2 * 86_400)])
    assert info.value.field == "events[1].ts"
    assert state(engine) == before
    # clock skew under a day is accepted, and so is the epoch itself
    assert engine.record([Event("u", "boo-001", "click", ts=now + 3_600), Event("u", "boo-004", "view", ts=0.0)]) == 2
    assert engine.users.get("u").version == before[5] + 2


@pytest.mark.parametrize("k", [0, -5, MAX_K + 1, 2.0, "10", None, True])
def test_search_rejects_bad_k(engine, k):
    before = state(engine)
    with pytest.raises(InvalidInputError) as info:
        engine.search("a warm winter coat", k)
    assert info.value.field == "k"
    assert state(engine) == before


def test_huge_k_returns_every_eligible_item_once(engine):
    live = len(engine.catalog)
    hits = engine.search("a warm winter coat", MAX_K)
    assert len(hits) == live and len({i for i, _ in hits}) == live
    recs = engine.recommend("u", MAX_K)
    got = [r.item_id for r in recs]
    assert len(set(got)) == len(got) == live - 2  # all but the two items "u" consumed
    assert [r.rank for r in recs] == list(range(1, len(recs) + 1))
    assert engine.recommend("u", np.int64(3))[0].rank == 1  # numpy integers are integers


@pytest.mark.parametrize(
    "flt",
    ["price <", "(price < 3", "price < 3 and", "price = 3", "price <> 3", "category == books'",
     "price < 3; import os", "__import__('os').system('touch PWNED')", "open('/etc/passwd').read() == 'x'",
     "[x for x in ().__class__.__bases__]", 5, ["price"], {"price": object()}, {"bad key": 1}],
    ids=lambda v: repr(v)[:30],
)
def test_malformed_filters_rejected_by_every_entry(engine, flt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = state(engine)
    for call in (lambda: engine.recommend("u", 5, filters=flt), lambda: engine.search("coffee", 5, filters=flt),
                 lambda: engine.recall("u", filters=flt)):
        with pytest.raises(FilterSyntaxError) as info:
            call()
        assert info.value.field == "filter"
    assert not (tmp_path / "PWNED").exists()
    assert state(engine) == before


def test_metadata_number_type_change_is_an_update(engine):
    """``1 == 1.0`` in Python, but the catalog keeps what was given: an update that changes only
    a value's type is an update, not "unchanged"."""
    engine.upsert_items([Item("t-1", title="Typed item", metadata={"price": 1})])
    report = engine.upsert_items([Item("t-1", title="Typed item", metadata={"price": 1.0})])
    assert (report.updated, report.unchanged, report.embedded) == (1, 0, 0)  # same text: not re-embedded
    assert type(engine.catalog.get("t-1").metadata["price"]) is float
    again = engine.upsert_items([Item("t-1", title="Typed item", metadata={"price": 1.0})])
    assert (again.updated, again.unchanged) == (0, 1)


@pytest.mark.parametrize("value", ["cheap", True])
def test_metadata_field_keeps_one_kind(engine, embedder, value):
    """A field that holds numbers cannot take a string or a bool: refused before it is journaled,
    so the engine and its directory stay usable (the index could not store it)."""
    before = state(engine)
    with pytest.raises(InvalidInputError, match="holds number values") as info:
        engine.upsert_items([Item("n-1", title="New thing", metadata={"price": 3.0}),
                             Item("n-2", title="Odd thing", metadata={"price": value})])
    assert info.value.field == "items[1].metadata.price"
    assert state(engine) == before and "n-1" not in engine.catalog
    # a field's kind outlives the items that had it, across save and reopen
    engine.upsert_items([Item("n-3", title="Gizmo", metadata={"grade": 2})])
    engine.remove_items(["n-3"])
    engine.save()
    engine.close()
    with Engine.open(engine.directory, embedder=embedder) as again:
        with pytest.raises(InvalidInputError, match="grade"):
            again.upsert_items([Item("n-4", title="Gadget", metadata={"grade": "A"})])
        again.upsert_items([Item("n-4", title="Gadget", metadata={"grade": 3, "label": "A"})])
    with Engine.open(engine.directory, embedder=embedder) as again:
        assert again.search("Gadget", 1, filters="grade == 3")[0][0] == "n-4"


# -- event files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"user_id": "u", "item_id": ', "events.jsonl line 2"),
        ("[1, 2]", "events.jsonl line 2"),
        ('{"item_id": "boo-001"}', "events.jsonl line 2: user_id"),
        ('{"user_id": "u", "item_id": "boo-001", "kind": "like"}', "events.jsonl line 2: kind"),
        ('{"user_id": "u", "item_id": "boo-001", "ts": "yesterday"}', "events.jsonl line 2: ts"),
        ('{"user_id": "u", "item_id": "boo-001", "ts": -5}', "events.jsonl line 2: ts"),
        ('{"user_id": "u", "item_id": "boo-001", "weight": NaN}', "events.jsonl line 2: weight"),
        ('{"user_id": "u", "item_id": "boo-001", "rating": 5}', "events.jsonl line 2: rating"),
        ('{"user_id": "u", "item_id": 1.5}', "events.jsonl line 2: item_id"),
    ],
)
def test_malformed_jsonl_event_line(tmp_path, line, field):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u", "item_id": "boo-001", "kind": "click", "ts": 5}\n' + line + "\n")
    with pytest.raises(InvalidInputError) as info:
        read_events(path)
    assert info.value.field == field
    events, skipped = read_events(path, skip_invalid=True)
    assert skipped == 1 and events == [Event("u", "boo-001", "click", ts=5.0)]


def test_malformed_csv_event_lines(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,kind,ts\n\nu,boo-001,click,5\nu,boo-002,click,6,extra\nu,boo-003,poke,7\n"
                    "u,boo-004,view,\n")
    with pytest.raises(InvalidInputError) as info:
        read_events(path)
    assert info.value.field == "events.csv line 4"  # the blank line 2 counts
    events, skipped = read_events(path, skip_invalid=True)
    assert skipped == 2 and [e.item_id for e in events] == ["boo-001", "boo-004"]
    assert events[1].ts is None  # an empty cell is absent
    huge = tmp_path / "huge.csv"  # one cell over the csv module's field limit
    huge.write_text("user_id,item_id,kind,text\nu,boo-001,click,\"" + "x" * MB + "\"\n")
    with pytest.raises(InvalidInputError, match="malformed CSV") as info:
        read_events(huge, skip_invalid=True)
    assert info.value.field.startswith("huge.csv line ")


def test_event_file_paths(tmp_path):
    with pytest.raises(InvalidInputError, match="directory"):
        read_events(tmp_path)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_events(tmp_path / "missing.jsonl")
    (tmp_path / "events.txt").write_text("u,boo-001\n")
    with pytest.raises(InvalidInputError, match="unsupported"):
        read_events(tmp_path / "events.txt")


def test_cli_ingest_names_the_line_or_skips_and_counts(engine_dir, tmp_path, capsys, embedder):
    now = time.time()
    lines = [
        {"user_id": "v", "item_id": "boo-001", "kind": "click", "ts": now - 60},
        "not json at all",
        {"user_id": "v", "item_id": "no-such-item", "kind": "click", "ts": now - 50},
        {"user_id": "v", "item_id": "boo-002", "kind": "wave"},
        {"user_id": "v", "item_id": "boo-003", "kind": "click", "ts": now + 5 * 86_400},
        {"user_id": "v", "item_id": "boo-004", "kind": "purchase", "ts": now - 40},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    digest = tree_digest(engine_dir)
    assert_cli_error(capsys, "events.jsonl line 2", "ingest", engine_dir, path)
    assert tree_digest(engine_dir) == digest  # refused before anything was written
    rc, out, _ = run_cli(capsys, "ingest", engine_dir, path, "--skip-invalid")
    assert rc == 0 and out.strip() == "2 events recorded, 4 invalid lines skipped"
    with Engine.open(engine_dir, embedder=embedder) as eng:
        assert [e.item_id for e in eng.journal.events("v")] == ["boo-001", "boo-004"]
        assert eng.users.get("v").version == 2


# -- damaged or foreign engine directories -----------------------------------------------------


def current_generation(path: Path) -> Path:
    return path / json.loads((path / "MANIFEST.json").read_text())["generation"]


def test_unknown_config_key_on_open(engine_dir, embedder, capsys):
    toml = engine_dir / "recsieve.toml"
    original = toml.read_text()
    assert "\n[recall]\n" in original  # settings are written in tables
    toml.write_text(original.replace("\n[recall]\n", "\n[recall]\nrecal_n = 50\n"))
    with pytest.raises(InvalidInputError, match="unknown setting") as info:
        Engine.open(engine_dir, embedder=embedder)
    assert info.value.field.endswith("recsieve.toml: recall.recal_n") and info.value.value == 50
    assert_cli_error(capsys, "recal_n", "recommend", engine_dir, "--user", "u")
    toml.write_bytes(original.encode() + b"# caf\xe9\n")
    with pytest.raises(InvalidInputError, match="malformed TOML"):
        Engine.open(engine_dir, embedder=embedder)
    toml.write_text(original)
    with Engine.open(engine_dir, embedder=embedder) as eng:
        assert len(eng.recommend("u", 5)) == 5


@pytest.mark.parametrize(("key", "value"), [("version", 2), ("version", "1"), ("kind", "index")])
def test_directory_from_another_format_version(engine_dir, embedder, capsys, key, value):
    manifest = engine_dir / "MANIFEST.json"
    original = manifest.read_text()
    manifest.write_text(json.dumps(dict(json.loads(original), **{key: value})))
    digest = tree_digest(engine_dir)
    with pytest.raises(IncompatibleVersionError, match=repr(value)):
        Engine.open(engine_dir, embedder=embedder)
    assert_cli_error(capsys, repr(value), "stats", engine_dir)
    assert tree_digest(engine_dir) == digest
    manifest.write_text(original)
    Engine.open(engine_dir, embedder=embedder).close()


def _first_file(folder: Path) -> str:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_size > 0)[0].relative_to(folder).as_posix()


@pytest.mark.parametrize("target", ["catalog/catalog.parquet", "vectors.npy", "hashes.npy", "index", "users",
                                    "statistics.npz"])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupted_snapshot_file(engine_dir, embedder, capsys, target, damage):
    gen = current_generation(engine_dir)
    rel = target if (gen / target).is_file() else f"{target}/{_first_file(gen / target)}"
    path = gen / rel
    original = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(original[: len(original) // 2])
    elif damage == "flip":
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))  # same size, other bytes
    else:
        path.unlink()
    digest = tree_digest(engine_dir)
    with pytest.raises(CorruptStoreError, match=rel) as info:
        Engine.open(engine_dir, embedder=embedder)
    assert ("missing" if damage == "delete" else "checksum") in str(info.value)
    assert_cli_error(capsys, rel, "recommend", engine_dir, "--user", "u")
    assert tree_digest(engine_dir) == digest
    path.write_bytes(original)
    with Engine.open(engine_dir, embedder=embedder) as eng:
        assert eng.users.get("u").version == 2 and len(eng.recommend("u", 5)) == 5


def test_missing_journal(engine_dir, embedder, capsys):
    journal = engine_dir / "journal.sqlite"
    saved = engine_dir.parent / "journal.saved"
    shutil.move(journal, saved)
    digest = tree_digest(engine_dir)
    with pytest.raises(StoreError, match="journal.sqlite is missing"):
        Engine.open(engine_dir, embedder=embedder)
    assert_cli_error(capsys, "journal.sqlite is missing", "stats", engine_dir)
    assert tree_digest(engine_dir) == digest and not journal.exists()  # no empty journal was made up
    shutil.move(saved, journal)
    with Engine.open(engine_dir, embedder=embedder) as eng:
        assert eng.users.get("u").version == 2


@pytest.mark.parametrize("garbage", [b"this is not a database" * 200, b"SQLite format 3\x00" + b"\x07" * 4000, b""])
def test_garbage_journal(engine_dir, embedder, capsys, garbage):
    journal = engine_dir / "journal.sqlite"
    original = journal.read_bytes()
    journal.write_bytes(garbage)
    with pytest.raises(StoreError, match="journal") as info:
        Engine.open(engine_dir, embedder=embedder)
    if garbage:
        assert isinstance(info.value, CorruptStoreError) and journal.read_bytes() == garbage
    assert_cli_error(capsys, "journal", "stats", engine_dir)
    journal.write_bytes(original)
    with Engine.open(engine_dir, embedder=embedder) as eng:
        assert eng.users.get("u").version == 2


def test_file_where_a_directory_is_expected(tmp_path, embedder, capsys):
    f = tmp_path / "a-file"
    f.write_text("not a directory")
    with pytest.raises(StoreError, match="not a directory"):
        Engine.open(f, embedder=embedder)
    with pytest.raises(StoreError, match="not empty|not a directory"):
        Engine.create(f, embedder=embedder)
    assert_cli_error(capsys, str(f), "recommend", f, "--user", "u")
    assert_cli_error(capsys, str(f), "build-index", DEMO, "--out", f, "--quiet")
    assert f.read_text() == "not a directory"


def test_directory_where_a_file_is_expected(engine, tmp_path):
    before = state(engine)
    folder = tmp_path / "items.jsonl"
    folder.mkdir()
    with pytest.raises(InvalidInputError, match="directory"):
        engine.upsert_items(folder)
    assert state(engine) == before


def test_engine_answers_after_a_refused_open(engine_dir, embedder):
    """A refused open leaves no half-open engine holding the journal."""
    (engine_dir / "recsieve.toml").write_text((engine_dir / "recsieve.toml").read_text() + 'backend2 = "x"\n')
    with pytest.raises(InvalidInputError):
        Engine.open(engine_dir, embedder=embedder)
    gen = current_generation(engine_dir)
    vectors = (gen / "vectors.npy").read_bytes()
    (gen / "vectors.npy").write_bytes(vectors[:-8])
    toml = (engine_dir / "recsieve.toml").read_text().replace('backend2 = "x"\n', "")
    (engine_dir / "recsieve.toml").write_text(toml)
    for _ in range(3):
        with pytest.raises(CorruptStoreError):
            Engine.open(engine_dir, embedder=embedder)
    (gen / "vectors.npy").write_bytes(vectors)
    with Engine.open(engine_dir, embedder=embedder) as eng:
        eng.record([Event("u", "boo-001", "click")])  # the journal is writable: no stale connection holds it
        assert eng.users.get("u").version == 3


# -- security ----------------------------------------------------------------------------------

UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def test_no_pickle_eval_or_exec_in_the_library():
    """Nothing in ``recsieve/`` can run code hidden in data: no pickle-family imports, no
    eval/exec/compile/__import__, no ``allow_pickle=True``, no ``torch.load`` without
    ``weights_only=True``, no ``yaml.load``."""
    root = Path(recsieve.__file__).parent
    found = []
    files = sorted(root.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [where for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append(where)
            elif isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                kw = {k.arg: k.value for k in node.keywords}
                if isinstance(fn, ast.Name) and name in UNSAFE_CALLS:
                    found.append(f"{where} {name}()")
                if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is not False:
                    found.append(f"{where} allow_pickle")
                is_torch_load = isinstance(fn, ast.Attribute) and name == "load" and ast.unparse(fn.value) == "torch"
                if is_torch_load and not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value):
                    found.append(f"{where} torch.load")
                if ast.unparse(fn) in ("yaml.load", "yaml.unsafe_load"):
                    found.append(f"{where} {ast.unparse(fn)}")
    assert found == []


def test_np_load_calls_refuse_pickles():
    """Every ``np.load`` in the library passes ``allow_pickle=False`` explicitly."""
    root = Path(recsieve.__file__).parent
    missing = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.load", "numpy.load"):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                    missing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert missing == []


def test_cli_filter_with_code_is_refused(engine_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cmd in (["recommend", engine_dir, "--user", "u"], ["search", engine_dir, "coffee"]):
        assert_cli_error(capsys, "filter", *cmd, "--filter", "__import__('os').system('touch PWNED')")
    assert not (tmp_path / "PWNED").exists()


def _sha(path: Path) -> dict:
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink", "generation"])
def test_manifest_cannot_point_outside_the_directory(engine_dir, embedder, tmp_path, capsys, escape):
    """Even with matching checksums, a manifest entry that leaves the directory is refused."""
    manifest_path = engine_dir / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    if escape == "dotdot":
        manifest["files"]["../../secret.txt"] = _sha(outside)
    elif escape == "absolute":
        manifest["files"][str(outside)] = _sha(outside)
    elif escape == "symlink":  # a file inside the generation that is a link to one outside
        gen = current_generation(engine_dir)
        copy = tmp_path / "hashes-copy.npy"
        shutil.copy(gen / "hashes.npy", copy)
        (gen / "hashes.npy").unlink()
        os.symlink(copy, gen / "hashes.npy")
    else:
        manifest["generation"] = "../" + manifest["generation"]
    manifest_path.write_text(json.dumps(manifest))
    needle = "bad generation name" if escape == "generation" else "leaves the directory"
    with pytest.raises(CorruptStoreError, match=needle):
        Engine.open(engine_dir, embedder=embedder)
    assert_cli_error(capsys, needle, "stats", engine_dir)
    assert outside.read_text() == "secret"
