"""Activation offloading moves what the decoder's forward saves and gives it back bit for bit: the same
loss and gradients, with and without gradient checkpointing (where only the layer inputs move). On the
CPU the tests copy the saved tensors out and back (`copy_on_cpu`), the path a GPU run takes minus the
streams: the same bookkeeping, the same prefetch order."""
from __future__ import annotations

import pytest
import torch

from framework.model.heads import chunk_tokens, trained_token_logps
from framework.model.offload import Offloader, decoder, offloading
from plugins.losses import chunked_cross_entropy, cross_entropy

VOCAB = 512


def tiny_llama(checkpointing: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


def grads(model, loss, batch):
    model.zero_grad(set_to_none=True)
    total, _ = loss(model, batch)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def offloaded_grads(model, loss, batch, offloader):
    """grads() through offloading, and what the forward moved (taken before the backward frees it)."""
    model.zero_grad(set_to_none=True)
    total, _ = offloading(loss, offloader)(model, batch)
    saves = offloader.saves
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saves


def assert_same(got, want):
    assert got[0].dtype == want[0].dtype and torch.equal(got[0], want[0])
    assert got[1].keys() == want[1].keys()
    for name, grad in want[1].items():
        assert torch.equal(got[1][name], grad), name


def copies_of_weights(saves, model) -> list[str]:
    """The parameters (as they are, or cast to the moved tensor's dtype, or transposed) that moved."""
    found = []
    for slot in (slot for slot in saves.slots if slot.host.is_floating_point()):
        for name, p in model.named_parameters():
            cast = p.detach().to(slot.host.dtype)
            views = (cast, cast.mT) if cast.dim() == 2 else (cast,)  # a linear layer saves its weight transposed
            if any(t.shape == slot.host.shape and torch.equal(t, slot.host) for t in views):
                found.append(name)
    return found


def logps_loss(memory_mib):
    """DPO's scoring (trained_token_logps, chunked and checkpointed per chunk) as a loss."""
    return lambda model, batch: (-trained_token_logps(model, batch, memory_mib).sum(), None)


def under_autocast(loss):
    def autocast(model, batch):
        with torch.autocast("cpu", torch.bfloat16):
            return loss(model, batch)

    return autocast


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 256), generator=generator)
    labels = ids.clone()
    labels[:, :40] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("make_loss", [cross_entropy, chunked_cross_entropy])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_offloaded_activations_give_the_same_loss_and_gradients(make_loss, checkpointing, batch):
    model = tiny_llama(checkpointing)
    want = grads(model, make_loss(), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
    got = grads(model, offloading(make_loss(), offloader), batch)
    assert offloader.moved > 0
    assert_same(got, want)


def test_with_checkpointing_only_the_checkpoints_move(batch):
    """Checkpointing keeps each layer's input; offloading then moves little more than those (the final
    norm's input and output, outside every checkpoint)."""
    moved = {}
    for checkpointing in (False, True):
        model = tiny_llama(checkpointing)
        offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
        grads(model, offloading(cross_entropy(), offloader), batch)
        moved[checkpointing] = offloader.moved
    layer_inputs = 3 * batch["input_ids"].numel() * 64 * 4
    assert layer_inputs <= moved[True] <= 2 * layer_inputs
    assert moved[False] > 4 * moved[True]


@pytest.mark.parametrize("make_loss", [
    lambda: chunked_cross_entropy(memory_mib=0.5, backward="in_forward"),
    lambda: chunked_cross_entropy(memory_mib=0.5, backward="recompute"),
    lambda: logps_loss(0.5),
], ids=["chunked-in-forward", "chunked-recompute", "dpo-logps"])
def test_the_loss_head_never_moves(make_loss, batch):
    """Finding 5: a chunked loss takes each chunk's logits (and, in_forward, their gradients) inside its
    own forward; offloading moves exactly what the bare decoder's forward moves, none of the head's."""
    model = tiny_llama(False)
    assert (batch["labels"][:, 1:] != -100).sum() > 4 * chunk_tokens(VOCAB, 0.5)  # several chunks
    want = grads(model, make_loss(), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
    with offloader():
        decoder(model)(input_ids=batch["input_ids"], use_cache=False)
    body = offloader.moved
    *got, saves = offloaded_grads(model, make_loss(), batch, offloader)
    assert_same(got, want)
    assert body > 0 and offloader.moved == body
    assert not [slot.host.shape for slot in saves.slots if slot.host.shape[-1] == VOCAB]


def test_the_decoder_is_found_inside_a_peft_model(batch):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(False), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    want = grads(model, chunked_cross_entropy(), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
    *got, saves = offloaded_grads(model, chunked_cross_entropy(), batch, offloader)
    assert_same(got, want)
    assert len(saves.slots) > 10 and copies_of_weights(saves, model) == []


def test_nothing_moves_without_gradients_and_no_hook_stays(batch):
    """Evaluation and reference scoring run the offloaded loss under no_grad."""
    model = tiny_llama(False)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=0)
    with torch.no_grad():
        offloading(chunked_cross_entropy(), offloader)(model, batch)
    assert offloader.moved == 0 and offloader.saves is None
    assert not decoder(model)._forward_pre_hooks and not decoder(model)._forward_hooks


def test_weights_are_never_moved(batch):
    model = tiny_llama(False)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=0)
    *_, saves = offloaded_grads(model, cross_entropy(), batch, offloader)
    assert len(saves.slots) > 10
    assert copies_of_weights(saves, model) == []


def test_autocast_copies_of_fp32_weights_stay(batch):
    """Finding 6: CPU autocast caches its bf16 copy of a trainable fp32 weight as CUDA's does (one copy
    per weight per autocast region, a ToCopyBackward of the parameter); it stays, activations move.
    (With checkpointing the casts happen inside the checkpoints, where nothing is offloaded.)"""
    model = tiny_llama(False)
    want = grads(model, under_autocast(chunked_cross_entropy()), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=0)
    *got, saves = offloaded_grads(model, under_autocast(chunked_cross_entropy()), batch, offloader)
    assert_same(got, want)
    assert any(slot.host.dtype == torch.bfloat16 for slot in saves.slots)
    assert copies_of_weights(saves, model) == []


def test_autocast_copies_of_frozen_weights_move(batch):
    """A frozen fp32 weight (a LoRA base) is not cached by autocast: each use casts it afresh and only
    the graph holds that copy, so moving it frees memory like any activation's."""
    model = tiny_llama(False)
    for name, p in decoder(model).named_parameters():
        p.requires_grad_("embed" in name)
    want = grads(model, under_autocast(chunked_cross_entropy()), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
    *got, saves = offloaded_grads(model, under_autocast(chunked_cross_entropy()), batch, offloader)
    assert_same(got, want)
    moved = set(copies_of_weights(saves, model))
    assert moved and all("mlp" in name for name in moved)  # the ones of at least 16 KiB in bf16


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_each_tensor_is_on_its_way_back_before_the_backward_reads_it(checkpointing, batch):
    """Finding 7: reading one saved tensor starts the copy back of the next the backward reads; only the
    first read of the backward finds its tensor still on the host. Each moves back once, and nothing
    is left on the device after the backward."""
    model = tiny_llama(checkpointing)
    want = grads(model, chunked_cross_entropy(), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=0)
    *got, saves = offloaded_grads(model, chunked_cross_entropy(), batch, offloader)
    assert_same(got, want)
    read = [slot for slot, _ in saves.restores]
    assert sorted(read) == list(range(len(saves.slots))) and len(saves.order) > len(saves.slots)
    assert [ready for _, ready in saves.restores] == [False] + [True] * (len(read) - 1)
    assert all(slot.back is None and slot.uses == 0 for slot in saves.slots)


def test_a_node_reading_several_saved_tensors_finds_them_all_on_their_way():
    """The backward's first node reads two moved tensors: the second is on its way when it reads the
    first. The one read twice (by exp, its output, and by mul) moves back once."""
    x = torch.randn(64, 64, requires_grad=True)
    offloader = Offloader(torch.nn.Linear(1, 1), "cpu", copy_on_cpu=True, min_bytes=0)
    with offloader():
        a, b = x.exp(), x.sin()  # exp saves a, sin saves x
        total = (a * b).sum()  # mul saves a (again) and b
    saves = offloader.saves
    total.backward()
    assert torch.equal(x.grad, (x.exp() * x.sin() + x.exp() * x.cos()).detach())
    assert (len(saves.slots), len(saves.order)) == (3, 4)
    assert sorted(slot for slot, _ in saves.restores) == [0, 1, 2]
    assert [ready for _, ready in saves.restores] == [False, True, True]


def test_on_the_cpu_nothing_moves_without_the_test_switch(batch):
    model = tiny_llama(False)
    offloader = Offloader(model, "cpu")
    grads(model, offloading(cross_entropy(), offloader), batch)
    assert offloader.moved == 0
