"""Tokenizer set-up, model building and the pre-flight checks."""
from __future__ import annotations

import pytest

from framework.config import load_recipe
from framework.errors import UserError
from framework.launch.preflight import preflight
from framework.model.loading import build_model, param_groups
from framework.model.tokenizer import add_bos, chat_template_source


@pytest.fixture
def recipe(tmp_path, repo):
    def make(*overrides: str):
        path = tmp_path / "recipe.yaml"
        path.write_text(f"output_dir: {tmp_path / 'out'}\n"
                        "model: {config: {model_type: llama, hidden_size: 32, intermediate_size: 64, "
                        "num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}}\n"
                        f"tokenizer: {{name_or_path: {repo / 'recipes/quickstart/tokenizer'}}}\n"
                        "data: {mixture: [{source: rows.jsonl, fraction: 1.0}]}\n")
        return load_recipe(path, list(overrides)).recipe

    return make


def test_add_bos_puts_bos_into_the_template_once(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.bos_token = "<|endoftext|>"
    add_bos(tokenizer)
    add_bos(tokenizer)  # idempotent: the template already starts with it
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|endoftext|><|im_start|>user") and text.count("<|endoftext|>") == 1


def test_add_bos_without_a_bos_token_is_an_error(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    with pytest.raises(UserError, match="tokenizer.add_bos"):
        add_bos(tokenizer)


def test_chat_template_by_name_file_or_source(tmp_path):
    templates = {"chatml": "{{ 'x' }}"}
    assert chat_template_source("chatml", templates) == "{{ 'x' }}"
    assert chat_template_source("{% for m in messages %}{% endfor %}", templates).startswith("{%")
    (tmp_path / "t.jinja").write_text("{{ 'file' }}")
    assert chat_template_source(str(tmp_path / "t.jinja"), templates) == "{{ 'file' }}"
    with pytest.raises(UserError, match="did you mean 'chatml'"):
        chat_template_source("chatm", templates)


def test_model_from_config_takes_vocab_and_special_ids_from_the_tokenizer(recipe, tiny_tokenizer):
    model = build_model(recipe(), tiny_tokenizer)
    assert model.config.vocab_size == len(tiny_tokenizer)
    assert model.config.eos_token_id == tiny_tokenizer.eos_token_id
    assert model.config.use_cache is False


def test_no_weight_decay_on_biases_and_norms(recipe, tiny_tokenizer):
    model = build_model(recipe(), tiny_tokenizer)
    decay, no_decay = param_groups(model)
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("norm" in names[id(p)] for p in no_decay["params"])


def test_preflight_names_the_override_for_each_missing_piece(recipe):
    with pytest.raises(UserError) as info:
        preflight(recipe("model.attn_implementation=flash_attention_2", "launch.device=auto"))  # no GPU here
    (line,) = info.value.problems
    assert "flash_attention_2" in line and "override model.attn_implementation=sdpa" in line
    preflight(recipe("launch.device=cpu"))  # a plain CPU run passes
