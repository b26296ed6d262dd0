"""The model side of a run: the tokenizer and its chat template, the model and its limits, LoRA adapters."""
