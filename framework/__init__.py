"""seqtune's core. Third-party plugins import only what this module re-exports."""
from __future__ import annotations

from framework.data.progress import progress_bar
from framework.errors import UserError
from framework.hookspecs import hookimpl, hookspec
from framework.model.heads import DecoderOutput, decoder_output
from framework.training.loss import trainable_tokens
from framework.types import (IGNORE_INDEX, MODEL_INPUTS, Bounds, Packing, Piece, Rows, RunInfo, Sample,
                             SourceTable)

__all__ = ["Bounds", "DecoderOutput", "IGNORE_INDEX", "MODEL_INPUTS", "Packing", "Piece", "Rows", "RunInfo", "Sample",
           "SourceTable", "UserError", "decoder_output", "hookimpl", "hookspec", "progress_bar", "trainable_tokens"]
__version__ = "0.1.0"
