"""seqtune's core. Third-party plugins import only what this module re-exports."""
from __future__ import annotations

from framework.data.progress import progress_bar, stderr_console
from framework.errors import UserError
from framework.hookspecs import hookimpl, hookspec
from framework.data.tokenize import CAUSES, EMPTY, add_row, encode_rows, is_prompt_row, make_encoder, truncate_row
from framework.model.heads import (DecoderOutput, chunk_ranges, chunk_tokens, decoder_output, target_values,
                                   trained_index, trained_states, trained_token_logps, upcast)
from framework.model.ulysses import rank_share, sequence_sum
from framework.training.loss import trainable_tokens
from framework.rewards import score as score_rewards
from framework.types import (IGNORE_INDEX, MODEL_INPUTS, Bounds, BoundReward, Objective, Packing, Pair, Piece, Prompt,
                             Rows, RunInfo, Sample, SourceTable)

__all__ = ["CAUSES", "EMPTY", "add_row", "chunk_ranges", "chunk_tokens", "encode_rows", "make_encoder", "rank_share", "sequence_sum",
           "target_values", "trained_index", "trained_states",
           "trained_token_logps", "truncate_row", "upcast", "Bounds", "BoundReward", "DecoderOutput", "IGNORE_INDEX", "MODEL_INPUTS", "Objective", "Packing", "Pair", "Piece", "Prompt", "Rows",
           "RunInfo", "Sample", "SourceTable", "UserError", "decoder_output", "hookimpl", "hookspec",
           "is_prompt_row", "progress_bar", "score_rewards", "stderr_console", "trainable_tokens"]
__version__ = "0.1.0"
