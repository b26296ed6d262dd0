"""The Accelerator's device, as the memory cap needs it."""
from __future__ import annotations

import pytest
import torch

from framework.launch.accelerator import cuda_index


def test_a_cuda_device_without_an_index_is_the_current_one():
    """An unlaunched process's Accelerator gives `cuda`, which set_per_process_memory_fraction refuses."""
    assert cuda_index(torch.device("cuda"), current=lambda: 3) == 3


def test_a_cuda_device_with_an_index_keeps_it():
    assert cuda_index(torch.device("cuda:1"), current=lambda: 0) == 1
    assert cuda_index(torch.device("cuda", 0), current=lambda: 5) == 0


def test_a_cpu_device_has_no_cuda_index():
    with pytest.raises(ValueError):
        cuda_index(torch.device("cpu"), current=lambda: 0)
