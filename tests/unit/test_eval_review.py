"""Human review: the blind sheet, its key, and ratings round-tripped into metrics.json and the report."""

import csv
import json

import pytest

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.config.loading import dump_recipe
from tunelab.errors import TunelabError
from tunelab.evaluation.review import export_review, import_ratings, summarize_human

N = 10


@pytest.fixture()
def run_dir(tmp_path):
    """An evaluated run folder as `tunelab eval` leaves it (config, eval/metrics.json, eval/samples.jsonl)."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_recipe(load_recipe(None, ["data.path=d.jsonl"])))
    rows = [{"where": f"d.jsonl:{i + 1}", "input": f"Summarise dialogue {i}", "reference": f"summary {i}",
             "base": f"base answer {i}", "tuned": f"tuned answer {i}"} for i in range(N)]
    (run / "eval" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"split": "test", "n": N, "task": "text", "base": {"rougeL": 0.2, "main": "rougeL"},
               "tuned": {"rougeL": 0.3, "main": "rougeL"}}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


def _sheet(paths):
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_is_blind_and_seeded(run_dir, tmp_path):
    paths = export_review(run_dir, seed=3)
    assert paths["html"].parent == run_dir / "review" / "sheet" and paths["key"] == run_dir / "review" / "key.json"
    sheet = _sheet(paths)
    assert len(sheet) == N and set(sheet[0]) >= {"id", "preference", "input", "reference", "answer_a", "answer_b"}
    key = json.loads(paths["key"].read_text())
    assert key["systems"] == ["tuned", "base"] and key["seed"] == 3
    for row in sheet:   # the key says which system wrote A and B
        item = key["items"][row["id"]]
        assert row["answer_a"].startswith(item["A"]) and row["answer_b"].startswith(item["B"])
    orders = [key["items"][r["id"]]["A"] for r in sheet]
    assert 0 < orders.count("tuned") < N                        # both orders occur
    html = paths["html"].read_text()
    assert "tuned" not in html.replace("tuned answer", "") and "base" not in html.replace("base answer", "")
    assert "key.json" not in html and not any(p.name == "key.json" for p in paths["html"].parent.iterdir())
    again = export_review(run_dir, tmp_path / "other", seed=3)   # same seed: same key, allowed
    assert json.loads(again["key"].read_text())["items"] == key["items"]
    with pytest.raises(TunelabError, match="already holds the key of a different sheet"):
        export_review(run_dir, tmp_path / "other", seed=4)
    export_review(run_dir, tmp_path / "other", seed=4, overwrite=True)
    assert json.loads(paths["key"].read_text())["seed"] == 4


def test_export_errors(run_dir, tmp_path):
    with pytest.raises(TunelabError, match="would contain the key"):
        export_review(run_dir, run_dir)
    with pytest.raises(TunelabError, match="no answers of '5_shot' in this run; available: tuned, base"):
        export_review(run_dir, against="5_shot")
    with pytest.raises(TunelabError, match="has no eval/samples.jsonl"):
        export_review(tmp_path / "empty")


def _fill(paths, choose, out, rater="ann"):
    """Write ratings: choose(tuned_letter, other_letter, i) -> preference text."""
    key = json.loads(paths["key"].read_text())
    rows = []
    for i, row in enumerate(_sheet(paths)):
        tuned = "A" if key["items"][row["id"]]["A"] == "tuned" else "B"
        rows.append({"id": row["id"], "rater": rater, "preference": choose(tuned, "B" if tuned == "A" else "A", i),
                     "comment": ""})
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "rater", "preference", "comment"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_round_trip(run_dir, tmp_path):
    paths = export_review(run_dir, seed=1)
    # tuned preferred on items 0-4, tie on 5-6, the base on 7-8, item 9 left unrated; mixed case accepted
    def choose(tuned, other, i):
        return tuned.lower() if i < 5 else "Tie" if i < 7 else other if i < 9 else ""
    ratings = _fill(paths, choose, tmp_path / "ann.csv")
    human = import_ratings(run_dir, ratings)
    assert human["systems"] == ["tuned", "base"] and human["n_ratings"] == 9 and human["unrated"] == 1
    assert (human["win_rate"], human["tie_rate"], human["loss_rate"]) == (pytest.approx(5 / 9, abs=1e-5),
                                                                          pytest.approx(2 / 9, abs=1e-5),
                                                                          pytest.approx(2 / 9, abs=1e-5))
    lo, hi = human["win_rate_ci"]
    assert lo < 5 / 9 < hi and human["raters"] == ["ann"] and human["agreement"] is None
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["human"] == human and metrics["tuned"]["rougeL"] == 0.3   # the rest is kept
    rows = [json.loads(x) for x in (run_dir / "eval" / "human.jsonl").read_text().splitlines()]
    assert {r["outcome"] for r in rows[:5]} == {"win"} and rows[0]["A"] in ("tuned", "base")

    from tunelab.pipeline import build_report

    html, md = build_report(run_dir)
    text = md.read_text()
    assert "## Human review" in text and "55.6%" in text and "Human review" in html.read_text()


def test_two_raters_and_agreement(run_dir, tmp_path):
    paths = export_review(run_dir, seed=2)
    a = _fill(paths, lambda t, o, i: t, tmp_path / "a.csv", rater="ann")
    b = _fill(paths, lambda t, o, i: t if i < 5 else o, tmp_path / "b.csv", rater="bob")
    both = tmp_path / "both.csv"
    both.write_text(a.read_text() + "".join(b.read_text().splitlines(True)[1:]))
    human = import_ratings(run_dir, both)
    assert human["n_ratings"] == 20 and human["n_items"] == 10 and human["agreement"] == 0.5
    assert human["win_rate"] == 0.75 and human["raters"] == ["ann", "bob"]


def test_bad_ratings_name_their_lines_and_write_nothing(run_dir, tmp_path):
    paths = export_review(run_dir)
    before = (run_dir / "eval" / "metrics.json").read_text()
    ids = [r["id"] for r in _sheet(paths)]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,preference\n{ids[0]},A\nitem-999,B\n{ids[1]},maybe\n{ids[0]},B\n")
    with pytest.raises(TunelabError) as err:
        import_ratings(run_dir, bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:3: unknown id 'item-999' (and 2 more bad rows: lines 4, 5)")
    assert (run_dir / "eval" / "metrics.json").read_text() == before and not (run_dir / "eval" / "human.jsonl").exists()
    bad.write_text(f"id,pref\n{ids[0]},A\n")
    with pytest.raises(TunelabError, match="bad.csv:1: the ratings file has no 'preference' column"):
        import_ratings(run_dir, bad)
    bad.write_text(f"id,preference\n{ids[0]},\n")
    with pytest.raises(TunelabError, match="rates no item"):
        import_ratings(run_dir, bad)


def test_import_needs_an_export(run_dir, tmp_path):
    with pytest.raises(TunelabError, match="no review key"):
        import_ratings(run_dir, tmp_path / "x.csv")


def test_summary_resamples_items():
    s = summarize_human({"i1": ["win", "win"], "i2": ["loss"], "i3": ["tie", "win"]})
    assert s["n_ratings"] == 5 and s["n_items"] == 3 and s["win_rate"] == 0.6 and s["agreement"] == 0.5
    lo, hi = s["win_rate_ci"]
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0


def test_cli(run_dir, tmp_path, capsys):
    assert main(["review", "export", str(run_dir), "-o", str(tmp_path / "sheet"), "--seed", "5"]) == 0
    assert (tmp_path / "sheet" / "review.html").is_file()
    paths = {"csv": tmp_path / "sheet" / "ratings.csv", "key": run_dir / "review" / "key.json"}
    good = _fill(paths, lambda t, o, i: t, tmp_path / "r.csv")
    assert main(["review", "import", str(run_dir), str(good)]) == 0
    printed = capsys.readouterr()
    assert "win 100.0%" in (printed.out + printed.err).replace("\n", " ")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,preference\nnope,A\n")
    assert main(["review", "import", str(run_dir), str(bad)]) == 2
    assert "bad.csv:2: unknown id 'nope'" in capsys.readouterr().err
    assert main(["review", "import", str(run_dir)]) == 2


def test_against_a_baseline(run_dir):
    rows = [{"variant": "5_shot", "where": f"d.jsonl:{i + 1}", "output": f"shot answer {i}"} for i in range(N)]
    (run_dir / "eval" / "baselines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TunelabError, match="no answers of '5_shot'"):   # not part of this evaluation's metrics
        export_review(run_dir, against="5_shot")
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({**metrics, "baselines": {"5_shot": {}}}))
    paths = export_review(run_dir, against="5_shot")
    key = json.loads(paths["key"].read_text())
    assert key["systems"] == ["tuned", "5_shot"]
    row = _sheet(paths)[0]
    assert {row["answer_a"].split()[0], row["answer_b"].split()[0]} == {"tuned", "shot"}
