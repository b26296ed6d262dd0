"""The preprocessing cache: a second run reads the rows instead of tokenizing; any change that
alters the rows gives a new key; an incomplete entry is never read."""
from __future__ import annotations

import shutil

import pytest

import framework.data.tokenize
from framework.data.cache import COMPLETE
from seqtune_testing import mixture_rows

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + ':\n' + message['content']"
                 " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                 "{{ '<|im_start|>assistant:\n' }}{% endif %}")


@pytest.fixture
def source(tmp_path, kit):
    return kit.write_jsonl(tmp_path / "chats.jsonl", kit.conversations(24))


@pytest.fixture
def base(source):
    """The recipe every variation below starts from."""
    return {"mixture": [{"source": source, "fraction": 1.5}], "max_seq_length": 100, "truncation": "right",
            "train_on": "assistant", "seed": 3, "tokenizer": None}


def make(write_recipe, spec: dict, name: str = "recipe.yaml"):
    spec = dict(spec)
    return write_recipe(spec.pop("mixture"), name=name, **spec)


def test_a_second_run_reads_the_cache_without_tokenizing(write_recipe, kit, base, tmp_path, monkeypatch):
    first = kit.prepare(make(write_recipe, base))
    assert not first.from_cache
    assert first.cache_path.parent == tmp_path / "cache" / "preprocessed"
    assert (first.cache_path / COMPLETE).is_file()
    rows, report, stats, mixture = kit.rows_of(first), first.report, first.mixture_stats, mixture_rows(first)

    def refuse(*args, **kwargs):
        raise AssertionError("tokenized although the rows were cached")

    monkeypatch.setattr(framework.data.tokenize, "encode_chats", refuse)
    second = kit.prepare(make(write_recipe, base, name="same.yaml"))
    assert second.from_cache and second.cache_path == first.cache_path
    assert kit.rows_of(second) == rows
    assert second.report == report and second.mixture_stats == stats
    assert second.lengths == first.lengths
    assert mixture_rows(second).to_list() == mixture.to_list()
    assert {"input_ids", "labels", "length"} <= set(second.dataset.column_names)
    # The patch is live: anything not cached now fails to tokenize.
    with pytest.raises(AssertionError, match="tokenized although"):
        kit.prepare(make(write_recipe, {**base, "max_seq_length": 99}, name="other.yaml"))


def write_same_size_change(path):
    text = path.read_text()
    changed = text.replace("answer 0.0", "answer 9.9", 1)
    assert changed != text and len(changed) == len(text)
    path.write_text(changed)


CHANGES = {
    "max_seq_length": lambda spec, source: {**spec, "max_seq_length": 101},
    "truncation": lambda spec, source: {**spec, "truncation": "left"},
    "truncation_turns": lambda spec, source: {**spec, "truncation": "turns"},
    "train_on": lambda spec, source: {**spec, "train_on": "last_assistant"},
    "chat_template": lambda spec, source: {**spec, "tokenizer": {"chat_template": CHAT_TEMPLATE}},
    "seed": lambda spec, source: {**spec, "seed": 4},
    "fraction": lambda spec, source: {**spec, "mixture": [{"source": source, "fraction": 1.25}]},
    "count": lambda spec, source: {**spec, "mixture": [{"source": source, "count": 30}]},
    "source_content": lambda spec, source: write_same_size_change(source) or spec,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_that_alters_the_rows_gives_a_new_key(write_recipe, kit, base, source, change):
    first = kit.prepare(make(write_recipe, base))
    changed = CHANGES[change](base, source)
    second = kit.prepare(make(write_recipe, changed, name="changed.yaml"))
    assert not second.from_cache
    assert second.cache_path != first.cache_path
    again = kit.prepare(make(write_recipe, changed, name="again.yaml"))
    assert again.from_cache and again.cache_path == second.cache_path


def test_the_changes_really_change_the_rows(write_recipe, kit, base, source):
    """Guards the test above: each variation tokenizes to different rows than the base."""
    rows = kit.rows_of(kit.prepare(make(write_recipe, base)))
    for change in sorted(CHANGES):
        if change == "source_content":
            continue
        spec = CHANGES[change](base, source)
        changed = kit.prepare(make(write_recipe, spec, name=f"{change}.yaml"))
        assert kit.rows_of(changed) != rows, change
    write_same_size_change(source)
    assert kit.rows_of(kit.prepare(make(write_recipe, base, name="edited.yaml"))) != rows


def test_a_cache_entry_without_its_completion_marker_is_not_used(write_recipe, kit, base, monkeypatch):
    first = kit.prepare(make(write_recipe, base))
    rows = kit.rows_of(first)
    (first.cache_path / COMPLETE).unlink()
    second = kit.prepare(make(write_recipe, base, name="same.yaml"))
    assert not second.from_cache and kit.rows_of(second) == rows
    assert (second.cache_path / COMPLETE).is_file()
    third = kit.prepare(make(write_recipe, base, name="again.yaml"))
    assert third.from_cache


def test_a_leftover_partial_directory_is_neither_used_nor_in_the_way(write_recipe, kit, base):
    first = kit.prepare(make(write_recipe, base))
    rows = kit.rows_of(first)
    partial = first.cache_path.with_name(f".partial-{first.cache_path.name}-1")
    shutil.copytree(first.cache_path, partial)
    (partial / COMPLETE).unlink()
    shutil.rmtree(first.cache_path)
    second = kit.prepare(make(write_recipe, base, name="same.yaml"))
    assert not second.from_cache and kit.rows_of(second) == rows
    assert second.cache_path == first.cache_path and (second.cache_path / COMPLETE).is_file()


def test_the_cache_defaults_to_seqtune_cache(write_recipe, kit, base, tmp_path, monkeypatch):
    monkeypatch.setenv("SEQTUNE_CACHE", str(tmp_path / "env-cache"))
    spec = dict(base)
    spec["cache_dir"] = None
    data = kit.prepare(make(write_recipe, spec))
    assert data.cache_path.parent == tmp_path / "env-cache" / "preprocessed"
    assert (data.cache_path / COMPLETE).is_file()
    assert not (tmp_path / "cache").exists()


def test_two_workers_give_the_same_rows_as_one(tmp_path, write_recipe, kit):
    rows = [kit.chat(f"question number {i}", f"answer number {i} " + "x " * (i % 13)) for i in range(1200)]
    source = kit.write_jsonl(tmp_path / "many.jsonl", rows)
    mixture = [{"source": source, "fraction": 1.0}]
    one = kit.prepare(write_recipe(mixture, max_seq_length=30, truncation="left", num_workers=1,
                                   cache_dir=str(tmp_path / "cache-1")))
    two = kit.prepare(write_recipe(mixture, max_seq_length=30, truncation="left", num_workers=2,
                                   cache_dir=str(tmp_path / "cache-2"), name="two.yaml"))
    assert not one.from_cache and not two.from_cache
    assert kit.rows_of(two) == kit.rows_of(one)
    assert two.report == one.report and two.report.rows_truncated > 0
    assert mixture_rows(two).to_list() == mixture_rows(one).to_list()


def test_a_second_run_on_a_save_to_disk_source_reads_the_cache(tmp_path, write_recipe, kit):
    import datasets

    datasets.Dataset.from_list(kit.conversations(6)).save_to_disk(str(tmp_path / "saved"))
    mixture = [{"source": tmp_path / "saved", "fraction": 1.0}]
    first = kit.prepare(write_recipe(mixture))
    second = kit.prepare(write_recipe(mixture, name="same.yaml"))
    assert not first.from_cache
    assert second.from_cache and second.cache_path == first.cache_path
    assert kit.rows_of(second) == kit.rows_of(first)


def test_two_workers_name_a_bad_row_like_one(tmp_path, write_recipe, kit):
    from framework.errors import UserError

    rows = [kit.chat(f"question number {i}", f"answer number {i}") for i in range(1200)]
    rows[1099] = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]}
    source = kit.write_jsonl(tmp_path / "many.jsonl", rows)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0}], num_workers=2))
    (line,) = info.value.problems
    assert line.startswith(f"{source}:1100: messages[1] has unknown role 'robot'")
