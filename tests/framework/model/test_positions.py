"""max_seq_length against the model's own position limit: a warning where positions past it were
never trained (rotary models run on), an error where the model cannot run past it (learned positions);
in `seqtune check` from the config alone, and in `seqtune train` from the loaded model."""
from __future__ import annotations

import pytest

from framework.estimation.shapes import length_problem

LLAMA = {"model_type": "llama", "max_position_embeddings": 64}
GPT2 = "{model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2, n_positions: 64}"


def test_length_problem_warns_for_rotary_and_refuses_learned_positions():
    assert length_problem(LLAMA, 64, "here") is None
    is_error, message = length_problem(LLAMA, 128, "here")
    assert not is_error and "128" in message and "max_position_embeddings 64" in message
    is_error, message = length_problem({"model_type": "gpt2", "n_positions": 64}, 65, "here")
    assert is_error and "65" in message and "64 learned position embeddings" in message
    assert "data.max_seq_length=64" in message
    assert length_problem({"model_type": "llama"}, 10**6, "here") is None  # no limit stated: nothing to say


def test_check_warns_with_both_numbers_and_still_validates(seqtune, tmp_path):
    result = seqtune("check", "recipes/quickstart.yaml", "model.config.max_position_embeddings=64",
                     f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert "data.max_seq_length: 128 is beyond the model's max_position_embeddings 64" in line
    assert "recipes/quickstart.yaml" in line  # the file that set max_seq_length


def test_check_refuses_a_length_past_learned_positions(seqtune):
    result = seqtune("check", "recipes/quickstart.yaml", f"model.config={GPT2}")
    assert result.returncode == 2 and result.stdout == ""
    assert "128 is beyond the model's 64 learned position embeddings" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_train_warns_from_the_loaded_models_config(seqtune, tmp_path):
    result = seqtune("train", "recipes/quickstart.yaml", "model.config.max_position_embeddings=96",
                     "train.max_steps=1", f"output_dir={tmp_path / 'out'}", f"data.cache_dir={tmp_path / 'cache'}",
                     "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 32}]")
    assert result.returncode == 0, result.stderr
    assert "128 is beyond the model's max_position_embeddings 96" in result.stderr


@pytest.mark.slow
def test_train_refuses_learned_positions_before_writing_anything(seqtune, tmp_path):
    out = tmp_path / "out"
    result = seqtune("train", "recipes/quickstart.yaml", f"model.config={GPT2}", f"output_dir={out}",
                     f"data.cache_dir={tmp_path / 'cache'}",
                     "data.mixture=[{source: recipes/quickstart/data/train.jsonl, count: 32}]")
    assert result.returncode == 2, result.stderr
    assert "learned position embeddings" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
