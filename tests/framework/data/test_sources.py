"""framework.data.sources: loader auto-detection, column mapping, mixtures and their stats."""
from __future__ import annotations

import collections
import json

import datasets
import pytest

from framework.config.schema import MixtureEntry
from framework.data.mixture import sample_indices
from framework.data.sources import pick_loader
from framework.errors import UserError
from seqtune_testing import mixture_rows


def entry(source, **kwargs) -> MixtureEntry:
    kwargs.setdefault("fraction", None if "count" in kwargs else 1.0)
    return MixtureEntry(source=str(source), **kwargs)


def one_line(info: pytest.ExceptionInfo) -> str:
    (line,) = info.value.problems
    assert "\n" not in line
    return line


# -- pick_loader -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, loader", [("a.json", "json"), ("a.jsonl", "json"), ("a.parquet", "parquet"),
                                          ("a.csv", "csv")])
def test_pick_loader_reads_the_file_suffix(tmp_path, name, loader):
    (tmp_path / name).write_text("x")
    assert pick_loader(entry(tmp_path / name)) == loader


def test_pick_loader_unknown_file_type_is_none(tmp_path):
    (tmp_path / "rows.txt").write_text("hello")
    assert pick_loader(entry(tmp_path / "rows.txt")) is None


@pytest.mark.parametrize("names, loader", [(["a.jsonl", "b.json"], "json"), (["a.parquet", "b.parquet"], "parquet"),
                                           (["a.csv", "README.md"], "csv"), (["a.csv", "b.parquet"], None),
                                           (["notes.txt"], None)])
def test_pick_loader_for_a_folder_uses_its_files(tmp_path, names, loader):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in names:
        (folder / name).write_text("x")
    assert pick_loader(entry(folder)) == loader


@pytest.mark.parametrize("marker", ["dataset_info.json", "state.json", "dataset_dict.json"])
def test_pick_loader_recognises_save_to_disk_folders_by_their_markers(tmp_path, marker):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / marker).write_text("{}")
    assert pick_loader(entry(folder)) == "disk"


def test_pick_loader_on_real_save_to_disk_output(tmp_path):
    rows = datasets.Dataset.from_list([{"text": "a"}])
    rows.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "dict"))
    assert pick_loader(entry(tmp_path / "single")) == "disk"
    assert pick_loader(entry(tmp_path / "dict")) == "disk"


def test_pick_loader_non_path_is_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pick_loader(entry("allenai/tulu-3-sft-mixture")) == "hub"


@pytest.mark.parametrize("name", ["mydata/qa.cvs", "qa.tsv", "chats/", "./chats", "a/b/c"])
def test_pick_loader_a_missing_path_by_its_shape_is_no_hub_name(tmp_path, monkeypatch, name):
    """None: the recipe check calls it a file that is not there, instead of asking the hub for it."""
    monkeypatch.chdir(tmp_path)
    assert pick_loader(entry(name)) is None


@pytest.mark.parametrize("name", ["allenai/tulu-3-sft-mixture", "teknium/OpenHermes-2.5", "squad", "org/name-v1.2"])
def test_pick_loader_hub_names_with_versions_stay_hub_names(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert pick_loader(entry(name)) == "hub"


def test_pick_loader_keeps_an_explicit_loader(tmp_path):
    (tmp_path / "rows.txt").write_text("x")
    assert pick_loader(entry(tmp_path / "rows.txt", loader="json")) == "json"
    assert pick_loader(entry(tmp_path / "rows.txt", loader="csv")) == "csv"


def test_unknown_file_type_is_a_recipe_error_naming_the_entry(write_recipe, kit, tmp_path):
    (tmp_path / "rows.txt").write_text("hello")
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": tmp_path / "rows.txt", "fraction": 1.0}]))
    text = str(info.value)
    assert "data.mixture[0]" in text and "rows.txt" in text and "loader" in text


# -- sample_indices ----------------------------------------------------------------------------

def test_fraction_one_takes_every_row_once():
    assert sample_indices(10, entry("x", fraction=1.0), 3) == list(range(10))


def test_fraction_above_one_is_whole_copies_plus_a_seeded_share():
    picked = sample_indices(10, entry("x", fraction=2.5), 3)
    assert len(picked) == 25
    assert picked[:20] == list(range(10)) * 2
    assert len(set(picked[20:])) == 5
    counts = collections.Counter(picked)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5


def test_fraction_below_one_is_a_seeded_subset():
    half = sample_indices(10, entry("x", fraction=0.5), 3)
    assert len(half) == 5 and len(set(half)) == 5 and set(half) <= set(range(10))
    assert sample_indices(10, entry("x", fraction=0.5), 3) == half
    others = {tuple(sample_indices(10, entry("x", fraction=0.5), seed)) for seed in range(10)}
    assert len(others) > 1


@pytest.mark.parametrize("count", [1, 7, 10, 23, 40])
def test_count_is_exact_also_above_the_row_count(count):
    picked = sample_indices(10, entry("x", count=count), 0)
    assert len(picked) == count
    counts = collections.Counter(picked)
    assert max(counts.values()) - min(counts.values()) <= 1  # whole copies, then distinct extras
    assert set(picked) <= set(range(10))


# -- mixtures through prepare_data ------------------------------------------------------------

@pytest.fixture
def two_sources(tmp_path, kit):
    a = kit.write_jsonl(tmp_path / "a.jsonl", [kit.chat(f"a question {i}", f"a answer {i}") for i in range(20)])
    b = kit.write_jsonl(tmp_path / "b.jsonl", [kit.chat(f"b question {i}", f"b answer {i}") for i in range(10)])
    return a, b


def mixture_of(data) -> list[tuple[int, int]]:
    mixture = mixture_rows(data)
    return list(zip(mixture["source"], mixture["row"]))


def test_fraction_one_uses_all_rows_and_fraction_zero_none(two_sources, write_recipe, kit):
    a, b = two_sources
    data = kit.prepare(write_recipe([{"source": a, "fraction": 1.0}, {"source": b, "fraction": 0.0}]))
    assert sorted(mixture_of(data)) == [(0, row) for row in range(1, 21)]
    assert len(data.dataset) == 20 and data.report.rows_in == 20


def test_fraction_and_count_rows_and_stats(two_sources, write_recipe, kit):
    a, b = two_sources
    data = kit.prepare(write_recipe([{"source": a, "fraction": 2.5}, {"source": b, "count": 13}]))
    picked = mixture_of(data)
    per_source = collections.Counter(source for source, _ in picked)
    assert per_source == {0: 50, 1: 13}
    rows_a = collections.Counter(row for source, row in picked if source == 0)
    assert set(rows_a) == set(range(1, 21)) and sorted(rows_a.values()) == [2] * 10 + [3] * 10
    rows_b = collections.Counter(row for source, row in picked if source == 1)
    assert set(rows_b) == set(range(1, 11)) and sorted(rows_b.values()) == [1] * 7 + [2] * 3
    assert data.mixture_stats == {
        "rows": 63, "seed": 42,
        "sources": [{"source": str(a), "rows_available": 20, "rows_used": 50, "fraction": 2.5, "count": None},
                    {"source": str(b), "rows_available": 10, "rows_used": 13, "fraction": None, "count": 13}]}
    assert len(data.dataset) == 63


def test_the_mixture_rows_are_the_source_rows(two_sources, write_recipe, kit):
    a, b = two_sources
    data = kit.prepare(write_recipe([{"source": a, "fraction": 1.0}, {"source": b, "fraction": 1.0}]))
    mixture = mixture_rows(data)
    sources = [[json.loads(line) for line in path.read_text().splitlines()] for path in (a, b)]
    for row in mixture:
        assert row["messages"] == sources[row["source"]][row["row"] - 1]["messages"]
        assert row["text"] is None


def test_mixture_is_shuffled_across_sources(two_sources, write_recipe, kit):
    a, b = two_sources
    data = kit.prepare(write_recipe([{"source": a, "fraction": 1.0}, {"source": b, "fraction": 1.0}]))
    order = [source for source, _ in mixture_of(data)]
    assert sorted(order) == [0] * 20 + [1] * 10
    assert order != sorted(order) and order != sorted(order, reverse=True)
    assert 1 in order[:20]  # b's rows are not all at the end
    rows_a = [row for source, row in mixture_of(data) if source == 0]
    assert rows_a != sorted(rows_a)  # shuffled within a source too


def test_mixture_order_is_seeded(two_sources, write_recipe, kit):
    a, b = two_sources
    mixture = [{"source": a, "fraction": 0.5}, {"source": b, "count": 15}]
    first = mixture_of(kit.prepare(write_recipe(mixture, seed=1)))
    again = mixture_of(kit.prepare(write_recipe(mixture, seed=1, name="again.yaml")))
    other = mixture_of(kit.prepare(write_recipe(mixture, seed=2, name="other.yaml")))
    assert first == again
    assert first != other
    assert len(other) == len(first) == 25


def test_tokenized_rows_follow_the_mixture_order(tmp_path, write_recipe, kit, tiny_tokenizer):
    from seqtune_testing import encode_chat

    rows = kit.conversations(12)
    source = kit.write_jsonl(tmp_path / "rows.jsonl", rows)
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0}], max_seq_length=4096))
    expected = [encode_chat(tiny_tokenizer, rows[row - 1]["messages"]) for _, row in mixture_of(data)]
    assert kit.rows_of(data) == [(tuple(s.input_ids), tuple(s.labels)) for s in expected]
    assert data.lengths == [len(s.input_ids) for s in expected]
    (taken,) = data.take([[3, 0]])  # one row of two pieces
    assert (taken[0].input_ids, taken[0].labels) == (expected[3].input_ids, expected[3].labels)
    assert (taken[1].input_ids, taken[1].labels) == (expected[0].input_ids, expected[0].labels)
    (sliced,) = data.take([[(3, 1, 4)]])  # a slice of a row, as `wrapped` makes
    assert sliced[0].input_ids == expected[3].input_ids[1:4]


def test_write_mix_writes_the_rows_in_order_and_the_stats(two_sources, write_recipe, kit, tmp_path):
    a, b = two_sources
    data = kit.prepare(write_recipe([{"source": a, "count": 5}, {"source": b, "fraction": 1.0}]))
    mixture = mixture_rows(data)
    data.write_mix(tmp_path / "mix" / "nested", 1)
    lines = (tmp_path / "mix" / "nested" / "mixture.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == mixture.to_list()
    assert len(lines) == 15
    stats = json.loads((tmp_path / "mix" / "nested" / "mixture_stats.json").read_text())
    assert stats == data.mixture_stats
    assert [s["rows_used"] for s in stats["sources"]] == [5, 10]


def test_mixture_with_no_rows_is_a_clear_error(tmp_path, write_recipe, kit):
    a = kit.write_jsonl(tmp_path / "a.jsonl", [kit.chat("q", "a")])
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": a, "fraction": 0.0}]))
    assert "the mixture has no rows" in one_line(info)


def test_an_empty_source_file_is_named(tmp_path, write_recipe, kit):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": tmp_path / "empty.jsonl", "fraction": 1.0}]))
    assert one_line(info).startswith(f"{tmp_path / 'empty.jsonl'}: the file holds no rows")


def test_bad_row_names_the_file_and_its_line(tmp_path, write_recipe, kit):
    rows = [kit.chat("q", "a")] * 4
    rows[2] = {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "beep"}]}
    source = kit.write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0}]))
    line = one_line(info)
    assert line.startswith(f"{source}:3: ")
    assert "'robot'" in line


def test_bad_row_in_the_second_source_names_that_source(tmp_path, write_recipe, kit):
    good = kit.write_jsonl(tmp_path / "good.jsonl", [kit.chat("q", "a")] * 3)
    bad = kit.write_jsonl(tmp_path / "bad.jsonl", [kit.chat("q", "a"), {"messages": "hi"}])
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": good, "fraction": 1.0}, {"source": bad, "fraction": 1.0}]))
    assert one_line(info).startswith(f"{bad}:2: needs a 'messages' list")


def test_wrong_typed_content_in_a_later_row_is_a_user_error_naming_the_row(tmp_path, write_recipe, kit):
    rows = [kit.chat("q", "a"), kit.chat("q", "a"),
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}]
    source = kit.write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0}]))
    assert one_line(info).startswith(f"{source}:3: messages[1] needs a string 'content'")


def test_rows_keep_columns_that_the_first_row_lacks(tmp_path, write_recipe, kit):
    """alpaca's `input` is optional: a later row's input must reach the prompt."""
    rows = [{"instruction": "Say hi", "output": "hi"},
            {"instruction": "Add", "input": "2 and 3", "output": "5"}]
    source = kit.write_jsonl(tmp_path / "alpaca.jsonl", rows)
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0, "format": "alpaca"}]))
    by_row = {row["row"]: row["messages"] for row in mixture_rows(data)}
    assert by_row[1][0] == {"role": "user", "content": "Say hi"}
    assert by_row[2][0] == {"role": "user", "content": "Add\n\n2 and 3"}


# -- column mapping ----------------------------------------------------------------------------

def test_column_mapping_reads_the_mapped_column(tmp_path, write_recipe, kit):
    rows = [{"conversations": kit.chat(f"q{i}", f"a{i}")["messages"], "id": i} for i in range(3)]
    source = kit.write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0,
                                      "columns": {"messages": "conversations"}}]))
    by_row = {row["row"]: row["messages"] for row in mixture_rows(data)}
    assert by_row == {i + 1: rows[i]["conversations"] for i in range(3)}
    assert data.report.rows_kept == 3


def test_numeric_answers_in_a_csv_train_as_text(tmp_path, write_recipe, kit):
    (tmp_path / "math.csv").write_text("question,answer\n2+2?,4\n0.1+0.2?,0.3\n")
    data = kit.prepare(write_recipe([{"source": tmp_path / "math.csv", "fraction": 1.0, "format": "prompt_completion",
                                      "columns": {"prompt": "question", "completion": "answer"}}]))
    answers = sorted(row["messages"][1]["content"] for row in mixture_rows(data))
    assert answers == ["0.3", "4"] and data.report.rows_kept == 2


def test_column_mapping_for_prompt_completion(tmp_path, write_recipe, kit):
    source = kit.write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": "4"}])
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0, "format": "prompt_completion",
                                      "columns": {"prompt": "question", "completion": "answer"}}]))
    assert mixture_rows(data)[0]["messages"] == [{"role": "user", "content": "2+2?"},
                                                   {"role": "assistant", "content": "4"}]


def test_without_the_mapping_the_format_names_its_column_and_the_columns_there_are(tmp_path, write_recipe, kit):
    rows = [{"conversations": kit.chat("q", "a")["messages"], "id": 1}]
    source = kit.write_jsonl(tmp_path / "sharegpt.jsonl", rows)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0}]))
    assert one_line(info) == (f"{source}: data.mixture[0].format 'messages' needs column(s) messages (columns: "
                              "conversations, id); map them with data.mixture[0].columns: {messages: <column>}")


def test_a_column_the_format_needs_is_checked_against_every_row_of_a_json_source(tmp_path, write_recipe, kit):
    """JSON rows need not share keys: a column one later row has is there, and the row without it is
    the format's error about that row."""
    source = kit.write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "a"}, {"prompt": "b", "completion": "c"}])
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0, "format": "prompt_completion"}]))
    assert one_line(info) == f"{source}:1: needs a non-empty string column 'completion'"


def test_mapping_to_a_missing_column_names_the_source_and_the_columns(tmp_path, write_recipe, kit):
    rows = [{"dialogue": kit.chat("q", "a")["messages"], "id": 1}]
    source = kit.write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(UserError) as info:
        kit.prepare(write_recipe([{"source": source, "fraction": 1.0,
                                   "columns": {"messages": "conversations"}}]))
    line = one_line(info)
    assert line.startswith(f"{source}: data.mixture[0].columns")
    assert "conversations" in line and "dialogue" in line and "id" in line


@pytest.mark.parametrize("order", ["mapped_column_first", "mapped_column_last"])
def test_column_mapping_wins_over_a_column_already_named_like_the_target(tmp_path, write_recipe, kit, order):
    wanted, other = kit.chat("wanted", "yes")["messages"], kit.chat("other", "no")["messages"]
    row = {"conversations": wanted, "messages": other}
    if order == "mapped_column_last":
        row = {"messages": other, "conversations": wanted}
    source = kit.write_jsonl(tmp_path / "rows.jsonl", [row])
    data = kit.prepare(write_recipe([{"source": source, "fraction": 1.0,
                                      "columns": {"messages": "conversations"}}]))
    assert mixture_rows(data)[0]["messages"] == wanted


# -- hub sources ---------------------------------------------------------------------------------

def test_hub_source_not_cached_offline_is_one_line(tmp_path, write_recipe, kit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    loaded = write_recipe([{"source": "nobody/no-such-dataset-seqtune-test", "fraction": 1.0}])
    with pytest.raises(UserError) as info:
        kit.prepare(loaded)
    line = one_line(info)
    assert line.startswith("nobody/no-such-dataset-seqtune-test: cannot load split 'train'")
    assert not (tmp_path / "cache").exists()


# -- parquet, csv and disk sources through the pipeline ------------------------------------------

def test_parquet_csv_and_disk_sources_mix(tmp_path, write_recipe, kit, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    chats = [kit.chat(f"q{i}", f"a{i}") for i in range(3)]
    datasets.Dataset.from_list(chats).to_parquet(str(tmp_path / "chats.parquet"))
    alpaca = [{"instruction": "Add", "input": "2 and 3", "output": "5"},
              {"instruction": "Say hi", "input": "", "output": "hi"},
              {"instruction": "Say bye", "input": None, "output": "bye"}]
    datasets.Dataset.from_list(alpaca).to_csv(str(tmp_path / "alpaca.csv"), index=False)
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "plain prose"}]),
                          "test": datasets.Dataset.from_list([{"text": "held out prose"}])}
                         ).save_to_disk(str(tmp_path / "saved"))
    data = kit.prepare(write_recipe([{"source": tmp_path / "chats.parquet", "fraction": 1.0},
                                     {"source": tmp_path / "alpaca.csv", "fraction": 1.0, "format": "alpaca"},
                                     {"source": tmp_path / "saved", "fraction": 1.0, "format": "text",
                                      "split": "test"}]))
    got = {(row["source"], row["row"]): row["messages"] or row["text"] for row in mixture_rows(data)}
    assert got == {
        (0, 1): chats[0]["messages"], (0, 2): chats[1]["messages"], (0, 3): chats[2]["messages"],
        (1, 1): [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}],
        (1, 2): [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        (1, 3): [{"role": "user", "content": "Say bye"}, {"role": "assistant", "content": "bye"}],
        (2, 1): "held out prose"}
    assert data.report.rows_kept == 7

