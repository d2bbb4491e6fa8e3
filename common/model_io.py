"""Load a Canary `.nemo` for training, and save one back (merged, or with adapters) so it restores as is."""
from __future__ import annotations

import tarfile
from pathlib import Path

import torch

from common.atomic import atomic_path
from common.preflight import NemoInfo


def restore(path: str | Path, map_location: str | torch.device = "cpu", *, info: NemoInfo | None = None):
    """`EncDecMultiTaskModel.restore_from` without restoring an auxiliary timestamps model.

    canary-1b-v2 carries a second (timestamps) model in its archive; training never uses it and it would cost
    memory, so it is not built here. The export copies its files over from the source archive.
    """
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from omegaconf import OmegaConf, open_dict

    override = None
    if info is not None and info.config:
        override = OmegaConf.create(info.config)
        with open_dict(override):
            override.restore_timestamps_model = False
    model = EncDecMultiTaskModel.restore_from(str(path), map_location=map_location, override_config_path=override)
    return model


def freeze(model: torch.nn.Module) -> None:
    """Every base weight stops requiring grad; modes are left to the trainer (train with frozen BatchNorm)."""
    for p in model.parameters():
        p.requires_grad_(False)


def save_nemo(model, out: str | Path, *, source: NemoInfo | None = None) -> list[str]:
    """`save_to` through a temporary name, then copy in source-archive files the model does not rebuild.

    Returns the names of the copied members (e.g. canary-1b-v2's timestamps model), so the caller can say so.
    """
    from omegaconf import open_dict

    out = Path(out)
    kept: list[str] = []
    if source is not None and "restore_timestamps_model" in (source.config or {}):
        with open_dict(model.cfg):  # the export should behave like the source when restored
            model.cfg.restore_timestamps_model = source.config["restore_timestamps_model"]
    try:
        with atomic_path(out, suffix=".nemo") as tmp:
            model.save_to(str(tmp))
            if source is not None:
                kept = _copy_missing_members(source.path, tmp)
    finally:
        if source is not None and "restore_timestamps_model" in (source.config or {}):
            with open_dict(model.cfg):
                model.cfg.restore_timestamps_model = False
    return kept


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _copy_missing_members(source: Path, target: Path) -> list[str]:
    """Append to `target` every file of `source` whose name it lacks (artifacts NeMo does not re-save)."""
    with tarfile.open(target, "r:*") as t:
        have = {_basename(n) for n in t.getnames()}
    # NeMo prefixes re-registered artifacts with a fresh hash: compare the part after the prefix too.
    have_tails = {n.split("_", 1)[1] for n in have if "_" in n and len(n.split("_", 1)[0]) == 32}
    with tarfile.open(source, "r:*") as s:
        extra = [m for m in s.getmembers() if m.isfile()
                 and _basename(m.name) not in have and _basename(m.name) not in have_tails
                 and not (_basename(m.name).split("_", 1)[-1] in have_tails)]
        if not extra:
            return []
        mode = "a" if _is_plain_tar(target) else None
        if mode is None:
            raise RuntimeError(f"cannot append to compressed archive {target}")
        with tarfile.open(target, "a") as t:
            for m in extra:
                t.addfile(m, s.extractfile(m))
    return [_basename(m.name) for m in extra]


def _is_plain_tar(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return head != b"\x1f\x8b"
