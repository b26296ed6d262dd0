"""The chunked loss is the unchunked loss, exactly: the same loss and the same gradient for every
parameter (fp32: within 1e-6, or 1e-6 relative above 1: a few ulps of summation order), for Llama, Qwen2 and Gemma-2 (final logit soft-capping), tied and untied
output layers, padded and packed batches, all three loss reductions, both backward modes, and a LoRA
model whose adapters include the output layer; and on a real pretrained model, SmolLM2-135M-Instruct.
Chunks are forced small so that every batch spans many."""
from __future__ import annotations

import pytest
import torch

from framework.training.loss import scale_loss
from plugins.losses import chunk_tokens, chunked_cross_entropy, cross_entropy
from plugins.packing import BestFitDecreasing, PadToLongest
from seqtune_testing import CONVERSATIONS, encode_chat

ARCHITECTURES = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2", "use_sliding_window": False},
    "gemma2": {"model_type": "gemma2", "final_logit_softcapping": 3.0, "attn_logit_softcapping": 50.0,
               "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 64},
}
TINY_BUDGET_MIB = 0.02  # a few tokens per chunk with the test vocabulary
# The same per-token terms summed in another order are a few fp32 ulps apart: within 1e-6 absolute, and
# relative 1e-6 for values above 1 (one ulp at 6.4 is 4.8e-7; `sum` gives gradients up to ~10).
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}


def tiny_model(arch: str, vocab_size: int, tied: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**ARCHITECTURES[arch], vocab_size=vocab_size, hidden_size=32,
                                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    return model.train()


def step(model, batch, loss, reduction="token_mean"):
    """Loss as the engine scales it, and every trainable parameter's gradient."""
    model.zero_grad(set_to_none=True)
    loss_sum, tokens = loss(model, batch)
    tokens = int(tokens)
    scaled = scale_loss(loss_sum, tokens, torch.tensor(float(tokens)), 1, reduction, 2, 1)
    scaled.backward()
    return scaled.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(got, want):
    (got_loss, got_grads), (want_loss, want_grads) = got, want
    torch.testing.assert_close(got_loss, want_loss, **TOLERANCE)
    assert set(got_grads) == set(want_grads)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, **TOLERANCE, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def samples(tiny_tokenizer):
    return [encode_chat(tiny_tokenizer, c) for c in CONVERSATIONS]


@pytest.fixture(scope="module")
def batches(samples, tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    return {"padded": PadToLongest(None).collate([[s] for s in samples], pad),
            "packed": BestFitDecreasing().collate([samples], pad, padding_free=True)}


def test_the_test_budget_spans_many_chunks(batches, tiny_tokenizer):
    trained = int((batches["padded"]["labels"][:, 1:] != -100).sum())
    assert trained > 4 * chunk_tokens(len(tiny_tokenizer), TINY_BUDGET_MIB)


@pytest.mark.parametrize("backward", ["in_forward", "recompute"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_chunked_equals_unchunked(arch, tied, layout, backward, batches, tiny_tokenizer):
    model = tiny_model(arch, len(tiny_tokenizer), tied)
    batch = batches[layout]
    chunked = chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB, backward=backward)
    assert_same(step(model, batch, chunked), step(model, batch, cross_entropy()))


@pytest.mark.parametrize("reduction", ["token_mean", "mean", "sum"])
def test_every_loss_reduction_scales_the_chunked_loss_like_the_unchunked(reduction, batches, tiny_tokenizer):
    model = tiny_model("gemma2", len(tiny_tokenizer), tied=True)
    chunked = chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB)
    want = step(model, batches["padded"], cross_entropy(), reduction)
    assert_same(step(model, batches["padded"], chunked, reduction), want)


@pytest.mark.parametrize("backward", ["in_forward", "recompute"])
def test_a_lora_model_with_an_adapter_on_the_output_layer(backward, batches, tiny_tokenizer):
    from peft import LoraConfig, TaskType, get_peft_model

    model = tiny_model("llama", len(tiny_tokenizer), tied=False)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                        init_lora_weights=False)  # B != 0, so every adapter weight has a gradient
    model = get_peft_model(model, config)
    chunked = chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB, backward=backward)
    want = step(model, batches["packed"], cross_entropy())
    assert any("lm_head" in name for name in want[1])
    assert_same(step(model, batches["packed"], chunked), want)


@pytest.fixture(scope="module")
def smollm2_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, attn_implementation="eager", dtype=torch.float64)
    return tokenizer, model.train()


def relative_errors(got, want) -> dict[str, float]:
    """Per parameter: |got - want| / |want| in the Frobenius norm."""
    return {name: float((got[name].double() - grad).norm() / grad.norm()) for name, grad in want.items()}


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["in_forward", "recompute"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_chunked_equals_unchunked_on_a_pretrained_model(layout, backward, smollm2_model):
    """SmolLM2-135M-Instruct: 30 layers, a tied 49,152 x 576 output layer, real weights and logits.

    In float64 the chunked and unchunked gradients agree to 1e-10: the algorithm is exact. In fp32,
    rounding through 30 layers leaves either 1e-5 to 1e-4 from the float64 gradient (the unchunked as
    well), so there the chunked one must be no further from it than a few times the unchunked one."""
    tokenizer, model = smollm2_model
    samples = [encode_chat(tokenizer, c) for c in CONVERSATIONS]
    batch = (PadToLongest(None).collate([[s] for s in samples], tokenizer.pad_token_id) if layout == "padded"
             else BestFitDecreasing().collate([samples], tokenizer.pad_token_id, padding_free=True))
    budget_mib = 4.5  # 6 tokens per chunk
    assert int((batch["labels"][:, 1:] != -100).sum()) > 4 * chunk_tokens(len(tokenizer), budget_mib)
    chunked = chunked_cross_entropy(memory_mib=budget_mib, backward=backward)
    (loss64, exact), (chunked_loss64, chunked64) = step(model, batch, cross_entropy()), step(model, batch, chunked)
    torch.testing.assert_close(chunked_loss64, loss64, rtol=1e-12, atol=0)
    assert max(relative_errors(chunked64, exact).values()) < 1e-10
    model.float()
    try:
        unchunked32, chunked32 = (relative_errors(step(model, batch, loss)[1], exact) for loss in (cross_entropy(), chunked))
    finally:
        model.double()
    assert all(chunked32[name] <= 4 * unchunked32[name] + 1e-6 for name in exact), \
        max((chunked32[n] / unchunked32[n], n) for n in exact)


def test_a_wrong_head_changes_the_gradients(batches, tiny_tokenizer):
    """The comparison can fail: without soft-capping, gemma-2's chunked loss is not its loss."""
    model = tiny_model("gemma2", len(tiny_tokenizer), tied=True)
    want = step(model, batches["padded"], cross_entropy())
    model.config.final_logit_softcapping = None
    got = step(model, batches["padded"], chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB))
    with pytest.raises(AssertionError):
        assert_same(got, want)


def test_an_empty_filler_batch_gives_zero_and_reaches_every_parameter(tiny_tokenizer):
    """A rank that ran out trains on a one-token filler: the loss is zero and every parameter still
    gets a (zero) gradient, which DDP needs to finish its reduction."""
    model = tiny_model("llama", len(tiny_tokenizer), tied=False)
    batch = {"input_ids": torch.tensor([[tiny_tokenizer.pad_token_id]]), "labels": torch.tensor([[-100]])}
    loss_sum, tokens = chunked_cross_entropy()(model, batch)
    loss_sum.backward()
    assert float(loss_sum.detach()) == 0 and int(tokens) == 0
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_a_third_party_loss_built_on_decoder_output_is_the_loss_too(batches, tiny_tokenizer):
    """docs/writing-plugins.md's example (label smoothing; 0 here) through the public API."""
    import torch.nn.functional as F

    from framework import IGNORE_INDEX, decoder_output

    def smoothed(model, batch):
        out = decoder_output(model, batch)
        labels = batch["labels"][:, 1:]
        trained = labels != IGNORE_INDEX
        logits = out.logits(out.hidden[:, :-1][trained]).float()
        return F.cross_entropy(logits, labels[trained], reduction="sum", label_smoothing=0.0), trained.sum()

    model = tiny_model("gemma2", len(tiny_tokenizer), tied=False)
    assert_same(step(model, batches["packed"], smoothed), step(model, batches["packed"], cross_entropy()))
