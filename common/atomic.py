"""Write files so that a crash or SIGKILL never leaves a truncated file under its final name.

Everything the project writes (checkpoints, `.nemo` exports, cut caches, reports) goes to a temporary name in
the same directory and is renamed into place with `os.replace`, which is atomic on POSIX and Windows (same
volume). The environment variable `CANARY_LORA_WRITE_DELAY_S` widens the window between writing and renaming,
so tests can kill a process mid-save; it changes nothing else.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

WRITE_DELAY_ENV = "CANARY_LORA_WRITE_DELAY_S"
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def _delay() -> None:
    seconds = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is renamed to `final`, on error removed.

    `suffix` lets writers that pick a format from the file name (lhotse's `.jsonl.gz`, NeMo's `.nemo`) see the
    right ending on the temporary name too.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}" if suffix != ".tmp" else suffix,
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files (and some writers recreate the file): give the final file the
        # permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        _delay()
        os.replace(tmp_path, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_text(final: str | os.PathLike, text: str) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)


def write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)
