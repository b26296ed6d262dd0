"""Train the small byte-level BPE tokenizer used by the bundled quickstart recipe.

The quickstart must run fully offline, so instead of downloading a hub tokenizer
we train a 1024-token byte-level BPE (the same scheme as GPT-2/Qwen) on the
ChatML-rendered quickstart conversations, and wrap it in a
``PreTrainedTokenizerFast`` with a ChatML chat template (no ``{% generation %}``
markers). ``<|im_end|>`` is the EOS token and ``<|pad|>`` is a dedicated pad
token. Training on the same data file gives the same output (the ``tokenizers``
BPE trainer breaks count ties deterministically). Run from the repo root:

    python scripts/make_quickstart_tokenizer.py
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 1024
# Listed first so they get the stable ids 0..3.
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def render(messages: list[dict]) -> str:
    """ChatML text, identical to what CHAT_TEMPLATE produces."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def training_texts(data: Path) -> Iterator[str]:
    # Special tokens are stripped so merges are learned only from the text
    # between them, exactly as the tokenizer will see it at encode time.
    with data.open(encoding="utf-8") as f:
        for line in f:
            for piece in _SPECIAL_RE.split(render(json.loads(line)["messages"])):
                if piece:
                    yield piece


def train(data: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offset mappings exact (whitespace included),
    # which character-level masking of assistant spans relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknowns
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(data), trainer=trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("recipes/quickstart/data/train.jsonl"))
    parser.add_argument("--out", type=Path, default=Path("recipes/quickstart/tokenizer"))
    args = parser.parse_args()

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=train(args.data),
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        # Registered so all_special_ids covers every control token, not just eos/pad.
        extra_special_tokens=["<|endoftext|>", "<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )
    hf_tok.save_pretrained(args.out)
    print(f"saved tokenizer ({len(hf_tok)} tokens) to {args.out}")


if __name__ == "__main__":
    main()
