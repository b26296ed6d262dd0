"""Options that name plugins of another family (`factory.plugin_options`): an objective's `rewards:` and
`generator:` bound in the same pass as the rest of the recipe, through the real `load_and_bind`.

A test-only objective and generator come from a loose module the recipe names in `plugins:`, so these
tests hold whatever the built-in objectives take."""
from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path

import pytest

from framework import BoundReward
from framework.errors import UserError
from framework.registry import load_and_bind

PROBE = """\
from typing import Any

from framework import hookimpl


def probe(*, rewards: list[Any], generator: Any = "echo", scale: float = 1.0):
    return {"rewards": rewards, "generator": generator, "scale": scale}


probe.plugin_options = {"rewards": "rewards", "generator": "generators"}


class Echo:
    def __init__(self, repeat: int = 1):
        self.repeat = repeat

    def generate(self, model, prompts, **_):
        return [list(p) * self.repeat for p in prompts]


def echo(*, repeat: int = 1):
    return Echo(repeat)


@hookimpl
def seqtune_register_objectives():
    return {"probe": probe}


@hookimpl
def seqtune_register_generators():
    return {"echo": echo}
"""
HEAD = """\
output_dir: out
model: {name_or_path: tiny-model}
data:
  mixture: [{source: rows.jsonl, fraction: 1.0}]
plugins: [probe_objective]
"""


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module_dir):
    """recipe(objective_yaml) -> the path of a recipe selecting it, in a folder with its data."""
    monkeypatch.chdir(tmp_path)
    module_dir("probe_objective", PROBE)
    (tmp_path / "rows.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')

    def write(objective: str) -> str:
        (tmp_path / "recipe.yaml").write_text(HEAD + textwrap.dedent(objective))
        return "recipe.yaml"

    return write


def problems(path: str) -> list[str]:
    with pytest.raises(UserError) as info:
        load_and_bind(path)
    for line in info.value.problems:
        assert "\n" not in line, line
    return info.value.problems


def test_the_objective_receives_bound_rewards_and_generator(recipe):
    path = recipe("""\
        objective:
          name: probe
          rewards:
            - last_number
            - {name: regex, pattern: "^ok", weight: 0.5}
          generator: {name: echo, repeat: 2}
        """)
    _, parts = load_and_bind(path)
    built = parts.objective()
    first, second = built["rewards"]
    assert isinstance(first, BoundReward) and (first.name, first.weight) == ("last_number", 1.0)
    assert (second.name, second.weight) == ("regex", 0.5)
    assert second.factory.keywords == {"pattern": "^ok"}  # weight is the objective's, not the reward's option
    assert second.reward(["ok then", "not ok"], [None, None], [[], []]) == [1.0, 0.0]
    assert built["generator"]().generate(None, [[1, 2]]) == [[1, 2, 1, 2]]


def test_a_defaulted_plugin_option_is_bound_too(recipe):
    _, parts = load_and_bind(recipe("objective: {name: probe, rewards: [exact_match]}\n"))
    generator = parts.objective()["generator"]
    assert isinstance(generator, partial) and generator().repeat == 1


def test_a_bare_reward_name_has_weight_one(recipe):
    _, parts = load_and_bind(recipe("objective: {name: probe, rewards: [boxed]}\n"))
    (reward,) = parts.objective()["rewards"]
    assert (reward.name, reward.weight, reward.correctness, reward.needs_answer) == ("boxed", 1.0, True, True)


def test_an_unknown_reward_is_named_with_a_did_you_mean(recipe):
    lines = problems(recipe("objective: {name: probe, rewards: [last_numbr]}\n"))
    assert lines == ["recipe.yaml: objective.rewards[0]: unknown reward 'last_numbr'; did you mean 'last_number'?"]


def test_a_reward_option_is_checked_against_its_signature(recipe):
    lines = problems(recipe("""\
        objective:
          name: probe
          rewards: [{name: exact_match, casefold: "yes"}, {name: regex, patern: x}]
        """))
    assert lines == ["recipe.yaml: objective.rewards[0].casefold: expected bool, got str",
                     "recipe.yaml: objective.rewards[1].patern: unknown option; did you mean 'pattern'?",
                     "recipe.yaml: objective.rewards[1].pattern: missing required option"]


@pytest.mark.parametrize("weight", [-1, 0, "heavy", True, ".nan"])
def test_a_weight_must_be_a_number_above_zero(recipe, weight):
    lines = problems(recipe(f"objective: {{name: probe, rewards: [{{name: last_number, weight: {weight}}}]}}\n"))
    assert len(lines) == 1 and lines[0].startswith("recipe.yaml: objective.rewards[0].weight: must be a number "
                                                   "above 0, got "), lines


def test_every_problem_shows_in_one_pass(recipe):
    lines = problems(recipe("""\
        objective:
          name: probe
          scale: big
          rewards: [nope, {name: last_number, weight: -2}, 7]
          generator: {name: echo, repeats: 2}
        """))
    assert lines == [
        "recipe.yaml: objective.scale: expected float, got str",
        "recipe.yaml: objective.rewards[0]: unknown reward 'nope'; expected one of: boxed, exact_match, "
        "last_number, python, regex",
        "recipe.yaml: objective.rewards[1].weight: must be a number above 0, got -2",
        "recipe.yaml: objective.rewards[2]: expected a plugin name or a mapping with a 'name' key, got int",
        "recipe.yaml: objective.generator.repeats: unknown option; did you mean 'repeat'?"]


def test_an_unknown_generator_is_named(recipe):
    lines = problems(recipe("objective: {name: probe, rewards: [boxed], generator: vllm}\n"))
    assert lines == ["recipe.yaml: objective.generator: unknown generator 'vllm'; expected one of: echo, transformers"]


def test_rewards_that_are_not_a_list_are_the_objective_options_problem(recipe):
    lines = problems(recipe("objective: {name: probe, rewards: boxed}\n"))
    assert lines == ["recipe.yaml: objective.rewards: expected a list, got str"]


def test_missing_rewards_are_a_missing_option(recipe):
    assert problems(recipe("objective: probe\n")) == ["recipe.yaml: objective.rewards: missing required option"]
