"""Packed micro-batches are exactly the same computation as the sequences run one by one.

For two architectures and both CPU attention paths: the summed token loss and every parameter's
gradient of a bfd-packed micro-batch (several rows, and one padding-free row) equal those of the
same samples padded without packing (fp32, atol 1e-5), with either loss. A row packed without position resets
(attention crossing samples) must differ, which shows the comparison can fail. flex_attention's packed loss
equals the unpacked one too (forward only: it has no backward on the CPU).
"""
from __future__ import annotations

import pytest
import torch

from seqtune_testing import CONVERSATIONS, encode_chat
from plugins.losses import chunked_cross_entropy, cross_entropy
from plugins.packing import BestFitDecreasing, PadToLongest

ARCHITECTURES = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2", "use_sliding_window": False},
}


def tiny_model(arch: str, attn: str, vocab_size: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**ARCHITECTURES[arch], vocab_size=vocab_size, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    return model.train()


LOSSES = {"cross_entropy": cross_entropy(), "chunked": chunked_cross_entropy(memory_mib=1)}


def loss_and_grads(model, batch, loss="cross_entropy") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss_sum, tokens = LOSSES[loss](model, batch)
    loss = loss_sum / tokens  # token_mean over this micro-batch: the same divisor both ways
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def samples(tiny_tokenizer):
    return [encode_chat(tiny_tokenizer, c) for c in CONVERSATIONS]


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("padding_free", [False, True], ids=["rows", "padding-free"])
def test_packed_loss_and_gradients_equal_unpacked(arch, attn, padding_free, loss, samples, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    model = tiny_model(arch, attn, len(tiny_tokenizer))
    unpacked = PadToLongest(None).collate([[s] for s in samples], pad)
    packed = BestFitDecreasing().collate([samples[:2], samples[2:]], pad, padding_free=padding_free)
    assert packed["input_ids"].shape[0] == (1 if padding_free else 2)

    want_loss, want_grads = loss_and_grads(model, unpacked, loss)
    got_loss, got_grads = loss_and_grads(model, packed, loss)
    torch.testing.assert_close(got_loss, want_loss, atol=1e-5, rtol=0)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_without_position_resets_attention_crosses_samples_and_the_loss_differs(arch, samples, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    model = tiny_model(arch, "sdpa", len(tiny_tokenizer))
    unpacked = PadToLongest(None).collate([[s] for s in samples], pad)
    packed = BestFitDecreasing().collate([samples], pad, padding_free=True)
    packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).unsqueeze(0)  # one long sequence
    want_loss, _ = loss_and_grads(model, unpacked)
    got_loss, _ = loss_and_grads(model, packed)
    assert not torch.allclose(got_loss, want_loss, atol=1e-3)


@pytest.mark.slow  # flex attention compiles its kernel on first use (~20 s on the CPU)
@pytest.mark.parametrize("padding_free", [False, True], ids=["rows", "padding-free"])
def test_flex_attention_keeps_packed_documents_apart(padding_free, samples, tiny_tokenizer):
    """flex_attention (what `auto` picks for packed rows on a GPU without flash-attn): the packed loss
    equals the unpacked one. Forward only: PyTorch's flex attention has no backward on the CPU."""
    pad = tiny_tokenizer.pad_token_id
    unpacked = PadToLongest(None).collate([[s] for s in samples], pad)
    packed = BestFitDecreasing().collate([samples[:2], samples[2:]], pad, padding_free=padding_free)
    with torch.no_grad():
        want, _ = LOSSES["cross_entropy"](tiny_model("llama", "sdpa", len(tiny_tokenizer)), unpacked)
        flex = tiny_model("llama", "flex_attention", len(tiny_tokenizer))
        got, _ = LOSSES["cross_entropy"](flex, packed)
        packed["position_ids"] = torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"])
        crossing, _ = LOSSES["cross_entropy"](flex, packed)  # no restarts: one long sequence per row
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # summed losses (~150): a few fp32 ulps
    assert not torch.allclose(crossing, want, rtol=1e-5, atol=0)  # ~3e-4 apart on this tiny model
