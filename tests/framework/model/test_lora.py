"""LoRA through peft: what trains, one real optimizer step, and the saved adapter and merged model."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from framework.config import load_recipe
from framework.errors import UserError
from framework.model.lora import (_inputs_require_grad, apply_lora, linear_module_names, load_lora_weights, save_lora,
                            trainable_summary)
from framework.model.loading import build_model, param_groups

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_cfg(**changes):
    """The recipe's `lora:` section as the schema will hold it (r, alpha, dropout, target_modules, merge)."""
    return SimpleNamespace(**{"r": 4, "alpha": 8.0, "dropout": 0.05, "target_modules": "all-linear",
                              "merge": False, **changes})


@pytest.fixture
def make_model(tmp_path, repo, tiny_tokenizer):
    """make_model(*overrides) -> a tiny Llama (hidden 32, 2 layers) built by build_model, seed 0."""
    def make(*overrides: str):
        path = tmp_path / "recipe.yaml"
        path.write_text(f"output_dir: {tmp_path / 'out'}\n"
                        "model: {config: {model_type: llama, hidden_size: 32, intermediate_size: 64, "
                        "num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}}\n"
                        f"tokenizer: {{name_or_path: {repo / 'recipes/quickstart/tokenizer'}}}\n"
                        "data: {mixture: [{source: rows.jsonl, fraction: 1.0}]}\n")
        torch.manual_seed(0)  # the same base weights every time, so a rebuilt base matches
        return build_model(load_recipe(path, list(overrides)).recipe, tiny_tokenizer)

    return make


def batch():
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def logits(model):
    model.eval()  # no dropout: the comparisons below are exact up to float rounding
    with torch.no_grad():
        return model(**batch(), use_cache=False).logits


def train_one_step(model):
    """One AdamW step on the recipe's optimizer groups, as the engine builds them."""
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model), lr=1e-2)
    ids = batch()["input_ids"]
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture
def trained(make_model):
    """A LoRA model after one real optimizer step, and the base weights it started from."""
    model = make_model()
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    return train_one_step(apply_lora(model, lora_cfg())), base


def test_only_lora_weights_train_and_the_counts_add_up(make_model):
    base = make_model()
    base_total = sum(p.numel() for p in base.parameters())
    shapes = {name: (m.in_features, m.out_features) for name, m in base.named_modules()
              if name.rsplit(".", 1)[-1] in LINEAR}
    model = apply_lora(base, lora_cfg(r=4))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    expected = sum(4 * (fan_in + fan_out) for fan_in, fan_out in shapes.values())  # A: r x in, B: out x r
    assert len(shapes) == 2 * 7  # all-linear: every projection of both layers, lm_head left out
    summary = trainable_summary(model)
    assert summary["trainable"] == expected and summary["total"] == base_total + expected
    assert summary["trainable_fraction"] == pytest.approx(expected / (base_total + expected))


def test_an_explicit_list_adapts_only_those_modules(make_model):
    model = apply_lora(make_model(), lora_cfg(target_modules=["q_proj", "v_proj"]))
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1]
               for name, p in model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    assert model.peft_config["default"].lora_alpha == 8.0 and model.peft_config["default"].r == 4


@pytest.mark.parametrize("targets", [["q_prj"], ["q_proj", "v_prj"]])
def test_unknown_target_names_list_the_models_linear_modules(make_model, targets):
    model = make_model()
    with pytest.raises(UserError) as info:
        apply_lora(model, lora_cfg(target_modules=targets))
    (line,) = info.value.problems
    assert line.startswith("lora.target_modules: ") and targets[-1] in line and "\n" not in line
    assert all(name in line for name in LINEAR + ["lm_head"])
    assert "lora_" not in " ".join(n for n, _ in model.named_modules())  # nothing was wrapped


def test_peft_refusing_a_setting_is_one_user_error_line(make_model):
    with pytest.raises(UserError) as info:
        apply_lora(make_model(), lora_cfg(r=0))  # the schema's minimum stops this first; peft agrees
    (line,) = info.value.problems
    assert line.startswith("lora: ") and "`r`" in line and "\n" not in line


def test_linear_module_names_are_the_short_names(make_model):
    assert linear_module_names(make_model()) == sorted(LINEAR + ["lm_head"])


def test_a_missing_peft_package_is_a_user_error(make_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # what `import peft` meets when it is not installed
    with pytest.raises(UserError, match=r"lora needs the peft package: pip install 'seqtune\[peft\]'"):
        apply_lora(make_model(), lora_cfg())


def test_one_optimizer_step_moves_lora_weights_and_not_the_base(trained):
    model, before = trained
    for name, param in model.named_parameters():
        if ".lora_B." in name:  # B starts at zero, so only a real step makes it non-zero
            assert param.abs().sum() > 0
        elif ".lora_" not in name:
            # peft renames an adapted layer's weight to ...<layer>.base_layer.weight
            original = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(param, before[original]), name


def test_param_groups_hold_only_the_trainable_lora_weights(make_model):
    model = apply_lora(make_model(), lora_cfg())
    decay, no_decay = param_groups(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in decay["params"]} == trainable and no_decay["params"] == []


def test_saved_adapter_reloads_on_a_rebuilt_base_with_the_same_logits(trained, make_model, tmp_path,
                                                                       tiny_tokenizer):
    from peft import PeftModel

    model, _ = trained
    out = tmp_path / "run"
    save_lora(model, tiny_tokenizer, out, merge=False)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer_config.json").is_file() and not (out / "merged").exists()
    expected = logits(model)
    assert not torch.allclose(expected, logits(make_model()), atol=1e-5)  # the step changed the output
    reloaded = PeftModel.from_pretrained(make_model(), out)
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=0)


def test_resume_loads_the_adapter_into_a_freshly_wrapped_model(trained, make_model, tmp_path, tiny_tokenizer):
    model, _ = trained
    save_lora(model, tiny_tokenizer, tmp_path / "ckpt", merge=False)
    fresh = apply_lora(make_model(), lora_cfg())
    held = {id(p) for p in fresh.parameters()}
    load_lora_weights(fresh, tmp_path / "ckpt")
    torch.testing.assert_close(logits(fresh), logits(model), atol=1e-5, rtol=0)
    assert {id(p) for p in fresh.parameters()} == held  # an optimizer built before still holds them
    assert all(p.requires_grad for n, p in fresh.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("changes", [{"r": 2}, {"target_modules": ["q_proj"]}])
def test_resume_with_other_lora_settings_is_a_user_error(trained, make_model, tmp_path, tiny_tokenizer,
                                                         changes):
    save_lora(trained[0], tiny_tokenizer, tmp_path / "ckpt", merge=False)
    with pytest.raises(UserError, match=r"^checkpoint\.resume: the adapter in .* does not fit .*resume=never"):
        load_lora_weights(apply_lora(make_model(), lora_cfg(**changes)), tmp_path / "ckpt")


def test_merged_model_loads_without_peft_and_the_callers_model_is_untouched(trained, tmp_path,
                                                                            tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, _ = trained
    expected = logits(model)
    save_lora(model, tiny_tokenizer, tmp_path / "run", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=0)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "run" / "merged")) == len(tiny_tokenizer)
    # the merge ran on a copy: the caller still has its unmerged, trainable adapter
    assert any(".lora_B." in name and p.requires_grad for name, p in model.named_parameters())
    torch.testing.assert_close(logits(model), expected, atol=0, rtol=0)


def test_gradient_checkpointing_still_gives_lora_weights_gradients(make_model):
    model = apply_lora(make_model("model.gradient_checkpointing=true"), lora_cfg())
    base = model.get_base_model()
    assert base.get_input_embeddings()(batch()["input_ids"]).requires_grad  # the hook is in place
    model.train()
    ids = batch()["input_ids"]
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if ".lora_B." in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_input_grad_hook_is_added_once_and_only_when_checkpointing(make_model):
    plain, checkpointed = make_model(), make_model("model.gradient_checkpointing=true")
    for param in [*plain.parameters(), *checkpointed.parameters()]:  # frozen, as peft leaves a base
        param.requires_grad_(False)
    _inputs_require_grad(plain)
    assert not plain.get_input_embeddings()(batch()["input_ids"]).requires_grad
    embeddings = checkpointed.get_input_embeddings()
    checkpointed.disable_input_require_grads()  # transformers added one when checkpointing was enabled
    assert not embeddings(batch()["input_ids"]).requires_grad and not embeddings._forward_hooks
    _inputs_require_grad(checkpointed)
    _inputs_require_grad(checkpointed)
    assert embeddings(batch()["input_ids"]).requires_grad and len(embeddings._forward_hooks) == 1
