"""Checkpoint plumbing: atomic writes, adapter-only files, resume lookup, Ctrl+C as a clean stop.

Checkpoints are Lightning `.ckpt` files holding the adapter weights, optimizer, scheduler, loop progress,
RNG state and the base `.nemo` path + sha256 (not a copy of the frozen weights). Adapter weights are also
written as `adapters.safetensors`, a small file any backend with the same key layout can load.
"""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.atomic import atomic_path
from common.errors import Interrupted, UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, but to a temporary name renamed into place: a kill never truncates a .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # our checkpoints carry RNG states and numpy arrays: trusted files written by this tool
        return torch.load(path, map_location=map_location or "cpu", weights_only=False)


class StepCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` every N optimizer steps, plus two guarantees a resume relies on.

    - The final optimizer step is always saved (as `last.ckpt` and its step file), whatever N is: a crash or
      Ctrl+C during the final validation or export never costs trained steps.
    - A resumed run does not save again at the step it resumed from. Lightning forgets which step it saved
      last, so with gradient accumulation it would rewrite that step's checkpoint after the first micro-batch,
      in the middle of an accumulation whose gradients a checkpoint cannot hold.
    """

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


def find_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    """`auto`: the newer of last.ckpt and interrupt.ckpt (by global step), None if neither exists."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.is_file():
            raise UserError(f"--resume {resume}: checkpoint not found. Use --resume auto to continue from the newest "
                            f"checkpoint in --exp_dir, or pass an existing .ckpt file.")
        return path
    candidates = [p for p in (ckpt_dir / "last.ckpt", ckpt_dir / "interrupt.ckpt") if p.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: (checkpoint_step(p), p.stat().st_mtime))


def checkpoint_step(path: Path) -> int:
    try:
        # mmap: a full fine-tuning checkpoint can be many GB; only one number is needed
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", -1))
    except Exception:  # an unreadable checkpoint never wins
        return -1


def save_adapters(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    tensors = {k.removeprefix("model."): v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_adapters(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


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
