"""A status line at least every N seconds when nobody sees a progress bar.

Lightning draws its progress bar only on a terminal; with output going to a file or a pipe (a job on a rented GPU,
`just demo > log.txt`) a run would otherwise say nothing between its validation passes, for minutes. The line
reads: step, the loss of the last step read back, audio seconds trained per second of wall time since training
started (or resumed), and the time left at that pace.
"""
from __future__ import annotations

import os
import sys
import time

from lightning.pytorch.callbacks import Callback

from common.fmt import fmt_duration


def wanted() -> bool:
    """Whether status lines replace the progress bar: stderr is not a terminal and no bar was asked for."""
    return not sys.stderr.isatty() and os.environ.get("CANARY_LORA_PROGRESS") != "1"


class StatusLine(Callback):
    """`[status] step 120/3000  loss 0.5321  87.3 audio s/s  ETA 12.4 min` every `every_s` seconds of training,
    and `[status] validation: batch 30/50` during long validation passes. `metrics` is the run's
    `MetricsCallback`: the loss and audio seconds it has read back (no extra device sync here)."""

    def __init__(self, metrics, every_s: float = 30.0):
        self.metrics = metrics
        self.every_s = every_s
        self._last = 0.0
        self._t0 = 0.0
        self._step0 = 0
        self._audio0 = 0.0
        self._shown = -1

    def _due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()
        self._last = 0.0  # the first step's line comes at once: it tells the pace early
        self._step0, self._audio0 = trainer.global_step, self.metrics.audio_seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in (self._step0, self._shown) or trainer.global_rank != 0 or not self._due():
            return  # (a step of several micro-batches ends at its last one)
        self._shown = step
        elapsed = time.monotonic() - self._t0
        done = step - self._step0
        audio = self.metrics.audio_seconds - self._audio0
        left = max(0, trainer.max_steps - step) * elapsed / done if trainer.max_steps > 0 else None
        parts = [f"step {step}/{trainer.max_steps}", f"loss {self.metrics.last_loss:.4f}",
                 f"{audio / elapsed:.1f} audio s/s" if elapsed > 0 else "",
                 f"ETA {fmt_duration(left)}" if left is not None else ""]
        print("[status] " + "  ".join(p for p in parts if p), flush=True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.global_rank != 0 or not self._due():
            return
        total = trainer.num_val_batches[dataloader_idx] if trainer.num_val_batches else None
        of = f"/{total}" if isinstance(total, int) else ""
        print(f"[status] validation: batch {batch_idx + 1}{of}", flush=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last = time.monotonic()  # a pass that ends within the interval needs no line of its own
