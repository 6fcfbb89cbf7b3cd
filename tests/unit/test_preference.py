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
