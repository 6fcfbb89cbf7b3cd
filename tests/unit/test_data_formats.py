"""Formats → Example: each format, column mapping, templates, detection, and rejects with reasons."""

from __future__ import annotations

import pytest

from tunelab.config.specs import DataSpec
from tunelab.data import Example, Reject, detect_format, to_examples
from tunelab.errors import TunelabError


def _spec(**kw) -> DataSpec:
    return DataSpec(path="x.jsonl", **kw)


def _convert(records, **kw):
    return to_examples([(f"f:{i + 1}", r) for i, r in enumerate(records)], _spec(**kw))


def _one(record, **kw) -> Example:
    examples, rejects = _convert([record], **kw)
    assert not rejects, rejects
    return examples[0]


def _reason(record, **kw) -> str:
    examples, rejects = _convert([record], **kw)
    assert not examples and len(rejects) == 1
    assert rejects[0].record == record and rejects[0].where == "f:1"
    return rejects[0].reason


def _chat(user, answer, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_alpaca_with_and_without_input():
    ex = _one({"instruction": "Add", "input": "2+2", "output": "4", "system": "ignored", "history": []})
    assert ex.messages == _chat("Add\n\n2+2", "4")
    assert _one({"instruction": "Say hi", "input": "", "output": "hi"}).messages == _chat("Say hi", "hi")
    assert ex.text is None and ex.where == "f:1" and ex.raw["input"] == "2+2"


def test_messages_and_helpers():
    msgs = [*_chat("q1", "a1", system="be brief"), {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    ex = _one({"messages": msgs})
    assert ex.messages == msgs
    assert ex.prompt_messages == msgs[:-1] and ex.reference == "a2"


def test_sharegpt_roles():
    convo = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert _one({"conversations": convo}).messages == _chat("q", "a", system="s")


def test_prompt_completion_accepts_numeric_labels():
    assert _one({"prompt": "2+2?", "completion": 4}).messages == _chat("2+2?", "4")


def test_text_format():
    ex = _one({"text": "a document"})
    assert ex.messages == [] and ex.text == "a document"
    assert ex.prompt_messages == [] and ex.reference is None


@pytest.mark.parametrize(
    ("columns", "record", "expected"),
    [
        ({"prompt": "dialogue", "completion": "summary"}, {"dialogue": "d", "summary": "s"}, _chat("d", "s")),
        ({"prompt": "text", "completion": "label_name"}, {"text": "t", "label_name": "joy"}, _chat("t", "joy")),
        ({"messages": "chat"}, {"chat": _chat("q", "a")}, _chat("q", "a")),
    ],
)
def test_column_mapping(columns, record, expected):
    assert _one(record, columns=columns).messages == expected


def test_column_mapping_to_text():
    assert _one({"body": "doc", "id": 3}, columns={"text": "body"}).text == "doc"


def test_mapped_column_missing_names_the_user_column():
    assert _reason({"dialogue": "d"}, columns={"prompt": "dialogue", "completion": "summary"}, format="prompt_completion") \
        == "missing field 'completion' (column 'summary')"


def test_unknown_canonical_column_is_a_config_error():
    with pytest.raises(TunelabError, match="did you mean 'completion'") as e:
        _convert([{"a": 1}], columns={"completoin": "a"})
    assert e.value.where == "data.columns"


def test_prompt_template_uses_prompt_and_raw_columns():
    ex = _one({"text": "i am happy", "label_name": "joy", "lang": "en"},
              columns={"prompt": "text", "completion": "label_name"},
              prompt_template="Classify the emotion of this {lang} text: {prompt}")
    assert ex.messages == _chat("Classify the emotion of this en text: i am happy", "joy")


def test_prompt_template_applies_to_last_user_turn():
    msgs = [*_chat("q1", "a1"), {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    ex = _one({"messages": msgs}, prompt_template="Q: {prompt}")
    assert [m["content"] for m in ex.messages] == ["q1", "a1", "Q: q2", "a2"]


def test_prompt_template_missing_column_is_a_reject():
    assert _reason({"prompt": "p", "completion": "c"}, prompt_template="{prompt} in {lang}") \
        == "missing column for prompt_template ({lang})"


def test_malformed_prompt_template_is_a_config_error():
    with pytest.raises(TunelabError, match="positional"):
        _convert([{"prompt": "p", "completion": "c"}], prompt_template="{} {prompt}")
    with pytest.raises(TunelabError, match="malformed"):
        _convert([{"prompt": "p", "completion": "c"}], prompt_template="{prompt")


def test_system_prompt_prepended_unless_record_has_one():
    assert _one({"prompt": "p", "completion": "c"}, system_prompt="S").messages == _chat("p", "c", system="S")
    own = _one({"messages": _chat("p", "c", system="mine")}, system_prompt="S")
    assert own.messages == _chat("p", "c", system="mine")


def test_text_format_rejects_chat_only_options():
    with pytest.raises(TunelabError, match="no effect on plain-text"):
        _convert([{"text": "doc"}], prompt_template="{prompt}")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"instruction": "i"}, "missing field 'output'"),
        ({"instruction": " ", "output": "o"}, "empty field 'instruction'"),
        ({"prompt": "p", "completion": None}, "missing field 'completion'"),
        ({"prompt": ["p"], "completion": "c"}, "wrong type for 'prompt' (expected text, got list)"),
        ({"messages": "hi"}, "wrong type for 'messages' (expected a list, got str)"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "unknown role 'tool' (messages[0])"),
        ({"messages": [{"role": "user", "content": ""}]}, "empty message (messages[0])"),
        ({"messages": [{"role": "user", "content": 3}]}, "wrong type for message content (messages[0]: int)"),
        ({"messages": [{"role": "user", "content": "q"}]}, "conversation must end with an assistant message"),
        ({"messages": [{"role": "assistant", "content": "a"}]},
         "conversation must start with a user message (after any system messages)"),
        ({"messages": []}, "empty conversation"),
        ({"conversations": [{"from": "observation", "value": "x"}]}, "unknown role 'observation' (conversations[0])"),
    ],
)
def test_bad_records_become_rejects_with_reasons(record, reason):
    fmt = next(f for f, k in [("messages", "messages"), ("sharegpt", "conversations"), ("alpaca", "instruction"),
                              ("prompt_completion", "prompt")] if k in record)
    assert _reason(record, format=fmt) == reason


def test_rejects_and_examples_partition_the_input():
    records = [{"prompt": "p", "completion": "c"}, {"prompt": "p"}, {"prompt": "p2", "completion": "c2"}]
    examples, rejects = _convert(records)
    assert [e.where for e in examples] == ["f:1", "f:3"]
    assert rejects == [Reject("f:2", "missing field 'completion'", {"prompt": "p"})]


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"messages": [], "text": "x"}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"prompt": "p", "completion": "c", "text": "t"}, "prompt_completion"),
        ({"text": "t", "meta": 1}, "text"),
    ],
)
def test_detect_format(record, fmt):
    assert detect_format([record]) == fmt
    assert detect_format([("f:1", record)]) == fmt


def test_detect_majority_and_override():
    rows = [{"text": "t"}] + [{"prompt": "p", "completion": "c"}] * 3
    assert detect_format(rows) == "prompt_completion"
    assert detect_format(rows, "text") == "text"


def test_detect_failure_lists_the_keys_seen():
    with pytest.raises(TunelabError, match=r"\['answer', 'question'\]") as e:
        detect_format([{"question": "q", "answer": "a"}])
    assert "data.columns" in e.value.fix


def test_explicit_format_wins_over_detection():
    # Detection would say prompt_completion; the override reads the same rows as plain text.
    examples, _ = _convert([{"prompt": "p", "completion": "c", "text": "doc"}], format="text")
    assert examples[0].text == "doc"
