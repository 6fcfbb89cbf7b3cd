"""Bottleneck adapters on the real default model (SmolLM2-135M-Instruct, LLaMA blocks, bf16 base)."""

import pytest
import torch

from tunelab.config import load_recipe
from tunelab.methods import apply_method, count_parameters
from tunelab.methods.bottleneck import load_bottleneck
from tunelab.models import load_causal_lm, load_tokenizer

pytestmark = pytest.mark.integration


def test_starts_as_the_base_trains_and_reloads_exactly(tmp_path):
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok("Classify the emotion of this text: i feel wonderful today", return_tensors="pt")["input_ids"]
    base = load_causal_lm("smollm2-135m-instruct", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    spec = load_recipe(None, ["data.path=x", "method.name=bottleneck"]).method
    model = apply_method(base, spec)
    # 30 blocks x (576*36 + 36 + 36*576 + 576): the numbers docs/methods.md quotes
    assert count_parameters(model).trainable == 1_262_520
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    reloaded = load_bottleneck(load_causal_lm("smollm2-135m-instruct", dtype=torch.bfloat16), tmp_path / "adapter")
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, tuned) and not torch.equal(tuned, expected)
