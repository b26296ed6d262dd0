"""MFU and peak-memory figures."""
from __future__ import annotations

import pytest

from framework.estimation.hardware import GPUS, gpu_from_device_name, mfu
from framework.training.metrics import peak_memory_gib, peak_tflops


@pytest.mark.parametrize("device_name, key", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                              ("NVIDIA A100-SXM4-80GB", "a100-80"),
                                              ("NVIDIA A100-SXM4-40GB", "a100-40"),
                                              ("NVIDIA GeForce RTX 4090", "4090"),
                                              ("NVIDIA GeForce RTX 3090", "3090")])
def test_known_gpus_are_recognised_by_their_device_names(device_name, key):
    assert gpu_from_device_name(device_name) is GPUS[key]


def test_unknown_gpu_has_no_peak():
    assert gpu_from_device_name("Some Accelerator 9000") is None


def test_mfu_is_six_n_tokens_over_peak_of_all_devices():
    # 1B parameters at 10k tokens/s is 6e13 FLOP/s: 0.2 of a 300 TFLOP/s device, 0.05 of four.
    assert mfu(10**9, 10_000, 300, 1) == pytest.approx(0.2)
    assert mfu(10**9, 10_000, 300, 4) == pytest.approx(0.05)
    assert mfu(10**9, 10_000, None, 1) is None


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
