"""What a loader returns reaches errors: `framework.Rows` name each row's file and line (or row),
plain rows and Datasets their position in the source; a source with no rows is named."""
from __future__ import annotations

import datasets
import pytest

from framework import Rows
from framework.config.schema import MixtureEntry
from seqtune_testing import formatted_source
from framework.errors import UserError
from plugins.formats import messages

GOOD_ROW = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD_ROW = {"messages": [{"role": "robot", "content": "beep"}]}


def formatted_error(loaded, source: str = "third/party") -> str:
    with pytest.raises(UserError) as info:
        formatted_source(loaded, 0, MixtureEntry(source=source, fraction=1.0), messages)
    (line,) = info.value.problems
    assert "\n" not in line
    return line


def test_a_loaders_rows_name_their_file_and_line_or_row():
    rows = Rows()
    rows.add_file("logs/day1.jsonl", [GOOD_ROW, GOOD_ROW], [2, 9])
    rows.add_file("logs/day2.jsonl", [GOOD_ROW, BAD_ROW], [1, 40])
    assert formatted_error(rows).startswith("logs/day2.jsonl:40: messages[0] has unknown role 'robot'")
    table = Rows()
    table.add_file("tables/a.parquet", [GOOD_ROW])
    table.add_file("tables/b.parquet", [GOOD_ROW, GOOD_ROW, BAD_ROW])
    assert formatted_error(table).startswith("tables/b.parquet: row 3: messages[0] has unknown role")


def test_formatted_rows_keep_their_names():
    rows = Rows()
    rows.add_file("a.jsonl", [GOOD_ROW, GOOD_ROW], [3, 5])
    rows.add_file("b.json", [GOOD_ROW])
    source = formatted_source(rows, 2, MixtureEntry(source="data", fraction=1.0), messages)
    assert [source.names(i) for i in range(3)] == ["a.jsonl:3", "a.jsonl:5", "b.json: row 1"]


def test_a_source_table_names_rows_by_file_and_physical_line(tmp_path):
    from framework import SourceTable

    (tmp_path / "a.jsonl").write_text("\n{}\n\n{}\n")  # rows on lines 2 and 4
    (tmp_path / "b.jsonl").write_text("{}\n")
    table = SourceTable(datasets.Dataset.from_dict({"messages": [GOOD_ROW["messages"]] * 3}),
                        [(str(tmp_path / "a.jsonl"), 2), (str(tmp_path / "b.jsonl"), 1)])
    source = formatted_source(table, 0, MixtureEntry(source="data", fraction=1.0), messages)
    assert [source.names(i) for i in range(3)] == [f"{tmp_path / 'a.jsonl'}:2", f"{tmp_path / 'a.jsonl'}:4",
                                                    f"{tmp_path / 'b.jsonl'}:1"]


def test_plain_rows_are_named_by_their_position_in_the_source():
    assert formatted_error([GOOD_ROW, GOOD_ROW, BAD_ROW]).startswith("third/party: row 3: messages[0] has unknown")
    assert formatted_error(iter([GOOD_ROW, BAD_ROW])).startswith("third/party: row 2: ")


def test_rows_with_locations_missing_are_a_loader_error():
    rows = Rows()
    rows.add_file("a.jsonl", [GOOD_ROW], [1])
    rows.append(GOOD_ROW)  # added without add_file: no location
    assert formatted_error(rows) == ("third/party: the loader returned 2 rows but 1 locations; "
                                     "build its Rows with add_file")


def test_a_source_with_no_rows_is_named():
    assert formatted_error([]) == "third/party: the source holds no rows; give it rows or remove it from data.mixture"
    empty_table = datasets.Dataset.from_dict({"messages": []})
    assert formatted_error(empty_table).startswith("third/party: the source holds no rows")


def test_a_lone_surrogate_from_a_loaders_python_strings_names_the_row():
    row = {"messages": [{"role": "user", "content": "bad \ud800"}, {"role": "assistant", "content": "a"}]}
    assert formatted_error([GOOD_ROW, row]) == ("third/party: row 2: holds \\ud800, half of a UTF-16 surrogate pair, "
                                                "not a character; fix or remove it")
