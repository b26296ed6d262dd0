"""`model.attn_implementation: auto` and the checks around the attention kernel."""
from __future__ import annotations

import importlib.util

import pytest

from framework.config import load_recipe
from framework.errors import UserError
from framework.launch.preflight import preflight
from framework.model.attention import dense_mask_warning, resolve, separates_documents
from plugins.packing import BestFitDecreasing, PadToLongest, Wrapped


@pytest.fixture
def flash_attn_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real(name, *a))


def test_auto_on_the_cpu_is_sdpa_packed_or_not():
    assert resolve("auto", documents_per_row=True, gpu=False) == "sdpa"
    assert resolve("auto", documents_per_row=False, gpu=False) == "sdpa"


def test_auto_on_a_gpu_without_flash_attn_takes_flex_attention_for_packed_rows_only():
    assert importlib.util.find_spec("flash_attn") is None  # this machine's case
    assert resolve("auto", documents_per_row=True, gpu=True) == "flex_attention"
    assert resolve("auto", documents_per_row=False, gpu=True) == "sdpa"


def test_auto_on_a_gpu_with_flash_attn_takes_it(flash_attn_installed):
    assert resolve("auto", documents_per_row=True, gpu=True) == "flash_attention_2"
    assert resolve("auto", documents_per_row=False, gpu=True) == "flash_attention_2"
    assert resolve("auto", documents_per_row=True, gpu=False) == "sdpa"


@pytest.mark.parametrize("asked", ["eager", "sdpa", "flex_attention", "flash_attention_2"])
def test_a_named_kernel_is_kept(asked):
    assert resolve(asked, documents_per_row=True, gpu=True) == asked


def test_only_document_packing_separates_documents():
    assert separates_documents(BestFitDecreasing())
    assert not separates_documents(PadToLongest(None))
    assert not separates_documents(Wrapped())  # its rows cross documents on purpose


def test_packed_rows_on_a_gpu_with_a_dense_mask_are_said():
    warning = dense_mask_warning("sdpa", documents_per_row=True, gpu=True)
    assert "model.attn_implementation=auto" in warning and "flex_attention" in warning
    assert dense_mask_warning("flex_attention", True, True) is None
    assert dense_mask_warning("sdpa", True, False) is None  # the CPU: sdpa's kernel there takes the mask
    assert dense_mask_warning("sdpa", False, True) is None


def test_flex_attention_cannot_train_on_the_cpu(repo, monkeypatch):
    monkeypatch.chdir(repo)
    # launch.device=auto on a machine without a GPU (with launch.device=cpu the recipe itself is refused)
    recipe = load_recipe("recipes/quickstart.yaml", ["model.attn_implementation=flex_attention", "launch.device=auto"]).recipe
    with pytest.raises(UserError) as error:
        preflight(recipe)
    assert "flex_attention trains on CUDA GPUs only" in str(error.value)
    assert "model.attn_implementation=sdpa" in str(error.value)
