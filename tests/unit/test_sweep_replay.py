"""benchmarks/sweep_replay.py drives tunelab's own sampler, pruner, token cap and repeat handling against recorded
curves; these tests keep it honest (and runnable) as those functions change."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from tunelab.sweep.space import config_key

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_replay.py"


@pytest.fixture(scope="module")
def replay_mod():
    spec = importlib.util.spec_from_file_location("sweep_replay", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(mod):
    """12 configurations; loss falls with steps, best at lr 1e-3 / r 8; batch 8 costs twice the tokens."""
    choices = {"train.lr": [2.5e-4, 1e-3, 4e-3], "method.lora.r": [4, 8], "train.batch_size": [4, 8]}
    curves = {}
    for lr, r, bs in itertools.product(*choices.values()):
        final = 0.5 + abs(lr - 1e-3) * 100 + (0.02 if r == 4 else 0) + (0.01 if bs == 4 else 0)
        values = [final + 1.0 / k for k in range(1, 6)]
        curves[config_key({"train.lr": lr, "method.lora.r": r, "train.batch_size": bs})] = (values, 1000 * bs)
    return curves, choices


def test_the_grid_in_full_finds_the_best_and_every_replay_stays_under_its_cap(replay_mod):
    curves, choices = _grid(replay_mod)
    total = sum(t for _, t in curves.values())
    best = min(v[-1] for v, _ in curves.values())
    value, spent = replay_mod.replay(curves, choices, 20, 4, "minimize", {"strategy": "grid", "pruner": "none",
                                                                          "seed": 0}, total, redirect=False)
    assert value == pytest.approx(best) and spent == total  # every configuration once, nothing twice
    for name, (sweep, redirect) in replay_mod.STRATEGIES.items():
        for seed in range(3):
            value, spent = replay_mod.replay(curves, choices, 20, 4, "minimize", {**sweep, "seed": seed},
                                             total // 3, redirect)
            assert spent <= total // 3, (name, seed)
            assert value >= best - 1e-12


def test_a_cap_below_one_trial_stops_the_first_trial_and_keeps_no_value(replay_mod):
    curves, choices = _grid(replay_mod)
    value, spent = replay_mod.replay(curves, choices, 20, 4, "minimize",
                                     {"strategy": "tpe", "pruner": "asha", "seed": 0}, 1500)
    assert spent <= 1500 and value != value  # NaN: no trial completed
