"""Requests from catalog attributes, and the instruction-following evaluation end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsieve.cli import main
from recsieve.engine.requests import Request, request_for
from recsieve.types import Item

GENRES = ("comedy", "horror", "documentary", "romance")


def test_request_for_uses_the_items_own_attributes() -> None:
    item = Item(id="1", title="Heat (1995)", categories=("Action", "Crime"), metadata={"year": 1995})
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        r = request_for(item, rng)
        assert r is not None and r.satisfied_by(item) and r.text.strip()
        seen.add((r.field, r.value))
    assert seen == {("category", "Action"), ("category", "Crime"), ("decade", 1990)}
    assert request_for(Item(id="2", title="No attributes"), rng) is None


def test_request_satisfaction_by_hand() -> None:
    old = Item(id="a", title="A", categories=("Comedy",), metadata={"year": 1987})
    new = Item(id="b", title="B", categories=("Horror",), metadata={"year": 2004})
    assert Request("something comedy", "category", "comedy").satisfied_by(old)
    assert not Request("something comedy", "category", "comedy").satisfied_by(new)
    assert Request("the 80s", "decade", 1980).satisfied_by(old)
    assert not Request("the 80s", "decade", 1980).satisfied_by(new)


def write_genre_data(folder, n_users=80, length=8, seed=0):
    """Items in four genres; each user sticks mostly to one genre, with a fixed walk inside it."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    with open(folder / "items.jsonl", "w") as fh:
        for i in range(60):
            g = GENRES[i % 4]
            fh.write(json.dumps({"id": f"i{i}", "title": f"A {g} film number {i}", "categories": [g]}) + "\n")
    lines = ["user_id,item_id,ts"]
    for u in range(n_users):
        g = u % 4
        pool = [i for i in range(60) if i % 4 == g]
        start = int(rng.integers(len(pool)))
        for t in range(length):
            item = pool[(start + t) % len(pool)] if rng.random() < 0.8 else int(rng.integers(60))
            lines.append(f"u{u},i{item},{1000 + 60 * t}")
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")


def test_instruction_evaluation_end_to_end(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    write_genre_data(data)
    out = tmp_path / "instructions.json"
    rc = main(["evaluate-instructions", "--dataset", "custom", "--data-dir", str(data), "--users", "40", "--quiet",
               "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = {r["condition"]: r for r in report["results"]}
    assert set(rows) == {"no instruction", "instruction", "instruction, trained"} and report["users"] > 0
    for r in rows.values():
        assert 0.0 <= r["hr@10"] <= 1.0 and 0.0 <= r["satisfying@10"] <= 1.0
    # the request is the target's own genre: asking for it fills the top 10 with that genre
    assert rows["instruction"]["satisfying@10"] > rows["no instruction"]["satisfying@10"]
    assert "satisfying@10" in capsys.readouterr().out


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_instruction_share_is_checked(share, tmp_path) -> None:
    from recsieve.errors import InvalidInputError
    from recsieve.training import train_engine_ranker

    with pytest.raises(InvalidInputError, match="instruction_share"):
        train_engine_ranker(None, tmp_path / "m", instruction_share=share)  # type: ignore[arg-type]
