"""A 4-bit base (QLoRA, model.quantization) in the memory plan: bitsandbytes' storage by hand, the
per-part bytes against a model transformers really quantizes, and what a QLoRA run holds."""
from __future__ import annotations

import pytest

from framework.config import load_recipe
from framework.config.schema import ModelConfig
from framework.estimation.adapters import ALL_LINEAR, LoraSpec
from framework.estimation.for_recipe import estimate_for_recipe
from framework.estimation.memory import estimate_memory
from framework.estimation.quantization import QuantSpec, base_parts
from framework.estimation.settings import MemorySettings
from framework.estimation.shapes import ModelShape, load_shape

QLORA = "recipes/llama3.1-8b-qlora.yaml"


def llama_8b(tmp_path) -> ModelShape:
    return load_shape(ModelConfig(name_or_path="meta-llama/Llama-3.1-8B"), cache_dir=tmp_path / "empty-hf-cache")


def test_one_tensor_as_bitsandbytes_stores_it():
    n = 14336 * 4096  # Llama-3.1-8B's down_proj
    blocks = n // 64
    # two codes a byte; an fp32 absmax per 64 weights and the 16-entry fp32 code table
    assert QuantSpec(double_quant=False).tensor_bytes(n) == (n // 2, 4 * blocks + 64)
    # double quant: an 8-bit absmax per block, an fp32 constant per 256 blocks, the 256-entry fp32 map, the offset
    assert QuantSpec().tensor_bytes(n) == (n // 2, blocks + 4 * (blocks // 256) + 64 + 1024 + 4)
    bits = [8 * QuantSpec(double_quant=d).tensor_bytes(n)[1] / n for d in (False, True)]
    assert bits[0] == pytest.approx(0.5, abs=1e-5) and bits[1] == pytest.approx(0.127, abs=1e-3)
    # a partial last block and an odd element count round up
    assert QuantSpec(double_quant=False).tensor_bytes(65) == (33, 2 * 4 + 64)


def test_qlora_states_of_llama_3_1_8b(tmp_path):
    """4-bit linear layers and their constants, the rest (embeddings, output layer, norms) in bf16 as
    loaded, fp32 adapters; gradients and AdamW states for the adapters only."""
    llama, spec = llama_8b(tmp_path), LoraSpec(16, ALL_LINEAR)
    lora = 41_943_040  # test_memory: r 16 on all-linear
    qlora = estimate_memory(llama, MemorySettings(micro_batch=1, max_seq_length=1024, precision="bf16",
                                                  weights_dtype="bfloat16", lora=spec, quantization=QuantSpec()))
    linear = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336)  # 6,979,321,856
    blocks = linear // 64
    nested = 32 * sum(-(-(i * o // 64) // 256) for i, o in llama.projections().values())
    constants = blocks + 4 * nested + 32 * 7 * (64 + 1028)
    unquantized = 2 * 128_256 * 4096 + (32 * 2 + 1) * 4096  # embeddings, the untied lm_head, the norms
    assert base_parts(llama, QuantSpec(), 2) == {"codes": linear // 2, "constants": constants,
                                                 "unquantized": 2 * unquantized}
    assert llama.num_parameters == linear + unquantized
    assert (qlora.weights, qlora.gradients, qlora.optimizer_states) == (
        linear // 2 + constants + 2 * unquantized + 4 * lora, 4 * lora, 8 * lora)
    assert "6,979,321,856 linear params × 4 bits" in qlora.details["weights"]
    plain = estimate_memory(llama, MemorySettings(micro_batch=1, max_seq_length=1024, precision="bf16",
                                                  weights_dtype="bfloat16", lora=spec))
    assert plain.weights - qlora.weights > 9 * 2**30  # 16 -> 4.13 bits a linear weight
    assert plain.activations == qlora.activations and plain.logits == qlora.logits


def test_one_dequantized_weight_is_the_working_copy(tmp_path):
    llama = llama_8b(tmp_path)
    n = 14336 * 4096

    def buffers(quantization: QuantSpec, **settings) -> int:
        return estimate_memory(llama, MemorySettings(micro_batch=1, max_seq_length=64, lora=LoraSpec(16, ALL_LINEAR),
                                                     quantization=quantization, **settings)).buffers

    assert buffers(QuantSpec()) == 2 * n + 2 * 4 * (n // 64)  # bf16 copy; the absmax restored in fp32, + offset
    assert buffers(QuantSpec(double_quant=False, compute_dtype="float32")) == 4 * n
    # autocast over fp32 weights: the output layer's 16-bit copy, none of the 4-bit layers', and a 16-bit
    # copy of every (fp32) adapter weight, which autocast caches until the forward ends
    assert buffers(QuantSpec(double_quant=False, compute_dtype="float32"), precision="bf16") == \
        4 * n + 2 * 128_256 * 4096 + 2 * 41_943_040


def test_quantization_needs_lora_and_known_values():
    with pytest.raises(ValueError, match="needs lora"):
        MemorySettings(micro_batch=1, max_seq_length=64, quantization=QuantSpec())
    with pytest.raises(ValueError, match="nf4 or fp4"):
        QuantSpec(method="int4")


def test_the_qlora_recipe_is_planned_with_its_4_bit_base(tmp_path):
    llama = llama_8b(tmp_path)
    loaded = load_recipe(QLORA)
    plan = estimate_for_recipe(loaded, llama)
    assert plan.settings["quantization"] == {"method": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    assert plan.settings["lora_trainable_params"] == 4 * 41_943_040  # r 64
    unquantized = estimate_for_recipe(load_recipe(QLORA, ["model.quantization=null"]), llama)
    four_bit = sum(base_parts(llama, QuantSpec(), 2).values())
    assert unquantized.weights - plan.weights == 2 * llama.num_parameters - four_bit
    assert plan.fits(24) and not unquantized.fits(24)


# --- against a model transformers quantizes with bitsandbytes --------------------------------------

def measured_parts(model) -> dict[str, int]:
    """Bytes of a quantized model's tensors by the planner's parts, plus its buffers (rotary tables)."""
    parts = dict.fromkeys(("codes", "constants", "unquantized", "buffers"), 0)
    for param in model.parameters():
        size = param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            parts["codes"] += size
            nested = [state.state2.absmax, state.state2.code, state.offset] if state.nested else []
            parts["constants"] += sum(t.numel() * t.element_size() for t in [state.absmax, state.code, *nested])
        else:
            parts["unquantized"] += size
    parts["buffers"] = sum(b.numel() * b.element_size() for b in model.buffers())
    return parts


def quantized(config: dict, folder, spec: QuantSpec, dtype: str):
    """The model of `config` saved, then loaded back with bitsandbytes, as the engine loads a 4-bit base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).save_pretrained(folder)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.method,
                             bnb_4bit_use_double_quant=spec.double_quant,
                             bnb_4bit_compute_dtype=getattr(torch, spec.compute_dtype))
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb, dtype=getattr(torch, dtype))


QUICKSTART = {**load_recipe("recipes/quickstart.yaml").recipe.model.config, "vocab_size": 628}
ODD = {"model_type": "qwen2", "vocab_size": 300, "hidden_size": 72, "intermediate_size": 100, "num_hidden_layers": 2,
       "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": False}  # partial blocks, biases


@pytest.mark.parametrize("config", [QUICKSTART, ODD], ids=["quickstart", "odd-sizes-qkv-bias"])
@pytest.mark.parametrize("spec, dtype", [(QuantSpec(compute_dtype="float32"), "float32"),
                                         (QuantSpec("fp4", False, "float32"), "float32"), (QuantSpec(), "bfloat16")],
                         ids=["nf4-double-fp32", "fp4-fp32", "nf4-double-bf16"])
def test_every_part_matches_a_model_quantized_by_bitsandbytes(config, spec, dtype, tmp_path):
    model = quantized(config, tmp_path / "model", spec, dtype)
    got, planned = measured_parts(model), base_parts(ModelShape.from_config(config), spec, {"float32": 4}.get(dtype, 2))
    rotary = got.pop("buffers")
    assert got == planned
    assert 0 < rotary < 1024  # the rotary frequency tables: not planned, a few hundred bytes


@pytest.mark.slow
def test_smollm2_quantized_matches_the_plan_tensor_by_tensor(smollm2):
    """SmolLM2-135M-Instruct (30 layers, tied 49,152-token embeddings) loaded in 4 bits: each part."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    spec = QuantSpec(compute_dtype="float32")
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(smollm2, quantization_config=bnb, dtype=torch.float32)
    got = measured_parts(model)
    got.pop("buffers")
    assert got == base_parts(ModelShape.from_config(json.loads((smollm2 / "config.json").read_text())), spec, 4)
