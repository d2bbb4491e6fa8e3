"""Write files so that a crash, SIGKILL or power cut never leaves a truncated file under its final name.

Everything the project writes (checkpoints, `.nemo` exports, cut caches, reports) goes to a temporary name in
the same directory (`.<final name>.<8 random characters>.tmp[<suffix>]`, see `TEMP_NAME`), is flushed to disk
and renamed into place with `os.replace`, which is atomic on POSIX and Windows (same volume); the directory is
flushed too, so the rename itself survives a power cut (POSIX; Windows cannot open a directory for that).
A run removes the temporary files a killed run left (`remove_stale_temps`). A write that fails on a full disk
raises a `UserError` naming the file and the space left. The environment variable `CANARY_LORA_WRITE_DELAY_S`
widens the window between writing and renaming, so tests can kill a process mid-save; it changes nothing else.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from common.errors import UserError
from common.fmt import fmt_bytes

WRITE_DELAY_ENV = "CANARY_LORA_WRITE_DELAY_S"
_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)
# the temporary names this project makes (mkstemp draws 8 characters from [a-z0-9_]); nothing else matches
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")
NEARLY_FULL = 1 << 20  # bytes: a write that failed with less than this left is taken for a full disk


def _delay() -> None:
    seconds = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    if seconds > 0:
        time.sleep(seconds)


def temp_name(final: str | os.PathLike, suffix: str = ".tmp") -> tuple[str, str]:
    """The (prefix, suffix) of a temporary name for `final`: every writer here names its temporaries this way."""
    return f".{Path(final).name}.", f".tmp{suffix}" if suffix != ".tmp" else suffix


def fsync_file(path: Path) -> None:
    # Windows flushes only handles open for writing
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it), where the OS allows it: not on Windows, and some file
    systems refuse it (EINVAL), which costs nothing but that guarantee."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success it is flushed and renamed to `final`, on error removed.

    `suffix` lets writers that pick a format from the file name (lhotse's `.jsonl.gz`, NeMo's `.nemo`) see the
    right ending on the temporary name too.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix, tmp_suffix = temp_name(final, suffix)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=tmp_suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files (and some writers recreate the file): give the final file the
        # permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        fsync_file(tmp_path)
        _delay()
        os.replace(tmp_path, final)
        fsync_dir(final.parent)
    except Exception as e:
        full = disk_full(e, final.parent)  # measured before the partial file is removed
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full:
            raise no_space(getattr(_os_error(e), "filename", None) or final) from e
        raise
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


# ---- a full disk ----------------------------------------------------------------------------------------------
def _os_error(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in `e`'s chain, if any (torch and tarfile wrap theirs)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        e = e.__cause__ or e.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space on the volume holding `path` (its nearest existing ancestor); None if it cannot be read."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full(e: BaseException, folder: str | os.PathLike) -> bool:
    """Did this write fail because its disk is full? An ENOSPC anywhere in the chain says so; torch's writer
    reports a full disk only as "unexpected pos ...", so a failure with (almost) no space left counts too."""
    if _os_error(e) is not None:
        return True
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL


def no_space(path: str | os.PathLike) -> UserError:
    """The error for a full disk: which file, how much space is left, what to do."""
    free = free_bytes(Path(path).parent)
    left = f"{fmt_bytes(free)} free" if free is not None else "free space unknown"
    return UserError(f"no space left on the disk for {path} ({left} in {Path(path).parent}). Free some space or "
                     f"choose a folder on another disk; files written before are complete, and a training run "
                     f"continues from its last checkpoint with --resume auto.")


def no_space_error(e: BaseException, path: str | os.PathLike | None = None) -> UserError | None:
    """`no_space` for a failure caused by a full disk (ENOSPC or EDQUOT in its chain), else None."""
    err = _os_error(e)
    if err is None:
        return None
    where = err.filename or path
    return no_space(where) if where else UserError(
        "no space left on the disk. Free some space; files written before are complete, and a training run "
        "continues from its last checkpoint with --resume auto.")


# ---- what killed runs leave behind ----------------------------------------------------------------------------
def stale_temps(folder: str | os.PathLike, *, names: tuple[str, ...] = (), recursive: bool = False) -> list[Path]:
    """This project's temporary files in `folder` (and below it, with `recursive`); with `names`, only the
    temporaries of those final file names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    return sorted(p for p in found if p.is_file() and TEMP_NAME.match(p.name)
                  and (not names or any(p.name.startswith(f".{n}.") for n in names)))


def remove_stale_temps(folder: str | os.PathLike, *, names: tuple[str, ...] = (), recursive: bool = False
                       ) -> list[Path]:
    removed = []
    for p in stale_temps(folder, names=names, recursive=recursive):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
