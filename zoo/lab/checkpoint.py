"""`FinalCheckpoint`: ``last.ckpt`` written when training ends, whatever stopped it.

Lightning's `ModelCheckpoint` writes ``last.ckpt`` at validation or epoch ends,
so a run stopped by ``max_steps`` or ``max_time`` between two of them keeps the
weights of an earlier step. ``python -m zoo.lab.compare`` adds this callback so that
each run's ``last.ckpt`` holds the final weights and step: what ``--test``
evaluates and what the table reports.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["FinalCheckpoint"]

log = logging.getLogger(__name__)


class FinalCheckpoint(L.Callback):
    """Save ``<ModelCheckpoint.dirpath>/last.ckpt`` at the end of ``fit``.

    With no `ModelCheckpoint` among the trainer's callbacks there is no folder
    to write to; it does nothing then (and says so at debug level).
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.dirpath is None:
            log.debug("FinalCheckpoint: no ModelCheckpoint with a dirpath; nothing saved")
            return
        path = Path(checkpoint.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
        trainer.save_checkpoint(path)
