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
# The same per-token terms summed in another order are a few fp32 ulps apart, ulps of the largest terms
# summed: within 1e-6 of the tensor's largest magnitude (at least 1e-6), and relative 1e-6 (one ulp at 6.4
# is 4.8e-7; `sum` scales gradients by the token count, up to ~10).
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}


def close(got, want, name=""):
    atol = TOLERANCE["atol"] * max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=atol, rtol=TOLERANCE["rtol"], msg=lambda m: f"{name}: {m}")


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
    close(got_loss, want_loss, "loss")
    assert set(got_grads) == set(want_grads)
    for name, grad in want_grads.items():
        close(got_grads[name], grad, name)


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


def test_in_bf16_the_output_layers_gradient_is_summed_over_chunks_without_losing_precision(tiny_tokenizer):
    """bf16 weights, 64 chunks: the chunks' gradients of the output layer are added in fp32, so the chunked
    gradient is as close to the exact (float64) one as the unchunked bf16 gradient (one matmul that sums
    in fp32 inside). Added in bf16, 64 roundings leave it ~4x further away."""
    samples = [encode_chat(tiny_tokenizer, c) for c in CONVERSATIONS * 4]
    batch = PadToLongest(None).collate([[s] for s in samples], tiny_tokenizer.pad_token_id)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    model = tiny_model("llama", len(tiny_tokenizer), tied=False).double()
    exact = step(model, batch, cross_entropy())[1]["lm_head.weight"]
    model.bfloat16()
    budget = -(-trained // 64) * len(tiny_tokenizer) * 16 / 2**20  # 64 chunks
    errors = {}
    for name, loss in (("unchunked", cross_entropy()), ("chunked", chunked_cross_entropy(memory_mib=budget))):
        grad = step(model, batch, loss)[1]["lm_head.weight"].double()
        errors[name] = float((grad - exact).norm() / exact.norm())
    assert errors["chunked"] <= 1.5 * errors["unchunked"], errors


class MatmulCount(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.split(".")[0] in ("mm", "addmm", "bmm", "matmul")
        return func(*args, **(kwargs or {}))


def test_without_gradients_a_chunk_is_one_matmul_of_the_output_layer(batches, tiny_tokenizer):
    """Evaluation (no_grad): the output layer is applied once a chunk, and nothing else is taken."""
    model = tiny_model("llama", len(tiny_tokenizer), tied=False)
    batch = batches["padded"]
    chunked = chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB)
    with torch.no_grad():
        decoder_only, whole = MatmulCount(), MatmulCount()
        with decoder_only:
            model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, logits_to_keep=torch.empty(0, dtype=torch.long))
        with whole:
            loss, tokens = chunked(model, batch)
    chunks = -(-int(tokens) // chunk_tokens(len(tiny_tokenizer), TINY_BUDGET_MIB))
    assert whole.count - decoder_only.count == chunks > 4
    close(loss, step(model, batch, cross_entropy())[0] * int(tokens), "loss")


def test_the_engines_trained_positions_spare_the_device_a_nonzero(batches, tiny_tokenizer):
    """Given the trained positions taken on the CPU (as the engine's collate gives them), the loss reads
    nothing back from the device (no nonzero, no item) and is the same loss."""
    from framework.model.heads import trained_positions
    from host_waits import counting

    model = tiny_model("llama", len(tiny_tokenizer), tied=False)
    for layout in ("padded", "packed"):
        batch = batches[layout]
        want = step(model, batch, chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB))
        given = {**batch, "trained_positions": trained_positions(batch["labels"])}
        loss = chunked_cross_entropy(memory_mib=TINY_BUDGET_MIB)
        with counting() as waits:
            model.zero_grad(set_to_none=True)
            loss_sum, tokens = loss(model, given)
            (loss_sum / tokens).backward()
        assert waits.counts["seqtune"] == 0, waits.where
        assert_same(step(model, given, loss), want)
