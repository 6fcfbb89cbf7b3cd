import torch
import torch.nn.functional as F

from tunelab.config import load_recipe
from tunelab.methods import apply_method, count_parameters
from tunelab.training.batching import collate, plan_batches
from tunelab.training.loss import supervised_nll


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for n in (7, 12, 5, 9):
        ids = torch.randint(10, 500, (n,), generator=g).tolist()
        labels = [-100] * (n // 2) + ids[n // 2:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _reference_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


def test_selective_logits_loss_equals_full_logits(tiny_model):
    batch = collate(_rows(), "length_grouped", 0, 0)
    loss, n = supervised_nll(tiny_model, batch)
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss, _reference_loss(tiny_model, batch), rtol=1e-5, atol=1e-4)


def test_packed_rows_give_the_same_loss_as_padded(tiny_model):
    rows = _rows()
    padded, _ = supervised_nll(tiny_model, collate(rows, "length_grouped", 0, 0))
    packed_batch = collate(rows, "packed", 0, 0)
    assert packed_batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
    packed, _ = supervised_nll(tiny_model, packed_batch)
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-3)


def test_padded_mode_pads_to_max_length():
    b = collate(_rows(), "padded", 0, 32)
    assert b["input_ids"].shape == (4, 32) and int(b["attention_mask"].sum()) == 7 + 12 + 5 + 9


def test_plan_batches_is_deterministic_and_complete():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    a = plan_batches(lengths, 8, "length_grouped", seed=1, epoch=0)
    assert a == plan_batches(lengths, 8, "length_grouped", seed=1, epoch=0)
    assert a != plan_batches(lengths, 8, "length_grouped", seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    shuffled = plan_batches(lengths, 8, "padded", seed=1, epoch=0)
    spread_random = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in shuffled) / len(shuffled)
    assert spread < spread_random / 3  # grouping really reduces padding


def test_lora_marks_only_adapters_trainable(tiny_model):
    spec = load_recipe(None, ["data.path=x", "method.name=lora", "method.lora.r=4"]).method
    model = apply_method(tiny_model, spec)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    counts = count_parameters(model)
    assert 0 < counts.trainable < counts.total


def test_full_marks_everything_trainable(tiny_model):
    spec = load_recipe(None, ["data.path=x", "method.name=full"]).method
    counts = count_parameters(apply_method(tiny_model, spec))
    assert counts.trainable == counts.total
