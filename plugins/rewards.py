"""Rewards for online RL (objective grpo's `rewards:`): each factory returns `reward(completions,
answers, prompts) -> scores`, one float per completion (see hookspecs.seqtune_register_rewards).

The answer checkers (`exact_match`, `last_number`, `boxed`) score 1.0 for a correct completion and 0.0
otherwise, and declare `correctness` so the engine logs their mean as an accuracy. They compare one
extracted value with the row's reference answer, strictly: a completion that never states its answer
in the expected shape scores 0, which is the signal that teaches the model the shape.
"""
from __future__ import annotations

import importlib
import re
from fractions import Fraction
from typing import Any, Callable, Iterator, Optional

from framework import hookimpl

Scores = list[float]
FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
# A number as people write it: a minus sign only where it cannot be subtraction ("5-3" holds 5 and 3),
# thousands separated by commas (1,234,567), decimals; a full stop after it ends the sentence.
NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w.])-)?\.\d+")
BOXED = "\\boxed{"
# LaTeX that changes how an answer looks, not what it is: sizing of brackets, a negative thin space
LATEX_NOISE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\!")


def _each(check: Callable[[str, Optional[str]], bool]) -> Callable[..., Scores]:
    """A reward from a per-completion check of (completion, answer)."""
    def reward(completions: list[str], answers: list[Optional[str]], prompts: list[str]) -> Scores:
        return [1.0 if check(completion, answer) else 0.0 for completion, answer in zip(completions, answers)]

    return reward


# -- exact_match ---------------------------------------------------------------------------------

def exact_match(*, casefold: bool = False) -> Callable[..., Scores]:
    """1.0 when the whole completion is the answer, up to surrounding space and runs of whitespace
    (and letter case with `casefold`)."""
    def normal(text: str) -> str:
        text = " ".join(text.split())
        return text.casefold() if casefold else text

    return _each(lambda completion, answer: normal(completion) == normal(answer))


# -- last_number (GSM8K) ---------------------------------------------------------------------------

def last_number() -> Callable[..., Scores]:
    """1.0 when the completion's last number equals the answer's, as numbers (2 == 2.0, 1,234 == 1234).
    The answer is a number ("72"), GSM8K's "#### 72", or a whole GSM8K solution ending with it: the
    text after its last "####" when it has one, else its last number."""
    return _each(lambda completion, answer: _last_number(completion) == _answer_number(answer))


def _last_number(text: str) -> Optional[Fraction]:
    found = NUMBER.findall(text)
    return Fraction(found[-1].replace(",", "")) if found else None  # exact: no float rounding


def _answer_number(answer: str) -> Fraction:
    number = _last_number(answer.rsplit("####", 1)[-1])
    if number is None:  # a row whose answer is not a number: the row's mistake, named by the engine
        raise ValueError(f"the answer {answer[-40:]!r} holds no number")
    return number


# -- boxed (MATH) ----------------------------------------------------------------------------------

def boxed() -> Callable[..., Scores]:
    """1.0 when the content of the completion's last \\boxed{...} equals the answer (the content of the
    answer's own last \\boxed{} when it has one, as MATH's solutions do, else the whole answer). Both
    are compared after removing spaces, a surrounding $...$, \\left, \\right and \\!: a light
    normalisation, so \\frac12 and \\frac{1}{2} still differ."""
    def check(completion: str, answer: str) -> bool:
        content = _last_boxed(completion)
        expected = _last_boxed(answer)
        return content is not None and _normal(content) == _normal(answer if expected is None else expected)

    return _each(check)


def _last_boxed(text: str) -> Optional[str]:
    """The content of the last \\boxed{...}, its braces balanced; None without one (or unclosed)."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, at = 1, start + len(BOXED)
    for i in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[at:i]
    return None


def _normal(text: str) -> str:
    text = text.strip()
    if len(text) > 1 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$")
    return "".join(LATEX_NOISE.sub("", text).split())


# -- regex -----------------------------------------------------------------------------------------

def regex(*, pattern: str, full: bool = False, flags: str = "") -> Callable[..., Scores]:
    """1.0 when the completion matches `pattern`: anywhere in it (re.search), or the whole of it with
    `full` (re.fullmatch). `flags` are letters of "imsx" (ignore case, multi-line, dot matches newline,
    verbose). A format reward: it needs no answer."""
    compiled = re.compile(pattern, _flags(flags))
    match = compiled.fullmatch if full else compiled.search
    return _each(lambda completion, _: match(completion) is not None)


def _flags(letters: str) -> int:
    value = 0
    for letter in letters:
        value |= FLAGS[letter]
    return value


def _check_regex(*, pattern: str, flags: str = "", **_: Any) -> Iterator[tuple[str, str]]:
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        yield "flags", f"unknown flag(s) {''.join(unknown)!r}: use letters of 'imsx'"
        return
    try:
        re.compile(pattern, _flags(flags))
    except re.error as exc:
        yield "pattern", f"not a valid regular expression: {exc}"


regex.check = _check_regex
regex.needs_answer = False


# -- python ----------------------------------------------------------------------------------------

def python(*, function: str) -> Callable[..., Scores]:
    """Your own reward: `function` is "package.module:attribute", a callable with a reward's signature,
    imported when the recipe is checked. It needs the rows' answers unless it sets its own
    `needs_answer = False`; `correctness = True` on it logs its mean as an accuracy."""
    return _load(function)


def _load(function: str) -> Callable:
    """The callable `function` names, or ValueError with a one-line reason."""
    module_name, colon, attribute = function.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"expected 'package.module:attribute', got {function!r}")
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as exc:  # user code: any failure while importing it is the recipe's problem
        raise ValueError(f"cannot import module '{module_name}': {type(exc).__name__}: {exc}".splitlines()[0])
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ValueError(f"module '{module_name}' has no attribute '{attribute}'")
        value = getattr(value, part)
    if not callable(value):
        raise ValueError(f"'{function}' is {type(value).__name__}, not a callable")
    return value


def _check_python(*, function: str, **_: Any) -> Iterator[tuple[str, str]]:
    try:
        _load(function)
    except ValueError as exc:
        yield "function", str(exc)


python.check = _check_python
python.needs_answer = lambda function: bool(getattr(_load(function), "needs_answer", True))
python.correctness = lambda function: bool(getattr(_load(function), "correctness", False))

exact_match.correctness = last_number.correctness = boxed.correctness = True  # 1 correct, 0 not


@hookimpl
def seqtune_register_rewards():
    return {"exact_match": exact_match, "last_number": last_number, "boxed": boxed, "regex": regex,
            "python": python}
