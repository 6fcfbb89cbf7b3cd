"""The generated support-ticket demo dataset: deterministic, answerable from the text, balanced, varied."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tunelab.data.demo import (
    CATEGORIES,
    INSTRUCTION,
    PRODUCTS,
    URGENCIES,
    generate_support_tickets,
    main,
    materialize,
)
from tunelab.errors import TunelabError

KEYS = ["name", "order_id", "product", "category", "urgency"]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate_support_tickets(2000, seed=0)


def _ticket(row: dict) -> str:
    prompt = row["messages"][0]["content"]
    assert prompt.startswith(INSTRUCTION + "\n")
    return prompt[len(INSTRUCTION) + 1:]


def _answer(row: dict) -> dict:
    return json.loads(row["messages"][1]["content"])


def test_deterministic_per_seed():
    assert generate_support_tickets(200, seed=3) == generate_support_tickets(200, seed=3)
    assert generate_support_tickets(200, seed=3) != generate_support_tickets(200, seed=4)
    # a prefix of a larger run is the smaller run: rows do not depend on n
    assert generate_support_tickets(50, seed=3) == generate_support_tickets(200, seed=3)[:50]


def test_row_shape(rows):
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert "\n" not in row["messages"][1]["content"]
        assert row["meta"]["category"] == _answer(row)["category"]


def test_answers_parse_with_fixed_keys_and_allowed_values(rows):
    for row in rows:
        answer = _answer(row)
        assert list(answer) == KEYS
        assert answer["product"] in PRODUCTS
        assert answer["category"] in CATEGORIES
        assert answer["urgency"] in URGENCIES
        assert answer["order_id"] is None or (
            answer["order_id"].startswith("ORD-") and answer["order_id"][4:].isdigit()
        )


def test_answers_are_readable_from_the_ticket(rows):
    for row in rows:
        ticket, answer = _ticket(row), _answer(row)
        assert answer["name"] in ticket
        assert answer["product"].lower() in ticket.lower()
        if answer["order_id"] is not None:
            assert answer["order_id"][4:] in ticket


def test_order_ids_present_and_absent(rows):
    with_id = sum(_answer(r)["order_id"] is not None for r in rows)
    assert 0.4 * len(rows) < with_id < 0.9 * len(rows)


@pytest.mark.parametrize(("field", "values"), [("category", CATEGORIES), ("urgency", URGENCIES)])
def test_labels_balanced(rows, field, values):
    counts = Counter(_answer(r)[field] for r in rows)
    assert set(counts) == set(values)
    assert min(counts.values()) >= 0.10 * len(rows)


def test_products_all_used(rows):
    assert {_answer(r)["product"] for r in rows} == set(PRODUCTS)


def test_tickets_are_diverse(rows):
    tickets = [_ticket(r) for r in rows]
    assert len(set(tickets)) >= 0.9 * len(tickets)
    assert len({t[:30] for t in tickets}) >= 300
    assert len({r["meta"]["template"] for r in rows}) >= 150
    assert len({_answer(r)["name"] for r in rows}) >= 1000


def test_tickets_have_reasonable_length(rows):
    words = [len(_ticket(r).split()) for r in rows]
    assert min(words) >= 20
    assert max(words) <= 100
    assert 30 <= sum(words) / len(words) <= 70


def test_name_placement_and_styles_vary(rows):
    positions = Counter(r["meta"]["name_position"] for r in rows)
    assert set(positions) == {"start", "middle", "end"}
    styles = Counter(s for r in rows for s in r["meta"]["style"])
    assert {"lowercase", "typos"} <= set(styles)
    assert sum(r["meta"]["distractor"] is not None for r in rows) >= 0.1 * len(rows)


def test_materialize_writes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    path = materialize("support_tickets:50")
    assert path == tmp_path / "demo" / "support_tickets-50.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50
    assert json.loads(lines[0]) == generate_support_tickets(50)[0]
    mtime = path.stat().st_mtime_ns
    assert materialize("support_tickets:50") == path
    assert path.stat().st_mtime_ns == mtime  # same content: not rewritten


def test_materialize_repairs_changed_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    path = materialize("support_tickets:5")
    good = path.read_text(encoding="utf-8")
    path.write_text("truncated", encoding="utf-8")
    assert materialize("demo:support_tickets:5") == path
    assert path.read_text(encoding="utf-8") == good


def test_materialize_default_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    assert materialize("support_tickets").name == "support_tickets-2000.jsonl"


@pytest.mark.parametrize("name", ["nope", "support_ticket", "support_tickets:zero", "support_tickets:0"])
def test_materialize_rejects_bad_names(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    with pytest.raises(TunelabError) as info:
        materialize(name)
    assert info.value.where == "data.path"


def test_unknown_name_message():
    with pytest.raises(TunelabError, match="unknown demo dataset 'nope'") as info:
        materialize("nope")
    assert info.value.fix == "available: demo:support_tickets"


def test_cli_writes_file(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert main(["support_tickets", "--n", "20", "--seed", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == generate_support_tickets(20, seed=2)
