"""Online RL: reward functions (rules, reward models, user callables), their errors, and GRPO/RLOO on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tunelab.config.loading import load_recipe
from tunelab.config.specs import RewardSpec
from tunelab.errors import TunelabError
from tunelab.rewards import PromptRow, build_reward, build_rewards, json_object, schema_score, weighted_total

TICKET_SCHEMA = {
    "type": "object", "required": ["name", "category"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "category": {"enum": ["billing", "shipping"]},
                   "order_id": {"type": ["string", "null"], "pattern": "^ORD-[0-9]+$"}},
}


def _rows(n: int, reference: str | None = "blue", raw: dict | None = None) -> list[PromptRow]:
    return [PromptRow([{"role": "user", "content": f"question {i}"}], reference, f"data.jsonl:{i + 1}", raw or {})
            for i in range(n)]


def _reward(**spec):
    return build_reward(RewardSpec(**spec), "rl.rewards[0]")


# ------------------------------------------------------------------------------------------------ rules


def test_json_object_accepts_only_a_whole_object():
    assert json_object(' {"a": 1} ') == {"a": 1}
    assert json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert json_object('Here: {"a": 1}') is None  # prose around it: not the format asked for
    assert json_object("[1, 2]") is None and json_object("3") is None and json_object('{"a": 1') is None


def test_rule_rewards_known_answers():
    rows = _rows(3, reference="The Blue")
    assert _reward(type="json_valid")(rows, ['{"a": 1}', "nope", '```\n{"b": 2}\n```']) == [1.0, 0.0, 1.0]
    assert _reward(type="exact_match")(rows, ["blue", "the blue.", "red"]) == [1.0, 1.0, 0.0]
    assert _reward(type="regex", pattern=r"\A\s*\{")(rows, ["{x", "  {", "x{"]) == [1.0, 1.0, 0.0]
    assert _reward(type="length_penalty", target=10)(rows, ["a" * 5, "a" * 15, "a" * 40]) == [0.0, -0.5, -1.0]
    ref_rows = _rows(2, reference='{"name": "Ann", "category": "billing"}')
    got = _reward(type="json_fields")(ref_rows, ['{"name": "ann", "category": "shipping"}', "not json"])
    assert got == [0.5, 0.0]


def test_json_schema_partial_credit_and_binary():
    full = {"name": "A", "category": "billing", "order_id": "ORD-12"}
    assert schema_score(TICKET_SCHEMA, full) == 1.0
    # type ok, name required ok, category required missing, name type ok: 3 of 4 checks
    assert schema_score(TICKET_SCHEMA, {"name": "A"}) == pytest.approx(3 / 4)
    wrong = {"name": "A", "category": "other", "order_id": "12", "extra": 1}
    assert 0.0 < schema_score(TICKET_SCHEMA, wrong) < 1.0
    assert schema_score(TICKET_SCHEMA, [1]) == 0.0  # wrong root type: nothing below applies
    rows = _rows(2)
    partial = _reward(type="json_schema", json_schema=TICKET_SCHEMA)
    binary = _reward(type="json_schema", json_schema=TICKET_SCHEMA, partial=False)
    completions = [json.dumps(full), json.dumps({"name": "A"})]
    assert partial(rows, completions) == [1.0, 0.75]
    assert binary(rows, completions) == [1.0, 0.0]


def test_json_schema_from_file_and_refusals(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(TICKET_SCHEMA))
    assert _reward(type="json_schema", json_schema=str(path))(_rows(1), ['{"name": "x", "category": "billing"}']) == [1.0]
    with pytest.raises(TunelabError, match="'oneOf' at #/properties/x is not supported") as e:
        _reward(type="json_schema", json_schema={"properties": {"x": {"oneOf": []}}})
    assert e.value.where == "rl.rewards[0].json_schema"
    with pytest.raises(TunelabError, match="not found"):
        _reward(type="json_schema", json_schema=str(tmp_path / "missing.json"))
    with pytest.raises(TunelabError, match="'required' at # must be of type list"):
        _reward(type="json_schema", json_schema={"required": "name"})


def test_reward_spec_validation_names_the_entry(tmp_path):
    base = ["data.path=x.jsonl", "train.objective=grpo"]
    with pytest.raises(TunelabError, match=r"rl\.rewards\.0.*needs 'pattern'"):
        load_recipe(None, [*base, "rl.rewards=[{type: regex}]"])
    with pytest.raises(TunelabError, match="'pattern' is not read by reward type 'json_valid'"):
        load_recipe(None, [*base, "rl.rewards=[{type: json_valid, pattern: x}]"])
    with pytest.raises(TunelabError, match="needs at least one reward") as e:
        load_recipe(None, base)
    assert e.value.where == "rl.rewards"
    with pytest.raises(TunelabError, match="not a multiple of rl.num_generations"):
        load_recipe(None, [*base, "rl.rewards=[{type: json_valid}]", "train.batch_size=6", "rl.num_generations=4"])
    with pytest.raises(TunelabError, match="reference_model is used only for the KL term"):
        load_recipe(None, [*base, "rl.rewards=[{type: json_valid}]", "rl.beta=0", "rl.reference_model=x"])


def test_reference_needed_before_training():
    reward = _reward(type="exact_match")
    rows = [*_rows(2), *_rows(1, reference=None)]
    with pytest.raises(TunelabError, match="needs a reference answer .* row data.jsonl:1 has none") as e:
        reward.check_rows(rows)
    assert e.value.where == "rl.rewards[0]"
    column = _reward(type="exact_match", column="gold")
    column.check_rows(_rows(2, reference=None, raw={"gold": "blue"}))  # the column supplies it
    assert column(_rows(1, reference=None, raw={"gold": "Blue"}), ["blue"]) == [1.0]
    with pytest.raises(TunelabError, match="JSON-object reference"):
        _reward(type="json_fields").check_rows(_rows(1, reference="not json"))


# ------------------------------------------------------------------------------------------------ callables


def _module(tmp_path: Path, body: str) -> str:
    path = tmp_path / "my_rewards.py"
    path.write_text(body)
    return str(path)


def test_callable_reward_gets_the_arguments_it_declares(tmp_path):
    mod = _module(tmp_path, (
        "def by_len(completions, references):\n"
        "    return [float(len(c) == len(r)) for c, r in zip(completions, references)]\n"
        "def everything(**kwargs):\n"
        "    return [len(kwargs['rows'][i]['k']) + len(kwargs['prompts'][i]) for i in range(len(kwargs['completions']))]\n"
    ))
    rows = _rows(2, raw={"k": "abc"})
    assert _reward(type="callable", function=f"{mod}:by_len")(rows, ["blue", "bl"]) == [1.0, 0.0]
    fn = _reward(type="callable", function=f"{mod}:everything", name="all", weight=2.0)
    assert fn.name == "all" and fn(rows, ["x", "y"]) == [4.0, 4.0]
    total, per = weighted_total([fn, _reward(type="regex", pattern="x")], rows, ["x", "y"])
    assert total == [9.0, 8.0] and per["regex"] == [1.0, 0.0]


@pytest.mark.parametrize(("body", "match"), [
    ("def f(completions):\n    raise ValueError('boom')\n", r"reward 'f' raised ValueError: boom .*row data\.jsonl:1"),
    ("def f(completions):\n    return [1.0, float('nan')]\n", r"reward 'f' returned nan for row data\.jsonl:2"),
    ("def f(completions):\n    return [1.0, None]\n", r"returned None for row data\.jsonl:2"),
    ("def f(completions):\n    return [1.0]\n", "returned 1 values for 2 completions"),
    ("def f(completions):\n    return [1.0, 'a']\n", "returned 'a'"),
])
def test_callable_reward_failures_name_function_and_row(tmp_path, body, match):
    fn = _reward(type="callable", function=f"{_module(tmp_path, body)}:f")
    with pytest.raises(TunelabError, match=match) as e:
        fn(_rows(2), ["a", "b"])
    assert e.value.where == "rl.rewards[0]"


@pytest.mark.parametrize(("target", "match"), [
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("json:no_such_function", "'json' has no attribute 'no_such_function'"),
    ("json:decoder", "is a module, not a function"),
    ("json:loads", "has parameters tunelab cannot fill"),
    ("justaname", "not of the form module:function"),
    ("missing_dir/file.py:f", "reward file not found"),
])
def test_callable_reward_is_validated_at_load(target, match):
    with pytest.raises(TunelabError, match=match) as e:
        _reward(type="callable", function=target)
    assert e.value.where == "rl.rewards[0].function"


def test_callable_with_import_error_and_unusable_signature(tmp_path):
    bad = _module(tmp_path, "import not_a_real_package_qq\n")
    with pytest.raises(TunelabError, match="ModuleNotFoundError"):
        _reward(type="callable", function=f"{bad}:f")
    odd = tmp_path / "odd.py"
    odd.write_text("def f(texts):\n    return [0.0]\n")
    with pytest.raises(TunelabError, match=r"cannot fill: \['texts'\]"):
        _reward(type="callable", function=f"{odd}:f")


def test_duplicate_names_stay_apart():
    specs = [RewardSpec(type="json_valid"), RewardSpec(type="json_valid", weight=0.5)]
    assert [r.name for r in build_rewards(specs)] == ["json_valid", "json_valid_1"]


# ------------------------------------------------------------------------------------------------ reward models


def _seqcls_dir(path: Path, tokenizer, template: str | None = None) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if template is not None:
        (path / "chat_template.jinja").write_text(template)
    return path


def test_reward_model_reward_scores_and_checks_the_template(tmp_path, tokenizer):
    folder = _seqcls_dir(tmp_path / "rm", tokenizer)
    spec = RewardSpec(type="model", model=str(folder))
    reward = build_reward(spec, "rl.rewards[0]", policy_tokenizer=tokenizer)
    scores = reward(_rows(1) * 3, ["yes", "no", "yes"])
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores) and scores[0] == pytest.approx(scores[2])
    other = _seqcls_dir(tmp_path / "rm2", tokenizer, template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(TunelabError, match="chat template differs from the policy's") as e:
        build_reward(RewardSpec(type="model", model=str(other)), "rl.rewards[0]", policy_tokenizer=tokenizer)
    assert e.value.where == "rl.rewards[0].model"


def test_reward_model_must_have_one_output(tiny_model_dir):
    with pytest.raises(TunelabError, match="not a reward model"):
        build_reward(RewardSpec(type="model", model=str(tiny_model_dir)), "rl.rewards[0]")


def test_reference_with_another_tokenizer_is_refused(tokenizer):
    import copy

    from tunelab.recipes.rl import check_same_tokenizer

    check_same_tokenizer(tokenizer, tokenizer, "same", "rl.reference_model")
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<brand_new_token>"])
    with pytest.raises(TunelabError, match="different tokenizer than the policy") as e:
        check_same_tokenizer(tokenizer, other, "other-model", "rl.reference_model")
    assert e.value.where == "rl.reference_model"


# ------------------------------------------------------------------------------------------------ training


def _recipe(tmp_path, model_dir, data, objective="grpo", extra=()):
    return load_recipe(None, [
        f"data.path={data}", "data.max_length=64", f"model.name={model_dir}", "model.precision=fp32",
        f"train.objective={objective}", "train.max_steps=2", "train.batch_size=4", "train.lr=5e-3",
        "train.log_every=1", "rl.num_generations=4", "rl.max_completion_length=6", "rl.eval_prompts=2",
        "rl.beta=0.1", "rl.rewards=[{type: length_penalty, target: 25}, {type: exact_match, weight: 0.5}]",
        "eval.batch_size=2", f"output.dir={tmp_path}", "output.name=rl", *extra])


def test_grpo_runs_logs_rewards_and_kl_stays_bounded(tmp_path, tiny_model_dir, chat_jsonl):
    from tunelab.pipeline import train

    run = train(_recipe(tmp_path, tiny_model_dir, chat_jsonl), "rl")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert {"loss", "reward_std", "reward/length_penalty", "reward/exact_match", "completion_len"} <= r.keys()
        assert -1.5 <= r["reward_mean"] <= 0.5
    # the policy moved (first step's update), yet stayed close to the reference: KL finite and small
    assert steps[-1]["kl"] > 0 and math.isfinite(steps[-1]["kl"]) and steps[-1]["kl"] < 1.0
    held = [r for r in rows if "val_reward" in r]
    assert [r["step"] for r in held] == [0, 2]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["objective"] == "grpo" and summary["steps"] == 2 and summary["held_out_prompts"] == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and not (run / "adapter" / "ref").exists()
    assert (run / "plots" / "reward.png").is_file() and not (run / "trainer").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert [r["name"] for r in manifest["rewards"]] == ["length_penalty", "exact_match"]


def test_rloo_with_a_reward_model_runs(tmp_path, tiny_model_dir, chat_jsonl, tokenizer):
    """RLHF without a critic: RLOO whose reward is a (here untrained) reward model on the policy's template."""
    from tunelab.pipeline import train

    rm = _seqcls_dir(tmp_path / "rm", tokenizer)
    recipe = _recipe(tmp_path, tiny_model_dir, chat_jsonl, "rloo", [
        "train.max_steps=1", "rl.eval_prompts=0", f"rl.rewards=[{{type: model, model: {rm}, name: rm}}]"])
    run = train(recipe, "rl")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step = [r for r in rows if "reward_mean" in r]
    assert [r["step"] for r in step] == [1] and math.isfinite(step[0]["reward/rm"])
    assert json.loads((run / "train_summary.json").read_text())["objective"] == "rloo"


def _yaml(tmp_path: Path, doc: dict) -> Path:
    import yaml

    path = tmp_path / "rl.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_raising_reward_stops_the_run_with_its_name(tmp_path, tiny_model_dir, chat_jsonl, capsys):
    from tunelab.cli.main import main

    mod = _module(tmp_path, "def explode(completions):\n    raise RuntimeError('scorer offline')\n")
    recipe = _yaml(tmp_path, {"data": {"path": str(chat_jsonl), "max_length": 64},
                              "model": {"name": str(tiny_model_dir), "precision": "fp32"},
                              "train": {"objective": "grpo", "max_steps": 1, "batch_size": 4},
                              "rl": {"max_completion_length": 4, "eval_prompts": 0,
                                     "rewards": [{"type": "callable", "function": f"{mod}:explode"}]},
                              "output": {"dir": str(tmp_path)}})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "rl.rewards[0]: reward 'explode' raised RuntimeError: scorer offline" in err and "chat.jsonl:" in err


def test_bad_rl_recipes_exit_2(tmp_path, tiny_model_dir, chat_jsonl, capsys):
    from tunelab.cli.main import main

    recipe = _yaml(tmp_path, {"data": {"path": str(chat_jsonl)}, "train": {"objective": "grpo"},
                              "rl": {"rewards": [{"type": "regex"}]}})
    assert main(["validate", str(recipe)]) == 2
    assert "needs 'pattern'" in capsys.readouterr().err
    recipe = _yaml(tmp_path, {"data": {"path": str(chat_jsonl)}, "model": {"name": str(tiny_model_dir)},
                              "train": {"objective": "grpo"}, "output": {"dir": str(tmp_path)},
                              "rl": {"rewards": [{"type": "exact_match", "column": "missing_col"}]}})
    assert main(["train", str(recipe)]) == 2
    assert "needs a reference answer (column 'missing_col')" in capsys.readouterr().err



def test_batch_not_a_multiple_of_num_generations_exits_2(tmp_path, chat_jsonl, capsys):
    """3 completions per step cannot hold whole groups of 4: refused when the recipe loads (TRL would raise)."""
    from tunelab.cli.main import main

    recipe = _yaml(tmp_path, {"data": {"path": str(chat_jsonl)}, "train": {"objective": "grpo", "batch_size": 3},
                              "rl": {"num_generations": 4, "rewards": [{"type": "json_valid"}]}})
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size, rl.num_generations" in err and "(3 completions per step)" in err
    assert main(["validate", str(recipe), "train.grad_accum=4"]) == 0  # 12 completions: three groups of 4


def test_progress_shows_each_steps_own_loss_never_a_placeholder(tmp_path):
    """The Trainer calls on_log after on_step_end: the bar must show a logged step's own loss, and nothing
    (rather than a made-up 0.0) before the first loss is known."""
    from types import SimpleNamespace

    from tunelab.recipes.rl import RL_KEYS, TrlBridge
    from tunelab.training.rundir import MetricsLog

    class Bar:
        def __init__(self):
            self.calls = []

        def update(self, step, loss, tokens_per_s):
            self.calls.append((step, loss))

    bar = Bar()
    bridge = TrlBridge(MetricsLog(tmp_path / "metrics.jsonl"), bar, RL_KEYS)
    args = SimpleNamespace(logging_steps=2)
    for step, loss in ((1, None), (2, 0.5), (3, None), (4, 0.25)):
        state = SimpleNamespace(global_step=step, epoch=step / 4)
        bridge.on_step_end(args, state, None)
        if loss is not None:
            bridge.on_log(args, state, None, logs={"loss": loss, "num_tokens": 10.0 * step})
        bridge.on_log(args, state, None, logs={"eval_loss": 9.0})  # a validation row moves nothing
    assert bar.calls == [(2, 0.5), (3, 0.5), (4, 0.25)]
