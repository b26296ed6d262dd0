"""plugins.rewards (exact_match, last_number, boxed, regex, python) and framework.score_rewards: the
weighted sum, and the one-line errors naming the reward and the row."""
from __future__ import annotations

from functools import partial

import pytest

from framework import BoundReward, UserError, score_rewards
from framework.config.validate import Problems
from framework.registry import check_options, declared, load_and_bind
from plugins.rewards import boxed, exact_match, last_number, python, regex, seqtune_register_rewards


def scores(factory, completions: list[str], answers: list | str | None = None) -> list[float]:
    answers = answers if isinstance(answers, list) else [answers] * len(completions)
    return factory(completions, answers, [[{"role": "user", "content": "q"}]] * len(completions))


def option_problems(factory, **options) -> list[str]:
    problems = Problems(lambda key: "recipe.yaml")
    check_options(factory, options, problems, "objective.rewards[0]")
    return problems.lines


def test_every_builtin_reward_is_registered_with_what_it_declares():
    assert seqtune_register_rewards() == {"exact_match": exact_match, "last_number": last_number, "boxed": boxed,
                                          "regex": regex, "python": python}
    assert [declared(f, "correctness", default=False) for f in (exact_match, last_number, boxed, regex)] == \
        [True, True, True, False]
    assert declared(partial(regex, pattern="x"), "needs_answer", default=True) is False


# -- exact_match ---------------------------------------------------------------------------------

def test_exact_match_ignores_surrounding_and_repeated_whitespace_only():
    got = scores(exact_match(), ["Paris", "  Paris\n", "New   York", "paris", "Paris."], ["Paris"] * 4 + ["Paris"])
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores(exact_match(), ["New \n York"], "New York") == [1.0]


def test_exact_match_casefold():
    assert scores(exact_match(casefold=True), ["PARIS", "Straße"], ["paris", "STRASSE"]) == [1.0, 1.0]


# -- last_number ---------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, answer", [
    ("The answer is 1,234.", "1234"),
    ("so she pays $1,234,567.50 in all", "1234567.5"),
    ("2 + 2 = 4, so 2.0", "2"),
    ("It drops to -5.", "#### -5"),
    ("5-3 leaves 2", "2"),
    (".5 of them", "0.5"),
    ("First 10 then 72", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = <<48+24=72>>72\n#### 72"),
    ("That makes 1234", "#### 1,234"),
])
def test_last_number_compares_the_completions_last_number_as_a_number(completion, answer):
    assert scores(last_number(), [completion], answer) == [1.0]


@pytest.mark.parametrize("completion, answer", [
    ("72 at first, then 73", "72"),  # the last number counts, not any number
    ("no digits at all", "72"),
    ("1,234", "123"),
    ("5-3", "-3"),  # subtraction, not a negative number
])
def test_last_number_wrong(completion, answer):
    assert scores(last_number(), [completion], answer) == [0.0]


def test_an_answer_without_a_number_is_the_rows_mistake():
    with pytest.raises(ValueError, match="the answer 'seventy-two' holds no number"):
        scores(last_number(), ["72"], "seventy-two")


# -- boxed ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("completion, answer", [
    (r"so the answer is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{3} no wait \boxed{ 4 }", "4"),  # the last box
    (r"$\boxed{x^{2}+1}$", r"the solution ... gives $\boxed{x^{2} + 1}$"),  # the answer's own box
    (r"\boxed{\left( 1, 2 \right)}", "(1,2)"),
    (r"\boxed{10\!000}", "$10000$"),
])
def test_boxed_compares_the_last_box_with_the_answer(completion, answer):
    assert scores(boxed(), [completion], answer) == [1.0]


@pytest.mark.parametrize("completion, answer", [
    (r"the answer is 1/2", "1/2"),  # no box: the shape is what is taught
    (r"\boxed{\frac{1}{2}", r"\frac{1}{2}"),  # unclosed
    (r"\boxed{\frac12}", r"\frac{1}{2}"),  # a light normalisation: documented
    (r"\boxed{4} then \boxed{3}", "4"),
])
def test_boxed_wrong(completion, answer):
    assert scores(boxed(), [completion], answer) == [0.0]


# -- regex ---------------------------------------------------------------------------------------

def test_regex_searches_or_matches_the_whole_completion():
    completions = ["<think>x</think> 42", "42"]
    assert scores(regex(pattern=r"\d+"), completions) == [1.0, 1.0]
    assert scores(regex(pattern=r"\d+", full=True), completions) == [0.0, 1.0]
    assert scores(regex(pattern=r"<think>.*</think>.*", full=True), ["<think>a\nb</think> 1"]) == [0.0]
    assert scores(regex(pattern=r"<think>.*</think>.*", full=True, flags="s"), ["<think>a\nb</think> 1"]) == [1.0]
    assert scores(regex(pattern="answer", flags="i"), ["ANSWER: 3"]) == [1.0]


def test_a_bad_pattern_or_flag_is_an_option_problem():
    assert option_problems(regex, pattern="(unclosed") == [
        "recipe.yaml: objective.rewards[0].pattern: not a valid regular expression: missing ), unterminated "
        "subpattern at position 0"]
    assert option_problems(regex, pattern="x", flags="iq") == [
        "recipe.yaml: objective.rewards[0].flags: unknown flag(s) 'q': use letters of 'imsx'"]
    assert option_problems(regex) == ["recipe.yaml: objective.rewards[0].pattern: missing required option"]


# -- python --------------------------------------------------------------------------------------

@pytest.fixture
def my_rewards(plugin_module):
    plugin_module("my_rewards", """\
        def length(completions, answers, prompts):
            return [float(len(c)) for c in completions]

        length.needs_answer = False

        def right(completions, answers, prompts):
            return [float(c == a) for c, a in zip(completions, answers)]

        right.correctness = True
        NOT_CALLABLE = 3
        """)


def test_python_calls_your_function_with_what_it_declares(my_rewards):
    length = BoundReward("python", 1.0, partial(python, function="my_rewards:length"))
    right = BoundReward("python", 1.0, partial(python, function="my_rewards:right"))
    assert length.reward(["ab", "abc"], [None, None], [[], []]) == [2.0, 3.0]
    assert (length.needs_answer, length.correctness) == (False, False)
    assert (right.needs_answer, right.correctness) == (True, True)


@pytest.mark.parametrize("function, problem", [
    ("no_such_reward_module:f", "cannot import module 'no_such_reward_module': ModuleNotFoundError: No module "
                                "named 'no_such_reward_module'"),
    ("my_rewards:lenght", "module 'my_rewards' has no attribute 'lenght'"),
    ("my_rewards:NOT_CALLABLE", "'my_rewards:NOT_CALLABLE' is int, not a callable"),
    ("my_rewards.length", "expected 'package.module:attribute', got 'my_rewards.length'"),
])
def test_python_function_that_does_not_import_is_an_option_problem(my_rewards, function, problem):
    assert option_problems(python, function=function) == [f"recipe.yaml: objective.rewards[0].function: {problem}"]


# -- score_rewards -------------------------------------------------------------------------------

def bound(name: str, factory, weight: float = 1.0, **options) -> BoundReward:
    return BoundReward(name, weight, partial(factory, **options))


def test_weights_combine_and_each_rewards_scores_are_kept():
    rewards = [bound("last_number", last_number), bound("regex", regex, 0.5, pattern="####"),
               bound("regex", regex, 0.25, pattern="^So")]
    totals, by_name = score_rewards(rewards, ["So #### 4", "It is 5"], ["4", "4"], [[], []], ["a:1", "a:2"])
    assert totals == [1.75, 0.0]
    assert by_name == {"last_number": [1.0, 0.0], "regex": [1.0, 0.0], "regex.2": [1.0, 0.0]}


def test_a_reward_is_built_once():
    built = []

    def counting():
        built.append(1)
        return lambda completions, answers, prompts: [1.0] * len(completions)

    reward = BoundReward("counting", 1.0, counting)
    for _ in range(3):
        score_rewards([reward], ["x"], ["y"], [[]], ["a:1"])
    assert built == [1]


def one_line_error(rewards, completions, answers, where) -> str:
    with pytest.raises(UserError) as info:
        score_rewards(rewards, completions, answers, [[]] * len(completions), where)
    (line,) = info.value.problems
    return line


def test_a_reward_that_raises_names_the_row_it_raised_on():
    line = one_line_error([bound("last_number", last_number)], ["1", "2"], ["#### 1", "many\nlines"],
                          ["recipes/x.jsonl:11", "recipes/x.jsonl:12"])
    assert line == ("reward last_number: raised ValueError(\"the answer 'many\\\\nlines' holds no number\") on "
                    "recipes/x.jsonl:12; fix the reward or the row")


def test_a_reward_that_fails_only_on_the_batch_names_the_batch():
    def batch_only():
        return lambda completions, answers, prompts: [1.0] if len(completions) == 1 else 1 / 0

    line = one_line_error([BoundReward("batchy", 1.0, batch_only)], ["a", "b"], ["x", "y"], ["f:1", "f:2"])
    assert line == "reward batchy: raised on a batch of rows (f:1, f:2) though on none of them alone; fix the reward"


@pytest.mark.parametrize("returned, problem", [
    ([1.0], "returned 1 scores for 2 completions; a reward returns one score per completion"),
    ([1.0, float("nan")], "scored nan on f:2; a score is a finite number: fix the reward or the row"),
    ([1.0, "1"], "scored str '1' on f:2; a score is a finite number: fix the reward or the row"),
    ([None, 1.0], "scored NoneType None on f:1; a score is a finite number: fix the reward or the row"),
    (None, "returned NoneType None, not a list of scores; fix the reward"),
])
def test_a_reward_must_return_one_finite_number_per_completion(returned, problem):
    reward = BoundReward("mine", 1.0, lambda: lambda completions, answers, prompts: returned)
    assert one_line_error([reward], ["a", "b"], ["x", "y"], ["f:1", "f:2"]) == f"reward mine: {problem}"


def test_a_row_without_an_answer_is_refused_for_a_reward_that_needs_one():
    line = one_line_error([bound("exact_match", exact_match)], ["a", "b"], ["a", None], ["f:1", "f:2"])
    assert line == ("f:2: has no reference answer, and reward exact_match compares with one; give the row an answer "
                    "(a prompt format's answer column) or use a reward that needs none")
    totals, _ = score_rewards([bound("regex", regex, pattern="a")], ["a", "b"], [None, None], [[], []],
                              ["f:1", "f:2"])
    assert totals == [1.0, 0.0]


# -- through a recipe ----------------------------------------------------------------------------

def test_objective_grpo_gets_its_rewards_bound_and_their_problems_named(tmp_path, monkeypatch, my_rewards):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"prompt": "2+2?", "answer": "#### 4"}\n')
    recipe = """\
output_dir: out
model: {name_or_path: tiny-model}
data:
  mixture: [{source: rows.jsonl, fraction: 1.0, format: prompt_answer}]
objective:
  name: grpo
  rewards: [last_number, {name: python, function: "my_rewards:length", weight: 0.1}, REGEX]
"""
    (tmp_path / "recipe.yaml").write_text(recipe.replace("REGEX", "{name: regex, pattern: '####'}"))
    _, parts = load_and_bind("recipe.yaml")
    rewards = parts.objective.keywords["rewards"]
    totals, _ = score_rewards(rewards, ["it is 4", "5"], ["#### 4", "#### 4"], [[], []], ["rows.jsonl:1"] * 2)
    assert totals == pytest.approx([1 + 0.1 * len("it is 4"), 0.1])

    (tmp_path / "recipe.yaml").write_text(recipe.replace("REGEX", "{name: regex, pattern: '(', weight: 0}")
                                          .replace("my_rewards:length", "my_rewards:lenght"))
    with pytest.raises(UserError) as info:
        load_and_bind("recipe.yaml")
    assert info.value.problems == [
        "recipe.yaml: objective.rewards[1].function: module 'my_rewards' has no attribute 'lenght'",
        "recipe.yaml: objective.rewards[2].weight: must be a number above 0, got 0",
        "recipe.yaml: objective.rewards[2].pattern: not a valid regular expression: missing ), unterminated "
        "subpattern at position 0"]
