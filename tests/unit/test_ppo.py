"""PPO: the math against hand-computed and reference numbers, a short run on the tiny model where a planted reward
rises, the run folder, RLHF with a trained reward model, and bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.config.loading import load_recipe
from tunelab.errors import TunelabError
from tunelab.training import ppo as P

# ------------------------------------------------------------------------------------------------ math


def test_masked_mean_var_and_whiten_match_numpy():
    import numpy as np

    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    kept = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert float(P.masked_mean(x, mask)) == pytest.approx(kept.mean())
    assert float(P.masked_var(x, mask)) == pytest.approx(kept.var(ddof=1))  # Bessel-corrected, as TRL
    assert P.masked_mean(x, mask, dim=1).tolist() == pytest.approx([2.0, 4.5])
    w = P.masked_whiten(x, mask)
    expected = (kept - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-8)
    assert w[mask.bool()].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert w[~mask.bool()].tolist() == [0.0, 0.0, 0.0]  # padding never leaks into the statistics or the output
    kept_mean = P.masked_whiten(x, mask, shift_mean=False)
    assert float(P.masked_mean(kept_mean, mask)) == pytest.approx(kept.mean(), rel=1e-5)
    assert float(P.masked_var(torch.tensor([3.0]), torch.tensor([1]))) == 0.0  # one element: no spread, not inf


def _gae_reference(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_k (gamma*lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t, V after the end = 0."""
    n = len(rewards)
    v = [*values, 0.0]
    deltas = [rewards[t] + gamma * v[t + 1] - v[t] for t in range(n)]
    return [sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t)) for t in range(n)]


def test_gae_matches_the_direct_sum_and_stops_at_each_rows_end():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.5], [0.5, 2.0, 9.0, 9.0]])
    values = torch.tensor([[0.4, 0.3, -0.1, 0.2], [1.0, -0.5, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # row 2 ends after 2 tokens: 9.0 and 7.0 are padding
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)):
        adv, ret = P.gae(rewards * mask, values, mask, gamma, lam)
        assert adv[0].tolist() == pytest.approx(_gae_reference([0.1, -0.2, 0.3, 1.5], [0.4, 0.3, -0.1, 0.2],
                                                                gamma, lam), rel=1e-5)
        assert adv[1, :2].tolist() == pytest.approx(_gae_reference([0.5, 2.0], [1.0, -0.5], gamma, lam), rel=1e-5)
        assert adv[1, 2:].tolist() == [0.0, 0.0] and ret[1, 2:].tolist() == [0.0, 0.0]
        assert ret[0].tolist() == pytest.approx((adv[0] + values[0]).tolist())
    # lambda 1, gamma 1: the return is the sum of the rewards still to come (Monte Carlo)
    _, ret = P.gae(rewards * mask, values, mask, 1.0, 1.0)
    assert ret[0].tolist() == pytest.approx([1.7, 1.6, 1.8, 1.5])


def test_token_rewards_penalise_kl_per_token_and_pay_the_score_at_the_last_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = P.token_rewards(logp, ref, mask, torch.tensor([2.0, -1.0]), kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [-0.1, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [-1.0 + 0.01, 0.0, 0.0]]))
    no_ref, kl0 = P.token_rewards(logp, None, mask, torch.tensor([2.0, -1.0]), kl_coef=0.1)
    assert no_ref.tolist() == [[0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]] and not kl0.any()


def test_clipped_policy_loss_hand_computed():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))  # ratios 1.5, 0.5, 1.1 and a padded token
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = P.clipped_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 (clipped); token 2: max(-0.5, -0.8) = -0.5; token 3: max(2.2, 2.2) = 2.2
    assert float(out.loss) == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert float(out.clipfrac) == pytest.approx(1 / 3)
    logs = torch.log(torch.tensor([1.5, 0.5, 1.1]))
    assert float(out.approx_kl) == pytest.approx(float(0.5 * (logs**2).mean()), rel=1e-6)
    # a micro-batch's share of a larger minibatch: divided by the minibatch's token count, not its own
    assert float(P.clipped_policy_loss(logp, old, adv, mask, 0.2, denom=6.0).loss) == pytest.approx(0.5 / 6)
    # the gradient flows through the unclipped tokens only
    lp = logp.clone().requires_grad_(True)
    P.clipped_policy_loss(lp, old, adv, mask, 0.2).loss.backward()
    assert lp.grad[0, 0] == 0 and lp.grad[0, 1] < 0 and lp.grad[0, 2] > 0 and lp.grad[0, 3] == 0


def test_clipped_value_loss_hand_computed():
    old = torch.tensor([[0.0, 0.0, 1.0]])
    new = torch.tensor([[0.5, -0.1, 3.0]])
    ret = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    out = P.clipped_value_loss(new, old, ret, mask, clip=0.2)
    # token 1: clipped value 0.2 -> max((0.5-1)^2, (0.2-1)^2) = 0.64; token 2: within range -> 0.01
    assert float(out.loss) == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert float(out.clipfrac) == pytest.approx(0.5)


def test_completion_mask_keeps_the_first_stop_token_only():
    ids = torch.tensor([[5, 6, 2, 2, 2], [7, 2, 9, 9, 9], [8, 8, 8, 8, 8], [2, 2, 2, 2, 2]])
    assert P.completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1],
                                                     [1, 0, 0, 0, 0]]
    assert P.completion_mask(ids, [9, 2])[1].tolist() == [1, 1, 0, 0, 0]


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]]])
    logp, ent = P.token_logprobs(logits, torch.tensor([[2, 0]]))
    assert logp[0].tolist() == pytest.approx([math.log(0.25), math.log(0.75)])
    assert ent[0].tolist() == pytest.approx([math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])


def test_kl_controllers_hand_numbers():
    fixed = P.kl_controller(0.1, None, 10000)
    fixed.update(50.0, 256)
    assert fixed.value == 0.1
    ctl = P.kl_controller(0.1, 6.0, 10000)
    ctl.update(12.0, 256)  # 12/6 - 1 = 1, clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl = P.kl_controller(0.1, 6.0, 10000)
    ctl.update(5.7, 100)  # 5.7/6 - 1 = -0.05, inside the clip
    assert ctl.value == pytest.approx(0.1 * (1 - 0.05 * 100 / 10000))
    ctl.update(math.nan, 100)  # a broken measurement does not move it
    assert ctl.value == pytest.approx(0.1 * (1 - 0.05 * 100 / 10000))


# ------------------------------------------------------------------------------------------------ runs

# The tiny random fixture model, sampling from its 4 most likely tokens, writes ' baby' about one token in eight;
# the planted reward pays the share of ' baby' in the completion, which the policy can learn in a few steps.
PLANTED = "def baby(completions):\n    return [c.count(' baby') / 8 for c in completions]\n"


def _module(tmp_path: Path, body: str, name: str = "ppo_rewards.py") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def _recipe(tmp_path: Path, model_dir: Path, data: Path, extra=()):
    return load_recipe(None, [
        f"data.path={data}", "data.max_length=64", f"model.name={model_dir}", "model.precision=fp32",
        "train.objective=ppo", "train.max_steps=12", "train.batch_size=8", "train.lr=5e-3", "train.log_every=1",
        "train.seed=0", "rl.max_completion_length=8", "rl.top_k=4", "rl.eval_prompts=2", "rl.beta=0.05",
        f"rl.rewards=[{{type: callable, function: '{_module(tmp_path, PLANTED)}:baby'}}]", "eval.batch_size=2",
        f"output.dir={tmp_path}", "output.name=ppo", *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory, tiny_model_dir) -> Path:
    from tunelab.pipeline import train

    tmp = tmp_path_factory.mktemp("ppo")
    data = tmp / "chat.jsonl"
    colors = ["red", "green", "blue", "black", "white", "yellow"]
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Item {i} is {colors[i % 6]}. What color is item {i}?"},
        {"role": "assistant", "content": colors[i % 6]}]}) + "\n" for i in range(60)))
    torch.set_num_threads(1)
    return train(_recipe(tmp, tiny_model_dir, data), "ppo")


def test_planted_reward_rises_and_kl_stays_bounded(ppo_run):
    steps = [r for r in _metrics(ppo_run) if "reward_mean" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert steps[0]["reward_mean"] > 0, "the fixture model no longer samples ' baby': pick another planted token"
    assert abs(steps[0]["kl"]) < 1e-6  # the first rollout comes from the starting policy: it is the reference
    assert all(math.isfinite(r["kl"]) and abs(r["kl"]) < 10 for r in steps)
    first = sum(r["reward_mean"] for r in steps[:4]) / 4
    last = sum(r["reward_mean"] for r in steps[-4:]) / 4
    assert last > first + 0.05, (first, last)
    summary = json.loads((ppo_run / "train_summary.json").read_text())
    assert summary["reward_last"] > summary["reward_first"]
    held = summary["held_out_reward"]
    assert held["after"] > held["before"]  # greedy answers to unseen prompts carry the planted token too


def test_run_folder_logs_and_loads_like_a_grpo_run(ppo_run):
    from tunelab.models import load_run_model
    from tunelab.recipes.ppo import load_value_head

    rows = _metrics(ppo_run)
    step = [r for r in rows if "reward_mean" in r][-1]
    assert {"loss", "policy_loss", "value_loss", "reward_mean", "reward_std", "reward/baby", "kl", "kl_coef",
            "entropy", "clipfrac", "vf_clipfrac", "approx_kl", "completion_len", "clipped_ratio", "lr", "grad_norm",
            "tokens"} <= step.keys()
    assert step["completion_len"] == 8 and step["clipped_ratio"] == 1.0 and step["kl_coef"] == 0.05
    assert [r["step"] for r in rows if "val_reward" in r] == [0, 12]
    summary = json.loads((ppo_run / "train_summary.json").read_text())
    assert summary["objective"] == "ppo" and summary["steps"] == 12 and summary["kl_coef_last"] == 0.05
    assert {"reward_first", "reward_last", "kl_max", "kl_last", "real_tokens", "peak_rss_mb"} <= summary.keys()
    assert (ppo_run / "adapter" / "adapter_model.safetensors").is_file() and not (ppo_run / "trainer").exists()
    assert (ppo_run / "plots" / "reward.png").is_file()
    manifest = json.loads((ppo_run / "manifest.json").read_text())
    assert manifest["objective"] == "ppo" and [r["name"] for r in manifest["rewards"]] == ["baby"]
    head = load_value_head(ppo_run)
    assert head.summary.weight.shape == (1, 64) and head.summary.weight.abs().sum() > 0  # trained from zero
    model, tok = load_run_model(ppo_run)
    ids = tok("hello", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] == ids.shape[1] + 2


def test_batched_log_probs_equal_one_row_at_a_time(tmp_path, tiny_model_dir):
    """Left-padded prompts and right-padded completions in one forward give each row's own log-probs (positions
    count real tokens only, as generate() numbered them); at the start the reference equals the policy."""
    from tunelab.recipes.ppo import PPORecipe

    data = tmp_path / "varied.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "Say it" + " again" * (i % 5)},
                                                     {"role": "assistant", "content": "ok"}]}) + "\n"
                            for i in range(30)))
    recipe = _recipe(tmp_path, tiny_model_dir, data, ["train.max_steps=1", "rl.eval_prompts=0", "train.batch_size=4"])
    ppo = PPORecipe(recipe, tmp_path)
    ppo.setup()
    ro = ppo._rollout()
    assert len({len(p) for p in ro.prompts}) > 1  # the rows really differ in length (the padding is exercised)
    for i, prompt in enumerate(ro.prompts):
        n = int(ro.mask[i].sum())
        ids = torch.cat([prompt, ro.completions[i, :n]])[None]
        with torch.no_grad():
            logits = ppo.model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        alone = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1)
        assert ro.logp[i, :n].tolist() == pytest.approx(alone.tolist(), abs=1e-4)
    assert torch.equal(ro.logp * ro.mask, ro.ref_logp * ro.mask)
    assert float(P.masked_mean(ro.advantages, ro.mask)) == pytest.approx(0.0, abs=1e-5)  # whitened


def _reward_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A reward model trained for a few steps on the tiny model (pairs whose chosen answer says 'thanks')."""
    from tunelab.pipeline import train

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}: say something.", "chosen": f"thanks {i}",
                                         "rejected": f"sorry {i}"}) + "\n" for i in range(24)))
    recipe = load_recipe(None, [f"data.path={pairs}", "data.max_length=64", f"model.name={tiny_model_dir}",
                                "model.precision=fp32", "train.objective=reward", "train.max_steps=2",
                                "train.batch_size=8", f"output.dir={tmp_path}", "output.name=rm"])
    return train(recipe, "rm")


def test_rlhf_with_a_trained_reward_model_and_adaptive_kl(tmp_path, tiny_model_dir, chat_jsonl):
    from tunelab.pipeline import train

    rm = _reward_run(tmp_path, tiny_model_dir)
    recipe = _recipe(tmp_path, tiny_model_dir, chat_jsonl, [
        "train.max_steps=2", "rl.eval_prompts=0", f"rl.rewards=[{{type: model, model: {rm}}}]",
        "rl.ppo.kl_target=1.0", "rl.ppo.kl_horizon=8", "output.name=rlhf"])
    run = train(recipe, "rlhf")
    steps = [r for r in _metrics(run) if "reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["reward/reward_model"]) for r in steps)
    # step 1's KL is 0, below the target: the error clips to -0.2 and 8 completions over a horizon of 8 -> x0.8
    assert steps[0]["kl_coef"] == 0.05 and steps[1]["kl_coef"] == pytest.approx(0.04)
    assert (run / "value_head.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ bad input


def _yaml(tmp_path: Path, model_dir: Path, data: Path, rl: dict, **train) -> Path:
    import yaml

    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": str(data), "max_length": 64}, "model": {"name": str(model_dir), "precision": "fp32"},
        "train": {"objective": "ppo", "max_steps": 2, "batch_size": 4, **train},
        "rl": {"max_completion_length": 4, "eval_prompts": 0, **rl}, "output": {"dir": str(tmp_path)}}))
    return path


def test_a_nan_reward_names_the_reward_and_the_row(tmp_path, tiny_model_dir, chat_jsonl, capsys):
    from tunelab.cli.main import main

    mod = _module(tmp_path, "def broken(completions):\n    return [float('nan')] * len(completions)\n")
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, {"rewards": [{"type": "callable", "function": f"{mod}:broken"}]})
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "rl.rewards[0]: reward 'broken' returned nan for row" in err and "chat.jsonl:" in err


def test_a_diverging_loss_stops_the_run_with_nothing_saved(tmp_path, tiny_model_dir, chat_jsonl, capsys):
    """A finite but huge reward makes the value loss overflow: the run stops before any weights are written."""
    from tunelab.cli.main import main

    mod = _module(tmp_path, "def huge(completions):\n    return [1e300] * len(completions)\n")
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, {"rewards": [{"type": "callable", "function": f"{mod}:huge"}]})
    assert main(["train", str(recipe), "output.name=diverged"]) == 2
    assert "training diverged: loss is" in capsys.readouterr().err
    assert not (tmp_path / "diverged" / "adapter").exists()


def test_bad_ppo_recipes_exit_2(tmp_path, tiny_model_dir, chat_jsonl, capsys):
    from tunelab.cli.main import main

    rewards = {"rewards": [{"type": "json_valid"}]}
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, {**rewards, "ppo": {"epoch": 2}})
    assert main(["validate", str(recipe)]) == 2
    assert "did you mean 'rl.ppo.epochs'" in capsys.readouterr().err
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, {**rewards, "ppo": {"minibatch_size": 3}})
    assert main(["validate", str(recipe)]) == 2
    assert "rl.ppo.minibatch_size (3) does not divide the rollout" in capsys.readouterr().err
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, {**rewards, "beta": 0, "ppo": {"kl_target": 1.0}})
    assert main(["validate", str(recipe)]) == 2
    assert "kl_target adapts beta" in capsys.readouterr().err
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, rewards, batch_size=3)  # no group size: 3 is fine
    assert main(["validate", str(recipe)]) == 0
    capsys.readouterr()
    recipe = _yaml(tmp_path, tiny_model_dir, chat_jsonl, rewards)
    assert main(["train", str(recipe), "model.name=all-minilm-l6-v2"]) == 2
    assert "is an encoder and cannot generate text" in capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "dist", "what"), [
    ([], SimpleNamespace(enabled=True), "data-parallel training (--nproc)"),
    (["train.save_every=5"], None, "resumable checkpoints"),
    (["train.early_stopping_patience=2"], None, "early stopping"),
    (["method.name=prefix"], None, "prompt-learning method 'prefix'"),
])
def test_what_ppo_does_not_do_is_refused_before_any_work(tmp_path, tiny_model_dir, chat_jsonl, overrides, dist, what):
    from tunelab.recipes.ppo import PPORecipe

    recipe = _recipe(tmp_path, tiny_model_dir, chat_jsonl, overrides)
    with pytest.raises(TunelabError, match=re.escape(f"train.objective=ppo does not support {what}")) as e:
        PPORecipe.preflight(recipe, dist)
    assert e.value.where == "train.objective"
