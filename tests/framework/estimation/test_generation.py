"""The generation phase of an objective that samples its own completions (GRPO), planned: its KV cache,
prefill and sampling worked out by hand from the model's shape, counted only beyond what the training
step itself needs, and the frozen reference and the rows an objective declares."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from framework.config import load_recipe
from framework.config.schema import ModelConfig
from framework.estimation.for_recipe import estimate_for_recipe
from framework.estimation.generation import kv_cache
from framework.estimation.memory import longest_fitting
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import load_shape

G, PROMPTS, LENGTH, NEW = 8, 2, 1024, 512  # 8 completions for each of 2 prompts, 1,024 tokens, 512 generated
ROWS = G * PROMPTS
LLAMA, OLMO = "meta-llama/Llama-3.1-8B", "allenai/OLMo-2-1124-7B"
QLORA = """lora: {r: 64, alpha: 16, target_modules: all-linear}
model: {name_or_path: %s, dtype: bfloat16, attn_implementation: sdpa, gradient_checkpointing: true,
        activation_offloading: %s, quantization: {method: nf4, double_quant: true, compute_dtype: bfloat16}}
"""
FULL = "model: {name_or_path: %s, dtype: bfloat16, attn_implementation: sdpa, gradient_checkpointing: %s}\n"


def grpo(reference: str = "none", generations: int = G) -> SimpleNamespace:
    """What the built GRPO objective declares (reference live when its KL term is on)."""
    return SimpleNamespace(sequences_per_row=generations, reference=reference, uses_token_loss=False, memory_mib=512,
                           generation={"num_generations": generations, "max_new_tokens": NEW})


def same_rows(sequences: int = G, reference: str = "none") -> SimpleNamespace:
    """An objective that trains the same rows and generates nothing."""
    return SimpleNamespace(sequences_per_row=sequences, reference=reference)


def recipe(tmp_path, model: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"output_dir: out\n{model}data: {{mixture: [{{source: prompts.jsonl, fraction: 1.0}}], "
                    f"max_seq_length: {LENGTH}}}\ntrain: {{per_device_batch_size: {PROMPTS}}}\n"
                    "launch: {mixed_precision: bf16}\n")
    return load_recipe(path)


def plan(tmp_path, loaded, objective, **changes):
    """The recipe's estimate, shapes read from the bundled configs (an empty Hugging Face cache)."""
    return estimate_for_recipe(loaded, objective=objective, cache_dir=tmp_path / "empty-hf-cache", **changes)


def bundled(name: str, tmp_path):
    return load_shape(ModelConfig(name_or_path=name), cache_dir=tmp_path / "empty-hf-cache")


@pytest.mark.parametrize("name, weights, precision, gib", [
    (LLAMA, "bfloat16", "bf16", 2),  # 2 × 32 layers × 8 KV heads × 128 × 2 B × 16 rows × 1,024 tokens
    (LLAMA, "float32", "no", 4),  # fp32 K and V
    (LLAMA, "float32", "bf16", 3),  # autocast: V in bf16, K in fp32 (RoPE multiplies it by fp32 cos/sin)
    (OLMO, "float32", "bf16", 8),  # 32 KV heads; OLMo 2's RoPE casts K back to bf16
])
def test_kv_cache_bytes_by_hand(tmp_path, name, weights, precision, gib):
    settings = MemorySettings(micro_batch=ROWS, max_seq_length=LENGTH, weights_dtype=weights, precision=precision,
                              num_generations=G, max_new_tokens=NEW)
    kv_heads = {LLAMA: 8, OLMO: 32}[name]
    key, value = {("float32", "no"): (4, 4), ("float32", "bf16"): (4 if name == LLAMA else 2, 2)}.get(
        (weights, precision), (2, 2))
    want = 32 * kv_heads * 128 * (key + value) * ROWS * LENGTH
    assert want == gib * GIB
    size, how = kv_cache(bundled(name, tmp_path), settings)
    assert size == want
    assert f"{ROWS} rows ({PROMPTS} prompts × {G})" in how


def test_generation_adds_what_it_needs_beyond_the_training_step(tmp_path):
    """OLMo 2 (32 KV heads) with activations offloaded: generating needs more than the training step
    holds beyond the model states, and the estimate grows by exactly that, with its overhead share."""
    loaded = recipe(tmp_path, QLORA % (OLMO, "true"))
    with_generation, without = plan(tmp_path, loaded, grpo()), plan(tmp_path, loaded, same_rows())
    kv = 2 * 32 * 32 * 128 * 2 * ROWS * LENGTH  # 8 GiB
    prompt_tokens = ROWS * (LENGTH - NEW)
    # one layer at the prefill: 4 hidden-size bf16 copies, and the MLP's 3 intermediate tensors (more
    # than the attention's Q, K, V and output: 2 × 2 × (4,096 + 4,096))
    prefill = prompt_tokens * (4 * 2 * 4096 + 3 * 2 * 11008)
    sampling = ROWS * 100352 * (2 + 38)  # one position's logits per row and the sampling's copies
    phase = kv + max(prefill, sampling)
    training = without.gradients + without.activations + without.logits  # what only the step holds
    assert phase > training
    assert with_generation.generation == phase - training
    assert with_generation.total - without.total == pytest.approx(1.05 * (phase - training), abs=2)
    for part in ("weights", "gradients", "optimizer_states", "activations", "logits", "buffers"):
        assert getattr(with_generation, part) == getattr(without, part), part
    row = next(row for row in with_generation.rows() if row[0] == "generation")
    assert "KV cache 8.00 GiB" in row[2] and "the difference is added" in row[2]
    assert "generation" not in [row[0] for row in without.rows()]


def test_nothing_is_added_when_the_training_step_needs_more(tmp_path):
    """Llama 3.1 8B (8 KV heads) with checkpointing: the layer inputs alone (32 × 8,192 B a token)
    outweigh its cache (32 × 4,096 B a token); the row is shown at 0 and says so."""
    loaded = recipe(tmp_path, QLORA % (LLAMA, "false"))
    with_generation, without = plan(tmp_path, loaded, grpo()), plan(tmp_path, loaded, same_rows())
    assert with_generation.total == without.total and with_generation.generation == 0
    row = next(row for row in with_generation.rows() if row[0] == "generation")
    assert row[1] == "0.00 GiB" and "KV cache 2.00 GiB" in row[2] and "nothing added" in row[2]


def test_a_live_reference_is_a_frozen_copy_without_lora_only(tmp_path):
    """The KL term on (beta > 0: reference live): a bf16 copy of the weights for full fine-tuning; with
    LoRA the reference is the model with its adapter disabled, and beta = 0 has none."""
    full = recipe(tmp_path, FULL % (LLAMA, "true"))
    live, none = plan(tmp_path, full, grpo("live")), plan(tmp_path, full, grpo("none"))
    assert live.weights - none.weights == bundled(LLAMA, tmp_path).num_parameters * 2
    assert "frozen reference model" in live.details["weights"]
    lora = recipe(tmp_path, QLORA % (LLAMA, "false"))
    assert plan(tmp_path, lora, grpo("live")).weights == plan(tmp_path, lora, grpo("none")).weights


def test_completions_per_prompt_multiply_the_training_rows(tmp_path):
    loaded = recipe(tmp_path, QLORA % (LLAMA, "false"))
    with_generation, sft = plan(tmp_path, loaded, grpo()), plan(tmp_path, loaded, same_rows(1))
    assert with_generation.activations == G * sft.activations
    assert f"{G} sequences per row" in " ".join(with_generation.notes)
    assert with_generation.settings["micro_batch"] == ROWS and with_generation.settings["max_new_tokens"] == NEW


def test_the_longest_fitting_length_counts_the_generation_phase(tmp_path):
    """`seqtune plan`'s sweep compares the totals: where generation needs more, less length fits."""
    loaded = recipe(tmp_path, QLORA % (OLMO, "true"))

    def longest(objective) -> int:
        return longest_fitting(lambda n: plan(tmp_path, loaded, objective, max_seq_length=n), 24, limit=16384)

    assert 0 < longest(grpo()) < longest(same_rows())


def test_negative_max_new_tokens_is_refused():
    with pytest.raises(ValueError, match="max_new_tokens"):
        MemorySettings(micro_batch=1, max_seq_length=8, max_new_tokens=-1)


def test_a_generator_batch_size_bounds_the_rows_sampled_at_once(tmp_path):
    """The generator's batch_size (declared as generation["batch_size"]): 4 of the 16 rows at a time hold
    a quarter of the cache; the training step still trains all 16."""
    objective = grpo()
    objective.generation["batch_size"] = 4
    loaded = recipe(tmp_path, QLORA % (OLMO, "true"))
    batched, whole = plan(tmp_path, loaded, objective), plan(tmp_path, loaded, grpo())
    assert batched.activations == whole.activations and batched.generation < whole.generation
    row = next(row for row in batched.rows() if row[0] == "generation")
    # 2 × 32 layers × 32 KV heads × 128 × 2 B × 4 rows × 1,024 tokens
    assert "KV cache 2.00 GiB: 4 rows (the generator's batch_size)" in row[2]
