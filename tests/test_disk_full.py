"""A full disk and a read-only folder end in one clear error (the file, the space left), never in a traceback, and
nothing under a final name is cut short. The export's room is checked before the model loads.

A disk is filled for real: a small tmpfs is mounted for each test (root, or a user allowed to mount). Where this
machine cannot make one, the test is skipped and says why.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from common.atomic import TEMP_NAME, write_bytes
from common.errors import UserError
from tests.train_cli import run, tiny_args


@contextlib.contextmanager
def small_disk(path: Path, size: str, *, read_only: bool = False):
    """A tmpfs of `size` mounted at `path` for the block; skips the test where no mount can be made."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a {size} tmpfs here to fill ({e})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here to fill: {done.stderr.strip() or 'mount failed'} "
                    f"(needs root or a user allowed to mount)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if TEMP_NAME.match(p.name)]


def test_a_write_on_a_full_disk_names_the_file_and_the_space_left(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        write_bytes(disk / "kept.bin", b"k" * 100_000)
        with pytest.raises(UserError) as e:
            write_bytes(disk / "big.bin", b"x" * 2_000_000)
        msg = str(e.value)
        assert f"no space left on the disk for {disk / 'big.bin'} (" in msg and f"free in {disk})" in msg
        assert "--resume auto" in msg
        assert not (disk / "big.bin").exists() and not _temps(disk)
        assert (disk / "kept.bin").read_bytes() == b"k" * 100_000


def test_a_checkpoint_save_on_a_full_disk_is_the_same_clear_error(tmp_path):
    """torch's writer reports a full disk only as "unexpected pos ...": the free space tells it apart."""
    from common.training.checkpoints import AtomicCheckpointIO

    with small_disk(tmp_path / "disk", "1m") as disk:
        with pytest.raises(UserError) as e:
            AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1_000_000)}, disk / "step-1.ckpt")
        assert f"no space left on the disk for {disk / 'step-1.ckpt'}" in str(e.value)
        assert not list(disk.iterdir())


def test_training_on_a_full_disk_stops_with_a_clear_error(fast_tiny_path, demo, tmp_path):
    """The run folder holds one checkpoint (about 1.4 MB) but not two: the second save fails."""
    with small_disk(tmp_path / "disk", "2m") as disk:
        exp = disk / "exp"
        code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=4, accum=1, save_every=1,
                                  val_every_n_steps=100, no_eval_before=True, export_nemo=""))
        assert code == 2, out
        assert f"no space left on the disk for {exp / 'checkpoints'}" in out and "free in" in out
        assert "Traceback" not in out
        from common.checkpoint_files import read_checkpoint

        saved = sorted((exp / "checkpoints").glob("*.ckpt"))
        assert saved, out
        for path in saved:  # whatever made it to a final name is whole
            assert read_checkpoint(path)["global_step"] >= 1
        assert not _temps(exp)


def test_preflight_refuses_an_export_folder_without_room(fast_tiny_path, demo, tmp_path):
    with small_disk(tmp_path / "disk", "4m") as disk:
        code, out = run(tiny_args(fast_tiny_path, demo, tmp_path / "exp", tmp_path / "cuts",
                                  export_nemo=disk / "out.nemo"), timeout=300)
    assert code == 2, out
    assert f"--export_nemo {disk / 'out.nemo'}: not enough disk space: the export needs about " in out
    assert "MB is free" in out and "Traceback" not in out and "Restoring" not in out


def test_a_read_only_checkpoints_folder_is_refused_before_loading(fast_tiny_path, demo, tmp_path):
    ckpts = tmp_path / "exp" / "checkpoints"
    ckpts.mkdir(parents=True)
    if os.geteuid() == 0:  # root writes whatever the mode: only a read-only mount stops it
        context = small_disk(ckpts, "1m", read_only=True)
    else:
        ckpts.chmod(0o555)
        context = contextlib.nullcontext()
    with context:
        code, out = run(tiny_args(fast_tiny_path, demo, tmp_path / "exp", tmp_path / "cuts", export_nemo=""),
                        timeout=300)
    ckpts.chmod(0o755)
    assert code == 2, out
    assert f"the checkpoints folder {ckpts} is not writable" in out and "Traceback" not in out
