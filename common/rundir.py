"""A run directory (`--exp_dir`) and where each of its files lives, plus the check that an output folder can be
written before any model loads."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from common.messages import disp, reason
from common.errors import UserError


REPO = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """Where built artifacts are kept between runs (the embedded default, bench data): $CANARY_LORA_CACHE or
    <repo>/.cache."""
    return Path(os.environ.get("CANARY_LORA_CACHE", REPO / ".cache"))


# what a run writes into its --exp_dir (besides checkpoints/ and the logger's logs/): an --exp_dir holding one of
# these (or a checkpoint) holds a run, and --overwrite removes exactly these
RUN_FILES = ("run.json", "metrics.jsonl", "adapters.safetensors", "report.md", "summary.json", "transcripts.json",
             "loss.png", "memory.png")
RUN_FOLDERS = ("checkpoints", "logs")


def exp_paths(exp_dir: str | Path) -> dict[str, Path]:
    root = Path(exp_dir)
    return {"root": root, "checkpoints": root / "checkpoints", "metrics": root / "metrics.jsonl",
            "run": root / "run.json", "adapters": root / "adapters.safetensors", "report": root / "report.md"}


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Create `path` if needed and prove it is writable by creating and removing a temporary file."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {disp(p)} exists and is not a directory; pass a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {what} {disp(p)} ({reason(e)}); choose a location you can write to"
        ) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=p)  # atomic.TEMP_NAME: swept if left
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(
            f"{what} {disp(p)} is not writable ({reason(e)}); fix its permissions or choose another directory"
        ) from None
