"""LLM-as-judge scoring (`tunelab data score`, curate step `score`) and the text generators it judges with.

A fake judge with canned distributions checks the maths and the keep rules exactly; the tiny random model
checks real `choice_probs` over real logits; a real HTTP server in a thread checks the endpoint judge
through the official `openai` client, with and without logprobs.
"""

from __future__ import annotations

import hashlib
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from tunelab.cli.main import main
from tunelab.config import load_recipe
from tunelab.config.specs import JudgeSpec, ScoreSpec
from tunelab.data import prepare_data
from tunelab.data import score as score_mod
from tunelab.data.curate import curate
from tunelab.data.records import Example
from tunelab.data.score import (
    CHOICES,
    DEFAULT_RUBRIC,
    expected_score,
    judge_messages,
    parse_score,
    rubric_id,
    step_score,
)
from tunelab.errors import TunelabError
from tunelab.generation import EndpointGenerator, LocalGenerator


def _ex(i: int, answer: str, prompt: str | None = None) -> Example:
    prompt = prompt or f"Question number {i}?"
    return Example([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], None,
                   f"d.jsonl:{i + 1}", {"prompt": prompt, "completion": answer, "synthetic": i % 2 == 0})


def _dist(score: float) -> dict[str, float]:
    """A distribution over "1".."5" whose expectation is `score` (mass split between two neighbours)."""
    lo = min(int(score), 4)
    hi_p = score - lo
    return {c: (1 - hi_p if int(c) == lo else hi_p if int(c) == lo + 1 else 0.0) for c in CHOICES}


class FakeJudge:
    """choice_probs / generate answer from the answer text: 'score=3.5' in the answer means that score."""

    name = "fake-judge"

    def __init__(self, replies: dict[str, str] | None = None):
        self.replies = replies or {}
        self.prompts: list = []

    @staticmethod
    def _answer(messages) -> str:
        return messages[-1]["content"].split("ANSWER:\n", 1)[1].split("\n\nReply with", 1)[0]

    def choice_probs(self, prompts, choices):
        assert choices == list(CHOICES)
        self.prompts += prompts
        return [_dist(float(self._answer(m).split("score=")[1].split()[0])) for m in prompts]

    def generate(self, prompts, **kw):
        self.prompts += prompts
        return [self.replies[self._answer(m)] for m in prompts]


SCORES = [3.0, 4.5, 3.0, 2.0, 4.5, 3.0]


def _rows(scores=SCORES) -> list[Example]:
    return [_ex(i, f"Answer with score={s} here.") for i, s in enumerate(scores)]


def _spec(**kw) -> ScoreSpec:
    return ScoreSpec(**kw)


# ------------------------------------------------------------------------------------------------ maths


def test_expected_score_is_the_probability_weighted_mean():
    assert expected_score({"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.2, "5": 0.2}).value == pytest.approx(3.2)
    assert expected_score({"4": 2.0, "5": 2.0}).value == 4.5  # renormalised over the choices
    assert expected_score({"5": 1.0}).value == 5.0
    assert expected_score({"1": 0.7, "2": 0.3}).value == 1.3
    # No mass on the digits, or exactly even mass (what a generator reports when it saw no digit): no score.
    assert expected_score({c: 0.0 for c in CHOICES}).value is None
    none = expected_score({c: 0.2 for c in CHOICES})
    assert none.value is None and "no probability" in none.why


@pytest.mark.parametrize(("reply", "value"), [
    ("4", 4.0), ("Score: 4/5", 4.0), ("I would give it a 2 out of 5.", 2.0), (" 5\n", 5.0), ("**3**", 3.0),
    ("10", None), ("0.5", None), ("3.5", None), ("great answer", None), ("", None),
])
def test_parse_score_reads_the_first_standalone_digit(reply, value):
    s = parse_score(reply)
    assert s.value == value
    assert (s.why is None) == (value is not None)


def test_judge_prompt_shows_rubric_prompt_and_cut_answer():
    ex = _ex(0, "x" * 500, prompt="Summarise the text.")
    [system, user] = judge_messages(ex, "MY RUBRIC", max_chars=100)
    assert system["role"] == "system" and "single digit" in system["content"]
    text = user["content"]
    assert "MY RUBRIC" in text and "Summarise the text." in text
    assert "x" * 100 in text and "x" * 101 not in text and "cut: 400 more characters" in text
    multi = Example([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello"}], None, "m:1")
    assert "[system]\nBe brief.\n\n[user]\nHi" in judge_messages(multi, "R")[1]["content"]
    doc = Example([], "A plain document.", "t:1")
    assert "(none: a plain-text document)" in judge_messages(doc, "R")[1]["content"]


# ------------------------------------------------------------------------------------------- keep rules


def _run(spec: ScoreSpec, rows=None, judge=None):
    rows = _rows() if rows is None else rows
    kept, rejects, report = step_score(rows, spec, judge or FakeJudge())
    assert report.rows_in == report.kept + report.rejected == len(rows) == len(kept) + len(rejects)
    return kept, rejects, report


def test_scores_without_a_keep_rule_annotate_every_row():
    kept, rejects, report = _run(_spec())
    assert rejects == []
    rid = rubric_id(DEFAULT_RUBRIC)
    assert [ex.raw["score"] for ex in kept] == [{"value": s, "judge": "fake-judge", "rubric": rid} for s in SCORES]
    assert all("synthetic" in ex.raw for ex in kept)  # other annotations survive
    d = report.details
    assert (d["scored"], d["unscored"], d["mean"], d["median"]) == (6, 0, 3.333, 3.0)
    # Nearest integer buckets: 3.0 x3 -> "3", 4.5 x2 -> "5" (half up), 2.0 -> "2".
    assert d["histogram"] == {"1": 0, "2": 1, "3": 3, "4": 0, "5": 2}
    assert d["rubric"] == rid == hashlib.sha256(DEFAULT_RUBRIC.encode()).hexdigest()[:12]


def test_keep_top_breaks_ties_by_original_order():
    kept, rejects, _ = _run(_spec(keep_top=3))
    assert [ex.where for ex in kept] == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:5"]  # 4.5, 4.5, then the first 3.0
    assert {r.where: r.reason for r in rejects} == {
        "d.jsonl:3": "not in the best 3 (rank 4 > 3)", "d.jsonl:6": "not in the best 3 (rank 5 > 3)",
        "d.jsonl:4": "not in the best 3 (rank 6 > 3)"}
    assert all(r.step == "score" and r.record["score"]["value"] in SCORES for r in rejects)
    assert [ex.where for ex in _run(_spec(keep_top=6))[0]] == [ex.where for ex in _rows()]


def test_min_score_and_keep_top_together():
    kept, rejects, report = _run(_spec(min_score=3.0, keep_top=4))
    assert [ex.where for ex in kept] == ["d.jsonl:1", "d.jsonl:2", "d.jsonl:3", "d.jsonl:5"]
    assert {r.where: r.reason for r in rejects} == {"d.jsonl:4": "below min_score (2.00 < 3.00)",
                                                    "d.jsonl:6": "not in the best 4 (rank 5 > 4)"}
    assert report.details["kept_min"] == 3.0
    kept, rejects, _ = _run(_spec(min_score=4.6))
    assert kept == [] and len(rejects) == 6


def test_generate_mode_unparseable_replies_are_counted_never_defaulted():
    rows = [_ex(0, "good"), _ex(1, "fine"), _ex(2, "odd")]
    judge = FakeJudge({"good": "5", "fine": "Score: 3/5", "odd": "What a lovely answer!"})
    kept, rejects, report = _run(_spec(mode="generate"), rows, judge)
    assert [ex.raw["score"]["value"] for ex in kept] == [5.0, 3.0, None]
    assert "no digit 1-5: 'What a lovely answer!'" in kept[2].raw["score"]["error"]
    assert (report.details["scored"], report.details["unscored"]) == (2, 1)
    kept, rejects, _ = _run(_spec(mode="generate", min_score=1), rows, judge)
    assert [r.reason for r in rejects] == ["no score (judge reply has no digit 1-5: 'What a lovely answer!')"]


def test_rubric_text_and_file(tmp_path):
    judge = FakeJudge()
    _, _, report = _run(_spec(rubric="Only 5 for haiku."), judge=judge)
    assert "Only 5 for haiku." in judge.prompts[0][-1]["content"]
    assert report.details["rubric"] == rubric_id("Only 5 for haiku.")
    f = tmp_path / "rubric.txt"
    f.write_text("Score code answers only.\n", encoding="utf-8")
    judge = FakeJudge()
    _run(_spec(rubric_file=str(f)), judge=judge)
    assert "Score code answers only." in judge.prompts[0][-1]["content"]
    with pytest.raises(TunelabError, match="rubric file not found"):
        step_score(_rows(), _spec(rubric_file=str(tmp_path / "missing.txt")), FakeJudge())
    with pytest.raises(TunelabError, match="rubric is empty"):
        step_score(_rows(), _spec(rubric="  \n"), FakeJudge())


def test_judge_spec_defaults_are_greedy_even_when_partly_given():
    spec = load_recipe(None, ["data.path=x", "data.curate.score.generator.model=other"]).data.curate.score
    assert isinstance(spec.generator, JudgeSpec)
    assert (spec.generator.model, spec.generator.temperature, spec.generator.max_new_tokens) == ("other", 0.0, 16)


# ---------------------------------------------------------------------------------- dataset folder / CLI


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"Question number {i}?", "completion": f"Answer with score={s} here.", "synthetic": True}
            for i, s in enumerate(SCORES)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_writes_scores_into_data_jsonl_and_reasons_into_rejects(data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(score_mod, "make_generator", lambda spec: FakeJudge())
    out = tmp_path / "scored"
    assert main(["data", "score", str(data_file), "-o", str(out), "curate.score.keep_top=2"]) == 0
    rows = [json.loads(x) for x in (out / "data.jsonl").read_text().splitlines()]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["score"]["value"] for r in rows] == [4.5, 4.5]
    assert all(r["synthetic"] is True and r["score"]["judge"] == "fake-judge" for r in rows)
    assert [r["reason"] for r in rejects] == [f"not in the best 2 (rank {k} > 2)" for k in (3, 4, 6, 5)]
    assert all(r["step"] == "score" for r in rejects)
    step = manifest["steps"][-1]
    assert (manifest["rows_in"], manifest["rows_out"], manifest["rejected"]) == (6, 2, 4)
    assert (step["step"], step["details"]["histogram"]) == ("score", {"1": 0, "2": 1, "3": 3, "4": 0, "5": 2})
    # A scored folder read again keeps its scores (here through another verb).
    again = tmp_path / "again"
    assert main(["data", "clean", str(out), "-o", str(again)]) == 0
    assert [json.loads(x)["score"] for x in (again / "data.jsonl").read_text().splitlines()] == \
        [r["score"] for r in rows]


def test_cli_bad_rubric_settings_exit_2(data_file, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["data", "score", str(data_file), "-o", out, "curate.score.rubric_file=nope.txt"]) == 2
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]  # one line (progress bars aside)
    assert "rubric file not found: nope.txt" in line and "data.curate.score.rubric_file" in line
    assert main(["data", "score", str(data_file), "-o", out, "curate.score.rubric=x",
                 "curate.score.rubric_file=y"]) == 2
    assert "either rubric or rubric_file" in capsys.readouterr().err
    assert main(["data", "score", str(data_file), "-o", out, "curate.score.keep_top=0"]) == 2
    assert main(["data", "score", str(data_file), "-o", out, "curate.score.mode=vote"]) == 2


def test_cli_path_equals_recipe_path_on_the_tiny_model(data_file, tmp_path, tiny_model_dir):
    # A one-line rubric keeps the judge prompts short: the tiny model's cost is its 49k-vocabulary head.
    keys = [f"curate.score.generator.model={tiny_model_dir}", "curate.score.keep_top=4", "curate.score.rubric=Rate."]
    assert main(["data", "score", str(data_file), "-o", str(tmp_path / "cli"), *keys]) == 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data:\n  path: {data_file}\n  curate:\n    steps: [score]\n    score:\n"
                      f"      keep_top: 4\n      rubric: Rate.\n      generator: {{model: {tiny_model_dir}}}\n",
                      encoding="utf-8")
    assert main(["data", "curate", str(recipe), "-o", str(tmp_path / "recipe")]) == 0
    for name in ("data.jsonl", "rejects.jsonl"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "recipe" / name).read_bytes()
    rows = [json.loads(x) for x in (tmp_path / "cli" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(1.0 <= r["score"]["value"] <= 5.0 for r in rows)
    assert rows[0]["score"]["judge"] == str(tiny_model_dir)


def test_score_step_in_a_recipe_curates_the_training_split(data_file, tokenizer, monkeypatch):
    monkeypatch.setattr(score_mod, "make_generator", lambda spec: FakeJudge())
    spec = load_recipe(None, [f"data.path={data_file}", "data.curate.steps=[score]", "data.curate.score.min_score=3",
                              "data.split.validation=0", "data.split.test=0"]).data
    result = curate(_rows(), spec.curate)
    assert [(r.step, r.reason) for r in result.rejects] == [("score", "below min_score (2.00 < 3.00)")]
    data = prepare_data(spec, tokenizer)
    [step] = data.summary["curation"]
    assert (step["split"], step["step"], step["rows_in"], step["kept"], step["rejected"]) == ("train", "score", 6, 5, 1)
    assert len(data.splits["train"]) == 5


# ------------------------------------------------------------------------------------ local generator


def test_local_choice_probs_are_the_softmax_of_real_logits(tiny_model, tokenizer):
    gen = LocalGenerator(JudgeSpec(model="tiny", batch_size=2), tiny_model, tokenizer)
    rows = [_ex(i, "word " * (3 + 7 * i)) for i in range(3)]  # different lengths: batches are left-padded
    prompts = [judge_messages(ex, "R") for ex in rows]
    probs = gen.choice_probs(prompts, list(CHOICES))
    ids = [tokenizer.encode(c, add_special_tokens=False)[0] for c in CHOICES]
    for p, m in zip(probs, prompts, strict=True):
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-6)
        enc = tokenizer(tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                        return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            last = tiny_model(**enc).logits[0, -1].float()  # (vocab,) unpadded, one row at a time
        ref = torch.softmax(last[ids], dim=-1).tolist()
        assert [p[c] for c in CHOICES] == pytest.approx(ref, abs=1e-4)
    kept, _, report = step_score(rows, ScoreSpec(rubric="R"), gen)
    values = [ex.raw["score"]["value"] for ex in kept]
    assert all(1.0 <= v <= 5.0 for v in values) and report.details["scored"] == 3
    assert values == [round(sum(int(c) * p[c] for c in CHOICES), 2) for p in probs]
    assert values == [ex.raw["score"]["value"] for ex in step_score(rows, ScoreSpec(rubric="R"), gen)[0]]


# ------------------------------------------------------------------------------------ endpoint judge


class _Judge(BaseHTTPRequestHandler):
    """/v1/chat/completions: content and logprobs from the server's `mode`; every request body is kept."""

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        mode = self.server.mode
        content = {"logprobs": "4", "no_logprobs": "4", "chatty": "Score: 5/5", "words": "Great"}[mode]
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content},
                  "logprobs": None}
        if body.get("logprobs") and mode in ("logprobs", "words"):
            top = {"logprobs": [("4", 0.6), (" 5", 0.3), ("3", 0.1)], "words": [("Great", 0.9), ("Good", 0.1)]}[mode]
            choice["logprobs"] = {"content": [{"token": top[0][0], "logprob": math.log(top[0][1]), "bytes": None,
                                               "top_logprobs": [{"token": t, "logprob": math.log(p), "bytes": None}
                                                                for t, p in top]}]}
        out = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    httpd.requests, httpd.mode = [], "logprobs"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _endpoint(server, **kw) -> EndpointGenerator:
    return EndpointGenerator(JudgeSpec(model="judge-x", endpoint=f"http://127.0.0.1:{server.server_port}/v1", **kw))


@pytest.mark.parametrize(("mode", "score_mode", "value"), [
    ("logprobs", "probs", 4.2),  # 4 x 0.6 + 5 x 0.3 + 3 x 0.1 ("5" arrives as " 5": stripped)
    ("no_logprobs", "probs", 4.0),  # the server ignores logprobs: the generated token decides
    ("chatty", "generate", 5.0),
    ("words", "probs", None),  # no digit among the top tokens: unscored, not a default 3.0
    ("words", "generate", None),
])
def test_endpoint_judge_with_and_without_logprobs(server, mode, score_mode, value):
    server.mode = mode
    gen = _endpoint(server)
    kept, _, report = step_score([_ex(0, "Paris.", prompt="Capital of France?")], ScoreSpec(mode=score_mode), gen)
    assert kept[0].raw["score"]["value"] == value
    assert kept[0].raw["score"]["judge"] == f"judge-x@http://127.0.0.1:{server.server_port}/v1"
    assert report.details["unscored"] == (value is None)
    [req] = server.requests
    assert req["model"] == "judge-x" and req["temperature"] == 0.0
    assert "Capital of France?" in req["messages"][-1]["content"] and "Paris." in req["messages"][-1]["content"]
    if score_mode == "probs":
        assert (req["max_tokens"], req["logprobs"], req["top_logprobs"]) == (1, True, 20)
    else:
        assert req["max_tokens"] == 16 and "logprobs" not in req


def test_endpoint_connection_refused_is_a_tunelab_error(data_file, tmp_path, capsys):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = ScoreSpec(generator=JudgeSpec(endpoint=f"http://127.0.0.1:{port}/v1", timeout_s=5))
    with pytest.raises(TunelabError, match="cannot reach the generator endpoint"):
        step_score(_rows()[:1], spec)
    assert main(["data", "score", str(data_file), "-o", str(tmp_path / "o"),
                 f"curate.score.generator.endpoint=http://127.0.0.1:{port}/v1"]) == 2
    assert "generator.endpoint" in capsys.readouterr().err
