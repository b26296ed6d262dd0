"""Experiment trackers. Their packages are imported only when a recipe selects them."""
from __future__ import annotations

import importlib
from typing import Optional

from framework import RunInfo, UserError, hookimpl


def _require(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"logging.loggers: '{extra}' needs the {extra} package: "
                        f"pip install 'seqtune[{extra}]'") from None


class WandbLogger:
    """Weights & Biases; honours WANDB_MODE=offline and the other WANDB_* variables."""

    def __init__(self, output_dir: str, project: Optional[str], entity: Optional[str], tags: list[str]):
        self.wandb = _require("wandb", "wandb")
        self.kwargs = {"project": project, "entity": entity, "tags": tags, "dir": output_dir}

    @hookimpl
    def seqtune_train_start(self, run: RunInfo) -> None:
        self.run = self.wandb.init(name=run.run_name, config=run.recipe, **self.kwargs)

    @hookimpl
    def seqtune_log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    @hookimpl
    def seqtune_train_end(self, summary: dict[str, float]) -> None:
        self.run.summary.update(summary)
        self.run.finish()


def wandb(output_dir: str, *, project: Optional[str] = None, entity: Optional[str] = None,
          tags: list[str] = ()) -> WandbLogger:
    return WandbLogger(output_dir, project, entity, list(tags))


class TensorBoardLogger:
    """Scalars under output_dir/<log_dir>, readable with `tensorboard --logdir`."""

    def __init__(self, log_dir: str):
        _require("tensorboard", "tensorboard")
        self.log_dir = log_dir

    @hookimpl
    def seqtune_train_start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)

    @hookimpl
    def seqtune_log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    @hookimpl
    def seqtune_train_end(self, summary: dict[str, float]) -> None:
        self.writer.close()


def tensorboard(output_dir: str, *, log_dir: str = "tensorboard") -> TensorBoardLogger:
    from pathlib import Path

    return TensorBoardLogger(str(Path(output_dir) / log_dir))


@hookimpl
def seqtune_register_loggers():
    return {"wandb": wandb, "tensorboard": tensorboard}
