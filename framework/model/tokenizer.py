"""The recipe's tokenizer, with the chat template it names and BOS written into that template."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from framework.config.schema import Recipe
from framework.errors import UserError, did_you_mean


def load_tokenizer(recipe: Recipe, templates: dict[str, Any]) -> Any:
    """The recipe's tokenizer, with the chat template it names (`templates`: the registered ones)."""
    from transformers import AutoTokenizer

    cfg = recipe.tokenizer
    name = cfg.name_or_path or recipe.model.name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=cfg.revision or recipe.model.revision, use_fast=cfg.use_fast,
            trust_remote_code=recipe.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"tokenizer.name_or_path: cannot load tokenizer '{name}': "
                        f"{str(exc).splitlines()[0]}") from None
    if cfg.chat_template is not None:
        tokenizer.chat_template = chat_template_source(cfg.chat_template, templates)
    if not tokenizer.chat_template:
        raise UserError(f"tokenizer.chat_template: tokenizer '{name}' has no chat template of its own; "
                        f"name one of: {', '.join(sorted(templates))}")
    if cfg.add_bos:
        add_bos(tokenizer)
    if tokenizer.pad_token_id is None:  # padding is masked out of the loss, so eos is a safe pad
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_bos(tokenizer: Any) -> None:
    """Put BOS into the template itself, so training and the saved tokenizer's inference agree."""
    if tokenizer.bos_token is None:
        raise UserError("tokenizer.add_bos: this tokenizer has no BOS token; set tokenizer.add_bos=false")
    probe = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    if not probe.startswith(tokenizer.bos_token):
        tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template


def is_jinja(value: str) -> bool:
    """Whether tokenizer.chat_template holds Jinja source itself."""
    return "{{" in value or "{%" in value


def is_template_source(value: str) -> bool:
    """Whether tokenizer.chat_template gives the template itself (Jinja source or a .jinja file)
    rather than the name of a registered one."""
    return is_jinja(value) or value.endswith(".jinja")


def chat_template_source(value: str, templates: dict[str, Any]) -> str:
    """A registered template name, a .jinja file, or Jinja source itself."""
    if is_jinja(value):
        return value
    if value.endswith(".jinja"):
        path = Path(value)
        if not path.is_file():
            raise UserError(f"tokenizer.chat_template: no such file '{value}'")
        return path.read_text()
    if value not in templates:
        raise UserError(f"tokenizer.chat_template: unknown chat template '{value}'"
                        + did_you_mean(value, templates))
    entry = templates[value]
    return entry.factory if hasattr(entry, "factory") else entry
