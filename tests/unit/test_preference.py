"""Preference data (formats, rejects, split, encoding, report stats), objectives on the tiny model, feedback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config.specs import DataSpec, SplitSpec
from tunelab.data.preference import (
    PairExample,
    encode_pair,
    encode_unpaired,
    parse_label,
    read_pairs,
    read_preference,
    read_unpaired,
    render_pair,
    split_preference,
)
from tunelab.data.preference_report import pair_findings, pair_stats
from tunelab.errors import TunelabError


def _write(tmp_path: Path, rows: list, name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spec(path: Path, **kw) -> DataSpec:
    return DataSpec(path=str(path), **kw)


# ------------------------------------------------------------------------------------------- formats


def test_pairs_text_and_messages(tmp_path):
    rows = [
        {"prompt": "Colour of the sky?", "chosen": "blue", "rejected": "green"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grass?"}],
         "chosen": [{"role": "assistant", "content": "green"}], "rejected": {"role": "assistant", "content": "red"}},
    ]
    data = read_preference(_write(tmp_path, rows), _spec(tmp_path))
    assert data.format == "pairs" and data.paired and not data.rejects
    a, b = data.pairs
    assert a.prompt == [{"role": "user", "content": "Colour of the sky?"}] and (a.chosen, a.rejected) == ("blue", "green")
    assert b.prompt[0] == {"role": "system", "content": "Be brief."} and b.rejected == "red"
    assert b.chosen_messages[-1] == {"role": "assistant", "content": "green"}
    assert a.where.endswith(":1") and b.where.endswith(":2")


def test_sharegpt_pairs_like_llamafactory(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "2+2?"}],
             "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}},
            {"conversations": [{"from": "human", "value": "3+3?"}], "chosen": "6", "rejected": "7"}]
    pairs, rejects = read_pairs(_write(tmp_path, rows, "d.json"), _spec(tmp_path))
    assert not rejects and len(pairs) == 2
    assert [m["role"] for m in pairs[0].prompt] == ["system", "user", "assistant", "user"]
    assert (pairs[0].chosen, pairs[0].rejected, pairs[1].chosen) == ("4", "5", "6")
    assert pairs[0].where.endswith(":#0")


def test_hh_transcripts_split_at_common_prefix(tmp_path):
    shared = "\n\nHuman: What is 2+2?\n\nAssistant: Let me think.\n\nHuman: Just the number."
    rows = [{"chosen": shared + "\n\nAssistant: 4", "rejected": shared + "\n\nAssistant: 5, probably"},
            {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
             "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}]
    data = read_preference(_write(tmp_path, rows), _spec(tmp_path))
    assert data.format == "hh" and not data.rejects
    first = data.pairs[0]
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user"]
    assert first.prompt[-1]["content"] == "Just the number." and (first.chosen, first.rejected) == ("4", "5, probably")
    assert data.pairs[1].prompt == [{"role": "user", "content": "Hi"}] and data.pairs[1].rejected == "Go away."


def test_unpaired_labels_and_pairs_as_unpaired(tmp_path):
    rows = [{"prompt": "Sky?", "completion": "blue", "label": "good"},
            {"prompt": "Sky?", "completion": "green", "label": False},
            {"prompt": "Sky?", "completion": "teal", "label": -1},
            {"prompt": "Sky?", "completion": "azure", "label": "maybe"}]
    data = read_preference(_write(tmp_path, rows), _spec(tmp_path))
    assert data.format == "unpaired" and not data.paired
    assert [u.label for u in data.unpaired] == [True, False, False]
    assert [r.reason for r in data.rejects] == ["unknown label 'maybe' (use good/bad, true/false, 1/0 or +1/-1)"]
    with pytest.raises(TunelabError, match="unpaired good/bad labels"):
        read_pairs(_write(tmp_path, rows), _spec(tmp_path))
    pairs_file = _write(tmp_path, [{"prompt": "Sky?", "chosen": "blue", "rejected": "green"}], "p.jsonl")
    rows2, _ = read_unpaired(pairs_file, _spec(pairs_file))
    assert [(u.completion, u.label) for u in rows2] == [("blue", True), ("green", False)]


def test_parse_label():
    assert parse_label(True) and parse_label(1) and parse_label("+1") and parse_label("Thumbs_Up") and parse_label(1.0)
    assert not parse_label("bad") and not parse_label(0) and not parse_label(-1) and not parse_label("no")
    with pytest.raises(ValueError, match="unknown label"):
        parse_label(3)


def test_format_override_and_columns(tmp_path):
    rows = [{"question": "Sky?", "better": "blue", "worse": "green"}]
    path = _write(tmp_path, rows)
    with pytest.raises(TunelabError, match="cannot tell the preference format"):
        read_pairs(path, _spec(path))
    pairs, _ = read_pairs(path, _spec(path, columns={"prompt": "question", "chosen": "better", "rejected": "worse"}))
    assert pairs[0].chosen == "blue"
    with pytest.raises(TunelabError, match="did you mean 'chosen'"):
        read_pairs(path, _spec(path, columns={"chosn": "better"}))
    with pytest.raises(TunelabError, match="not a preference format"):
        read_pairs(path, _spec(path, format="alpaca"))
    # An explicit format wins over detection: the same rows read as hh have no transcripts.
    hh = _write(tmp_path, [{"prompt": "Sky?", "chosen": "blue", "rejected": "green"}], "hh.jsonl")
    _, rejects = read_pairs(hh, _spec(hh, format="hh"))
    assert rejects[0].reason.startswith("not an HH transcript")


def test_rejects_with_reasons(tmp_path):
    rows = [
        {"prompt": "Sky?", "chosen": "blue", "rejected": " blue "},
        {"prompt": "  ", "chosen": "a", "rejected": "b"},
        {"prompt": "Sky?", "chosen": "", "rejected": "b"},
        {"prompt": "Sky?", "chosen": "a", "rejected": "   "},
        {"prompt": "Sky?", "chosen": "a"},
        {"prompt": "Sky?", "chosen": 3.5, "rejected": {"k": 1}},
        {"prompt": [{"role": "wizard", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "chosen": "a",
         "rejected": "b"},
        {"prompt": "ok", "chosen": ["a", "b"], "rejected": "c"},
        {"prompt": "Sky?", "chosen": "blue", "rejected": "green"},
    ]
    data = read_preference(_write(tmp_path, rows), _spec(tmp_path))
    reasons = [r.reason for r in data.rejects]
    assert reasons[:5] == ["identical sides", "empty prompt", "empty chosen", "empty rejected",
                           "missing field 'rejected'"]
    assert reasons[5] == "unknown role 'None' (rejected)"
    assert reasons[6] == "unknown role 'wizard' (prompt[0])"
    assert reasons[7] == "prompt must end with a user message (ends with assistant)"
    assert reasons[8].startswith("wrong shape for 'chosen'")
    assert len(data.pairs) == 1 and data.rows_read == len(rows)
    assert all(r.where.endswith(f":{i + 1}") for i, r in enumerate(data.rejects))
    hh = [{"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: C\n\nAssistant: B"},
          {"chosen": "\n\nHuman: A\n\nAssistant: B", "rejected": "\n\nHuman: A\n\nAssistant: B"},
          {"chosen": "\n\nHuman: A\n\nAssistant:", "rejected": "\n\nHuman: A\n\nAssistant: B"},
          {"chosen": "Hello there", "rejected": "\n\nHuman: A\n\nAssistant: B"}]
    reasons = [r.reason for r in read_preference(_write(tmp_path, hh, "hh.jsonl"), _spec(tmp_path)).rejects]
    assert reasons[:3] == ["transcripts differ before the final answer (at turn 1)", "identical sides", "empty chosen"]
    assert reasons[3].startswith("not an HH transcript")


def test_malformed_line_stops_or_skips(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{not json\n', encoding="utf-8")
    with pytest.raises(TunelabError, match=r"bad.jsonl:2"):
        read_pairs(path, _spec(path))
    pairs, rejects = read_pairs(path, _spec(path, on_error="skip"))
    assert len(pairs) == 1 and len(rejects) == 1 and rejects[0].where.endswith(":2")


def test_real_llamafactory_dpo(shared_data):
    path = shared_data / "llamafactory_dpo_en_demo" / "dpo_en_demo.json"
    data = read_preference(path, _spec(path))
    assert data.format == "sharegpt_pairs" and len(data.pairs) + len(data.rejects) == 300
    assert all(p.prompt[-1]["role"] == "user" for p in data.pairs)


# ------------------------------------------------------------------------------------- split & tokens


def test_split_by_prompt_is_deterministic():
    pairs = [PairExample([{"role": "user", "content": f"q{i % 40}"}], f"a{i}", f"b{i}", f"f:{i}") for i in range(200)]
    split = SplitSpec(validation=0.2, test=0.0, seed=3)
    a, b = split_preference(pairs, split), split_preference(list(reversed(pairs)), split)
    assert {k: sorted(p.where for p in v) for k, v in a.items()} == {k: sorted(p.where for p in v) for k, v in b.items()}
    train_prompts = {p.prompt[0]["content"] for p in a["train"]}
    assert a["validation"] and not train_prompts & {p.prompt[0]["content"] for p in a["validation"]}


def test_encode_and_render_pair(tokenizer):
    pair = PairExample([{"role": "user", "content": "Colour of the sky?"}], "blue", "a long wrong answer", "f:1")
    enc = encode_pair(pair, tokenizer, max_length=512)
    text = render_pair(pair, tokenizer)
    assert tokenizer.decode(enc["prompt_ids"] + enc["chosen_ids"]) == text["prompt"] + text["chosen"].rstrip()
    assert text["chosen"].startswith("blue") and text["chosen"].rstrip().endswith("<|im_end|>")
    assert enc["chosen_ids"][-1] == tokenizer.eos_token_id  # the template's newline after it is not trained
    assert enc["n_tokens"] == 2 * len(enc["prompt_ids"]) + len(enc["chosen_ids"]) + len(enc["rejected_ids"])
    limit = len(enc["prompt_ids"]) + 2
    dropped = encode_pair(pair, tokenizer, max_length=limit)
    assert dropped.reason.startswith("longer than max_length (") and dropped.where == "f:1"
    cut = encode_pair(pair, tokenizer, max_length=limit, overlength="truncate")
    assert cut["truncated"] and len(cut["prompt_ids"]) + len(cut["rejected_ids"]) <= limit
    unp = encode_unpaired(read_unpaired_row(), tokenizer)
    assert unp["label"] is True and tokenizer.decode(unp["completion_ids"]).startswith("blue")


def read_unpaired_row():
    from tunelab.data.preference import UnpairedExample

    return UnpairedExample([{"role": "user", "content": "Sky?"}], "blue", True, "f:1")


# -------------------------------------------------------------------------------------------- report


def test_pair_stats_and_findings(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "long " * 10, "rejected": f"short {i}"} for i in range(30)]
    rows += [{"prompt": "q", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "", "rejected": "x"}]
    data = read_preference(_write(tmp_path, rows), _spec(tmp_path))
    stats = pair_stats(data.pairs, data.rejects)
    assert stats["pairs"] == 30 and stats["chosen_longer"] == 1.0 and stats["mean_length_ratio"] > 5
    assert stats["identical_sides"] == 1 and stats["empty_sides"] == 1
    titles = [f["title"] for f in pair_findings(stats)]
    assert titles == ["Unusable pairs", "Length bias"]
    balanced = pair_stats([PairExample([{"role": "user", "content": "q"}], "ab" * (i % 2 + 1), "ab" * (2 - i % 2),
                                       "f") for i in range(40)])
    assert balanced["chosen_longer"] == 0.5 and pair_findings(balanced) == []


# ------------------------------------------------------------------------------------------ objectives

_WRONG = ["red", "green", "black", "white", "yellow"]


@pytest.fixture(autouse=True)
def _restore_threads():
    # The training tests run with model.threads=1 (fast on a shared CPU); later tests get the threads back.
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _sky(tmp_path: Path, n: int = 24) -> Path:
    """Toy preference set: the sky's colour is chosen, a wrong colour is rejected (learnable in a few steps)."""
    rows = [{"prompt": f"Q{i}: colour of a clear sky?", "chosen": "blue", "rejected": _WRONG[i % 5]} for i in range(n)]
    return _write(tmp_path, rows, "sky.jsonl")


def _recipe(tmp_path: Path, model_dir: Path, loss: str, method: str = "lora", validation: float = 0.0, **train):
    from tunelab.config.loading import load_recipe

    overrides = [f"data.path={_sky(tmp_path)}", f"data.split.validation={validation}", "data.split.test=0.0",
                 "data.max_length=64", f"model.name={model_dir}", "model.precision=fp32", "model.threads=1",
                 f"method.name={method}",
                 "train.objective=preference", "train.max_steps=6", "train.batch_size=6", "train.lr=0.02",
                 "train.warmup_ratio=0.0", "train.scheduler=constant", "train.log_every=1",
                 f"preference.loss={loss}", f"output.dir={tmp_path / 'runs'}", f"output.name={loss}-{method}"]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_recipe(None, overrides)


def _train(recipe) -> Path:
    from tunelab import pipeline

    return pipeline.train(recipe, "pref")


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("loss", "method"), [("sigmoid", "lora"), ("ipo", "full"), ("hinge", "lora"),
                                              ("orpo", "lora"), ("simpo", "lora"), ("kto", "lora")])
def test_objective_learns_the_preference(tmp_path, tiny_model_dir, loss, method):
    run = _train(_recipe(tmp_path, tiny_model_dir, loss, method))
    train = [r for r in _rows(run) if "loss" in r]
    assert len(train) == 6 and all(k in train[0] for k in ("rewards_chosen", "rewards_rejected", "reward_margin"))
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["reward_margin"] > train[0]["reward_margin"]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["real_tokens"] > 0 and summary["loss"] == loss
    artifact = run / ("model" if method == "full" else "adapter")
    assert (artifact / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    if method != "full":  # TRL's frozen 'ref' adapter is the reference, not part of the result
        assert not (artifact / "ref").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["objective"] == "preference" and manifest["preference"]["loss"] == loss


def test_evaluation_before_and_after(tmp_path, tiny_model_dir):
    from tunelab import pipeline

    run = _train(_recipe(tmp_path, tiny_model_dir, "sigmoid", validation=0.25, eval_every=3))
    val = [r for r in _rows(run) if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 3, 6] and val[-1]["val_reward_margin"] > val[0]["val_reward_margin"]
    result = pipeline.evaluate(run)
    assert result["task"] == "preference" and result["split"] == "validation" and result["n"] > 0
    assert result["base"]["reward_accuracy"] == 0.5  # the untrained policy is the reference: every reward is 0
    assert result["tuned"]["reward_accuracy"] > 0.5 and result["tuned"]["reward_margin"] > 0
    assert result["tuned"]["logp_accuracy"] >= result["base"]["logp_accuracy"]
    assert json.loads((run / "eval" / "metrics.json").read_text())["tuned"] == result["tuned"]
    html, _ = pipeline.build_report(run)
    assert html.is_file()


def test_answer_only_scoring_gives_the_same_log_probs(tiny_model):
    import torch
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from tunelab.recipes.preference import _score_answers_only

    add_fused_lm_head(tiny_model, outputs=("log_probs",))
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 20))
    labels, attention = ids.clone(), torch.ones_like(ids)
    labels[:, :12] = -100  # the prompt
    labels[2, 15:], attention[2, 15:] = -100, 0  # padding
    full = tiny_model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
    with _score_answers_only():
        assert trl_utils._use_triton(torch.device("cpu"))
        compact = tiny_model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True).log_probs
    assert not trl_utils._use_triton(torch.device("cpu"))  # restored
    assert torch.allclose(full, compact)


# ---------------------------------------------------------------------------------------- bad recipes


@pytest.mark.parametrize(("overrides", "message"), [
    (["preference.loss=orpo", "preference.reference=copy"], "uses no reference model"),
    (["preference.loss=sigmoid", "preference.reference=none"], "needs a reference policy"),
    (["preference.reference_model=x"], "only with preference.reference=copy"),
    (["data.format=pairs", "train.objective=sft"], "is preference data"),
])
def test_bad_preference_settings(overrides, message):
    from tunelab.config.loading import load_recipe

    with pytest.raises(TunelabError, match=message):
        load_recipe(None, ["data.path=x.jsonl", "train.objective=preference", *overrides])


@pytest.mark.parametrize(("overrides", "message"), [
    (["method.name=full", "preference.reference=peft"], "needs a LoRA/IA3 adapter"),
    (["preference.loss=kto", "train.batch_size=1"], "KL term"),
    (["train.save_every=5"], "resumable checkpoints"),
    (["train.early_stopping_patience=2"], "early_stopping_patience"),
])
def test_preflight_refuses_impossible_combinations(tmp_path, tiny_model_dir, overrides, message):
    from tunelab.config.loading import load_recipe
    from tunelab.recipes.preference import PreferenceRecipe

    recipe = load_recipe(None, [f"data.path={_sky(tmp_path)}", f"model.name={tiny_model_dir}",
                                "train.objective=preference", *overrides])
    with pytest.raises(TunelabError, match=message):
        PreferenceRecipe.preflight(recipe)


def test_unpaired_data_needs_kto_and_reference_tokenizer_must_match(tmp_path, tiny_model_dir, tokenizer):
    from tunelab.config.loading import load_recipe
    from tunelab.recipes.preference import PreferenceRecipe
    from tunelab.recipes.preference_eval import prepare_preference

    unpaired = _write(tmp_path, [{"prompt": "Sky?", "completion": "blue", "label": True}] * 4, "u.jsonl")
    spec = load_recipe(None, [f"data.path={unpaired}", "train.objective=preference"]).data
    with pytest.raises(TunelabError, match="this loss needs pairs"):
        prepare_preference(spec, tokenizer)
    assert prepare_preference(spec, tokenizer, unpaired=True).encoded["train"][0]["label"] is True
    other = tmp_path / "other-tok"
    tokenizer.save_pretrained(other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzz-extra"] = len(vocab["model"]["vocab"]) + 10
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    for f in tiny_model_dir.iterdir():
        if f.suffix in (".safetensors",) or f.name in ("config.json", "generation_config.json"):
            (other / f.name).write_bytes(f.read_bytes())
    recipe = load_recipe(None, [f"data.path={_sky(tmp_path)}", f"model.name={tiny_model_dir}",
                                "train.objective=preference", "preference.reference=copy",
                                f"preference.reference_model={other}", f"output.dir={tmp_path}"])
    r = PreferenceRecipe(recipe, tmp_path / "run")
    r.tokenizer = tokenizer
    with pytest.raises(TunelabError, match="different tokenizer"):
        r._load_reference()


# ------------------------------------------------------------------------------------------- feedback


def _feedback(tmp_path: Path) -> Path:
    rows = [
        {"id": "f1", "timestamp": "2026-01-01T10:00:00Z", "model": "runs/a", "prompt": "Capital of France?",
         "response": "Paris.", "rating": 1},
        {"id": "f2", "model": "runs/a", "prompt": [{"role": "user", "content": "Capital of France?"}],
         "response": "Lyon, write to me at jane.doe@example.com", "rating": -1},
        {"id": "f3", "model": "runs/a", "prompt": "Capital of France?", "response": "Paris.", "rating": 1},
        {"id": "f4", "prompt": "2+2?", "response": "4", "rating": 1},
        {"id": "f5", "prompt": "2+2?", "response": "5", "rating": "down"},
        {"id": "f6", "prompt": "2+2?", "response": "5", "rating": "up"},
        {"id": "f7", "prompt": "Hi", "response": "Hello!", "rating": 1},
        {"id": "f8", "prompt": "Name a colour", "chosen": "Blue.", "rejected": "Seven."},
        {"id": "f9", "prompt": "Name a colour", "response": "Blue.", "rating": 7},
        {"id": "f10", "response": "x", "rating": 1},
    ]
    return _write(tmp_path, rows, "feedback.jsonl")


def test_feedback_to_pairs_round_trip(tmp_path):
    from tunelab.data.feedback import feedback_to_dataset

    out = tmp_path / "prefs"
    manifest = feedback_to_dataset(_feedback(tmp_path), out)
    assert manifest["rows_in"] == 10 and manifest["format"] == "pairs"
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["pii"]["details"] == {"EMAIL": 1} and steps["dedup"]["rejected"] == 1
    assert steps["conflicts"]["rejected"] == 2
    reasons = {json.loads(line)["where"].rsplit(":", 1)[1]: json.loads(line)["reason"]
               for line in (out / "rejects.jsonl").read_text().splitlines()}
    assert reasons["3"] == "duplicate feedback (of " + str(tmp_path / "feedback.jsonl") + ":1)"
    assert reasons["5"].startswith("conflicting ratings") and reasons["6"].startswith("conflicting ratings")
    assert reasons["4"] == "no answer with the opposite rating for this prompt"
    assert reasons["7"] == "no answer with the opposite rating for this prompt"
    assert reasons["9"].startswith("unknown rating (7") and reasons["10"] == "missing field 'prompt'"
    pairs, rejects = read_pairs(out, _spec(out))  # the folder reads back as a dataset
    assert not rejects and [(p.chosen, p.rejected) for p in pairs] == [("Blue.", "Seven."), ("Paris.", "Lyon, write "
                                                                                          "to me at <EMAIL>")]
    assert pairs[1].raw["source"][0]["id"] == "f1" and pairs[1].raw["source"][1]["model"] == "runs/a"


def test_feedback_to_kto_and_stars(tmp_path):
    from tunelab.data.feedback import feedback_to_dataset

    out = tmp_path / "kto"
    feedback_to_dataset(_feedback(tmp_path), out, to="kto")
    rows, _ = read_unpaired(out, _spec(out))
    assert [(u.completion, u.label) for u in rows][:3] == [("Paris.", True), ("Lyon, write to me at <EMAIL>", False),
                                                          ("4", True)]
    stars = _write(tmp_path, [{"prompt": "Q", "response": f"answer {i}", "rating": i} for i in range(1, 6)], "s.jsonl")
    manifest = feedback_to_dataset(stars, tmp_path / "stars")
    assert manifest["rows_out"] == 4  # 2 good (4, 5 stars) x 2 bad (1, 2 stars); 3 stars is neutral
    assert "neutral rating (3 of 5 stars)" in (tmp_path / "stars" / "rejects.jsonl").read_text()
    with pytest.raises(TunelabError, match="not empty"):
        feedback_to_dataset(stars, tmp_path / "stars")


def test_cli_from_feedback_and_report(tmp_path, capsys):
    from tunelab.cli.main import main

    assert main(["data", "from-feedback", str(_feedback(tmp_path)), "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "manifest.json").is_file()
    assert main(["data", "from-feedback", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    assert main(["data", "from-feedback", str(bad), "-o", str(tmp_path / "y")]) == 2
    assert "bad.jsonl:1" in capsys.readouterr().err
    only_good = _write(tmp_path, [{"prompt": "Q", "response": "A", "rating": 1}], "good.jsonl")
    assert main(["data", "from-feedback", str(only_good), "-o", str(tmp_path / "z")]) == 2
    assert main(["data", "from-feedback", str(only_good), "-o", str(tmp_path / "w"), "format=pairs"]) == 2
    assert "takes no data overrides" in capsys.readouterr().err
    rows = [{"prompt": f"q{i}", "chosen": "long answer " * 5, "rejected": "short"} for i in range(25)]
    rows.append({"prompt": "q", "chosen": "same", "rejected": "same"})
    prefs = _write(tmp_path, rows, "prefs.jsonl")
    assert main(["data", "report", str(prefs), "-o", str(tmp_path / "rep"), "--model", ""]) == 0
    report = json.loads((tmp_path / "rep" / "data_report.json").read_text())
    assert report["pairs"]["chosen_longer"] == 1.0 and report["pairs"]["identical_sides"] == 1
    assert {"Length bias", "Unusable pairs"} <= {f["title"] for f in report["findings"]}
    assert main(["data", "report", str(prefs), "-o", str(tmp_path / "rep2"), "--model", "", "format=hh"]) == 0
