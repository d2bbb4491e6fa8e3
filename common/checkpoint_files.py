"""Checkpoint files as the rest of the project reads them: loading one safely, which one a resume continues from,
which step checkpoints are kept, and the `adapters.safetensors` file (the trained adapter weights alone, loadable
by any backend with the same key layout).

Checkpoints are Lightning `.ckpt` files holding the adapter weights, optimizer, scheduler, loop progress, RNG state
(as tensors and numbers) and the base `.nemo` path + sha256 (not a copy of the frozen weights). They hold tensors
and plain data only, so they are always read with `weights_only=True`: a foreign file that would run code when
unpickled is refused, and nothing in it runs.
"""
from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.atomic import atomic_path
from common.errors import UserError
from common.messages import disp, reason

# the files a run writes into checkpoints/ that a resume may continue from (Lightning adds -vN to a name in use);
# best.ckpt holds the selected adapters for the export, not a state to train on from
RESUMABLE = re.compile(r"^(?:last|interrupt|step-\d+)(?:-v\d+)?\.ckpt$")
STEP_FILE = re.compile(r"^step-(\d+)(?:-v\d+)?\.ckpt$")


class UnsafeCheckpoint(UserError):
    """A file that would run code when loaded (or an earlier version's, which imports numpy): refused, never
    skipped as if it were merely broken."""


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    step: int
    stopped_early: bool = False  # early stopping ended the run at this step: there is nothing left to train


def read_checkpoint(path: str | Path, what: str = "checkpoint", *, ours: bool = True, mmap: bool = False) -> dict:
    """A checkpoint's contents, loaded with `weights_only=True`; a `UserError` naming the file otherwise.

    `what` says where the path came from (`--resume`, `--against`); `ours` also requires this tool's record
    (`canary_lora`); `mmap` leaves the tensors on disk (one number of a many-GB checkpoint costs no reading).
    """
    path = Path(path)
    where = f"{what} {disp(path)}" if what != "checkpoint" else f"checkpoint {disp(path)}"
    try:
        size = path.stat().st_size
        zipped = zipfile.is_zipfile(path)
    except OSError as e:
        raise UserError(f"{where}: cannot read it ({reason(e)}).") from None
    if size == 0:
        raise UserError(f"{where}: the file is empty (a copy or write that never finished).")
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign pickle's protocol: the error below says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except Exception as e:  # noqa: BLE001 - every way a foreign file fails is reported the same way
        code = _code_it_names(path, e, zipped)
        if code and all(c.startswith("numpy.") for c in code):
            raise UnsafeCheckpoint(f"{where}: written by an earlier version of this tool, which stored numpy's random state "
                            f"as a pickled array ({', '.join(code)}); checkpoints are now read as tensors and plain "
                            f"data only. Finish that run with the version that wrote it, or start it over.") from None
        if code:
            raise UnsafeCheckpoint(f"{where}: refused to load it: it asks to import and call {', '.join(code)} while "
                            f"loading, which a checkpoint of this tool never does (tensors and plain data only). "
                            f"Nothing in it was run; remove it, or pass a checkpoint this tool wrote.") from None
        raise UserError(f"{where}: not a checkpoint this tool can read (truncated, corrupted, or another kind of "
                        f"file: {_first_line(e)}).") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise UserError(f"{where}: not a Lightning checkpoint (no state_dict and global_step in it).")
    if ours and not isinstance(ckpt.get("canary_lora"), dict):
        raise UserError(f"{where}: not a checkpoint written by this tool (no 'canary_lora' record); pass one from "
                        f"a run's checkpoints/ folder.")
    return ckpt


def _code_it_names(path: Path, e: Exception, zipped: bool) -> list[str]:
    """The globals (functions, classes) a rejected pickle wanted, e.g. `posix.system`."""
    names = re.findall(r"GLOBAL (\S+)", str(e))
    if not names and zipped:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - it was unreadable to begin with
            names = []
    return sorted(set(names))


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    if "Weights only load failed" in text:  # torch's advice to load with weights_only=False is no advice here
        text = text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip() or "unreadable"
    return f"{type(e).__name__}: {text[:160]}"


# ---- which checkpoint a resume continues from -------------------------------------------------------------------
def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """The run's checkpoints a resume may continue from: last*.ckpt, interrupt*.ckpt and step-N*.ckpt."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if RESUMABLE.match(p.name) and p.is_file())


def resume_point(path: Path, what: str = "checkpoint") -> ResumePoint:
    ckpt = read_checkpoint(path, what, mmap=True)
    record = ckpt.get("canary_lora") or {}
    return ResumePoint(path=path, step=int(ckpt.get("global_step", 0)), stopped_early=bool(record.get("stopped_early")))


def newest_resume_point(ckpt_dir: Path, warn=print) -> ResumePoint | None:
    """The checkpoint with the highest global step among all of `ckpt_dir`'s resumable ones (the newest file on a
    tie); empty and unreadable files are skipped with a warning, and a file that would run code is refused."""
    points = []
    for path in resume_candidates(ckpt_dir):
        try:
            points.append(resume_point(path))
        except UnsafeCheckpoint:
            raise
        except UserError as e:
            warn(f"[resume] skipping {e}")
    if not points:
        return None
    return max(points, key=lambda p: (p.step, p.path.stat().st_mtime_ns, p.path.name == "last.ckpt"))


def find_resume(resume: str | None, ckpt_dir: Path) -> Path | None:
    """`auto`: the newest resumable checkpoint in `ckpt_dir` (None if there is none); a path: that checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        point = newest_resume_point(ckpt_dir)
        return point.path if point else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"--resume {resume}: checkpoint not found. Use --resume auto to continue from the newest "
                        f"checkpoint in --exp_dir, or pass an existing .ckpt file.")
    return resume_point(path, "--resume").path


def checkpoint_step(path: Path) -> int:
    try:
        return resume_point(path).step
    except UserError:  # an unreadable checkpoint never wins
        return -1


def prune_step_checkpoints(ckpt_dir: Path, keep: int) -> list[Path]:
    """Keep the `keep` step-N checkpoints with the highest steps, remove older ones; last.ckpt, best.ckpt and
    interrupt.ckpt are other names and always stay."""
    steps = sorted(((int(m.group(1)), p.stat().st_mtime_ns, p) for p in ckpt_dir.glob("step-*.ckpt")
                    if (m := STEP_FILE.match(p.name))), reverse=True)
    removed = []
    for _, _, path in steps[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---- the adapters alone -----------------------------------------------------------------------------------------
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
