"""Pieces of the server on their own: JSON-mode recognizer, text assembly, sampler, KV-cache rows,
settings from the command line, catalog checks, client snippets."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.serving.engines.base import SamplingParams
from tunelab.serving.engines.jsonmode import MAX_WHITESPACE, feed_text, initial_state
from tunelab.serving.engines.sampling import RowSampler
from tunelab.serving.text import TextAssembler


def _random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "str":
        return "".join(rng.choice('ab "\\/\n\té€😀') for _ in range(rng.randint(0, 6)))
    if k == "int":
        return rng.randint(-10**6, 10**6)
    if k == "float":
        return rng.uniform(-1e5, 1e5) * 10 ** rng.randint(-30, 30)
    if k == "bool":
        return rng.random() < 0.5
    if k == "null":
        return None
    if k == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": _random_json(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_json_recognizer_accepts_every_object_and_each_prefix():
    rng = random.Random(0)
    for i in range(300):
        doc = {f"key{j}": _random_json(rng) for j in range(rng.randint(0, 4))}
        text = json.dumps(doc, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        state = initial_state()
        for ch in text:
            state = feed_text(state, ch)
            assert state is not None, (i, text)
        assert state.mode == "done", text


@pytest.mark.parametrize("bad", [
    ' {"a": 1}', '[1]', '"x"', '{"a" 1}', '{a: 1}', '{"a": 01}', '{"a": 1.}', '{"a": -}', '{"a": tru e}',
    '{"a": [1,]}', '{"a": 1,}', '{"a": "\\x"}', '{"a": "\\u12g4"}', '{"a": "b\nc"}', '{"a": 1}}', '{"a": 1} ',
    '{"a": nul}', '{"a": 1e}', '{"a": +1}', '{"a": ]}',
])
def test_json_recognizer_rejects_invalid_text(bad):
    # Not JSON, not an object, or text around the object (the answer is exactly one object).
    state = feed_text(initial_state(), bad)
    assert state is None or state.mode != "done"


def test_json_recognizer_limits_whitespace_runs():
    ok = "{" + " " * MAX_WHITESPACE + '"a": 1}'
    assert feed_text(initial_state(), ok).mode == "done"
    assert feed_text(initial_state(), "{" + " " * (MAX_WHITESPACE + 1)) is None
    assert feed_text(initial_state(), '{"a": "' + " " * 100 + '"}').mode == "done"  # inside strings: any


class _Vocab:
    def __init__(self, texts):
        self.texts = texts


def test_json_constraint_steers_sampling_and_closes():
    # Token 0 is the model's favourite but never valid; the constraint must still build {"a": 1}.
    texts = ["oops", "{", '"a"', ":", " 1", "}", None, "x"]
    eos = 6
    params = SamplingParams(max_tokens=10, temperature=0.0, json_object=True, stop_token_ids=[eos])
    sampler = RowSampler(params, len(texts), _Vocab(texts))
    prefs = [[9, 1, 0, 0, 0, 0, 8, 2], [9, 0, 5, 0, 0, 0, 8, 0], [9, 0, 0, 5, 0, 0, 8, 0],
             [9, 0, 0, 0, 5, 0, 8, 0], [9, 0, 0, 0, 0, 5, 8, 0]]
    out = []
    for row in prefs:
        event = sampler.choose(torch.tensor(row, dtype=torch.float))
        out.append(event.token_id)
    assert "".join(texts[t] for t in out) == '{"a": 1}' and sampler.json.done
    sampled = RowSampler(SamplingParams(max_tokens=10, temperature=1.0, seed=1, json_object=True,
                                        stop_token_ids=[eos]), len(texts), _Vocab(texts))
    assert texts[sampled.choose(torch.tensor([5.0, 0, 0, 0, 0, 0, 5.0, 5.0])).token_id] == "{"


def test_sampler_penalties_bias_seed_and_top_p():
    logits = torch.zeros(10)
    logits[5], logits[6] = 3.0, 2.5
    pen = RowSampler(SamplingParams(max_tokens=5, temperature=0.0, frequency_penalty=1.0), 10)
    assert [pen.choose(logits).token_id for _ in range(3)] == [5, 6, 5]  # 3-1 < 2.5; then 2.5-1 < 2
    pres = RowSampler(SamplingParams(max_tokens=5, temperature=0.0, presence_penalty=0.6), 10)
    assert [pres.choose(logits).token_id for _ in range(3)] == [5, 6, 5]  # 2.4 < 2.5; then 1.9 < 2.4
    bias = RowSampler(SamplingParams(max_tokens=5, temperature=0.0, logit_bias={2: 10.0}), 10)
    assert bias.choose(logits).token_id == 2
    draws = [[RowSampler(SamplingParams(max_tokens=9, temperature=1.0, seed=s), 10).choose(torch.zeros(10)).token_id
              for _ in range(2)] for s in range(20)]
    assert all(a == b for a, b in draws) and len({a for a, _ in draws}) > 3  # same seed, same draw
    nucleus = RowSampler(SamplingParams(max_tokens=99, temperature=1.0, top_p=0.5, seed=0), 10)
    peaked = logits.clone()
    peaked[5] = 4.0  # p(5) = e^4 / (e^4 + e^2.5 + 8) = 0.73
    assert {nucleus.choose(peaked).token_id for _ in range(40)} == {5}
    wide = RowSampler(SamplingParams(max_tokens=99, temperature=1.0, top_p=0.8, seed=0), 10)
    assert {wide.choose(peaked).token_id for _ in range(60)} == {5, 6}  # 0.73 < 0.8: token 6 joins
    event = RowSampler(SamplingParams(max_tokens=1, temperature=0.0, logprobs=2), 10).choose(logits)
    assert event.logprob == pytest.approx(float(torch.log_softmax(logits, -1)[5]))
    assert [t for t, _ in event.top_logprobs] == [5, 6]


def test_text_assembler_holds_back_partial_stop_sequences(tokenizer):
    text = "Hello there, friend. The answer is 42."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    asm = TextAssembler(tokenizer, ["friend", "zzz"])
    released = "".join(asm.feed(t) for t in ids)
    assert asm.stopped and released == asm.text == "Hello there, " and asm.flush() == ""
    plain = TextAssembler(tokenizer, ["42!"])
    ids = tokenizer("The answer is 42", add_special_tokens=False)["input_ids"]
    out = "".join(plain.feed(t) for t in ids)
    assert out == "The answer is " and plain.flush() == "42"  # held back while it could begin '42!'
    assert plain.text == "The answer is 42" and not plain.stopped


def test_text_assembler_never_splits_characters(tokenizer):
    text = "naïve café 😀 数学"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    asm = TextAssembler(tokenizer)
    pieces = [asm.feed(t) for t in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + asm.flush() == text


def test_kv_rows_merge_and_select():
    from transformers import DynamicCache

    from tunelab.serving.engines.kvcache import merge_rows, select_rows

    def cache(b, t, fill):
        c = DynamicCache()
        c.update(torch.full((b, 2, t, 4), fill), torch.full((b, 2, t, 4), fill), 0)
        return c

    a, b = cache(2, 5, 1.0), cache(1, 3, 2.0)
    mask = merge_rows(a, torch.ones(2, 5, dtype=torch.long), b, torch.ones(1, 3, dtype=torch.long))
    assert mask.tolist()[2] == [0, 0, 1, 1, 1] and a.layers[0].keys.shape == (3, 2, 5, 4)
    assert a.layers[0].keys[2, :, :2].abs().sum() == 0  # left padding
    mask = select_rows(a, mask, [2])
    assert mask.tolist() == [[1, 1, 1]] and a.layers[0].keys.shape == (1, 2, 3, 4)  # all-padding columns trimmed
    assert torch.all(a.layers[0].values == 2.0)


def test_serve_settings_from_the_command_line(serving_models):
    from tunelab.serving.settings import parse_adapters, serve_settings

    spec = serve_settings(str(serving_models["ada"]), ["b=" + str(serving_models["adb"])], ["batch_size=4",
                          "serve.max_n=2"], port=9000, host=None)
    assert (spec.batch_size, spec.max_n, spec.port, spec.host) == (4, 2, 9000, "127.0.0.1")
    assert spec.adapters == {"b": str(serving_models["adb"])}
    assert parse_adapters([str(serving_models["adb"])]) == {"adb": str(serving_models["adb"])}
    with pytest.raises(TunelabError, match="did you mean 'batch_size'"):
        serve_settings("m", [], ["batchsize=4"])
    with pytest.raises(TunelabError, match="max_n"):
        serve_settings("m", [], ["max_n=0"])
    with pytest.raises(TunelabError, match="NAME=RUN_DIR"):
        parse_adapters(["=x"])
    with pytest.raises(TunelabError, match="given twice"):
        parse_adapters(["a=x", "a=y"])


def test_catalog_records_training_tokenizers_and_checks_adapters(serving_models, tokenizer, tmp_path):
    from tunelab.config.specs import ServeSpec
    from tunelab.serving.catalog import build_catalog

    cat = build_catalog(ServeSpec(model=str(serving_models["ada"]), adapters={"b": str(serving_models["adb"])}))
    assert list(cat.models) == ["tiny-base", "ada", "b"]
    assert cat.models["b"].tokenizer.chat_template != cat.models["ada"].tokenizer.chat_template
    assert "B-adapter says" in cat.models["b"].tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in cat.models["ada"].stop_token_ids
    assert cat.models["b"].adapter_dir == serving_models["adb"] / "adapter"
    with pytest.raises(TunelabError, match="not a finished tunelab run folder"):
        build_catalog(ServeSpec(model=str(serving_models["base"]), adapters={"x": str(tmp_path)}))
    with pytest.raises(TunelabError, match="named 'ada'"):
        build_catalog(ServeSpec(model=str(serving_models["ada"]), adapters={"ada": str(serving_models["adb"])}))
    with pytest.raises(TunelabError, match="not found|unknown model"):
        build_catalog(ServeSpec(model=str(tmp_path / "missing")))
    with pytest.raises(TunelabError, match="no model"):
        build_catalog(ServeSpec())


def test_catalog_refuses_an_adapter_trained_on_another_base(serving_models, tokenizer, tmp_path):
    import shutil

    from tunelab.config.loading import dump_recipe, load_recipe
    from tunelab.config.specs import ServeSpec
    from tunelab.serving.catalog import build_catalog

    other = tmp_path / "other-base"
    shutil.copytree(serving_models["base"], other)
    run = tmp_path / "foreign"
    shutil.copytree(serving_models["adb"], run)
    (run / "config.yaml").write_text(dump_recipe(load_recipe(None, ["data.path=x.jsonl", f"model.name={other}"])))
    with pytest.raises(TunelabError, match="trained on"):
        build_catalog(ServeSpec(model=str(serving_models["ada"]), adapters={"f": str(run)}))
    (run / "config.yaml").write_text(dump_recipe(load_recipe(None, ["data.path=x.jsonl", "method.name=prefix",
                                                                    f"model.name={serving_models['base']}"])))
    with pytest.raises(TunelabError, match="virtual tokens"):
        build_catalog(ServeSpec(model=str(serving_models["ada"]), adapters={"f": str(run)}))


def test_client_snippets():
    from tunelab.serving.snippets import client_snippets

    text = client_snippets("http://127.0.0.1:8000", "runs-x", "$TUNELAB_API_KEY")
    assert 'curl http://127.0.0.1:8000/v1/chat/completions -H "Authorization: Bearer $TUNELAB_API_KEY"' in text
    assert 'OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["TUNELAB_API_KEY"])' in text
    generated = client_snippets("http://h:1", "m", "tl-abc")
    assert "api_key='tl-abc'" in generated and "Bearer tl-abc" in generated
