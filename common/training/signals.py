"""Ctrl+C as a clean stop: inside the training loop it finishes the optimizer step, saves and stops; around it (a
validation pass) it raises `Interrupted` so the caller decides what to keep."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Iterator

from lightning.pytorch.callbacks import Callback

from common.errors import Interrupted


@contextlib.contextmanager
def interrupt_raises() -> Iterator[None]:
    """Within the block, Ctrl+C raises `Interrupted` (a validation pass, before or after training).

    Lightning catches KeyboardInterrupt inside `fit`/`validate` and calls `exit(1)`; `Interrupted` passes
    through it, so the caller decides what to keep.
    """

    def handler(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class StopOnSignal(Callback):
    """First Ctrl+C: finish the current optimizer step, save `path` (the interrupt checkpoint) and stop training
    cleanly; the caller then exports. A second Ctrl+C is ignored while the run is saved.

    The checkpoint is written from inside the training loop, right after an optimizer step: no half-accumulated
    gradients, and the loop state is the same as in a periodic checkpoint (saving after `fit` returns would
    record the interrupted epoch as finished). `stop_after_steps` stops the same way without a signal, so tests
    and scripts can cut a run at an exact step.
    """

    def __init__(self, path: Path | None = None, stop_after_steps: int | None = None):
        self.path = Path(path) if path is not None else None
        self.stop_after_steps = stop_after_steps
        self.requested = False
        self.saved: Path | None = None
        self._previous = None
        self._step_at_start = -1
        self._val_limit = None

    def install(self) -> None:
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Until the block ends, Ctrl+C is reported and ignored, so no file being written is cut short."""
        previous = signal.signal(signal.SIGINT, self._hold)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @staticmethod
    def _hold(signum, frame) -> None:
        print("\n[interrupt] writing the checkpoint and export: Ctrl+C is ignored until they are complete.",
              flush=True)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            print("\n[interrupt] already stopping: saving the run, please wait (Ctrl+C is ignored now).", flush=True)
            return
        self.requested = True
        print("\n[interrupt] Ctrl+C: finishing this step, then saving a checkpoint and exporting.", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step_at_start:
            return  # mid-accumulation: only stop right after an optimizer step
        if self.stop_after_steps and trainer.global_step >= self.stop_after_steps and not self.requested:
            self.requested = True
            print(f"[interrupt] --stop_after_steps {self.stop_after_steps}: stopping as if Ctrl+C was pressed.",
                  flush=True)
        if trainer.world_size > 1:  # every rank must stop (and save, a collective call) at the same step
            self.requested = trainer.strategy.reduce_boolean_decision(self.requested, all=False)
        if not self.requested:
            return
        if self.path is not None and self.saved is None:
            trainer.save_checkpoint(self.path)
            self.saved = self.path
        trainer.should_stop = True
        # Lightning runs a full validation pass before honouring should_stop: skip it, the user wants out now
        self._val_limit = trainer.limit_val_batches
        trainer.limit_val_batches = 0

    def on_train_end(self, trainer, pl_module) -> None:
        if self._val_limit is not None:
            trainer.limit_val_batches = self._val_limit
            self._val_limit = None

