"""seqtune's built-in plugins: one small module per family, written as a third party would."""
from __future__ import annotations

BUILTIN = (
    "plugins.datasets",
    "plugins.formats",
    "plugins.chat_templates",
    "plugins.truncation",
    "plugins.packing",
    "plugins.optimizers",
    "plugins.schedulers",
    "plugins.losses",
    "plugins.objectives",
    "plugins.dpo",
    "plugins.generation",
    "plugins.grpo",
    "plugins.rewards",
    "plugins.prompts",
    "plugins.preference",
    "plugins.loggers",
    "plugins.trackers",
)
