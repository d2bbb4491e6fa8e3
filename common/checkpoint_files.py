"""Checkpoint files as the rest of the project reads them: which one a resume continues from, its step, and the
`adapters.safetensors` file (the trained adapter weights alone, loadable by any backend with the same key layout).

Checkpoints are Lightning `.ckpt` files holding the adapter weights, optimizer, scheduler, loop progress, RNG state
and the base `.nemo` path + sha256 (not a copy of the frozen weights).
"""
from __future__ import annotations

from pathlib import Path

import torch

from common.atomic import atomic_path
from common.errors import UserError


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


def read_checkpoint(path: Path) -> dict:
    """A checkpoint of this tool, read on the CPU; a file that cannot be read is a UserError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"{path}: cannot read it as a checkpoint ({type(e).__name__}: {e}).") from e


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

