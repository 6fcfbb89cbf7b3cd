"""LLM-as-judge: verdict parsing, position swapping and consistency, grades, endpoints that are down."""

import json
import socket

import pytest

from tunelab.config import load_recipe
from tunelab.config.specs import EvalSpec
from tunelab.errors import TunelabError
from tunelab.evaluation.judge import (
    judge_systems,
    load_judge_rubric,
    pair_outcome,
    parse_grade,
    parse_verdict,
    prepare_judge,
    summarize_grades,
    summarize_pairwise,
    system_outputs,
    verdict_from_probs,
)

# ---------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("reply, verdict", [
    ("[[B]]", "B"), ("A", "A"), ("Answer B is better.", "B"), ("C", "C"), ("It is a tie.", "C"),
    ("Both are equally good", "C"), ("I cannot decide", None), ("", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_parse_grade():
    assert parse_grade("Score: 4/5", 5) == 4.0 and parse_grade("nine", 5) is None
    assert parse_grade("10", 10) == 10.0 and parse_grade("I give it 7/10.", 10) == 7.0
    assert parse_grade("3.5", 10) is None and parse_grade("0", 10) is None


def test_verdict_from_probs():
    assert verdict_from_probs({"A": 0.2, "B": 0.7, "C": 0.1}) == "B"
    assert verdict_from_probs({"A": 0.5, "B": 0.5, "C": 0.0}) is None      # no choice stands out
    assert verdict_from_probs({"A": 0.0, "B": 0.0, "C": 0.0}) is None


def test_pair_outcome_needs_both_orders_to_agree():
    # tuned_first: the verdict with tuned as A; tuned_second: with tuned as B.
    assert pair_outcome("A", "B") == "win" and pair_outcome("B", "A") == "loss"
    assert pair_outcome("C", "C") == "tie"
    assert pair_outcome("A", "A") == "inconsistent"        # the first position won both times
    assert pair_outcome("A", "C") == "inconsistent" and pair_outcome(None, "B") == "no_verdict"


def test_summaries():
    s = summarize_pairwise(["win", "win", "loss", "tie", "inconsistent", "no_verdict"], [True, True, False, True])
    assert s["n"] == 6 and s["n_consistent"] == 4
    assert (s["win_rate"], s["tie_rate"], s["loss_rate"]) == (0.5, 0.25, 0.25)
    assert s["inconsistent_rate"] == pytest.approx(1 / 6, abs=1e-5) and s["no_verdict"] == 1
    assert s["first_position_rate"] == 0.75
    lo, hi = s["win_rate_ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    g = summarize_grades([4.0, 2.0, None, 3.0])
    assert g["mean"] == 3.0 and g["scored"] == 3 and g["unscored"] == 1 and g["mean_ci"][0] <= 3.0


# -------------------------------------------------------------------------------------- scripted judges


class _Judge:
    """A scripted judge: prefers the answer that contains the reference, or always the first position."""

    def __init__(self, always_first=False):
        self.name, self.always_first, self.calls = "scripted", always_first, 0

    @staticmethod
    def _sections(text):
        ref = text.split("REFERENCE ANSWER", 1)[1].split(":\n", 1)[1].split("\n\n", 1)[0]
        a = text.split("ANSWER A:\n", 1)[1].split("\n\nANSWER B:", 1)[0]
        b = text.split("ANSWER B:\n", 1)[1].split("\n\nReply", 1)[0]
        return ref, a, b

    def choice_probs(self, prompts, choices):
        self.calls += len(prompts)
        out = []
        for p in prompts:
            text = p[-1]["content"]
            if choices == ["1", "2", "3", "4", "5"]:
                good = text.split("ANSWER:\n", 1)[1].startswith("good")
                out.append({c: (1.0 if c == ("5" if good else "2") else 0.0) for c in choices})
                continue
            ref, a, b = self._sections(text)
            pick = "A" if self.always_first else ("A" if ref in a and ref not in b else
                                                   "B" if ref in b and ref not in a else "C")
            out.append({c: (0.8 if c == pick else 0.1) for c in choices})
        return out

    def generate(self, prompts, **kw):
        out = []
        for p in prompts:
            pair = "ANSWER A:" in p[-1]["content"]
            probs = self.choice_probs([p], ["A", "B", "C"] if pair else ["1", "2", "3", "4", "5"])[0]
            best = max(probs, key=probs.get)
            out.append(f"[[{best}]]" if pair else f"Score: {best}/5")
        return out


def _spec(**judge):
    return EvalSpec(judge={"enabled": True, **judge}).judge


PROMPTS = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
REFS = ["alpha", "beta", "gamma", "delta"]
OUTPUTS = {"tuned": ["good alpha", "good beta", "bad", "good delta"], "base": ["bad", "bad", "good gamma", "bad delta"]}


def test_pairwise_with_position_swapping():
    summary, rows = judge_systems(PROMPTS, REFS, OUTPUTS, _spec(mode="pairwise"), _Judge())
    p = summary["pairwise"]["base"]
    # rows 0, 1: tuned has the reference (win); row 2: base has it (loss); row 3: both have it (tie).
    assert [r["pairwise"]["base"]["outcome"] for r in rows] == ["win", "win", "loss", "tie"]
    assert (p["win_rate"], p["tie_rate"], p["loss_rate"], p["inconsistent_rate"]) == (0.5, 0.25, 0.25, 0.0)
    assert p["first_position_rate"] == 0.5 and summary["rubric"] and "single" not in summary
    assert p["balanced"]["win_rate"] == 0.5 and p["balanced"]["mean_margin"] == pytest.approx((1.4 + 1.4 - 1.4) / 4)


def test_a_judge_with_position_bias_decides_nothing():
    summary, _ = judge_systems(PROMPTS, REFS, OUTPUTS, _spec(mode="pairwise"), _Judge(always_first=True))
    p = summary["pairwise"]["base"]
    assert p["inconsistent_rate"] == 1.0 and p["n_consistent"] == 0 and p["first_position_rate"] == 1.0
    assert p["win_rate"] is None and p["win_rate_ci"] is None        # unknown, not 0%
    assert p["balanced"]["mean_margin"] == pytest.approx(0.0) and p["balanced"]["win_rate"] == 0.0  # bias cancels


def test_generate_scoring_and_single_grades():
    judge = _Judge()
    summary, rows = judge_systems(PROMPTS, REFS, OUTPUTS, _spec(mode="both", scoring="generate"), judge)
    assert summary["pairwise"]["base"]["win_rate"] == 0.5
    assert summary["single"]["tuned"]["mean"] == pytest.approx((5 + 5 + 2 + 5) / 4)   # parsed from "Score: 5/5"
    assert summary["single"]["tuned"]["unscored"] == 0 and rows[2]["grades"] == {"tuned": 2.0, "base": 5.0}
    probs, _ = judge_systems(PROMPTS, REFS, OUTPUTS, _spec(mode="single"), judge)
    assert probs["single"]["tuned"]["mean"] == pytest.approx((5 + 5 + 2 + 5) / 4)
    assert probs["single"]["base"]["mean"] == pytest.approx((2 + 2 + 5 + 2) / 4)
    assert probs["single_diff"]["base"]["mean_diff"] == pytest.approx(1.5) and "pairwise" not in probs


def test_against_names_known_systems():
    with pytest.raises(TunelabError, match="eval.judge.against: no answers of '5_shot' to judge; evaluated: base"):
        judge_systems(PROMPTS, REFS, OUTPUTS, _spec(against=["5_shot"]), _Judge())


def test_spec_checks(tmp_path):
    with pytest.raises(TunelabError, match="scale 10 needs scoring 'generate'"):
        load_recipe(None, ["data.path=x.jsonl", "eval.judge.mode=single", "eval.judge.scale=10"])
    with pytest.raises(TunelabError, match="either rubric or rubric_file"):
        load_recipe(None, ["data.path=x.jsonl", "eval.judge.rubric=r", "eval.judge.rubric_file=f"])
    with pytest.raises(TunelabError, match="eval.judge.rubric_file: rubric file not found"):
        load_judge_rubric(_spec(rubric_file=str(tmp_path / "none.txt")))
    with pytest.raises(TunelabError, match="eval.judge.rubric: the rubric is empty"):
        load_judge_rubric(_spec(rubric="  "))
    assert "10 = excellent" in load_judge_rubric(_spec(scale=10, scoring="generate"))
    alone = EvalSpec(compare_base=False, judge={"enabled": True})
    with pytest.raises(TunelabError, match="eval.judge.mode: pairwise judging compares"):
        prepare_judge(alone, generator=_Judge())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_endpoint_that_is_down_fails_before_anything(tmp_path):
    spec = EvalSpec(judge={"enabled": True, "judge": {"endpoint": f"http://127.0.0.1:{_closed_port()}/v1",
                                                      "model": "judge", "timeout_s": 5}})
    with pytest.raises(TunelabError, match="eval.judge.judge.endpoint: the judge endpoint does not answer"):
        prepare_judge(spec)


def test_system_outputs_reads_baselines(tmp_path):
    from types import SimpleNamespace

    examples = [SimpleNamespace(where=f"d:{i}") for i in range(2)]
    (tmp_path / "eval").mkdir()
    rows = [{"variant": "zero_shot", "where": "d:0", "output": "b0"}, {"variant": "zero_shot", "where": "d:1",
                                                                         "output": "b1"},
            {"variant": "5_shot", "where": "d:1", "output": "f1"}, {"variant": "5_shot", "where": "d:0", "output": "f0"},
            {"variant": "cot", "where": "d:0", "output": "c0"}]   # cot missed a row: left out
    (tmp_path / "eval" / "baselines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = system_outputs(tmp_path, examples, ["b0", "b1"], ["t0", "t1"], baselines=True)
    assert out == {"tuned": ["t0", "t1"], "base": ["b0", "b1"], "5_shot": ["f0", "f1"]}  # zero_shot == base
    assert system_outputs(tmp_path, examples, None, ["t0", "t1"], baselines=False) == {"tuned": ["t0", "t1"]}


# ----------------------------------------------------------------------------------- real runs, tiny model


def _recipe(tmp_path, chat_jsonl, tiny_model_dir, *extra):
    return load_recipe(None, [
        f"data.path={chat_jsonl}", f"model.name={tiny_model_dir}", f"output.dir={tmp_path / 'runs'}",
        "output.name=t", "train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "model.precision=fp32",
        "eval.max_new_tokens=4", "eval.max_samples=4", "data.split.test=0.2", "eval.enabled=false", *extra,
    ])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    import tunelab.pipeline as pipeline

    tmp = tmp_path_factory.mktemp("judge-run")
    data = tmp / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Item {i} is red. Color?"},
                                                     {"role": "assistant", "content": "red"}]}) + "\n"
                            for i in range(30)))
    return pipeline.train(_recipe(tmp, data, tiny_model_dir), "t"), tmp, data


def test_evaluate_with_a_local_judge(trained_run, tiny_model_dir):
    from tunelab.evaluation.runner import evaluate_run

    run_dir, tmp, data = trained_run
    recipe = _recipe(tmp, data, tiny_model_dir, "eval.judge.enabled=true", "eval.judge.mode=both",
                     f"eval.judge.judge.model={tiny_model_dir}", "eval.judge.max_samples=3")
    result = evaluate_run(run_dir, recipe)
    judge = result["judge"]
    p = judge["pairwise"]["base"]
    assert judge["n"] == 3 and p["n"] == 3
    rates = [p[k] for k in ("win_rate", "tie_rate", "loss_rate")]
    assert sum(rates) == pytest.approx(1.0) if p["n_consistent"] else rates == [None, None, None]
    assert -2.0 <= p["balanced"]["mean_margin"] <= 2.0 and p["balanced"]["n"] == 3
    assert judge["single"]["tuned"]["scored"] + judge["single"]["tuned"]["unscored"] == 3
    saved = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert saved["judge"] == judge
    rows = [json.loads(x) for x in (run_dir / "eval" / "judge.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]["answers"]) == {"tuned", "base"}
    assert rows[0]["pairwise"]["base"]["outcome"] in {"win", "tie", "loss", "inconsistent", "no_verdict"}


def test_judge_endpoint_down_writes_nothing(trained_run, capsys):
    from tunelab.cli.main import main

    run_dir, _, _ = trained_run
    eval_dir = run_dir / "eval"
    before = {p.name: p.stat().st_mtime_ns for p in eval_dir.iterdir()} if eval_dir.is_dir() else {}
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    assert main(["eval", str(run_dir), "eval.judge.enabled=true", f"eval.judge.judge.endpoint={url}",
                 "eval.judge.judge.timeout_s=5"]) == 2
    err = capsys.readouterr().err
    assert f"error: eval.judge.judge.endpoint: the judge endpoint does not answer: cannot reach the generator endpoint {url}" in err
    after = {p.name: p.stat().st_mtime_ns for p in eval_dir.iterdir()} if eval_dir.is_dir() else {}
    assert after == before
    # Evaluation-time overrides are limited to eval.* (other keys would change the run itself).
    assert main(["eval", str(run_dir), "data.split.test=0.5"]) == 2
    assert "only eval.* settings can change at evaluation time, not 'data.split.test'" in capsys.readouterr().err


def test_report_section(tmp_path):
    from tunelab.report import write_report

    summary, _ = judge_systems(PROMPTS, REFS, OUTPUTS, _spec(mode="both"), _Judge())
    summary["note"] = "judged by a weak model"
    html, md = write_report(tmp_path, {"title": "t", "judge": summary})
    text = md.read_text()
    assert "## LLM judge" in text and "| tuned vs base | 4 | 4 | 50.0% [" in text
    assert "Caution: judged by a weak model." in text and "mean grade (1-5)" in text
    assert "LLM judge" in html.read_text()


def test_no_judge_for_perplexity(trained_run, tiny_model_dir, capsys):
    from tunelab.cli.main import main

    run_dir, _, _ = trained_run
    assert main(["eval", str(run_dir), "eval.judge.enabled=true", f"eval.judge.judge.model={tiny_model_dir}",
                 "eval.task=perplexity"]) == 2
    assert "eval.judge.enabled: a judge reads generated answers" in capsys.readouterr().err
