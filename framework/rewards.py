"""Score completions with an objective's rewards (online RL): the weighted sum of their scores per
completion, refusing, in one line naming the reward and the row, a score that could not be trusted. A reward is user code run in the middle of training, so a mistake in it
(or in the row it scores) must read as the recipe's problem, not as a traceback from the engine."""
from __future__ import annotations

import math
import numbers
from typing import Any

from framework.errors import UserError
from framework.types import BoundReward


def score(rewards: list[BoundReward], completions: list[str], answers: list[str | None], prompts: list[str],
          where: list[str]) -> tuple[list[float], dict[str, list[float]]]:
    """(each completion's weighted sum of scores, each reward's own scores by name). `answers[i]`,
    `prompts[i]` and `where[i]` are completion i's prompt row's answer, rendered prompt and name
    (`recipes/x.jsonl:12`). Each reward is built once, on first use (`BoundReward.reward`). Scores are
    named by reward, in the rewards' order; a name given twice is numbered from its second (`regex.2`).
    A row without an answer for a reward that needs one, or a reward that raises or returns anything but
    one finite number per completion, is a UserError of one line."""
    if not len(completions) == len(answers) == len(prompts) == len(where):
        raise ValueError(f"score: {len(completions)} completions but {len(answers)} answers, {len(prompts)} "
                         f"prompts and {len(where)} row names")
    totals = [0.0] * len(completions)
    by_name: dict[str, list[float]] = {}
    for name, reward in zip(reward_names(rewards), rewards):
        _check_answers(reward, answers, where)
        scores = _scores(reward, completions, answers, prompts, where)
        by_name[name] = scores
        totals = [total + reward.weight * value for total, value in zip(totals, scores)]
    return totals, by_name


def reward_names(rewards: list[BoundReward]) -> list[str]:
    """The name each reward's scores are logged under, in order: a name given twice is numbered from its
    second (`regex`, `regex.2`)."""
    taken: dict[str, Any] = {}
    for reward in rewards:
        taken[_unique(reward.name, taken)] = reward
    return list(taken)


def _unique(name: str, taken: dict[str, Any]) -> str:
    count = 1
    while (name if count == 1 else f"{name}.{count}") in taken:
        count += 1
    return name if count == 1 else f"{name}.{count}"


def _check_answers(reward: BoundReward, answers: list[str | None], where: list[str]) -> None:
    if not reward.needs_answer:
        return
    for i, answer in enumerate(answers):
        if answer is None:
            raise UserError(f"{where[i]}: has no reference answer, and reward {reward.name} compares with one; "
                            "give the row an answer (a prompt format's answer column) or use a reward that "
                            "needs none")


def _scores(reward: BoundReward, completions: list[str], answers: list[str | None], prompts: list[list[dict]],
            where: list[str]) -> list[float]:
    """The reward's scores as floats, or the UserError naming what is wrong and on which row."""
    try:
        scores = reward.reward(completions, answers, prompts)
    except Exception:  # user code: find the row it fails on, one completion at a time
        raise _failure(reward, completions, answers, prompts, where) from None
    try:
        scores = list(scores)
    except TypeError:
        raise UserError(f"reward {reward.name}: returned {_kind(scores)}, not a list of scores; fix the "
                        "reward") from None
    if len(scores) != len(completions):
        raise UserError(f"reward {reward.name}: returned {len(scores)} scores for {len(completions)} completions; "
                        "a reward returns one score per completion")
    for i, value in enumerate(scores):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UserError(f"reward {reward.name}: scored {_kind(value)} on {where[i]}; a score is a finite "
                            "number: fix the reward or the row")
    return [float(value) for value in scores]


def _failure(reward: BoundReward, completions: list[str], answers: list[str | None], prompts: list[list[dict]],
             where: list[str]) -> UserError:
    """Score the completions one by one and name the first whose scoring raises (or, when none does
    alone, the batch's first rows)."""
    for i in range(len(completions)):
        try:
            reward.reward(completions[i:i + 1], answers[i:i + 1], prompts[i:i + 1])
        except Exception as exc:
            return UserError(f"reward {reward.name}: raised {_short(exc)} on {where[i]}; fix the reward or the row")
    rows = list(dict.fromkeys(where))
    names = ", ".join(rows[:3]) + (f" and {len(rows) - 3} more" if len(rows) > 3 else "")
    return UserError(f"reward {reward.name}: raised on a batch of rows ({names}) though on none of them alone; "
                     "fix the reward")


def _short(exc: Exception) -> str:
    text = repr(exc)  # repr escapes newlines: one line
    return text if len(text) <= 200 else text[:197] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, numbers.Real):
        return repr(value)
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
