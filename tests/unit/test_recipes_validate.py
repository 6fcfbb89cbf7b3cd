"""Every shipped recipe validates (with the data path overrides its header documents)."""

from pathlib import Path

import pytest

from tunelab.config import load_recipe

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "emotion", "dialogsum"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.data.path
    header = path.read_text().splitlines()[:6]
    assert any(c in line for line in header for c in ("tunelab run", "tunelab train", "tunelab sweep", "make demo")), \
        "header must give the command"
