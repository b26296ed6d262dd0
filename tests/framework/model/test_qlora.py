"""QLoRA (model.quantization): the 4-bit base build_model loads, LoRA training on it, its merge, and the
recipes refused before anything runs."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from framework.config import load_recipe
from framework.errors import UserError
from framework.model.loading import build_model, param_groups
from framework.model.lora import apply_lora, merged_model, trainable_summary
from framework.model.quantization import storage_dtype

import bitsandbytes as bnb  # noqa: E402  (the test extra installs it: a missing one fails)

MODEL = ("{config: {model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
         "num_attention_heads: 2, num_key_value_heads: 1, tie_word_embeddings: true}}")
QLORA = ["model.quantization={compute_dtype: float32}", "lora={r: 4, alpha: 8, dropout: 0.0}"]
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture
def recipe(tmp_path, repo):
    """recipe(*overrides) -> a tiny Llama recipe (hidden 64, 2 layers, tied output layer)."""
    def make(*overrides: str):
        path = tmp_path / "recipe.yaml"
        path.write_text(f"output_dir: {tmp_path / 'out'}\nmodel: {MODEL}\n"
                        f"tokenizer: {{name_or_path: {repo / 'recipes/quickstart/tokenizer'}}}\n"
                        "data: {mixture: [{source: rows.jsonl, fraction: 1.0}]}\n")
        return load_recipe(path, list(overrides)).recipe

    return make


@pytest.fixture
def build(recipe, tiny_tokenizer):
    def make(*overrides: str):
        torch.manual_seed(0)  # the same base weights every time, as the engine's set_seed gives
        return build_model(recipe(*overrides), tiny_tokenizer)

    return make


def lora_section():
    """The recipe's lora section as the schema holds it."""
    return SimpleNamespace(r=4, alpha=8.0, dropout=0.0, target_modules="all-linear", merge=False)


def batch():
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids, "use_cache": False}


def test_linear_layers_are_4_bit_and_the_embeddings_output_layer_and_norms_are_not(build):
    model = build(*QLORA)
    quantized = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == PROJECTIONS
    assert type(model.lm_head) is torch.nn.Linear and type(model.model.embed_tokens) is torch.nn.Embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    norms = [p for name, p in model.named_parameters() if "norm" in name]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.quant_type == "nf4" and q_proj.compute_dtype == torch.float32
    assert q_proj.weight.dtype == torch.uint8  # packed, two weights a byte


def test_a_config_built_base_is_the_seeded_full_precision_base_quantized(build):
    plain, quantized = build(), build(*QLORA)
    layers = [(name, m) for name, m in quantized.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    for name, module in layers:
        original = plain.get_submodule(name).weight.detach()
        packed, _ = bnb.functional.quantize_4bit(original, quant_type="nf4", compress_statistics=True)
        assert torch.equal(module.weight.data, packed), name
    torch.testing.assert_close(quantized.model.embed_tokens.weight, plain.model.embed_tokens.weight, rtol=0, atol=0)


def test_a_saved_model_loads_quantized_as_the_same_weights_in_memory_quantize(build, recipe, tiny_tokenizer, tmp_path):
    build().save_pretrained(tmp_path / "base")
    from_folder = build_model(recipe(*QLORA, f"model.name_or_path={tmp_path / 'base'}", "model.config=null"),
                              tiny_tokenizer)
    in_memory = build(*QLORA)
    want, got = in_memory.state_dict(), from_folder.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[key], got[key]) for key in want)


def test_only_the_adapter_trains_and_the_counts_are_the_full_models(build):
    full = sum(p.numel() for p in build().parameters())
    model = apply_lora(build(*QLORA), lora_section())
    packed = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW(param_groups(model), lr=1e-2)
    model.train()
    model(**batch()).loss.backward()
    optimizer.step()
    assert all(".lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    assert all(torch.equal(p, packed[name]) for name, p in model.named_parameters() if name in packed)
    assert any(p.abs().sum() > 0 for name, p in model.named_parameters() if ".lora_B." in name)
    summary = trainable_summary(model)  # a packed 4-bit weight counts the weights it holds
    assert summary["total"] == full + summary["trainable"]


def test_evaluating_computes_what_training_computes_and_leaves_the_packed_weights_alone(build):
    """bitsandbytes repacks a 4-bit weight in place for bf16 CPU inference when called in eval mode without
    gradients (on CPUs with AVX512-BF16); seqtune's evaluation and reference scoring must not."""
    model = build(*QLORA)
    q_proj = model.model.layers[0].self_attn.q_proj
    packed, shape = q_proj.weight.data.clone(), q_proj.weight.quant_state.shape
    model.train()
    want = model(**batch()).logits.detach()
    model.eval()
    with torch.no_grad():
        got = model(**batch()).logits
    assert torch.equal(got, want)
    assert torch.equal(q_proj.weight.data, packed) and q_proj.weight.quant_state.shape == shape


def test_gradient_checkpointing_gives_the_adapter_the_same_gradients(build):
    def gradients(*overrides: str) -> dict:
        model = apply_lora(build(*QLORA, *overrides), lora_section())
        for name, param in model.named_parameters():
            if ".lora_B." in name:  # B starts at zero: A's gradient would be zero too
                torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(2))
        model.train()
        model(**batch()).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(), gradients("model.gradient_checkpointing=true")
    assert plain.keys() == checkpointed.keys() and all(g.abs().sum() > 0 for g in checkpointed.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def test_the_merge_is_a_full_precision_model_computing_what_the_adapter_on_the_4_bit_base_does(build, tmp_path):
    from transformers import AutoModelForCausalLM

    model = apply_lora(build(*QLORA), lora_section())
    optimizer = torch.optim.AdamW(param_groups(model), lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        want = model(**batch()).logits
    merged_model(model, model.state_dict()).save_pretrained(tmp_path / "merged")
    config = json.loads((tmp_path / "merged/config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name or name.endswith(("absmax", "quant_map")) for name in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch()).logits, want, rtol=0, atol=1e-5)
    assert any(".lora_B." in name and p.requires_grad for name, p in model.named_parameters())  # untouched


def test_the_merge_is_in_the_compute_dtype(build, tmp_path):
    model = apply_lora(build("model.quantization={compute_dtype: bfloat16}", "lora={r: 4}"), lora_section())
    merged = merged_model(model, model.state_dict())
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}


def test_zero3_stores_the_packed_weights_in_the_dtype_it_holds_every_parameter_in(recipe):
    assert storage_dtype(recipe(*QLORA)) == torch.uint8
    assert storage_dtype(recipe(*QLORA, "launch.deepspeed={zero_stage: 2}", "launch.mixed_precision=bf16")) == torch.uint8
    assert storage_dtype(recipe(*QLORA, "launch.deepspeed={zero_stage: 3}")) == torch.float32
    assert storage_dtype(recipe(*QLORA, "launch.deepspeed={zero_stage: 3}", "launch.mixed_precision=bf16")) == torch.bfloat16


def test_a_missing_bitsandbytes_names_the_extra_at_check_and_at_load(recipe, tiny_tokenizer, monkeypatch):
    checked = recipe(*QLORA)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` meets when it is not installed
    with pytest.raises(UserError) as info:
        recipe(*QLORA)
    (line,) = info.value.problems
    assert line.endswith("model.quantization: needs the bitsandbytes package: pip install 'seqtune[qlora]'")
    with pytest.raises(UserError, match=r"^model.quantization needs the bitsandbytes package: pip install 'seqtune\[qlora\]'$"):
        build_model(checked, tiny_tokenizer)  # a recipe checked where it was installed, run where it is not


def test_an_already_quantized_model_is_refused_at_check(recipe, tmp_path):
    (tmp_path / "gptq").mkdir()
    (tmp_path / "gptq/config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": "gptq", "bits": 4}}))
    with pytest.raises(UserError) as info:
        recipe(*QLORA, f"model.name_or_path={tmp_path / 'gptq'}", "model.config=null")
    (line,) = info.value.problems
    assert "model.name_or_path: " in line and "is already quantized (gptq)" in line


def test_a_model_with_no_layer_bitsandbytes_quantizes_is_one_line(build, monkeypatch):
    """What an architecture whose projections are not torch Linear layers meets (custom code)."""
    monkeypatch.setattr("transformers.integrations.replace_with_bnb_linear", lambda model, **kwargs: model)
    with pytest.raises(UserError) as info:
        build(*QLORA)
    (line,) = info.value.problems
    assert line.startswith("model.quantization: bitsandbytes found no linear layer to quantize in this model")
