"""Recall statistics in the snapshot, the bulk tail replay, the columnar catalog and the checks
on snapshot files (issue 17, item 2). Toy sizes, a hashed bag-of-words embedder, no timing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_config import WordHashEmbedder

from recsieve import Engine, EngineConfig, Event, Item
from recsieve.catalog import Catalog
from recsieve.cli import main
from recsieve.engine.recall import PopularityChannel, RecallRequest, TransitionsChannel
from recsieve.engine.snapshot_stats import observe_events, replay_statistics
from recsieve.engine.users import UserStore
from recsieve.errors import CorruptStoreError
from recsieve.storage import GenerationDir
from recsieve.types import EVENT_KINDS

N_ITEMS = 40
KINDS = sorted(EVENT_KINDS)  # positive and non-positive kinds


CONFIG = EngineConfig(index="flat", refresh_threads=0, cache="none")


def items() -> list[Item]:
    words = ["red", "blue", "green", "kettle", "lamp", "chair", "book", "tent", "scarf", "drum"]
    return [Item(f"i{k:02d}", title=f"{words[k % 10]} {words[(k * 7 + 3) % 10]} number {k}",
                 categories=(words[k % 3],), metadata={"price": float(k) + 0.5, "n": k, "ok": k % 2 == 0})
            for k in range(N_ITEMS)]


def random_log(rng: random.Random, n: int, users: int = 12) -> list[Event]:
    """Events of several users: repeated items, the same item twice in a row (a self-transition,
    skipped by the rule), non-positive kinds and ratings on both sides of 3."""
    out, last = [], {}
    for _ in range(n):
        u = f"u{rng.randrange(users)}"
        if u in last and rng.random() < 0.2:
            item = last[u]  # self-transition
        else:
            item = f"i{rng.randrange(N_ITEMS // 2) if rng.random() < 0.7 else rng.randrange(N_ITEMS):02d}"
        kind = rng.choice(KINDS)
        weight = float(rng.randint(1, 5)) if kind == "rating" and rng.random() < 0.8 else None
        if kind == "click" and rng.random() < 0.1:
            weight = -1.0  # a given weight wins over the kind's
        out.append(Event(u, item, kind, ts=1_000_000.0 + len(out), weight=weight))
        last[u] = item
    return out


def new_engine(path: Path) -> Engine:
    eng = Engine.create(path, CONFIG, embedder=WordHashEmbedder())
    eng.upsert_items(items())
    return eng


def open_engine(path: Path) -> Engine:
    return Engine.open(path, embedder=WordHashEmbedder())


def snapshot_of(channels) -> dict:
    """The statistics as plain values: transitions {src: {dst: count}}, out-totals, popularity."""
    trans = next(c for c in channels if isinstance(c, TransitionsChannel))
    pop = next(c for c in channels if isinstance(c, PopularityChannel))
    counts = pop.state()["counts"]
    return {
        "next": {r: dict(n) for r, n in trans._next.items() if n},
        "out": {r: v for r, v in trans._out.items() if trans._next.get(r)},
        "pop": [float(counts[r]) if r < counts.size else 0.0 for r in range(N_ITEMS)],
        "total": pop.state()["total"].tolist(),
    }


def recall_answers(eng: Engine) -> dict:
    """What the statistics channels answer, per user (transitions from each one's recent rows)."""
    channels, _ = eng.statistics()
    trans = next(c for c in channels if isinstance(c, TransitionsChannel))
    pop = next(c for c in channels if isinstance(c, PopularityChannel))
    out = {}
    for u in sorted(f"u{k}" for k in range(12)):
        view = eng.users.get(u)
        recent = tuple(e.row for e in view.recent) if view else ()
        got = trans.recall(RecallRequest(n=N_ITEMS, recent_rows=recent))
        feats = trans.features(RecallRequest(n=5, recent_rows=recent), np.arange(N_ITEMS))
        out[u] = (got.rows.tolist(), got.scores.tolist(), feats.ravel().tolist())
    cold = pop.recall(RecallRequest(n=N_ITEMS))
    out["(popularity)"] = (cold.rows.tolist(), cold.scores.tolist())
    return out


def state_of(eng: Engine) -> tuple[dict, dict, dict]:
    channels, seq = eng.statistics()
    assert seq == eng.applied_seq
    return snapshot_of(channels), recall_answers(eng), dict(eng._store._last_row)


def full_rebuild(path: Path, config: EngineConfig | None = None) -> dict:
    """The statistics from every journaled event by the per-event rule (Store._observe's)."""
    eng = Engine.open(path, embedder=WordHashEmbedder(), config=config)
    try:
        channels, last = eng.new_statistics(), {}
        for rec in eng.journal.events():
            positive = eng.users.event_weight(rec.kind, rec.weight) > 0
            for ch in channels:
                ch.observe(last.get(rec.user_id), rec.row, positive)
            if positive:
                last[rec.user_id] = rec.row
        return snapshot_of(channels)
    finally:
        eng.close()


# -- the bulk replay is the per-event rule ------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_observation_equals_the_per_event_loop(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    users = [f"user-{k}" for k in rng.integers(0, 25, n)]
    rows = rng.integers(0, 30, n)
    repeat = rng.random(n) < 0.15  # the same row as the event before: self-transitions when a user repeats
    rows[1:][repeat[1:]] = rows[:-1][repeat[1:]]
    kinds = [KINDS[k] for k in rng.integers(0, len(KINDS), n)]
    weights = np.where(rng.random(n) < 0.3, rng.integers(1, 6, n).astype(float), np.nan)
    store = UserStore(4)
    positive = store.event_weights(kinds, weights) > 0
    assert positive.any() and not positive.all()

    loop = [TransitionsChannel(), PopularityChannel(lambda: 30)]
    last_loop: dict[str, int] = {"user-3": 7, "user-4": 7}  # statistics from before this log
    for u, r, k, w in zip(users, rows.tolist(), kinds, weights.tolist()):
        pos = store.event_weight(k, None if np.isnan(w) else w) > 0
        for ch in loop:
            ch.observe(last_loop.get(u), r, pos)
        if pos:
            last_loop[u] = r

    bulk = [TransitionsChannel(), PopularityChannel(lambda: 30)]
    last_bulk: dict[str, int] = {"user-3": 7, "user-4": 7}
    cuts = sorted(rng.choice(np.arange(1, n), 4, replace=False).tolist())
    for a, b in zip([0, *cuts], [*cuts, n]):  # in batches: the state carries across them
        observe_events(bulk, last_bulk, users[a:b], rows[a:b], positive[a:b])

    assert last_bulk == last_loop
    for mine, theirs in zip(bulk, loop):
        a, b = mine.state(), theirs.state()
        assert a.keys() == b.keys()
        for key in a:
            x, y = a[key], b[key]
            if key == "counts" and isinstance(mine, PopularityChannel):
                m = max(x.size, y.size)
                x, y = np.pad(x, (0, m - x.size)), np.pad(y, (0, m - y.size))
            assert np.array_equal(x, y), key
    trans_b, trans_l = bulk[0], loop[0]
    assert {r: dict(n) for r, n in trans_b._next.items()} == {r: dict(n) for r, n in trans_l._next.items()}
    assert dict(trans_b._out) == dict(trans_l._out)


def test_channel_state_round_trips():
    t = TransitionsChannel(depth=3, decay=0.5)
    for prev, row in [(None, 1), (1, 2), (2, 1), (1, 2), (1, 3), (3, 3)]:
        t.observe(prev, row, True)
    again = TransitionsChannel.from_state(t.state(), depth=3, decay=0.5)
    assert {r: dict(n) for r, n in again._next.items()} == {r: dict(n) for r, n in t._next.items()}
    assert dict(again._out) == dict(t._out)
    p = PopularityChannel(lambda: 5)
    for row in [0, 3, 3, 4]:
        p.observe(None, row, True)
    q = PopularityChannel.from_state(p.state(), lambda: 5)
    assert [q.count(r) for r in range(5)] == [1.0, 0.0, 0.0, 2.0, 1.0] and q.share(3) == 0.5
    empty = TransitionsChannel.from_state(TransitionsChannel().state())
    assert not empty._next
    with pytest.raises(CorruptStoreError):
        TransitionsChannel.from_state(dict(t.state(), offsets=np.array([0, 5])))


# -- reopening gives the statistics of a never-closed engine ------------------------------------


def test_snapshot_then_more_events_then_reopen(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "eng"
    eng = new_engine(path)
    eng.record(random_log(rng, 400))
    eng.save()
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert manifest["meta"]["statistics"]["seq"] == manifest["meta"]["seq"] == eng.applied_seq
    assert "statistics.npz" in manifest["files"] and "catalog/catalog.parquet" in manifest["files"]
    eng.record(random_log(rng, 300))
    expected = state_of(eng)
    eng.close()
    eng = open_engine(path)
    try:
        assert state_of(eng) == expected
        assert eng._store.snapshot_seq < eng.applied_seq  # the tail after the snapshot was replayed
        eng.record(random_log(rng, 50))  # and the live rule carries on from there
        expected = state_of(eng)
    finally:
        eng.close()
    assert full_rebuild(path) == expected[0]


def test_reopen_without_a_snapshot_after_the_events(tmp_path):
    path = tmp_path / "eng"
    eng = new_engine(path)  # its only snapshot is the empty one Engine.create wrote
    eng.record(random_log(random.Random(2), 500))
    expected = state_of(eng)
    eng.close()
    eng = open_engine(path)
    try:
        assert eng._store.snapshot_seq == 0 and state_of(eng) == expected
    finally:
        eng.close()
    assert full_rebuild(path) == expected[0]


def _rewrite_manifest(path: Path, edit) -> None:
    manifest_path = path / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest, path / manifest["generation"])
    manifest_path.write_text(json.dumps(manifest))


def downgrade(path: Path) -> None:
    """Make the engine's snapshot look like one written before this change: no statistics file,
    a JSONL catalog and user store, content hashes in ``hashes.json``, an index whose metadata
    has its sha256 only, a manifest with sha256 and sizes only."""

    def edit(manifest, gen):
        cat = Catalog.load(gen / "catalog")
        (gen / "catalog" / "catalog.parquet").unlink()
        cat.save(gen / "catalog", format="jsonl")
        (gen / "statistics.npz").unlink()
        users = UserStore(manifest["meta"]["dim"], recent_window=10**6)
        users.load(gen / "users")
        (gen / "users" / "users.npz").unlink()
        users.save(gen / "users", format="jsonl")
        manifest["meta"].pop("statistics")
        hashes = np.load(gen / "hashes.npy")
        (gen / "hashes.npy").unlink()
        (gen / "hashes.json").write_text(json.dumps({str(r): h.decode() for r, h in enumerate(hashes) if h}))
        manifest["meta"]["hashes_file"] = "hashes.json"
        index_meta = json.loads((gen / "index" / "meta.json").read_text())
        if index_meta.pop("index_quick", None) is not None:
            (gen / "index" / "meta.json").write_text(json.dumps(index_meta))
        files = {}
        for p in sorted(gen.rglob("*")):
            if p.is_file():
                files[p.relative_to(gen).as_posix()] = {"size": p.stat().st_size,
                                                         "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        manifest["files"] = files

    _rewrite_manifest(path, edit)


def test_old_format_snapshot_opens_and_rebuilds_with_one_log_line(tmp_path, caplog):
    rng = random.Random(3)
    path = tmp_path / "eng"
    eng = new_engine(path)
    eng.record(random_log(rng, 300))
    eng.save()
    eng.record(random_log(rng, 200))
    expected = state_of(eng)
    hashes = [eng._store.hashes.get(r) for r in range(eng.catalog.num_rows)]
    eng.close()
    downgrade(path)
    with caplog.at_level(logging.INFO, logger="recsieve"):
        eng = open_engine(path)
    try:
        lines = [r for r in caplog.records if "no recall statistics" in r.getMessage()]
        assert len(lines) == 1
        assert state_of(eng) == expected
        assert [it.id for it in eng.catalog] == [it.id for it in items()]
        assert [eng._store.hashes.get(r) for r in range(eng.catalog.num_rows)] == hashes and all(hashes)
        eng.save()  # the next snapshot holds them
    finally:
        eng.close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsieve"):
        eng = open_engine(path)
    try:
        assert not [r for r in caplog.records if "no recall statistics" in r.getMessage()]
        assert state_of(eng) == expected
        assert [eng._store.hashes.get(r) for r in range(eng.catalog.num_rows)] == hashes
    finally:
        eng.close()


def test_a_channel_added_to_the_config_is_rebuilt(tmp_path, caplog):
    path = tmp_path / "eng"
    config = EngineConfig(index="flat", refresh_threads=0, cache="none", channels=("vector", "popularity"),
                          channel_weights=(1.0, 0.3))
    eng = Engine.create(path, config, embedder=WordHashEmbedder())
    eng.upsert_items(items())
    eng.record(random_log(random.Random(4), 200))
    eng.save()
    eng.close()
    with caplog.at_level(logging.INFO, logger="recsieve"):
        eng = Engine.open(path, embedder=WordHashEmbedder(), config=CONFIG)
    try:
        assert len([r for r in caplog.records if "no recall statistics" in r.getMessage()]) == 1
        assert snapshot_of(eng.statistics()[0]) == full_rebuild(path, CONFIG)
    finally:
        eng.close()


def test_replay_statistics_reads_the_journal_in_pages(tmp_path):
    path = tmp_path / "eng"
    eng = new_engine(path)
    eng.record(random_log(random.Random(5), 300))
    try:
        channels, last = eng.new_statistics(), {}
        journal = eng.journal
        original = journal.event_columns
        journal.event_columns = lambda a, b: original(a, b, page=37)
        n = replay_statistics(journal, eng.users, channels, last, 0, eng.applied_seq)
        journal.event_columns = original
        assert n == 300
        assert snapshot_of(channels) == snapshot_of(eng.statistics()[0])
        assert last == eng._store._last_row
    finally:
        eng.close()


# -- vectors memory-mapped, the catalog columnar ------------------------------------------------


def test_vectors_are_mapped_and_an_update_never_reaches_the_snapshot(tmp_path, capsys):
    path = tmp_path / "eng"
    eng = new_engine(path)
    eng.save()
    eng.close()
    eng = open_engine(path)
    try:
        assert not eng._store.vectors.flags.owndata  # a view of the mapped file
        before = eng._store.vectors[3].copy()
        eng.upsert_items([Item("i03", title="something else entirely now")])  # in place, same row
        assert not np.array_equal(eng._store.vectors[3], before)
        assert main(["verify", str(path)]) == 0  # the snapshot's file is unchanged
        assert eng.search("something else entirely now", 1)[0][0] == "i03"
    finally:
        eng.close()
    eng = open_engine(path)  # the journal replays the update
    try:
        assert eng.search("something else entirely now", 1)[0][0] == "i03"
    finally:
        eng.close()


def test_columnar_catalog_keeps_types_order_and_tombstones(tmp_path):
    cat = Catalog("{title} {description} {attributes}")
    cat.upsert([
        Item("a", title="A", metadata={"price": 9.5, "n": 1, "ok": True, "s": "x"}),
        Item("b", title="B", attributes={"z": "1", "a": "2"}, metadata={"n": 1.0, "price": -0.0}),
        Item("c", description="C", categories=("x", "y"), metadata={"big": 2**63 - 1, "ok": False}),
        Item("d", title="D"),
    ])
    cat.remove(["b"])
    cat.upsert([Item("b", title="B", attributes={"z": "1", "a": "2"}, metadata={"n": 1.0, "price": -0.0})])
    cat.remove(["d"])
    cat.save(tmp_path)
    assert not (tmp_path / "catalog.jsonl").exists()
    loaded = Catalog.load(tmp_path)
    assert list(loaded) == list(cat) and loaded.num_rows == 4 and len(loaded) == 3
    assert loaded.version == cat.version and loaded.template == cat.template
    for it in cat:
        assert loaded.is_current(it)  # types, signed zeros and key order kept
        assert [type(v) for v in loaded.get(it.id).metadata.values()] == [type(v) for v in it.metadata.values()]
    assert loaded.title(3) == "d" and not loaded.is_live(3)
    assert loaded.upsert([Item("d", title="D again")]).tolist() == [3]


def test_user_store_columns_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    store = UserStore(4, recent_window=3, history_window=5)
    texts = [None, "héllo ☃", "", None, "a review"]
    for t in range(40):
        kind = KINDS[t % len(KINDS)]
        store.apply(f"u{t % 3}", t % 7, rng.normal(size=4).astype(np.float32), kind,
                    float(t if t % 5 else 100 - t), 4.0 if kind == "rating" else None, texts[t % 5])
    store.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.npz"]
    again = UserStore(4, recent_window=3, history_window=5)
    again.load(tmp_path)
    vec = np.ones(4, np.float32)
    for s in (store, again):
        s.apply("u1", 2, vec, "click", 500.0, None, None)  # both carry on alike
    for u in ("u0", "u1", "u2"):
        a, b = store.get(u), again.get(u)
        assert np.array_equal(a.profile, b.profile) and a.history == b.history and a.recent == b.recent
        assert (a.consumed, a.version, a.last_ts) == (b.consumed, b.version, b.last_ts)
    (tmp_path / "users.npz").write_bytes((tmp_path / "users.npz").read_bytes()[:100])
    with pytest.raises(CorruptStoreError, match="users.npz"):
        UserStore(4).load(tmp_path)


def test_damaged_columnar_catalog_is_a_clear_error(tmp_path):
    cat = Catalog()
    cat.upsert(items())
    cat.save(tmp_path)
    path = tmp_path / "catalog.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="catalog.parquet"):
        Catalog.load(tmp_path)
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptStoreError, match="catalog.parquet"):
        Catalog.load(tmp_path)


# -- checksums: verify finds every flipped byte, opening refuses a truncated file ---------------


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snap") / "eng"
    eng = new_engine(path)
    eng.record(random_log(random.Random(6), 200))
    eng.save()
    eng.close()
    return path


def snapshot_files(path: Path) -> list[str]:
    return sorted(json.loads((path / "MANIFEST.json").read_text())["files"])


def test_every_snapshot_file_is_in_the_manifest(saved_dir):
    gen = GenerationDir(saved_dir, "engine").open()[0]
    on_disk = sorted(p.relative_to(gen).as_posix() for p in gen.rglob("*") if p.is_file())
    assert snapshot_files(saved_dir) == on_disk and len(on_disk) >= 6


def test_verify_finds_a_flipped_byte_in_any_snapshot_file(saved_dir, capsys):
    gen = GenerationDir(saved_dir, "engine").open()[0]
    assert main(["verify", str(saved_dir)]) == 0
    assert "all checksums match" in capsys.readouterr().out
    for rel in snapshot_files(saved_dir):
        path = gen / rel
        original = path.read_bytes()
        if not original:
            continue
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            assert main(["verify", str(saved_dir)]) == 1, rel
            captured = capsys.readouterr()
            assert f"{gen.name}/{rel}:" in captured.err and "1 bad" in captured.out, rel
        finally:
            path.write_bytes(original)
    assert main(["verify", str(saved_dir)]) == 0


def test_opening_refuses_a_truncated_snapshot_file_naming_it(saved_dir):
    gen = GenerationDir(saved_dir, "engine").open()[0]
    for rel in snapshot_files(saved_dir):
        path = gen / rel
        original = path.read_bytes()
        if not original:
            continue
        path.write_bytes(original[: len(original) // 2])
        try:
            with pytest.raises(CorruptStoreError, match=f"file {rel} is truncated") as info:
                open_engine(saved_dir).close()
            assert "checksum" in str(info.value)
        finally:
            path.write_bytes(original)
    open_engine(saved_dir).close()


def test_opening_checks_big_files_at_both_ends_and_verify_everywhere(tmp_path):
    """A file over 2 MiB: opening hashes its first and last MiB (a swapped or cut file fails),
    ``verify`` every byte (a flip in the middle fails only there)."""
    g = GenerationDir(tmp_path, "engine")
    blob = np.random.default_rng(0).bytes(3 << 20)
    folder = g.commit(lambda f: (f / "big.bin").write_bytes(blob))
    g.open()
    for where, opens in [(len(blob) // 2, True), (10, False), (len(blob) - 10, False)]:
        changed = bytearray(blob)
        changed[where] ^= 0xFF
        (folder / "big.bin").write_bytes(bytes(changed))
        if opens:
            g.open()
        else:
            with pytest.raises(CorruptStoreError, match="big.bin"):
                g.open()
        problems = g.verify()[2]
        assert [p.path for p in problems] == ["big.bin"]
        with pytest.raises(CorruptStoreError, match="big.bin"):
            g.open(verify="full")
    (folder / "big.bin").write_bytes(blob)
    assert g.verify()[2] == []


# -- kill -9 while saving snapshots with statistics ---------------------------------------------

CHILD = textwrap.dedent(
    """
    import hashlib, random, sys
    import numpy as np
    from recsieve import Engine, Event

    class WordHashEmbedder:
        dim = 16
        def embed(self, texts, *, show_progress=None):
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for i, text in enumerate(texts):
                out[i, 0] = 1.0
                for word in text.lower().split():
                    out[i, 1 + int(hashlib.sha256(word.encode()).hexdigest(), 16) % (self.dim - 1)] += 1.0
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    eng = Engine.open(sys.argv[1], embedder=WordHashEmbedder())
    rng = random.Random(7)
    kinds = ["view", "click", "skip", "purchase", "dislike", "rating"]
    print("READY", flush=True)
    i = 0
    while True:
        u = f"u{rng.randrange(12)}"
        eng.record([Event(u, f"i{rng.randrange(20):02d}", rng.choice(kinds), ts=2e6 + i),
                    Event(u, f"i{rng.randrange(40):02d}", "click", ts=2e6 + i)])
        if i % 3 == 0:
            eng.save()
        print("ACK", i, flush=True)
        i += 1
    """
)


@pytest.mark.parametrize("delay", [0.8, 1.7])
def test_kill_minus_nine_while_saving_keeps_statistics_exact(tmp_path, delay):
    path = tmp_path / "eng"
    eng = new_engine(path)
    eng.record(random_log(random.Random(8), 100))
    eng.save()
    eng.close()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout.readline() == "READY\n", proc.stderr.read()
        first = proc.stdout.readline()  # a write and a save done: kill somewhere in the ones after
        assert first == "ACK 0\n", first + proc.stderr.read()
        time.sleep(delay)
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lines = [first, *proc.stdout.read().splitlines(keepends=True)]
        acked = [int(line.split()[1]) for line in lines if line.startswith("ACK ") and line.endswith("\n")
                 and line.split()[1].isdigit()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert acked, "the child acknowledged nothing before the kill"
    eng = open_engine(path)
    try:
        assert len(eng.journal.events()) >= 100 + 2 * len(acked)
        got = snapshot_of(eng.statistics()[0])
    finally:
        eng.close()
    assert got == full_rebuild(path)
