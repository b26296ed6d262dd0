"""JSON Lines at scale, for the `json` dataset loader: pyarrow's native reader streams each file
into one arrow file on local disk (memory-mapped when read), so a million rows never sit in memory
as Python objects. It reads only what it can read whole: on bad bytes, mixed types or a schema that
changes from file to file it gives up, and the loader reads the rows line by line instead, naming
the line of any problem.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from framework import SourceTable, UserError, progress_bar

BLOCK = 1 << 24  # bytes pyarrow parses at a time: one record batch each


def read_jsonl_native(files: list[Path], source: str) -> Optional[SourceTable]:
    """The rows of JSON Lines files as a memory-mapped Dataset, or None when a file needs reading
    line by line. Blank lines are skipped, as JSON Lines allows."""
    import datasets
    import pyarrow as pa

    out = Path(_scratch()) / "rows.arrow"
    total = sum(path.stat().st_size for path in files)
    counts, stream = [], _Stream()
    with progress_bar(f"reading {source}", total / 2**20, unit="MB") as advance, pa.OSFile(str(out), "wb") as sink:
        for path in files:
            count = stream.add(path, sink, advance)
            if count is None:
                return None
            counts.append((str(path), count))
        stream.close()
    empty = [name for name, count in counts if count == 0]
    if len(empty) == len(counts):
        held = "the file holds" if len(files) == 1 else f"its {len(files)} file(s) hold"
        raise UserError(f"{source if len(files) > 1 else files[0]}: {held} no rows; give it rows or remove it "
                        "from data.mixture")
    return SourceTable(datasets.Dataset.from_file(str(out)), counts, lines=True)


class _Stream:
    """One arrow stream of every file's record batches (they must share one schema)."""

    def __init__(self) -> None:
        self.writer, self.schema = None, None

    def add(self, path: Path, sink, advance) -> Optional[int]:
        """Append a file's rows; how many, or None to give up (read line by line instead)."""
        import pyarrow as pa
        import pyarrow.json as pj

        count, left = 0, path.stat().st_size
        try:
            for batch in pj.open_json(path, read_options=pj.ReadOptions(block_size=BLOCK)):
                if self.writer is None:
                    self.writer, self.schema = pa.ipc.new_stream(sink, batch.schema), batch.schema
                if batch.schema != self.schema:
                    return None  # another file's columns: reading line by line keeps them apart
                batch.validate(full=True)  # the JSON reader does not check UTF-8 (nor lone surrogates)
                self.writer.write_batch(batch)
                count, step = count + batch.num_rows, min(BLOCK, left)  # a batch is a block of the file
                left -= step
                advance(step / 2**20)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
            return None
        advance(left / 2**20)
        return count

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _scratch() -> str:
    """A folder for this process's arrow copies of JSON Lines sources, removed when it exits
    (under TMPDIR: set it to a disk with room for the data)."""
    folder = tempfile.mkdtemp(prefix="seqtune-jsonl-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
