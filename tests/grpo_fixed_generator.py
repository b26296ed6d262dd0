"""A test-only generator plugin, `fixed`: it completes each prompt without the model, so that runs of
different shapes (two processes, one with accumulation) train on the same completions. A test copies
this file to a folder of its own on PYTHONPATH (tests/ itself would shadow `framework` and `plugins`)
and names it in the recipe: `plugins: [grpo_fixed_generator]`.

A prompt's first turn is its tokens before its first end token; with skew = its length % 3, completion
j of the group is that turn's last j + 1 + skew tokens, then the end token, and the group's last
completion has no end token: the turn's tokens repeated up to max_new_tokens, as a completion cut
there. Completions differ in length within a group and between prompts (so between ranks)."""
from __future__ import annotations

import os

from framework import hookimpl


class Fixed:
    def generate(self, model, prompts, *, num_generations, max_new_tokens, temperature, top_p, eos_token_ids,
                 pad_token_id, seed=None):
        if os.environ.get("GRPO_CALLS"):  # a test counts the generations (one line per call)
            with open(os.environ["GRPO_CALLS"], "a") as calls:
                calls.write(f"{len(prompts)}\n")
        out = []
        for prompt in prompts:
            turn = prompt[:next(i for i, token in enumerate(prompt) if token in eos_token_ids)]
            skew = len(turn) % 3
            for j in range(num_generations - 1):
                out.append((turn[-(j + 1 + skew):] + [eos_token_ids[0]])[-max_new_tokens:])
            out.append((turn * max_new_tokens)[:max_new_tokens])
        return out


def fixed() -> Fixed:
    return Fixed()


@hookimpl
def seqtune_register_generators():
    return {"fixed": fixed}
