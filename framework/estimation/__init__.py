"""Estimates made before a run, in pure Python (no torch): model shapes, GPU memory, the hardware
table and the max_seq_length sweep."""
