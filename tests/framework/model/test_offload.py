"""Activation offloading moves what the forward saves and gives it back bit for bit: the same loss and
gradients, with and without gradient checkpointing (where only the layer inputs move). On the CPU the
tests copy the saved tensors out and back (`copy_on_cpu`), the path a GPU run takes minus the streams."""
from __future__ import annotations

import pytest
import torch

from framework.model.offload import Offloader, offloading
from plugins.losses import chunked_cross_entropy, cross_entropy


def tiny_llama(checkpointing: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).train()
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


def grads(model, loss, batch):
    model.zero_grad(set_to_none=True)
    total, _ = loss(model, batch)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (2, 256), generator=generator)
    labels = ids.clone()
    labels[:, :40] = -100
    return {"input_ids": ids, "labels": labels}


@pytest.mark.parametrize("make_loss", [cross_entropy, chunked_cross_entropy])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_offloaded_activations_give_the_same_loss_and_gradients(make_loss, checkpointing, batch):
    model = tiny_llama(checkpointing)
    want_loss, want = grads(model, make_loss(), batch)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
    got_loss, got = grads(model, offloading(make_loss(), offloader), batch)
    assert offloader.moved > 0
    assert torch.equal(got_loss, want_loss)
    for name, grad in want.items():
        assert torch.equal(got[name], grad), name


def test_with_checkpointing_only_the_checkpoints_move(batch):
    """Checkpointing keeps each layer's input; offloading then moves little more than those."""
    moved = {}
    for checkpointing in (False, True):
        model = tiny_llama(checkpointing)
        offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=1 << 14)
        grads(model, offloading(cross_entropy(), offloader), batch)
        moved[checkpointing] = offloader.moved
    layer_inputs = 3 * batch["input_ids"].numel() * 64 * 4
    logits = batch["input_ids"].numel() * 512 * 4  # the loss keeps its log-softmax either way
    assert layer_inputs <= moved[True] - logits <= 2 * layer_inputs
    assert moved[False] > 4 * moved[True]


def test_weights_are_never_moved(batch):
    model = tiny_llama(False)
    offloader = Offloader(model, "cpu", copy_on_cpu=True, min_bytes=0)
    packed = []
    original = offloader._pack
    offloader._pack = lambda t: packed.append(original(t)) or packed[-1]
    grads(model, offloading(cross_entropy(), offloader), batch)
    kept = [p for p in packed if not isinstance(p, tuple)]
    assert any(isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter) for t in kept)
    assert all(not isinstance(p, tuple) or not isinstance(p[1], torch.nn.Parameter) for p in packed)


def test_on_the_cpu_nothing_moves_without_the_test_switch(batch):
    model = tiny_llama(False)
    offloader = Offloader(model, "cpu")
    grads(model, offloading(cross_entropy(), offloader), batch)
    assert offloader.moved == 0
