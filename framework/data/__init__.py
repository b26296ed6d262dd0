"""The data pipeline: sources and mixtures, chat encoding with exact label masks, tokenization and
truncation, the preprocessing cache, and the batch plan (micro-batches per epoch and rank)."""
