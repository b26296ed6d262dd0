"""framework.estimation: model shapes, bundled configs and the per-GPU memory plan, checked against
numbers worked out by hand from the ZeRO paper's and Korthikanti et al.'s formulas."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from framework.config import load_recipe
from framework.config.schema import ModelConfig
from framework.errors import UserError
from framework.estimation.activations import layer_activation_bytes
from framework.estimation.adapters import LoraSpec
from framework.estimation.for_recipe import estimate_for_recipe
from framework.estimation.memory import estimate_memory, longest_fitting
from framework.estimation.settings import GIB, MemorySettings
from framework.estimation.shapes import BUNDLED_CONFIGS, ModelShape, bundled_models, load_shape

TULU = "recipes/tulu3/gemma2-2b-sft.yaml"
PSI = 1_000_000_000  # Ψ: a 1B-parameter model
K = 12  # ZeRO's optimizer bytes per parameter for mixed-precision Adam


def one_billion() -> ModelShape:
    """A 1B-parameter Llama-style shape (the count is set, not derived, so Ψ is exactly 1e9)."""
    return ModelShape(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=16, num_kv_heads=16,
                      head_dim=128, vocab_size=32000, tie_word_embeddings=False, num_parameters=PSI)


def tiny() -> ModelShape:
    """h=64, I=256, 2 layers, 4 heads of 16, 2 KV heads (q=64, k=32), vocab 100."""
    return ModelShape(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, vocab_size=100, tie_word_embeddings=True)


def bundled(name: str, tmp_path) -> ModelShape:
    """A bundled shape, with an empty Hugging Face cache so the bundled file is what is read."""
    return load_shape(ModelConfig(name_or_path=name), cache_dir=tmp_path / "empty-hf-cache")


def states(plan) -> tuple[int, int, int]:
    return plan.weights, plan.gradients, plan.optimizer_states


# --- shapes and parameter counts ---------------------------------------------------------------

@pytest.mark.parametrize("name, billions", [("google/gemma-2-2b", 2.61), ("meta-llama/Llama-3.1-8B", 8.03),
                                            ("Qwen/Qwen2.5-7B", 7.62), ("allenai/OLMo-2-1124-7B", 7.30)])
def test_bundled_configs_count_the_published_parameter_totals(name, billions, tmp_path):
    shape = bundled(name, tmp_path)
    assert shape.num_parameters == pytest.approx(billions * 1e9, rel=0.01)
    assert "bundled" in shape.source


def test_bundled_configs_are_the_six_models_with_their_real_shapes(tmp_path):
    assert bundled_models() == ["Qwen/Qwen2.5-7B", "allenai/Llama-3.1-Tulu-3-8B-SFT", "allenai/OLMo-2-1124-7B",
                                "google/gemma-2-2b", "meta-llama/Llama-2-70b-hf", "meta-llama/Llama-3.1-8B"]
    fields = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
              "vocab_size", "tie_word_embeddings")
    expected = {"google/gemma-2-2b": (2304, 9216, 26, 8, 4, 256, 256000, True),
                "meta-llama/Llama-3.1-8B": (4096, 14336, 32, 32, 8, 128, 128256, False),
                "Qwen/Qwen2.5-7B": (3584, 18944, 28, 28, 4, 128, 152064, False),
                "allenai/OLMo-2-1124-7B": (4096, 11008, 32, 32, 32, 128, 100352, False),
                "allenai/Llama-3.1-Tulu-3-8B-SFT": (4096, 14336, 32, 32, 8, 128, 128264, False),
                "meta-llama/Llama-2-70b-hf": (8192, 28672, 80, 64, 8, 128, 32000, False)}
    for name, values in expected.items():
        shape = bundled(name, tmp_path)
        assert tuple(getattr(shape, f) for f in fields) == values, name
    gemma, qwen = bundled("google/gemma-2-2b", tmp_path), bundled("Qwen/Qwen2.5-7B", tmp_path)
    assert gemma.logit_softcapping and gemma.attn_softcapping and gemma.norm_layout == "sandwich"
    assert qwen.qkv_bias and not qwen.o_bias
    assert bundled("meta-llama/Llama-2-70b-hf", tmp_path).num_parameters == 68_976_648_192  # "70B": 68.98B
    for path in sorted(BUNDLED_CONFIGS.glob("*.json")):  # each says which public config it mirrors
        source = json.loads(path.read_text())["_source"]
        assert "https://huggingface.co/" + path.stem.replace("__", "/") in source


def test_parameter_count_by_hand_for_the_quickstart_model():
    shape = ModelShape.from_config({"model_type": "llama", "hidden_size": 128, "intermediate_size": 384,
                                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                    "tie_word_embeddings": True}, vocab_size=628)
    embedding = 628 * 128
    attention = 128 * 128 + 128 * 64 + 128 * 64 + 128 * 128  # q, k, v (2 KV heads of 32), o
    mlp = 3 * 128 * 384  # gate, up, down
    norms = 2 * 128
    assert shape.num_parameters == embedding + 2 * (attention + mlp + norms) + 128  # + final norm, tied head
    untied = ModelShape.from_config(shape_config())  # llama's default: an lm_head of its own
    assert untied.num_parameters == ModelShape.from_config(shape_config(tie_word_embeddings=True)).num_parameters \
        + 100 * 64


def shape_config(**extra) -> dict:
    return {"model_type": "llama", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 100, **extra}


def test_from_config_defaults_and_biases():
    llama = ModelShape.from_config(shape_config())
    assert (llama.num_kv_heads, llama.head_dim, llama.tie_word_embeddings) == (4, 16, False)  # MHA, h/heads
    gemma = ModelShape.from_config(shape_config(model_type="gemma2"))
    assert gemma.tie_word_embeddings and gemma.norm_layout == "sandwich"
    assert gemma.num_parameters - ModelShape.from_config(shape_config(tie_word_embeddings=True)).num_parameters \
        == 2 * 2 * 64  # two more norms per layer
    qwen = ModelShape.from_config(shape_config(model_type="qwen2", num_key_value_heads=2))
    plain = ModelShape.from_config(shape_config(num_key_value_heads=2))
    assert qwen.num_parameters - plain.num_parameters == 2 * (64 + 32 + 32)  # q, k, v biases per layer
    olmo = ModelShape.from_config(shape_config(model_type="olmo2", num_key_value_heads=2))
    assert olmo.num_parameters - plain.num_parameters == 2 * (64 + 32)  # q_norm and k_norm per layer
    with pytest.raises(UserError, match="num_hidden_layers must be a positive integer"):
        ModelShape.from_config(shape_config(num_hidden_layers=0))


# --- load_shape ----------------------------------------------------------------------------------

def test_load_shape_from_the_recipes_model_config_takes_the_tokenizers_vocab():
    model = ModelConfig(config={"model_type": "llama", "hidden_size": 128, "intermediate_size": 384,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2})
    shape = load_shape(model, vocab_size=628)
    assert (shape.vocab_size, shape.num_kv_heads, shape.source) == (628, 2, "model.config")
    with pytest.raises(UserError, match=r"model.config: no vocab_size.*tokenizer"):
        load_shape(model)
    with_vocab = ModelConfig(config={**model.config, "vocab_size": 1000})
    assert load_shape(with_vocab, vocab_size=628).vocab_size == 1000  # the config wins, as in build_model


def test_load_shape_from_a_local_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(shape_config(model_type="qwen2", num_key_value_heads=2)))
    shape = load_shape(ModelConfig(name_or_path=str(tmp_path)))
    assert shape.qkv_bias and shape.num_kv_heads == 2 and shape.source == str(tmp_path / "config.json")
    with pytest.raises(UserError, match="has no config.json"):
        load_shape(ModelConfig(name_or_path=str(tmp_path / "..")))
    with pytest.raises(UserError, match="no such directory"):
        load_shape(ModelConfig(name_or_path=str(tmp_path / "missing")))


def test_load_shape_reads_the_local_hugging_face_cache(tmp_path):
    repo = tmp_path / "models--acme--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "config.json").write_text(json.dumps(shape_config(hidden_size=96)))
    shape = load_shape(ModelConfig(name_or_path="acme/tiny-llama"), cache_dir=tmp_path)
    assert shape.hidden_size == 96 and "cache" in shape.source


def test_load_shape_falls_back_to_the_bundled_config_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shape = load_shape(ModelConfig(name_or_path="Google/Gemma-2-2B"), cache_dir=tmp_path)  # hub ids: any case
    assert shape.vocab_size == 256000 and "google__gemma-2-2b.json" in shape.source
    assert not any(tmp_path.iterdir())  # nothing was downloaded into the cache


def test_load_shape_of_an_unknown_hub_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_shape(ModelConfig(name_or_path="acme/no-such-model"), cache_dir=tmp_path)
    message = str(info.value)
    assert message.startswith("model.name_or_path:") and "acme/no-such-model" in message
    assert "huggingface-cli download acme/no-such-model config.json" in message and "model.config" in message


# --- model states (ZeRO) ---------------------------------------------------------------------------

def test_ddp_fp32_keeps_16_bytes_per_parameter_on_every_gpu():
    one = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128))
    assert states(one) == (4 * PSI, 4 * PSI, 8 * PSI) and one.model_states == 16 * PSI and one.buffers == 0
    four = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4))
    assert states(four) == states(one)  # DDP replicates everything
    assert four.buffers == 4 * PSI  # its gradient buckets: a second copy of the gradients


def test_ddp_autocast_keeps_16_bit_copies_of_the_matmul_weights():
    shape = one_billion()
    plan = estimate_memory(shape, MemorySettings(micro_batch=1, max_seq_length=128, precision="bf16"))
    assert states(plan) == (4 * PSI, 4 * PSI, 8 * PSI)  # autocast leaves the fp32 weights alone
    per_layer = 4 * 2048 * 2048 + 3 * 2048 * 8192  # q, k, v, o + gate, up, down
    assert plan.buffers == 2 * (16 * per_layer + 32000 * 2048)  # + the lm_head
    bf16_weights = estimate_memory(shape, MemorySettings(micro_batch=1, max_seq_length=128, precision="bf16", weights_dtype="bfloat16"))
    assert states(bf16_weights) == (2 * PSI, 2 * PSI, 4 * PSI) and bf16_weights.buffers == 0


@pytest.mark.parametrize("n", [4, 8])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages_follow_the_zero_paper(stage, n):
    plan = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=n, precision="bf16", zero_stage=stage))
    expected = {0: (2 * PSI, 2 * PSI, K * PSI),
                1: (2 * PSI, 2 * PSI, K * PSI // n),
                2: (2 * PSI, 2 * PSI // n, K * PSI // n),
                3: (2 * PSI // n, 2 * PSI // n, K * PSI // n)}[stage]
    assert states(plan) == expected
    paper = {0: (2 + 2 + K) * PSI, 1: 2 * PSI + 2 * PSI + K * PSI // n, 2: 2 * PSI + (2 + K) * PSI // n,
             3: (2 + 2 + K) * PSI // n}[stage]
    assert plan.model_states == paper


@pytest.mark.parametrize("stage, offload_optimizer, offload_params, expected, note", [
    (3, True, True, (0, 0, 0), None),
    (3, True, False, (2 * PSI // 4, 0, 0), None),
    (3, False, True, (0, 2 * PSI // 4, K * PSI // 4), None),
    (2, True, False, (2 * PSI, 0, 0), None),
    (1, True, False, (2 * PSI, 2 * PSI, 0), None),
    (2, False, True, (2 * PSI, 2 * PSI // 4, K * PSI // 4), "offload_params: needs ZeRO stage 3"),
    (0, True, False, (2 * PSI, 2 * PSI, K * PSI), "offload_optimizer: needs ZeRO stage 1-3"),
    (None, True, False, (4 * PSI, 4 * PSI, 8 * PSI), "offload_optimizer: needs DeepSpeed"),
])
def test_offloading_moves_states_to_the_cpu(stage, offload_optimizer, offload_params, expected, note):
    plan = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16",
                       zero_stage=stage, offload_optimizer=offload_optimizer, offload_params=offload_params))
    assert states(plan) == expected
    assert (note is None and not plan.notes) or any(note in line for line in plan.notes)


def test_zero_buffers_reduce_buckets_and_zero_3_gathered_parameters(tmp_path):
    buckets = 2 * 2048 * 2048 * 2  # two reduce buckets of hidden² bf16 elements (accelerate's "auto")
    zero2 = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16", zero_stage=2))
    assert zero2.buffers == buckets
    layer = 4 * 2048 * 2048 + 3 * 2048 * 8192 + 2 * 2048  # attention, MLP, two RMSNorms
    zero3 = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16", zero_stage=3))
    assert zero3.buffers == buckets + 2 * (layer + layer)  # the layer computed + the next one prefetched
    gemma = bundled("google/gemma-2-2b", tmp_path)  # its 256k x 2304 embedding outweighs a layer
    gemma3 = estimate_memory(gemma, MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16", zero_stage=3))
    assert gemma3.buffers == 2 * 2304 * 2304 * 2 + 2 * (256_000 * 2304 + gemma.layer_parameters())


def test_fp32_deepspeed_has_no_16_bit_copy_and_zero_1_2_still_clone_a_master_partition():
    def fp32(stage):
        return states(estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, zero_stage=stage)))

    assert fp32(0) == (4 * PSI, 4 * PSI, 8 * PSI)  # torch AdamW on the fp32 params
    assert fp32(2) == (4 * PSI, 4 * PSI // 4, 12 * PSI // 4)  # + DeepSpeed's fp32 partition clone
    assert fp32(3) == (4 * PSI // 4, 4 * PSI // 4, 8 * PSI // 4)  # updates fp32 partitions in place


def test_lora_gives_grads_and_optimizer_states_to_the_adapter_only():
    lora = 10_000_000
    ddp = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, precision="bf16", weights_dtype="bfloat16",
                      lora_trainable_params=lora))
    assert states(ddp) == (2 * PSI + 4 * lora, 4 * lora, 8 * lora)  # peft keeps adapters in fp32
    zero2 = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16", zero_stage=2,
                        lora_trainable_params=lora))
    assert states(zero2) == (2 * (PSI + lora), 2 * lora // 4, K * lora // 4)
    zero3 = estimate_memory(one_billion(), MemorySettings(micro_batch=1, max_seq_length=128, num_gpus=4, precision="bf16", zero_stage=3,
                        lora_trainable_params=lora))
    assert zero3.weights == 2 * (PSI + lora) // 4  # frozen weights are partitioned too


def test_lora_trainable_parameters_match_peft_for_llama_3_1_8b(tmp_path):
    llama = bundled("meta-llama/Llama-3.1-8B", tmp_path)
    # all-linear, r=16, per layer: q (4096+4096), k and v (4096+1024 each), o (4096+4096),
    # gate and up (4096+14336 each), down (14336+4096) = 81,920 -> x16 x32 layers
    assert LoraSpec(16, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                    ).trainable_parameters(llama) == 81_920 * 16 * 32 == 41_943_040
    assert LoraSpec(16, ("q_proj", "v_proj")).trainable_parameters(llama) == 16 * (8192 + 5120) * 32 == 6_815_744
    spec = LoraSpec(8, ("q_proj", "c_attn"))
    plan = estimate_memory(llama, MemorySettings(micro_batch=1, max_seq_length=16, lora=spec))
    assert plan.settings["lora_trainable_params"] == 8 * 8192 * 32
    assert any("c_attn" in note for note in plan.notes)


# --- activations, logits, overhead -----------------------------------------------------------------

def test_activations_by_hand_with_flash_attention_and_checkpointing():
    # DeepSpeed bf16: e = r = 2. Per layer and token: 2 RMSNorms x (4 fp32 input + 2 normalised + 2 output)
    # x 64 = 1024; attention 2 x (q 64 + k 32 + v 32 + out 64) + 4 x 4 heads (log-sum-exp) = 400;
    # MLP 4 x 2 x 256 = 2048. Final norm: 8 x 64 = 512. Micro-batch 2 x 8 = 16 tokens.
    common = dict(micro_batch=2, max_seq_length=8, precision="bf16", zero_stage=2, attn_implementation="flash_attention_2")
    full = estimate_memory(tiny(), MemorySettings(**common))
    assert full.activations == 16 * (2 * (1024 + 400 + 2048) + 512)
    checkpointed = estimate_memory(tiny(), MemorySettings(gradient_checkpointing=True, **common))
    assert checkpointed.activations == 16 * (2 * 2 * 64 + (1024 + 400 + 2048) + 512)  # layer inputs + one layer
    assert checkpointed.activations < full.activations
    # sdpa: K and V counted for every head (transformers repeats them when there is a padding mask)
    sdpa = estimate_memory(tiny(), MemorySettings(**{**common, "attn_implementation": "sdpa"}))
    assert sdpa.activations == 16 * (2 * (1024 + 2 * (64 + 64 + 64 + 64) + 16 + 2048) + 512)
    # DDP autocast with fp32 weights: fp32 residuals, each norm keeps 4 + 4 + a 16-bit copy 2 (x 64 = 640)
    autocast = estimate_memory(tiny(), MemorySettings(micro_batch=2, max_seq_length=8, precision="bf16",
                           attn_implementation="flash_attention_2"))
    assert autocast.activations == 16 * (2 * (2 * 640 + 400 + 2048) + 640)


def test_offloading_keeps_one_layer_on_the_gpu_with_or_without_checkpointing():
    common = dict(micro_batch=2, max_seq_length=8, precision="bf16", zero_stage=2, attn_implementation="flash_attention_2")
    for checkpointing in (False, True):
        offloaded = estimate_memory(tiny(), MemorySettings(activation_offloading=True,
                                                           gradient_checkpointing=checkpointing, **common))
        assert offloaded.activations == 16 * ((1024 + 400 + 2048) + 512)  # one layer + the final norm
        moved = 16 * 2 * (2 * 64 if checkpointing else 1024 + 400 + 2048)  # what waits in host memory
        assert f"{moved / 2**30:.2f} GiB offloaded" in offloaded.details["activations"]


def test_a_chunked_loss_holds_one_chunk_the_hidden_states_and_the_head_gradient():
    # fp32, no soft-capping: 12 B per vocab entry; 16 tokens, chunks of 5; h = 64, vocab 100.
    common = dict(micro_batch=2, max_seq_length=8)
    full = estimate_memory(tiny(), MemorySettings(**common)).logits
    assert full == 16 * 100 * 12
    chunked = estimate_memory(tiny(), MemorySettings(loss_chunk_tokens=5, **common)).logits
    assert chunked == 5 * 100 * 12 + 16 * 2 * 4 * 64
    held = estimate_memory(tiny(), MemorySettings(loss_chunk_tokens=5, loss_holds_head_gradient=True, **common))
    assert held.logits == chunked + 100 * 64 * (4 + 4)  # the fp32 sum and one chunk's gradient
    lora = estimate_memory(tiny(), MemorySettings(loss_chunk_tokens=5, loss_holds_head_gradient=True,
                                                  lora_trainable_params=10, **common))
    assert lora.logits == chunked  # a frozen output layer has no gradient to hold
    assert estimate_memory(tiny(), MemorySettings(loss_chunk_tokens=10**6, **common)).logits == full + 16 * 2 * 4 * 64


@pytest.mark.parametrize("model_type, norms", [
    ("llama", 2 * (4 + 2 + 2) * 64),  # two pre-norms keep normalised values in bf16
    ("gemma2", 2 * (4 + 4 + 2) * 64 + 2 * (4 + 4) * 64),  # fp32 normalised values; two post-norms more
    ("olmo2", 2 * (4 + 4) * 64 + (4 + 4) * (64 + 32) + 2 * 2 * 64),  # post-norms, q/k norms, own inputs
])
def test_layer_activations_follow_each_norm_layout(model_type, norms):
    shape = ModelShape.from_config(shape_config(model_type=model_type, num_key_value_heads=2))
    attention, mlp = 2 * (64 + 32 + 32 + 64) + 4 * 4, 4 * 2 * 256
    assert layer_activation_bytes(shape, 2, 2, "flash_attention_2") == norms + attention + mlp


def test_lora_adds_each_adapters_branch_to_the_activations():
    common = dict(micro_batch=2, max_seq_length=8, precision="bf16", zero_stage=2, attn_implementation="flash_attention_2")
    base = estimate_memory(tiny(), MemorySettings(**common)).activations
    # per adapted layer and token: lora_A's output (r=4 values x 2 B), and with dropout the dropped-out
    # copy of the 64 inputs (2 B each) and its mask (1 B each); q_proj and v_proj in 2 layers, 16 tokens
    with_dropout = estimate_memory(tiny(), MemorySettings(lora=LoraSpec(4, ("q_proj", "v_proj"), dropout=0.05), **common))
    assert with_dropout.activations - base == 16 * 2 * 2 * (4 * 2 + 3 * 64)
    without = estimate_memory(tiny(), MemorySettings(lora=LoraSpec(4, ("q_proj", "v_proj")), **common))
    assert without.activations - base == 16 * 2 * 2 * (4 * 2)
    assert without.settings["lora_trainable_params"] == 2 * 4 * ((64 + 64) + (64 + 32))


def test_activations_grow_linearly_with_sdpa_and_quadratically_with_eager():
    shape = one_billion()

    def acts(s, attn):
        return estimate_memory(shape, MemorySettings(micro_batch=2, max_seq_length=s, precision="bf16", zero_stage=2,
                           attn_implementation=attn)).activations

    s = 1024
    assert acts(2 * s, "sdpa") == 2 * acts(s, "sdpa") and acts(4 * s, "sdpa") == 4 * acts(s, "sdpa")
    # eager keeps 16 heads x s^2 scores per sequence and layer: fp32 softmax (4 B) + its bf16 copy (2 B)
    quadratic = 16 * 2 * 16 * (6 * (2 * s) ** 2 - 2 * 6 * s**2)  # layers x batch x heads x (q(2s) - 2 q(s))
    assert acts(2 * s, "eager") - 2 * acts(s, "eager") == quadratic
    assert acts(s, "eager") > acts(s, "sdpa")
    checkpointed = estimate_memory(shape, MemorySettings(micro_batch=2, max_seq_length=4096, precision="bf16", zero_stage=2,
                               gradient_checkpointing=True))
    assert checkpointed.activations < acts(4096, "sdpa")


def test_logits_and_loss_of_gemma_2_2b_at_2048_tokens(tmp_path):
    gemma = bundled("google/gemma-2-2b", tmp_path)
    plan = estimate_memory(gemma, MemorySettings(micro_batch=1, max_seq_length=2048, num_gpus=4, precision="bf16", zero_stage=2,
                       attn_implementation="flash_attention_2"))
    # per token and vocabulary entry: bf16 logits 2 + the tanh kept by soft-capping 2 + fp32 upcast 4
    # + its fp32 gradient 4 = 12 bytes; 2048 x 256,000 x 12 = 6,291,456,000 B (5.86 GiB)
    assert plan.logits == 2048 * 256_000 * 12 == 6_291_456_000
    llama = bundled("meta-llama/Llama-3.1-8B", tmp_path)
    assert estimate_memory(llama, MemorySettings(micro_batch=1, max_seq_length=2048, precision="bf16")).logits == 2048 * 128_256 * 10
    assert plan.logits > estimate_memory(gemma, MemorySettings(micro_batch=1, max_seq_length=2048, num_gpus=4, precision="bf16",
                                     zero_stage=2)).activations / 2


def test_overhead_total_fits_and_rows():
    plan = estimate_memory(tiny(), MemorySettings(micro_batch=1, max_seq_length=8))
    rest = plan.weights + plan.gradients + plan.optimizer_states + plan.activations + plan.logits + plan.buffers
    assert plan.overhead == int(1.5 * GIB) + -(-5 * rest // 100)
    assert plan.total == rest + plan.overhead
    bare = estimate_memory(tiny(), MemorySettings(micro_batch=1, max_seq_length=8, overhead_gib=0, overhead_fraction=0))
    assert bare.overhead == 0 and bare.total == rest
    assert plan.fits(plan.total / GIB) and not plan.fits(plan.total / GIB - 1e-6)
    rows = plan.rows()
    assert [row[0] for row in rows] == ["weights", "gradients", "optimizer states", "activations", "logits + loss",
                                        "buffers", "overhead", "total"]
    assert rows[-1][1] == f"{plan.total / GIB:.2f} GiB" and all(row[2] for row in rows)


def test_bad_arguments_are_refused():
    for bad in ({"precision": "bf32"}, {"weights_dtype": "int8"}, {"zero_stage": 4}, {"max_seq_length": 0},
                {"attn_implementation": "flash"}):
        with pytest.raises(ValueError):
            estimate_memory(tiny(), MemorySettings(**{"micro_batch": 1, "max_seq_length": 8, **bad}))


# --- from a recipe ---------------------------------------------------------------------------------

def test_plan_from_the_tulu_recipe_matches_its_settings(tmp_path):
    gemma = bundled("google/gemma-2-2b", tmp_path)
    loaded = load_recipe(TULU)
    plan = estimate_for_recipe(loaded, gemma)
    # the default loss: chunks of 512 MiB / (256,000 x 16 B) = 131 tokens, the head's gradient held
    direct = estimate_memory(gemma, MemorySettings(micro_batch=1, max_seq_length=2048, num_gpus=4, precision="bf16", weights_dtype="float32",
                         zero_stage=2, attn_implementation="flash_attention_2",
                         lora=None, optimizer_states=2, loss_chunk_tokens=131, loss_holds_head_gradient=True))
    assert plan.total == direct.total and states(plan) == states(direct)
    psi = gemma.num_parameters
    assert plan.model_states == 2 * psi + -(-2 * psi // 4) + -(-12 * psi // 4)
    assert plan.settings["packing"] == "none" and plan.fits(80) and not plan.fits(24)
    zero3 = estimate_for_recipe(load_recipe(TULU, ["launch.deepspeed={zero_stage: 3}"]), gemma)
    # ZeRO-3: each chunk recomputed, no gradient held; else the fp32 sum and one chunk's bf16 gradient
    assert plan.logits - zero3.logits == 256_000 * 2304 * (4 + 2)
    assert estimate_for_recipe(loaded, gemma, zero_stage=3).logits == zero3.logits  # as plan's remedy asks
    unchunked = estimate_for_recipe(load_recipe(TULU, ["train.loss=cross_entropy"]), gemma)
    assert unchunked.logits == 2048 * 256_000 * 12 and not unchunked.fits(30)
    assert estimate_for_recipe(load_recipe(TULU, ["train.loss=cross_entropy"]), gemma, max_seq_length=4096).logits \
        == 2 * unchunked.logits
    assert estimate_for_recipe(loaded, gemma, num_gpus=8).optimizer_states == -(-12 * psi // 8)


def test_estimate_for_recipe_reads_lora_optimizer_and_deepspeed_file(tmp_path):
    gemma = bundled("google/gemma-2-2b", tmp_path)
    ds_file = tmp_path / "ds.json"
    ds_file.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}))
    loaded = load_recipe(TULU, ["lora={r: 8, target_modules: [q_proj, v_proj], dropout: 0.0}",
                                "optimizer={name: sgd, momentum: 0.9}",
                                f"launch.deepspeed.config_file={ds_file}"])
    plan = estimate_for_recipe(loaded, gemma)
    lora = 8 * ((2304 + 2048) + (2304 + 1024)) * 26  # q_proj and v_proj of 26 layers
    assert plan.settings["lora_trainable_params"] == lora and plan.settings["zero_stage"] == 3
    assert plan.optimizer_states == 0  # offloaded by the DeepSpeed file
    assert plan.weights == -(-2 * (gemma.num_parameters + lora) // 4)  # ZeRO-3
    sgd = estimate_for_recipe(loaded, gemma, offload_optimizer=False)
    assert sgd.optimizer_states == -(-lora * (4 + 4) // 4)  # fp32 master + one momentum buffer, / 4 GPUs


def test_estimate_for_recipe_needs_the_vocab_of_a_model_built_from_config():
    loaded = load_recipe("recipes/quickstart.yaml")
    with pytest.raises(UserError, match="vocab_size"):
        estimate_for_recipe(loaded)
    shape = load_shape(loaded.recipe.model, vocab_size=628)
    plan = estimate_for_recipe(loaded, shape)
    assert plan.settings["num_gpus"] == 1 and plan.settings["max_seq_length"] == 128
    assert any("launch.device=cpu" in note for note in plan.notes)


def test_max_seq_len_is_the_longest_that_fits(tmp_path):
    gemma = bundled("google/gemma-2-2b", tmp_path)
    loaded = load_recipe(TULU)

    def plan_for(s):
        return estimate_for_recipe(loaded, gemma, max_seq_length=s)

    longest = longest_fitting(plan_for, 80)
    assert longest % 64 == 0 and plan_for(longest).fits(80) and not plan_for(longest + 64).fits(80)
    assert longest_fitting(plan_for, 1) == 0  # not even 64 tokens fit 1 GiB


def test_estimation_imports_no_torch(repo):
    """Every module of framework.estimation is pure Python: `check --gpu` and `plan` need no torch."""
    code = ("import importlib, pkgutil, sys, framework.estimation as e\n"
            "names = [m.name for m in pkgutil.walk_packages(e.__path__, 'framework.estimation.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "print(len(names), sorted(m for m in ('torch', 'transformers', 'huggingface_hub', 'deepspeed', 'datasets')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    count, loaded = result.stdout.strip().split(" ", 1)
    assert int(count) >= 8 and loaded == "[]", result.stderr


def test_fewest_fitting_counts_up_past_a_dip_and_keeps_the_multiple():
    from framework.estimation.memory import GIB, fewest_fitting

    class At:  # an estimate whose memory per GPU is given for each count of processes
        def __init__(self, gib: float):
            self.gib = gib

        def fits(self, gpu_gib: float) -> bool:
            return self.gib * GIB <= gpu_gib * GIB

    # one process needs less than two (no DDP buckets), then ZeRO divides by the processes
    memory = {1: 30, 2: 50, 3: 40, 4: 30, 5: 24, 6: 20}
    assert fewest_fitting(lambda n: At(memory[n]), 35, limit=6)[0] == 1
    assert fewest_fitting(lambda n: At(memory[n] + 10), 35, limit=6)[0] == 5
    assert fewest_fitting(lambda n: At(memory[n] + 10), 35, multiple_of=2, limit=6)[0] == 6
    assert fewest_fitting(lambda n: At(memory[n]), 10, limit=6) is None
