"""Lightning checkpoints that a resume can rely on: written atomically, read without running code, saved at the
final step whatever --save_every is, never rewritten mid-accumulation, with the loop's progress as training really
left it, and only the newest --keep_last step files kept."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.atomic import atomic_path
from common.checkpoint_files import prune_step_checkpoints, read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, but to a temporary name renamed into place: a kill never truncates a .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # tensors and plain data only, whatever Lightning asks: a resume never runs code from a file
        return read_checkpoint(path, "--resume")


class StepCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` every N optimizer steps, plus two guarantees a resume relies on.

    - The final optimizer step is always saved (as `last.ckpt` and its step file), whatever N is: a crash or
      Ctrl+C during the final validation or export never costs trained steps.
    - A resumed run does not save again at the step it resumed from. Lightning forgets which step it saved
      last, so with gradient accumulation it would rewrite that step's checkpoint after the first micro-batch,
      in the middle of an accumulation whose gradients a checkpoint cannot hold.

    A name is reused rather than versioned (no `last-v1.ckpt`): a resume finds one file per step. After each
    save only the `keep_last` newest step files stay (None: all); last.ckpt and best.ckpt always stay.
    """

    def __init__(self, *args, keep_last: int | None = None, **kwargs):
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)
        self.keep_last = keep_last

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.keep_last is not None and trainer.is_global_zero and self.dirpath:
            prune_step_checkpoints(Path(self.dirpath), self.keep_last)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def fix_midepoch_progress(checkpoint: dict) -> None:
    """Mark the batch that triggered a mid-epoch save as completed.

    Lightning saves from `on_train_batch_end`, before it counts the batch as completed; on restart it would
    run that batch's index again and shift gradient-accumulation boundaries. The optimizer step for it has
    already happened, so it is complete.
    """
    bp = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if bp:
        for scope in ("total", "current"):
            bp[scope]["completed"] = bp[scope]["processed"]


def resume_position(checkpoint: dict) -> tuple[int, int]:
    """(epoch, batches already consumed in that epoch) of a checkpoint."""
    bp = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    return int(checkpoint.get("epoch", 0)), int(bp.get("current", {}).get("completed", 0))


