"""Shell completion through typer: the scripts a shell installs, and what they complete."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SEQTUNE = str(Path(sys.executable).with_name("seqtune"))


def complete(words: str) -> list[str]:
    """What bash completion offers for the command line `words` (the last word being typed)."""
    env = {**os.environ, "_SEQTUNE_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    return subprocess.run([SEQTUNE], env=env, capture_output=True, text=True, timeout=60).stdout.split()


def test_commands_complete_by_prefix():
    assert complete("seqtune tr") == ["train"]
    assert complete("seqtune re") == ["report"]
    assert set(complete("seqtune ")) >= {"train", "check", "plan", "report", "plugins"}


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F"), ("zsh", "compdef"),
                                           ("fish", "complete --command seqtune")])
def test_each_shell_gets_its_completion_script(shell, marker):
    # typer detects the running shell; its own switch lets a test name one instead
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run([SEQTUNE, "--show-completion", shell], capture_output=True, text=True, timeout=60, env=env)
    assert shown.returncode == 0 and marker in shown.stdout
