"""plugins.first_rows: each local loader's `first_row`, the row `seqtune check` tries. It is the row
the loader itself reads first, found without reading the rest of the source, and a problem in what it
reads is the loader's own one-line error."""
from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from framework import SourceTable
from framework.errors import UserError
from plugins.datasets import load_csv, load_disk, load_json, load_parquet
from plugins.first_rows import first_csv_row, first_json_row, first_parquet_row, first_saved_row

ROWS = [{"instruction": f"task {i}", "output": f"out {i}", "note": "é ✓"} for i in range(3)]
JUNK = b"\xff\xfe this is not JSON, CSV or UTF-8 {[\n"  # after the first row: never read


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    return tmp_path


def error_line(read, source, split: str = "train") -> str:
    with pytest.raises(UserError) as info:
        read(str(source), split)
    (line,) = info.value.problems
    return line


def first_of(loaded) -> dict:
    """A loader's first row as a dict (arrow tables hold a column a row lacks as null: left out)."""
    loaded = loaded.dataset if isinstance(loaded, SourceTable) else loaded
    return {k: v for k, v in dict(loaded[0]).items() if v is not None}


def write_all(here: Path) -> dict[str, Path]:
    """The same rows as every kind of local source."""
    (here / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (here / "rows.json").write_text(json.dumps(ROWS))
    datasets.Dataset.from_list(ROWS).to_csv(str(here / "rows.csv"), index=False)
    datasets.Dataset.from_list(ROWS).to_parquet(str(here / "rows.parquet"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(here / "saved"))
    return {"jsonl": here / "rows.jsonl", "json": here / "rows.json", "csv": here / "rows.csv",
            "parquet": here / "rows.parquet", "saved": here / "saved"}


@pytest.mark.parametrize("kind, read, load", [("jsonl", first_json_row, load_json), ("json", first_json_row, load_json),
                                              ("csv", first_csv_row, load_csv),
                                              ("parquet", first_parquet_row, load_parquet),
                                              ("saved", first_saved_row, load_disk)])
def test_the_first_row_is_the_loaders_first_row(here, kind, read, load):
    source = str(write_all(here)[kind])
    (row,) = read(source, "train")
    assert row == first_of(load(source, "train")) == ROWS[0]


@pytest.mark.parametrize("content", [b',prompt,completion,input\n\n0,2+2?,4,\n1,NA,6,x\n',
                                     b'\xef\xbb\xbf\nprompt,completion\nNA,"two\nlines"\n', b"a,b,c\n1,2\n"],
                         ids=["index-numbers-empty", "bom-blank-quoted", "short-record"])
def test_a_csv_first_row_is_load_csvs_cell_for_cell(here, content):
    (here / "rows.csv").write_bytes(content)
    loaded = load_csv("rows.csv", "train")
    assert first_csv_row("rows.csv", "train") == [dict(loaded[0])]


def test_every_local_loader_declares_its_first_row_and_the_hub_none():
    from plugins.datasets import load_hub

    assert all(callable(load.first_row) for load in (load_json, load_csv, load_parquet, load_disk))
    assert not hasattr(load_hub, "first_row")  # a hub dataset is never read by a check


# -- only the head is read --------------------------------------------------------------------------

def test_jsonl_reads_to_its_first_nonblank_line_and_names_it(here):
    (here / "rows.jsonl").write_bytes(b"\xef\xbb\xbf\n  \n" + json.dumps(ROWS[1]).encode() + b"\n" + JUNK)
    rows = first_json_row("rows.jsonl", "train")
    assert list(rows) == [ROWS[1]] and rows.files == [("rows.jsonl", True)] and list(rows.numbers) == [3]


def test_a_json_list_is_read_until_its_first_element_parses(here):
    big = {"text": "ü" * 200_000, "id": 1}  # multi-byte characters across the 64 KiB reads
    (here / "rows.json").write_bytes(b" \n[\n " + json.dumps(big, ensure_ascii=False).encode() + b",\n" + JUNK)
    rows = first_json_row("rows.json", "train")
    assert list(rows) == [big] and rows.files == [("rows.json", False)]


def test_a_json_file_of_splits_gives_the_splits_first_row(here):
    (here / "rows.json").write_text(json.dumps({"validation": ROWS[:1], "train": ROWS[1:]}))
    assert list(first_json_row("rows.json", "train")) == [ROWS[1]]
    assert error_line(first_json_row, "rows.json", "test") == error_line(load_json, "rows.json", "test")


def test_csv_reads_a_quoted_multiline_first_record_and_nothing_after(here):
    (here / "rows.csv").write_bytes(b'\xef\xbb\xbfprompt,completion\n"two\nlines",yes,extra\n' + JUNK)
    assert first_csv_row("rows.csv", "train") == [{"prompt": "two\nlines", "completion": "yes"}]


def test_parquet_and_csv_folders_skip_files_without_rows(here):
    folder = here / "shards"
    folder.mkdir()
    (folder / "a.csv").write_text("prompt,completion\n")
    (folder / "b.csv").write_text("prompt,completion\nhi,yo\n")
    datasets.Dataset.from_list(ROWS).select([]).to_parquet(str(folder / "a.parquet"))  # no rows
    datasets.Dataset.from_list(ROWS).to_parquet(str(folder / "b.parquet"))
    assert first_csv_row("shards", "train") == [{"prompt": "hi", "completion": "yo"}]
    assert first_parquet_row("shards", "train") == ROWS[:1]


def test_a_saved_dataset_dict_gives_the_splits_first_row(here):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:1]),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(str(here / "saved"))
    assert first_saved_row("saved", "test") == ROWS[2:]
    assert error_line(first_saved_row, "saved", "dev") == error_line(load_disk, "saved", "dev")


# -- problems are the loader's ----------------------------------------------------------------------

@pytest.mark.parametrize("name, content", [("rows.jsonl", b"\n\n"), ("rows.jsonl", b'\n["a list"]\n'),
                                           ("rows.jsonl", b'\n{"a": }\n'), ("rows.jsonl", b"\n{\"a\": \"\xe9\"}\n"),
                                           ("rows.json", b"[]"), ("rows.json", b'[{"a": ]'), ("rows.json", b"[1, 2]"),
                                           ("rows.csv", b""), ("rows.csv", b"a,b\n"), ("rows.csv", b"a,b\n\xe9,x\n"),
                                           ("rows.parquet", b"PAR1 not parquet")],
                         ids=["jsonl-blank", "jsonl-not-object", "jsonl-invalid", "jsonl-utf8", "json-empty",
                              "json-invalid", "json-not-object", "csv-empty", "csv-header-only", "csv-utf8",
                              "parquet-corrupt"])
def test_a_bad_head_is_the_loaders_error(here, name, content):
    (here / name).write_bytes(content)
    read, load = {".jsonl": (first_json_row, load_json), ".json": (first_json_row, load_json),
                  ".csv": (first_csv_row, load_csv), ".parquet": (first_parquet_row, load_parquet)}[Path(name).suffix]
    assert error_line(read, name) == error_line(load, name)


def test_a_missing_source_or_other_split_is_the_loaders_error(here):
    write_all(here)
    for read, load, name in [(first_json_row, load_json, "gone.jsonl"), (first_csv_row, load_csv, "gone.csv"),
                             (first_parquet_row, load_parquet, "gone.parquet")]:
        assert error_line(read, name) == error_line(load, name)
    for read, load, name in [(first_json_row, load_json, "rows.jsonl"), (first_csv_row, load_csv, "rows.csv"),
                             (first_parquet_row, load_parquet, "rows.parquet"), (first_saved_row, load_disk, "saved")]:
        assert error_line(read, name, "test") == error_line(load, name, "test")


def test_a_damaged_saved_dataset_is_one_line(here):
    write_all(here)
    next((here / "saved").glob("*.arrow")).write_bytes(b"not arrow")
    assert error_line(first_saved_row, "saved").startswith("saved: cannot read the saved dataset: ")
