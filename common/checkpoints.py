"""Checkpoint plumbing: atomic writes, adapter-only files, resume lookup, Ctrl+C as a clean stop.

Checkpoints are Lightning `.ckpt` files holding the adapter weights, optimizer, scheduler, loop progress,
RNG state and the base `.nemo` path + sha256 (not a copy of the frozen weights). Adapter weights are also
written as `adapters.safetensors`, a small file any backend with the same key layout can load.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.atomic import atomic_path
from common.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, but to a temporary name renamed into place: a kill never truncates a .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # our checkpoints carry RNG states and numpy arrays: trusted files written by this tool
        return torch.load(path, map_location=map_location or "cpu", weights_only=False)


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
        return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", -1))
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
    """First Ctrl+C: finish the current optimizer step (or validation pass), then stop training cleanly; the
    caller saves an interrupt checkpoint and exports. A second Ctrl+C is ignored while the run is saved.

    Stopping only right after an optimizer step keeps the checkpoint exact: no half-accumulated gradients.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._step_at_start = -1

    def install(self) -> None:
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            print("\n[interrupt] already stopping: saving the run, please wait (Ctrl+C is ignored now).", flush=True)
            return
        self.requested = True
        print("\n[interrupt] Ctrl+C: finishing this step, then saving a checkpoint and exporting.", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested and trainer.global_step != self._step_at_start:
            trainer.should_stop = True
