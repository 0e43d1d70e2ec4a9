"""Dataset loaders on small hand-written files in each source format (and the real copies if present)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from recsieve.errors import InvalidInputError, StoreError
from recsieve.evaluation.datasets import (
    load_amazon_scientific,
    load_custom,
    load_dataset,
    load_ml1m,
    load_ml100k,
    write_custom,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n3::Unused (1990)::Drama\n4::Caf\xe9 (2000)::Comedy\n"


def seqs(data):
    return [[data.item_ids[i] for i in s] for s in data.sequences]


def test_ml1m_sequences_tsv(tmp_path):
    (tmp_path / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    (tmp_path / "sequences.tsv").write_text("UserID\tMovieIDs_chronological\n7\t2 1 4\n3\t4\n")
    data = load_ml1m(tmp_path)
    assert data.user_ids == ("7", "3")
    assert seqs(data) == [["2", "1", "4"], ["4"]]
    assert data.item_ids == ("1", "2", "4")  # unrated movie 3 is left out of the ranking
    assert data.item_texts[0] == "Toy Story (1995). Animation, Children's, Comedy"
    assert data.item_texts[2] == "Caf\xe9 (2000). Comedy"
    assert dict(data.items[0].metadata) == {"year": 1995, "genre": "Animation"}
    assert data.timestamps is None and data.n_interactions == 4


def test_ml1m_ratings_dat_sorted_by_time_stably(tmp_path):
    (tmp_path / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    lines = ["1::4::5::30", "1::1::3::10", "1::2::4::30", "2::1::1::5"]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    data = load_ml1m(tmp_path)
    assert seqs(data) == [["1", "4", "2"], ["1"]]  # ts 10, then the two ts-30 lines in file order
    assert data.timestamps[0].tolist() == [10.0, 30.0, 30.0]
    # a gzip file given directly
    gz = tmp_path / "ratings.part.dat.gz"
    gz.write_bytes(gzip.compress("\n".join(lines[:2]).encode()))
    (tmp_path / "ratings.dat").unlink()
    assert seqs(load_ml1m(gz)) == [["1", "4"]]


def test_ml1m_errors_name_file_and_line(tmp_path):
    (tmp_path / "movies.dat").write_bytes(MOVIES.encode("latin-1"))
    (tmp_path / "ratings.dat").write_text("1::1::5::10\n1::99::5::11\n")
    with pytest.raises(InvalidInputError, match=r"ratings.dat line 2: MovieID") as err:
        load_ml1m(tmp_path)
    assert err.value.value == "99"
    (tmp_path / "ratings.dat").write_text("1::1::5\n")
    with pytest.raises(InvalidInputError, match="line 1"):
        load_ml1m(tmp_path)
    (tmp_path / "ratings.dat").unlink()
    with pytest.raises(StoreError, match="no ratings.dat"):
        load_ml1m(tmp_path)
    (tmp_path / "sequences.tsv").write_text("user\tmovies\n1\t1\n")
    with pytest.raises(InvalidInputError, match="header"):
        load_ml1m(tmp_path)
    (tmp_path / "movies.dat").unlink()
    (tmp_path / "sequences.tsv").write_text("UserID\tMovieIDs_chronological\n1\t1\n")
    with pytest.raises(StoreError, match="movies.dat"):
        load_ml1m(tmp_path)


def test_ml100k(tmp_path):
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n2|Caf\xe9 (1996)|01-Jan-1996||http://y|0|1|1\n".encode(
            "latin-1"
        )
    )
    (tmp_path / "u.data").write_text("5\t2\t3\t200\n5\t1\t4\t100\n10\t1\t4\t50\n")
    data = load_ml100k(tmp_path)
    assert data.user_ids == ("5", "10")
    assert seqs(data) == [["1", "2"], ["1"]]
    assert data.item_texts == ("Toy Story (1995). Comedy", "Caf\xe9 (1996). Action, Comedy")
    (tmp_path / "u.data").write_text("5\t3\t3\t200\n")
    with pytest.raises(InvalidInputError, match="u.data line 1: item"):
        load_ml100k(tmp_path)


def write_unisrec(folder, train, valid, test, prefix="Scientific"):
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    (folder / f"{prefix}.text").write_text(
        "item_id:token\ttext:token_seq\n"
        + "".join(f"A{i}\tthing {i}. Tools. Brand{i}. \n" for i in range(6))
    )
    (folder / f"{prefix}.item2index").write_text("".join(f"A{i}\t{i}\n" for i in range(6)))
    (folder / f"{prefix}.user2index").write_text("U0\t0\nU1\t1\n")
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{prefix}.{name}.inter").write_text(
            header + "".join(f"{u}\t{h}\t{t}\n" for u, h, t in rows)
        )


def test_amazon_rebuilds_full_sequences(tmp_path):
    write_unisrec(
        tmp_path,
        train=[(0, "3 1", "4"), (0, "3", "1"), (1, "5", "0")],
        valid=[(0, "3 1 4", "2"), (1, "5 0", "2")],
        test=[(0, "3 1 4 2", "0"), (1, "5 0 2", "2")],
    )
    data = load_amazon_scientific(tmp_path)
    assert data.user_ids == ("U0", "U1")
    assert seqs(data) == [["A3", "A1", "A4", "A2", "A0"], ["A5", "A0", "A2", "A2"]]
    assert data.item_texts[2] == "thing 2. Tools. Brand2."
    assert data.n_items == 6  # items keep their UniSRec order


def test_any_amazon_set_is_read_under_its_own_prefix(tmp_path):
    rows = dict(train=[(0, "3", "1"), (1, "5", "0")], valid=[(0, "3 1", "2"), (1, "5 0", "2")],
                test=[(0, "3 1 2", "0"), (1, "5 0 2", "4")])
    write_unisrec(tmp_path, **rows, prefix="Office")
    data = load_dataset("amazon", tmp_path)
    assert data.name == "amazon-office"
    assert seqs(data) == [["A3", "A1", "A2", "A0"], ["A5", "A0", "A2", "A4"]]
    with pytest.raises(StoreError, match="Scientific.item2index"):  # the Scientific reader does not guess
        load_dataset("amazon-scientific", tmp_path)
    write_unisrec(tmp_path, **rows, prefix="Arts")
    with pytest.raises(StoreError, match=r"2 \(Arts, Office\) \*\.item2index"):
        load_dataset("amazon", tmp_path)
    with pytest.raises(StoreError, match=r"no \*\.item2index"):
        load_dataset("amazon", tmp_path / "nothing_here")


def test_amazon_inconsistent_history_is_reported(tmp_path):
    write_unisrec(
        tmp_path, train=[(0, "3", "1")], valid=[(0, "3 1", "2")], test=[(0, "3 5 2", "0")]
    )
    with pytest.raises(InvalidInputError, match="Scientific.test.inter line 2: history"):
        load_amazon_scientific(tmp_path)


def test_custom_csv(tmp_path):
    items = [
        {"id": "a", "title": "Alpha", "categories": ["x"]},
        {"id": "b", "title": "Beta"},
        {"id": "c", "title": "Cold"},
    ]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,ts,kind\nu1,b,2024-01-02T00:00:00Z,purchase\nu1,a,1704067200,\nu2,a,5,view\n"
    )
    data = load_dataset("custom", tmp_path)
    assert seqs(data) == [["a", "b"], ["a"]]  # 2024-01-01 (epoch seconds) before 2024-01-02
    assert data.kinds == (("click", "purchase"), ("view",))
    assert data.item_ids == ("a", "b", "c")  # cold items stay rankable
    assert data.item_texts[0] == "Alpha. x"
    (tmp_path / "interactions.csv").write_text("user_id,item_id,ts\nu1,zzz,1\n")
    with pytest.raises(InvalidInputError, match="interactions.csv line 2: item_id"):
        load_custom(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,ts\nu1,a,yesterday\n")
    with pytest.raises(InvalidInputError, match="line 2: ts"):
        load_custom(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu1,a\n")
    with pytest.raises(InvalidInputError, match="missing"):
        load_custom(tmp_path)


def test_write_custom_is_read_back_as_written(tmp_path):
    from recsieve.types import Item

    items = [
        Item("m2", "Beta", "about b", ("x", "y"), {"colour": "red"}, {"year": 1999, "price": 9.5}),
        Item("m1", "Alpha"),
        Item("cold", "Never seen", metadata={"in_stock": True}),
    ]
    # orders no sort would give (the file keeps them: ts is the position), a user with one item
    sequences = [("u9", ["m1", "m2", "m1"]), ("u1", ["m2"]), ("u5", ["m2", "m1"])]
    write_custom(tmp_path / "out", items, iter(sequences))
    data = load_custom(tmp_path / "out")
    assert list(data.items) == items  # every field, the catalog's order, the cold item too
    assert dict(zip(data.user_ids, seqs(data), strict=True)) == dict(sequences)


def test_custom_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    (tmp_path / "items.csv").write_text("id,title\na,Alpha\nb,Beta\n")
    table = pa.table(
        {"user_id": ["u", "u", "v"], "item_id": ["b", "a", "b"], "ts": [2.0, 1.0, 0.0]}
    )
    pq.write_table(table, tmp_path / "interactions.parquet")
    assert seqs(load_custom(tmp_path)) == [["a", "b"], ["b"]]


def test_unknown_dataset_and_missing_dirs(tmp_path):
    with pytest.raises(InvalidInputError, match="dataset"):
        load_dataset("netflix", tmp_path)
    with pytest.raises(StoreError, match="interactions"):
        load_custom(tmp_path)
    with pytest.raises(StoreError, match="u.genre"):
        load_ml100k(tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared benchmark data not present")
def test_real_copies_match_their_documented_sizes():
    ml1m = load_dataset("ml-1m", SHARED / "ml-1m")
    assert (ml1m.n_users, ml1m.n_items, ml1m.n_interactions) == (6040, 3706, 1_000_209)
    amazon = load_dataset("amazon-scientific", SHARED / "amazon-scientific")
    assert (amazon.n_users, amazon.n_items) == (8442, 4385)
    # the test.inter line of every user is its history tail + target
    first = (
        (SHARED / "amazon-scientific" / "Scientific.test.inter")
        .read_text()
        .splitlines()[1]
        .split("\t")
    )
    expected = [int(t) for t in first[1].split()] + [int(first[2])]
    assert amazon.sequences[0][-len(expected) :].tolist() == expected
    ml100k = load_dataset("ml-100k", SHARED / "ml-100k")
    assert (ml100k.n_users, ml100k.n_items, ml100k.n_interactions) == (943, 1682, 100_000)
    assert all(np.all(np.diff(t) >= 0) for t in ml100k.timestamps)
