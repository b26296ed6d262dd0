"""The memory plan under sequence parallelism (launch.sequence_parallel): per-token memory for 1/N of
each row, the all-to-all copies and whole-row masks by hand, model states unchanged, and the seed's
GPUs reaching 65,536 tokens."""
from __future__ import annotations

import dataclasses

import pytest

from framework.config import load_recipe
from framework.config.schema import ModelConfig
from framework.estimation.activations import layer_activation_bytes
from framework.estimation.for_recipe import estimate_for_recipe
from framework.estimation.memory import estimate_memory, longest_fitting
from framework.estimation.sequence_parallel import group_sizes, shape_problem
from framework.estimation.settings import MemorySettings
from framework.estimation.shapes import ModelShape, load_shape

LONG = "recipes/tulu3/gemma2-2b-sft-long-context.yaml"


def tiny(kv_heads: int = 2, model_type: str = "llama") -> ModelShape:
    """h=64, I=256, 2 layers, 4 heads of 16 (q=64), vocab 100."""
    return ModelShape(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=kv_heads,
                      head_dim=16, vocab_size=100, tie_word_embeddings=True, model_type=model_type)


def plan(shape: ModelShape, n: int, **settings):
    common = dict(micro_batch=2, max_seq_length=64, num_gpus=4, precision="bf16", zero_stage=2,
                  attn_implementation="flash_attention_2")
    return estimate_memory(shape, MemorySettings(**{**common, **settings, "sequence_parallel": n}))


def gemma(tmp_path) -> ModelShape:
    return load_shape(ModelConfig(name_or_path="google/gemma-2-2b"), cache_dir=tmp_path / "empty-hf-cache")


@pytest.mark.parametrize("saver", [{}, {"gradient_checkpointing": True}, {"activation_offloading": True}])
def test_the_per_token_part_at_n_2_is_half_of_n_1s(saver):
    """Activations and the logits of an unchunked loss are all per token: half of them at N=2; model
    states are partitioned over all processes as before; only N=2 has all-to-all copies."""
    one, two = plan(tiny(), 1, **saver), plan(tiny(), 2, **saver)
    assert one.activations > 0 and two.activations * 2 == one.activations
    assert two.logits * 2 == one.logits
    assert (two.weights, two.gradients, two.optimizer_states, two.buffers) == \
        (one.weights, one.gradients, one.optimizer_states, one.buffers)
    assert one.all_to_all == 0 < two.all_to_all


def test_a_chunked_loss_halves_its_hidden_states_not_its_chunk_or_the_head_gradient():
    one, two = (plan(tiny(), n, loss_chunk_tokens=5, loss_holds_head_gradient=True) for n in (1, 2))
    fixed = 5 * 100 * (2 + 4 + 4) + 100 * 64 * (4 + 2)  # one chunk's logits; the held head gradient
    assert one.logits - fixed == 2 * (two.logits - fixed) == 128 * 2 * 2 * 64


def test_all_to_all_copies_by_hand_with_key_value_heads_replicated():
    # 2 x (Q 64 + K and V for max(kv heads, N) heads of 16 + output 64) values x 2 B x tokens per GPU
    assert plan(tiny(), 2).all_to_all == 2 * (64 + 2 * 2 * 16 + 64) * 2 * (2 * 32)
    assert plan(tiny(), 4).all_to_all == 2 * (64 + 2 * 4 * 16 + 64) * 2 * (2 * 16)  # 2 kv heads -> 4
    assert plan(tiny(kv_heads=4), 4).all_to_all == plan(tiny(), 4).all_to_all  # 4 of their own
    assert "all-to-all buffers" in [row[0] for row in plan(tiny(), 2).rows()]
    assert "all-to-all buffers" not in [row[0] for row in plan(tiny(), 1).rows()]


def test_flash_keeps_replicated_key_value_heads_and_sdpa_every_head():
    shape = tiny(kv_heads=2)
    grouped, replicated = (layer_activation_bytes(shape, 2, 2, "flash_attention_2", n) for n in (1, 4))
    assert replicated - grouped == 2 * 2 * (4 - 2) * 16  # K and V for 4 heads instead of 2, in bf16
    assert layer_activation_bytes(shape, 2, 2, "sdpa", 4) == layer_activation_bytes(shape, 2, 2, "sdpa", 1)


def test_rows_pad_to_a_multiple_of_n():
    odd = plan(tiny(), 4, max_seq_length=61, gradient_checkpointing=True)
    assert odd.activations == plan(tiny(), 4, max_seq_length=64, gradient_checkpointing=True).activations
    assert "32 tokens per GPU (2 × 16: 1/4 of each row)" in odd.details["activations"]


def test_sdpa_and_eager_get_whole_row_masks_counted_only_when_split():
    """Each process builds the L x L mask of the whole (padded) rows: 1 byte an entry for sdpa, the
    activations' dtype for eager, one per attention window (Gemma 2 alternates two)."""
    sdpa = dict(attn_implementation="sdpa", gradient_checkpointing=True)
    masks = plan(tiny(), 2, **sdpa).activations - plan(tiny(), 1, **sdpa).activations / 2
    assert masks == 2 * 64 * 64 * 1
    gemma_like = plan(tiny(model_type="gemma2"), 2, **sdpa).activations - \
        plan(tiny(model_type="gemma2"), 1, **sdpa).activations / 2
    assert gemma_like == 2 * 2 * 64 * 64
    eager = dict(attn_implementation="eager", gradient_checkpointing=True)
    # eager's scores: 2 heads of the 4 for whole rows, half of N=1's; its mask in bf16
    assert plan(tiny(), 2, **eager).activations - plan(tiny(), 1, **eager).activations / 2 == 2 * 64 * 64 * 2
    assert plan(tiny(), 2, **eager).details["activations"].count("mask") == 1
    assert "mask" not in plan(tiny(), 1, **sdpa).details["activations"]  # N=1: as before (not counted)


def test_which_group_sizes_a_model_takes():
    assert group_sizes(4) == [1, 2, 4] and group_sizes(6) == [1, 2, 3, 6] and group_sizes(1) == [1]
    assert shape_problem(tiny(), "sdpa", 1) is None and shape_problem(tiny(), "auto", 4) is None
    assert "4 attention heads cannot be dealt out to 3" in shape_problem(tiny(), "sdpa", 3)
    six = dataclasses.replace(tiny(kv_heads=4), num_heads=12)
    assert "4 key/value heads can be neither dealt out to 6" in shape_problem(six, "sdpa", 6)


def test_settings_refuse_a_group_of_zero():
    with pytest.raises(ValueError, match="sequence_parallel"):
        MemorySettings(micro_batch=1, max_seq_length=8, sequence_parallel=0)


def test_the_recipes_sequence_parallel_reaches_the_estimate(tmp_path):
    shape = gemma(tmp_path)
    split = estimate_for_recipe(load_recipe(LONG), shape)
    assert split.settings["sequence_parallel"] == 4 and split.all_to_all > 0
    whole = estimate_for_recipe(load_recipe(LONG, ["launch.sequence_parallel=1"]), shape)
    assert whole.model_states == split.model_states and whole.activations > 3 * split.activations


def test_the_seed_gpus_fit_65536_tokens_split_4_ways(tmp_path):
    """The seed's 4 x 24 GiB with the long-context recipe: N=4 reaches 65,536 tokens, and each split
    reaches further than the one before."""
    shape, loaded = gemma(tmp_path), load_recipe(LONG)
    longest = {n: longest_fitting(lambda length: estimate_for_recipe(loaded, shape, max_seq_length=length,
                                                                     sequence_parallel=n), 24) for n in (1, 2, 4)}
    assert longest[4] >= 65536 and longest[4] > longest[2] > longest[1]
    assert estimate_for_recipe(loaded, shape).fits(24)
