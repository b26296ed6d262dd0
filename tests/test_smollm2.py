"""A real pretrained model end to end: the shipped SmolLM2 recipes, shortened, teach it held-out tasks."""
from __future__ import annotations

import json

import pytest
from seqtune_testing import REPO, load_script

EVAL = REPO / "recipes/smollm2/data/eval.jsonl"


@pytest.fixture(scope="module")
def ask():
    return load_script("scripts/ask")


@pytest.fixture(scope="module")
def loss_before(ask, smollm2):
    return ask.held_out_loss(*ask.load(str(smollm2)), EVAL)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sft", "lora"])
def test_a_shipped_recipe_lowers_the_held_out_loss_and_saves_a_model_that_answers(
        recipe, seqtune, smollm2, ask, loss_before, tmp_path):
    out = tmp_path / recipe
    result = seqtune("train", f"recipes/smollm2/{recipe}.yaml", f"output_dir={out}",
                     f"model.name_or_path={smollm2}", "train.max_steps=6", "train.per_device_batch_size=4",
                     "scheduler={name: constant}", "logging.every_steps=1", "logging.loggers=[jsonl]")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["summary"]
    assert summary["steps"] == 6

    tokenizer, model = ask.load(str(out))  # a full model folder, or an adapter over the base model
    loss_after = ask.held_out_loss(tokenizer, model, EVAL)
    assert loss_after < 0.6 * loss_before, (loss_before, loss_after)
    replies = ask.answers(tokenizer, model, questions=("Uppercase: dog",), max_new_tokens=4)
    assert replies[0].strip(), replies


@pytest.mark.slow
def test_the_prepared_folder_is_an_ordinary_model_made_once(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    prepare = load_script("scripts/prepare_smollm2")
    weights = smollm2 / "model.safetensors"
    made = weights.stat().st_mtime_ns
    assert prepare.prepare(smollm2) == smollm2 and weights.stat().st_mtime_ns == made  # kept, not redone
    config = AutoConfig.from_pretrained(smollm2)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size) == ("llama", 30, 49152)
    assert getattr(config, "quantization_config", None) is None  # it saves like any model
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
