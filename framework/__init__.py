"""seqtune's core. Third-party plugins import only what this module re-exports."""
from __future__ import annotations

from framework.errors import UserError
from framework.hookspecs import hookimpl, hookspec
from framework.types import IGNORE_INDEX, MODEL_INPUTS, Bounds, Packing, Piece, Rows, RunInfo, Sample

__all__ = ["Bounds", "IGNORE_INDEX", "MODEL_INPUTS", "Packing", "Piece", "Rows", "RunInfo", "Sample",
           "UserError", "hookimpl", "hookspec"]
__version__ = "0.1.0"
