"""The one error type for user mistakes.

Anything the user can fix (a recipe key, a data row, a missing package) raises `UserError`. The CLI
prints its problems as bullet lines and exits with code 2; nothing else in seqtune catches it.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """One or more problems the user must fix; each is one line naming where and what to do."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self):  # survives the trip back from a datasets.map worker process intact
        return (UserError, (self.problems,))


class RunStopped(Exception):
    """A run that stopped early on purpose (a signal) or for safety (a non-finite loss): not a
    mistake in the recipe, but the CLI still shows one message and no traceback."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A `; did you mean 'x'?` suffix, or a list of the valid choices when nothing is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if not choices:
        return ""
    return "; expected one of: " + ", ".join(choices)
