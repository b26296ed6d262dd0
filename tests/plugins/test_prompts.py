"""plugins.prompts (prompt_answer, ground_truth): prompt rows with a reference answer, formatted as
(messages, answer, None); their errors named by file and line through the real loader and source; and
objective sft refusing them by row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from framework import Prompt, UserError, is_prompt_row
from framework.data.pipeline import prepare_data
from framework.model.tokenizer import load_tokenizer
from framework.registry import load_and_bind
from plugins.prompts import ground_truth, prompt_answer, seqtune_register_dataset_formats
from seqtune_testing import formatted_source

USER = {"role": "user", "content": "What is 2+2?"}
TOKENIZER = str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart" / "tokenizer")


def test_both_formats_are_registered_with_their_columns():
    assert seqtune_register_dataset_formats() == {"prompt_answer": prompt_answer, "ground_truth": ground_truth}
    assert (prompt_answer.columns, ground_truth.columns) == (("prompt", "answer"), ("messages", "ground_truth"))


# -- the formats on their own --------------------------------------------------------------------

def test_prompt_answer_is_one_user_turn_and_its_answer():
    assert prompt_answer({"prompt": "What is 2+2?", "answer": "#### 4"}) == Prompt([USER], "#### 4")
    assert prompt_answer({"prompt": "What is 2+2?", "answer": 4}).answer == "4"


@pytest.mark.parametrize("row, problem", [
    ({"answer": "4"}, "needs a non-empty string column 'prompt'"),
    ({"prompt": "", "answer": "4"}, "needs a non-empty string column 'prompt'"),
    ({"prompt": "q"}, "needs a non-empty string (or number) column 'answer', got null"),
    ({"prompt": "q", "answer": "  "}, "needs a non-empty string (or number) column 'answer', got '  '"),
    ({"prompt": "q", "answer": True}, "needs a non-empty string (or number) column 'answer', got bool"),
])
def test_prompt_answer_refuses_a_malformed_row(row, problem):
    with pytest.raises(ValueError) as info:
        prompt_answer(row)
    assert str(info.value) == problem


@pytest.mark.parametrize("value, answer", [("4", "4"), (4, "4"), (2.5, "2.5"), (["4"], "4")])
def test_ground_truth_takes_open_instructs_values(value, answer):
    system = {"role": "system", "content": "Be brief."}
    assert ground_truth({"messages": [system, USER], "ground_truth": value}) == Prompt([system, USER], answer)


@pytest.mark.parametrize("row, problem", [
    ({"messages": [USER], "ground_truth": ["4", "5"]}, "column 'ground_truth', got a list of 2"),
    ({"messages": [USER], "ground_truth": {"a": 1}}, "column 'ground_truth', got dict"),
    ({"messages": [USER, {"role": "assistant", "content": "4"}], "ground_truth": "4"},
     "'messages' ends with an assistant turn; a prompt ends before the answer"),
    ({"messages": [], "ground_truth": "4"}, "'messages' is empty: a prompt needs at least one turn"),
    ({"messages": [{"role": "robot", "content": "x"}], "ground_truth": "4"}, "messages[0] has unknown role 'robot'"),
])
def test_ground_truth_refuses_a_malformed_row(row, problem):
    with pytest.raises(ValueError) as info:
        ground_truth(row)
    assert problem in str(info.value)


def test_a_prompt_row_is_told_from_a_text_or_a_chat():
    assert is_prompt_row([USER], "4")
    assert not is_prompt_row([], "plain text") and not is_prompt_row([USER], None)


# -- through a recipe: its loader, columns mapping and source ------------------------------------

def write(tmp_path: Path, rows: list[dict], mixture: dict) -> str:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "model": {"config": {"model_type": "llama"}},
        "tokenizer": {"name_or_path": TOKENIZER},
        "data": {"mixture": [{"source": "rows.jsonl", "fraction": 1.0, **mixture}],
                 "cache_dir": str(tmp_path / "cache")}}))
    return "recipe.yaml"


def formatted(path: str) -> list[tuple]:
    loaded, parts = load_and_bind(path)
    entry = loaded.recipe.data.mixture[0]
    source = formatted_source(parts.loaders[0](entry.source, entry.split), 0, entry, parts.formats[0])
    return source.formatted(range(len(source)))


def test_prompt_rows_through_the_loader_with_a_columns_mapping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"question": "What is 2+2?", "solution": "2+2=4\n#### 4"}, {"question": "And 3+3?", "solution": 6}]
    path = write(tmp_path, rows, {"format": "prompt_answer", "columns": {"prompt": "question", "answer": "solution"}})
    assert formatted(path) == [([USER], "2+2=4\n#### 4", None),
                               ([{"role": "user", "content": "And 3+3?"}], "6", None)]


def test_ground_truth_rows_through_the_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, [{"messages": [USER], "ground_truth": ["4"], "dataset": "gsm8k"}],
                 {"format": "ground_truth"})
    assert formatted(path) == [([USER], "4", None)]


def test_a_malformed_row_is_named_by_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"messages": [USER], "ground_truth": "4"}, {"messages": [USER], "ground_truth": None}]
    path = write(tmp_path, rows, {"format": "ground_truth"})
    with pytest.raises(UserError) as info:
        formatted(path)
    assert info.value.problems == ["rows.jsonl:2: needs a non-empty string (or number) column 'ground_truth', "
                                   "got null"]


def test_check_names_a_missing_column_before_reading_the_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, [{"question": "q", "answer": "4"}], {"format": "prompt_answer"})
    with pytest.raises(UserError) as info:
        load_and_bind(path)
    assert info.value.problems == [
        "rows.jsonl: data.mixture[0].format 'prompt_answer' needs column(s) prompt (columns: answer, question); map "
        "them with data.mixture[0].columns: {prompt: <column>}"]


def test_objective_sft_refuses_a_prompt_row_naming_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, [{"prompt": "What is 2+2?", "answer": "4"}], {"format": "prompt_answer"})
    loaded, parts = load_and_bind(path)
    tokenizer = load_tokenizer(loaded.recipe, parts.registry.entries["chat_templates"])
    with pytest.raises(UserError) as info:
        prepare_data(loaded.recipe, parts.loaders, parts.formats, parts.truncation, tokenizer)
    assert info.value.problems == [
        "rows.jsonl:1: is a prompt with a reference answer, for objective grpo; objective sft trains whole "
        "conversations: set objective: {name: grpo}, or give this source a conversation format (messages)"]
