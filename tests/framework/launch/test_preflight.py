"""Checks of the machine against the recipe before anything loads."""
from __future__ import annotations

import pytest

from framework.config import load_recipe
from framework.errors import UserError
from framework.launch.preflight import preflight


def test_a_memory_cap_without_a_gpu_is_refused_with_its_override(repo, monkeypatch):
    monkeypatch.chdir(repo)
    recipe = load_recipe("recipes/quickstart.yaml", ["launch.gpu_memory_gib=24"]).recipe
    assert recipe.launch.gpu_memory_gib == 24.0
    with pytest.raises(UserError) as error:
        preflight(recipe)
    assert "launch.gpu_memory_gib=24 caps CUDA memory" in str(error.value)
    assert "launch.gpu_memory_gib=null" in str(error.value)


def test_a_memory_cap_below_one_gib_is_a_recipe_error(repo, monkeypatch):
    monkeypatch.chdir(repo)
    with pytest.raises(UserError) as error:
        load_recipe("recipes/quickstart.yaml", ["launch.gpu_memory_gib=0.5"])
    assert "launch.gpu_memory_gib" in str(error.value)
