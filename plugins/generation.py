"""The built-in generator for online objectives (GRPO): the model being trained generates with
transformers' `generate`, batched, with its KV cache, in the model's precision.

A faster engine (vLLM, SGLang) is another factory of the same family (`seqtune_register_generators`),
selected with the objective's `generator:` option.
"""
from __future__ import annotations

from typing import Any

from framework import hookimpl


class TransformersGenerator:
    """Left-pads the prompts (each repeated for its completions) and samples them in one `generate` call."""

    def __init__(self, batch_size: int | None = None):
        self.batch_size = batch_size

    def generate(self, model: Any, prompts: list[list[int]], *, num_generations: int, max_new_tokens: int,
                 temperature: float, top_p: float, eos_token_ids: list[int], pad_token_id: int,
                 seed: int | None = None) -> list[list[int]]:
        import torch

        rows = [prompt for prompt in prompts for _ in range(num_generations)]
        size = self.batch_size or len(rows)
        device = next(model.parameters()).device
        # A seed per call: the same step samples the same completions after a resume
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = []
            for first in range(0, len(rows), size):
                out += self._batch(model, rows[first:first + size], device, max_new_tokens, temperature, top_p,
                                   eos_token_ids, pad_token_id)
        return out

    @staticmethod
    def _batch(model: Any, rows: list[list[int]], device: Any, max_new_tokens: int, temperature: float,
               top_p: float, eos_token_ids: list[int], pad_token_id: int) -> list[list[int]]:
        import torch

        width = max(map(len, rows))
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):  # left padding: every prompt ends where generation starts
            ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
            {"do_sample": False}
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                                   max_new_tokens=max_new_tokens, eos_token_id=eos_token_ids,
                                   pad_token_id=pad_token_id, top_k=None, **sampling)
        return [_until_eos(row, eos_token_ids) for row in generated[:, width:].tolist()]


def _until_eos(tokens: list[int], eos_token_ids: list[int]) -> list[int]:
    """A completion up to and with its first end token (what follows is generate's padding)."""
    for i, token in enumerate(tokens):
        if token in eos_token_ids:
            return tokens[:i + 1]
    return tokens


def transformers(*, batch_size: int | None = None) -> TransformersGenerator:
    """transformers' `generate` on the model being trained; `batch_size` bounds the sequences sampled at
    once (default: all of a micro-batch's prompts x num_generations)."""
    return TransformersGenerator(batch_size)


@hookimpl
def seqtune_register_generators():
    return {"transformers": transformers}
