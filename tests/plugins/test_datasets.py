"""plugins.datasets: the json, parquet, csv, disk and hub loaders (files, folders, splits, errors)."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from framework import Rows, SourceTable
from framework.errors import UserError
from plugins.datasets import (load_csv, load_disk, load_hub, load_json, load_parquet,
                              seqtune_register_dataset_loaders)

ROW_A = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
ROW_B = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "id": 7}
TABLE = [{"instruction": f"task {i}", "input": f"in {i}", "output": f"out {i}"} for i in range(5)]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working directory, and datasets' own cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    return tmp_path


def error_line(load, source: str, split: str = "train") -> str:
    with pytest.raises(UserError) as info:
        load(source, split)
    (line,) = info.value.problems
    assert "\n" not in line
    return line


def plain(loaded) -> list[dict]:
    """A loader's rows as plain dicts. JSON Lines come back as arrow (a SourceTable), whose rows hold
    every column of the file: a key a row lacks is null there, and left out here."""
    rows = loaded.dataset.to_list() if isinstance(loaded, SourceTable) else list(loaded)
    return [_without_nulls(row) for row in rows]


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return [_without_nulls(v) for v in value] if isinstance(value, list) else value


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_every_builtin_loader_is_registered():
    assert seqtune_register_dataset_loaders() == {"json": load_json, "parquet": load_parquet, "csv": load_csv,
                                                  "disk": load_disk, "hub": load_hub}


# -- json: .jsonl and .json files ---------------------------------------------------------------

def test_jsonl_gives_one_row_per_line_skipping_blank_lines(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n\n" + json.dumps(ROW_B) + "\n   \n")
    assert plain(load_json("rows.jsonl", "train")) == [ROW_A, ROW_B]


def test_malformed_jsonl_line_names_file_and_line_number(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n" + json.dumps(ROW_B) + "\n"
                                     + '{"messages": [oops]}\n' + json.dumps(ROW_A) + "\n")
    assert error_line(load_json, "rows.jsonl").startswith("rows.jsonl:3: invalid JSON line")


def test_blank_lines_still_count_towards_line_numbers(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n\n{not json\n")
    assert error_line(load_json, "rows.jsonl").startswith("rows.jsonl:3: ")


def test_non_object_jsonl_line_is_an_error(here):
    (here / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n" + "[1, 2]\n")
    line = error_line(load_json, "rows.jsonl")
    assert line.startswith("rows.jsonl:2: ") and "expected a JSON object per line, got list" in line


def test_json_list_of_rows(here):
    (here / "rows.json").write_text(json.dumps([ROW_A, ROW_B]))
    assert plain(load_json("rows.json", "train")) == [ROW_A, ROW_B]


def test_json_split_dict_picks_the_split(here):
    (here / "splits.json").write_text(json.dumps({"train": [ROW_A], "validation": [ROW_B, ROW_A]}))
    assert plain(load_json("splits.json", "train")) == [ROW_A]
    assert plain(load_json("splits.json", "validation")) == [ROW_B, ROW_A]


def test_json_missing_split_lists_the_splits(here):
    (here / "splits.json").write_text(json.dumps({"train": [ROW_A], "validation": [ROW_B]}))
    assert error_line(load_json, "splits.json", "test") == \
        "splits.json: has no split 'test' (splits: train, validation)"


def test_invalid_json_names_file_and_line(here):
    (here / "rows.json").write_text('[\n  {"messages": []},\n  {oops}\n]\n')
    assert error_line(load_json, "rows.json").startswith("rows.json:3: invalid JSON")


def test_json_that_is_not_rows_is_an_error(here):
    (here / "rows.json").write_text("42")
    assert error_line(load_json, "rows.json") == "rows.json: expected a list of rows"
    (here / "splits.json").write_text(json.dumps({"train": "not rows"}))
    assert error_line(load_json, "splits.json") == "splits.json: expected a list of rows"


def test_json_rows_must_be_objects(here):
    (here / "rows.json").write_text(json.dumps([ROW_A, "just text", 5]))
    assert error_line(load_json, "rows.json") == "rows.json: row 2: expected a JSON object, got str"


def test_missing_file_is_an_error(here):
    assert error_line(load_json, "nowhere.jsonl") == "nowhere.jsonl: no such file or folder"


# -- json: folders -------------------------------------------------------------------------------

def test_json_folder_reads_every_file_in_sorted_order(here):
    jsonl(here / "data" / "b.jsonl", [{"n": 3}, {"n": 4}])
    (here / "data" / "a.json").write_text(json.dumps([{"n": 1}, {"n": 2}]))
    jsonl(here / "data" / "c" / "part.jsonl", [{"n": 5}])
    (here / "data" / "notes.txt").write_text("not rows")
    (here / "data" / "c" / "README.md").write_text("not rows either")
    assert plain(load_json("data", "train")) == [{"n": n} for n in range(1, 6)]


def test_json_folder_bad_line_names_the_file_in_the_folder(here):
    jsonl(here / "data" / "a.jsonl", [{"n": 1}])
    (here / "data" / "b.jsonl").write_text('{"n": 2}\n{"n": \n')
    line = error_line(load_json, "data")
    assert line.startswith(f"{Path('data') / 'b.jsonl'}:2: invalid JSON line")


def test_json_rows_say_which_file_and_line_they_come_from(here):
    (here / "data" / "b").mkdir(parents=True)
    (here / "data" / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(ROW_A).encode() + b"\n\n  \n"
                                            + json.dumps(ROW_B).encode() + b"\r\n")
    (here / "data" / "b" / "c.json").write_text(json.dumps([ROW_B, ROW_A], indent=2))
    rows = load_json("data", "train")
    assert isinstance(rows, Rows) and plain(rows) == [ROW_A, ROW_B, ROW_B, ROW_A]
    assert rows.files == [(str(Path("data") / "a.jsonl"), True), (str(Path("data") / "b" / "c.json"), False)]
    assert list(rows.file_of) == [0, 0, 1, 1] and list(rows.numbers) == [1, 4, 1, 2]


def test_rows_add_file_checks_its_line_numbers():
    rows = Rows()
    with pytest.raises(ValueError, match="2 rows but 1 line numbers"):
        rows.add_file("x.jsonl", [ROW_A, ROW_B], [3])


def test_jsonl_lines_end_at_newlines_only(here):
    (here / "rows.jsonl").write_bytes(b'{"n": 1}\r\n\r\n{"n": 2}\r\n{"n":\r 3}\n')
    rows = load_json("rows.jsonl", "train")
    assert plain(rows) == [{"n": 1}, {"n": 2}, {"n": 3}] and rows.files == [("rows.jsonl", 3)]


def test_invalid_utf8_far_into_a_file_names_its_line(here):
    good = (json.dumps(ROW_A) + "\n").encode() * 20_000  # beyond the text decoder's first chunks
    (here / "rows.jsonl").write_bytes(good + b"\n" + b'{"a": "\xc3\x28"}\n')
    assert error_line(load_json, "rows.jsonl") == ("rows.jsonl:20002: not valid UTF-8 (byte 0xc3 at byte 8 of "
                                                   "the line); save the file as UTF-8")


def test_json_folder_without_json_files_is_an_error(here):
    (here / "data").mkdir()
    (here / "data" / "rows.csv").write_text("a,b\n1,2\n")
    assert error_line(load_json, "data") == "data: folder holds no .jsonl or .json files"


# -- local files have a single split, 'train' ---------------------------------------------------

def test_local_jsonl_and_json_list_refuse_other_splits(here):
    jsonl(here / "rows.jsonl", [ROW_A])
    (here / "rows.json").write_text(json.dumps([ROW_A]))
    for source in ("rows.jsonl", "rows.json"):
        line = error_line(load_json, source, "test")
        assert line == f"{source}: local files have one split, 'train' (got split 'test')"


def test_local_parquet_and_csv_refuse_other_splits(here):
    datasets.Dataset.from_list(TABLE).to_parquet(str(here / "rows.parquet"))
    datasets.Dataset.from_list(TABLE).to_csv(str(here / "rows.csv"), index=False)
    assert "local files have one split, 'train' (got split 'validation')" in \
        error_line(load_parquet, "rows.parquet", "validation")
    assert "local files have one split, 'train' (got split 'test')" in error_line(load_csv, "rows.csv", "test")


# -- parquet and csv --------------------------------------------------------------------------

def test_parquet_file(here):
    datasets.Dataset.from_list(TABLE).to_parquet(str(here / "rows.parquet"))
    loaded = load_parquet("rows.parquet", "train")
    assert isinstance(loaded, datasets.Dataset)
    assert loaded.to_list() == TABLE


def test_parquet_folder_reads_every_file_in_sorted_order(here):
    (here / "shards" / "later").mkdir(parents=True)
    datasets.Dataset.from_list(TABLE[2:4]).to_parquet(str(here / "shards" / "b.parquet"))
    datasets.Dataset.from_list(TABLE[:2]).to_parquet(str(here / "shards" / "a.parquet"))
    datasets.Dataset.from_list(TABLE[4:]).to_parquet(str(here / "shards" / "later" / "c.parquet"))
    (here / "shards" / "notes.txt").write_text("ignored")
    assert load_parquet("shards", "train").to_list() == TABLE


def test_messages_survive_a_parquet_round_trip(here):
    datasets.Dataset.from_list([ROW_A, {"messages": ROW_B["messages"]}]).to_parquet(str(here / "chat.parquet"))
    assert load_parquet("chat.parquet", "train")["messages"] == [ROW_A["messages"], ROW_B["messages"]]


def test_csv_file(here):
    datasets.Dataset.from_list(TABLE).to_csv(str(here / "rows.csv"), index=False)
    loaded = load_csv("rows.csv", "train")
    assert loaded.to_list() == TABLE


def test_csv_folder_reads_every_file_in_sorted_order(here):
    (here / "tables").mkdir()
    datasets.Dataset.from_list(TABLE[3:]).to_csv(str(here / "tables" / "2.csv"), index=False)
    datasets.Dataset.from_list(TABLE[:3]).to_csv(str(here / "tables" / "1.csv"), index=False)
    assert load_csv("tables", "train").to_list() == TABLE


AS_WRITTEN = b',prompt,completion,input\n0,2+2?,4,\n\n1,NA,"6",None\n2,q,007,\n'  # pandas' index column first


def test_csv_cells_are_text_as_written(here):
    """A CSV has no types: `4`, `NA` and an empty cell are the text they are, not a number or a gap that
    no format could read as text (a column of numeric answers would never train)."""
    (here / "rows.csv").write_bytes(AS_WRITTEN)
    assert load_csv("rows.csv", "train").to_list() == [
        {"Unnamed: 0": "0", "prompt": "2+2?", "completion": "4", "input": ""},
        {"Unnamed: 0": "1", "prompt": "NA", "completion": "6", "input": "None"},
        {"Unnamed: 0": "2", "prompt": "q", "completion": "007", "input": ""}]


def test_unreadable_parquet_names_the_source(here):
    (here / "broken.parquet").write_bytes(b"this is not parquet at all")
    line = error_line(load_parquet, "broken.parquet")
    assert line.startswith("broken.parquet: cannot read as parquet: ")


def test_csv_that_is_not_utf8_names_the_line_and_nothing_else_is_printed(here, capfd):
    (here / "rows.csv").write_bytes(b"instruction,output\nhi,yo\n\ncaf\xe9,x\n")
    assert error_line(load_csv, "rows.csv") == ("rows.csv:4: not valid UTF-8 (byte 0xe9 at byte 4 of the line); "
                                                "save the file as UTF-8")
    assert "Failed to read" not in capfd.readouterr().err


def test_a_csv_with_a_bom_is_read(here):
    (here / "rows.csv").write_bytes(b"\xef\xbb\xbfinstruction,output\nhi,yo\n")
    assert load_csv("rows.csv", "train").to_list() == [{"instruction": "hi", "output": "yo"}]


@pytest.mark.parametrize("name", ["header.csv", "blank.csv", "none.parquet"])
def test_an_empty_csv_or_parquet_file_is_named(here, name):
    shards = here / "shards"
    shards.mkdir()
    if name.endswith(".csv"):
        (shards / name).write_text("instruction,output\n" if name == "header.csv" else "")
        datasets.Dataset.from_list(TABLE).to_csv(str(shards / "0.csv"), index=False)
    else:
        datasets.Dataset.from_list(TABLE).select([]).to_parquet(str(shards / name))
        datasets.Dataset.from_list(TABLE).to_parquet(str(shards / "0.parquet"))
    load = load_csv if name.endswith(".csv") else load_parquet
    assert error_line(load, f"shards/{name}").startswith(f"shards/{name}: the file holds no rows")
    if name == "blank.csv":  # not even a header: the folder cannot be read, and the file is named
        assert error_line(load, "shards").startswith(f"{Path('shards') / name}: the file holds no rows")
    else:  # an empty shard beside others adds no rows, as an empty .jsonl in a folder does
        assert load("shards", "train").to_list() == TABLE


def test_a_damaged_saved_dataset_is_one_line(here):
    datasets.Dataset.from_list(TABLE).save_to_disk(str(here / "saved"))
    for arrow in (here / "saved").glob("*.arrow"):
        arrow.write_bytes(b"not arrow at all")
    assert error_line(load_disk, "saved").startswith("saved: cannot read the saved dataset: ")


def test_missing_parquet_and_csv_sources(here):
    assert error_line(load_parquet, "none.parquet") == "none.parquet: no such file or folder"
    (here / "empty").mkdir()
    assert error_line(load_csv, "empty") == "empty: folder holds no .csv files"


# -- disk: save_to_disk folders -----------------------------------------------------------------

def test_disk_dataset(here):
    datasets.Dataset.from_list(TABLE).save_to_disk(str(here / "saved"))
    assert load_disk("saved", "train").to_list() == TABLE


def test_disk_dataset_has_only_the_train_split(here):
    datasets.Dataset.from_list(TABLE).save_to_disk(str(here / "saved"))
    assert error_line(load_disk, "saved", "test") == "saved: local files have one split, 'train' (got split 'test')"


def test_disk_dataset_dict_picks_the_split(here):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TABLE[:3]),
                          "test": datasets.Dataset.from_list(TABLE[3:])}).save_to_disk(str(here / "saved"))
    assert load_disk("saved", "train").to_list() == TABLE[:3]
    assert load_disk("saved", "test").to_list() == TABLE[3:]


def test_disk_dataset_dict_missing_split_lists_the_splits(here):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(TABLE[:3]),
                          "test": datasets.Dataset.from_list(TABLE[3:])}).save_to_disk(str(here / "saved"))
    line = error_line(load_disk, "saved", "validation")
    assert line.startswith("saved: has no split 'validation' (splits: ")
    assert "train" in line and "test" in line


def test_disk_folder_that_is_not_a_saved_dataset(here):
    (here / "plain").mkdir()
    (here / "plain" / "rows.jsonl").write_text(json.dumps(ROW_A) + "\n")
    assert error_line(load_disk, "plain").startswith("plain: not a saved dataset folder")


# -- hub --------------------------------------------------------------------------------------------

def test_hub_dataset_not_cached_offline_is_one_line(here):
    line = error_line(load_hub, "nobody/no-such-dataset-seqtune-test")
    assert line.startswith("nobody/no-such-dataset-seqtune-test: cannot load split 'train' with "
                           "datasets.load_dataset: ")
    assert line.endswith("(offline runs need the dataset in the local Hugging Face cache)")
    assert "Traceback" not in line
