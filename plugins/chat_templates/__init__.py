"""Named chat templates (`tokenizer.chat_template: tulu`), one .jinja file each in this folder."""
from __future__ import annotations

from pathlib import Path

from framework import hookimpl

HERE = Path(__file__).parent


@hookimpl
def seqtune_register_chat_templates():
    return {path.stem: path.read_text() for path in sorted(HERE.glob("*.jinja"))}
