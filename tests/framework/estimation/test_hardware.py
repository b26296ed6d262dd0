"""Model FLOPs, MFU and peak-memory figures."""
from __future__ import annotations

import pytest

from framework.estimation.hardware import GPUS, FlopsShape, gpu_from_device_name, mfu, model_flops
from framework.training.metrics import peak_memory_gib, peak_tflops


@pytest.mark.parametrize("device_name, key", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                              ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
                                              ("NVIDIA H200 NVL", "h200-nvl"),
                                              ("NVIDIA A100-SXM4-80GB", "a100-80"),
                                              ("NVIDIA A100-SXM4-40GB", "a100-40"),
                                              ("NVIDIA GeForce RTX 4090", "4090"),
                                              ("NVIDIA GeForce RTX 3090", "3090")])
def test_known_gpus_are_recognised_by_their_device_names(device_name, key):
    assert gpu_from_device_name(device_name) is GPUS[key]


def test_the_pcie_and_nvl_parts_are_not_credited_with_the_sxm_peak():
    """MFU against the SXM part's 989 TFLOP/s would read 24% low on an H100 PCIe (756)."""
    sxm = GPUS["h100"].bf16_tflops
    assert all(gpu_from_device_name(name).bf16_tflops < sxm for name in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL",
                                                                         "NVIDIA H200 NVL"))


def test_unknown_gpu_has_no_peak():
    assert gpu_from_device_name("Some Accelerator 9000") is None


def test_model_flops_add_causal_attention_per_document():
    # 1B parameters, 2 layers of attention 2,048 wide; a packed step of two documents, 1,000 and 2,000
    # tokens. Weights: 6 x 1e9 x 3,000 = 1.8e13. Attention, by PaLM's 12 x L x d x T per token halved
    # for causal masking: 6 x 2 x 2,048 x (1,000^2 + 2,000^2) = 24,576 x 5e6 = 1.2288e11.
    shape = FlopsShape(10**9, num_layers=2, attention_dim=2048)
    assert model_flops(shape, 3000, 1000**2 + 2000**2) == 1.8e13 + 1.2288e11
    # one 4,096-token sequence: per token, 6N + 12 x L x d x T / 2
    assert model_flops(shape, 4096, 4096**2) == 4096 * (6e9 + 12 * 2 * 2048 * 4096 / 2)


def test_mfu_is_model_flops_over_the_peak_of_all_devices():
    # 6e13 FLOP/s is 0.2 of a 300 TFLOP/s device, 0.05 of four
    assert mfu(6e13, 300, 1) == pytest.approx(0.2)
    assert mfu(6e13, 300, 4) == pytest.approx(0.05)
    assert mfu(6e13, None, 1) is None


def test_the_flops_shape_reads_the_models_attention_width():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma2", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # 4 x 16 != 32
    model = AutoModelForCausalLM.from_config(config)
    shape = FlopsShape.of(model)
    assert (shape.num_layers, shape.attention_dim) == (3, 64)
    assert shape.num_parameters == sum(p.numel() for p in model.parameters())


def test_a_micro_batch_counts_attention_by_document_packed_or_padded(tiny_tokenizer):
    from types import SimpleNamespace

    from framework.training.sequence_parallel import Groups
    from framework.training.steps import collate
    from plugins.objectives import SFT
    from plugins.packing import BestFitDecreasing, PadToLongest
    from seqtune_testing import CONVERSATIONS, encode_chat

    samples = [encode_chat(tiny_tokenizer, c) for c in CONVERSATIONS[:3]]
    want = sum(len(s.input_ids) ** 2 for s in samples)
    take = SimpleNamespace(take=lambda rows: [[samples[i] for i in row] for row in rows])
    for packing, rows, padding_free in ((BestFitDecreasing(), [[0, 1, 2]], True),
                                        (PadToLongest(None), [[0], [1], [2]], False)):
        prep = SimpleNamespace(tokenizer=tiny_tokenizer, data=take, packing=packing, padding_free=padding_free,
                               objective=SFT(), token_capacity=512, groups=Groups())
        batch = collate(prep, rows, "cpu")
        assert batch.attention_pairs == want  # not (sum of lengths)^2, nor padded length^2
        assert batch.tokens == sum(len(s.input_ids) for s in samples)


def test_the_recipe_peak_wins_and_a_cpu_has_none_of_its_own():
    assert peak_tflops(123.0) == 123.0
    assert peak_tflops(None) is None  # this machine has no GPU


def test_peak_memory_on_the_cpu_is_this_processes_peak_rss():
    import torch

    before = peak_memory_gib(torch.device("cpu"))
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB that must be touched
    block.add_(1)
    after = peak_memory_gib(torch.device("cpu"))
    assert after >= before and after > 0.05
