"""seqtune's core. Third-party plugins import only what this module re-exports."""
from __future__ import annotations

from framework.data.progress import progress_bar
from framework.errors import UserError
from framework.hookspecs import hookimpl, hookspec
from framework.types import (IGNORE_INDEX, MODEL_INPUTS, Bounds, Packing, Piece, Rows, RunInfo, Sample,
                             SourceTable)

__all__ = ["Bounds", "IGNORE_INDEX", "MODEL_INPUTS", "Packing", "Piece", "Rows", "RunInfo", "Sample", "SourceTable",
           "UserError", "hookimpl", "hookspec", "progress_bar"]
__version__ = "0.1.0"
