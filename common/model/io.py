"""Load a Canary `.nemo` for training, and save one back (merged, or with adapters) so it restores as is."""
from __future__ import annotations

import tarfile
from pathlib import Path

import torch

from common.atomic import atomic_path
from common.model.archive import NemoInfo, unsafe_member


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


def cast_frozen_base(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.nn.Parameter]:
    """Hold the frozen weights of `nn.Linear` and convolution layers in `dtype` (call before adapters exist).

    Under bf16 autocast these layers compute in bf16 anyway, and autocast casts their fp32 weights on every
    call: holding them in bf16 gives the same numbers without thousands of cast kernels per step, and halves
    their memory. Norms, positional biases and embeddings stay fp32 (their ops do not autocast). A weight
    shared by two modules (Canary's output head is tied to the token embedding) is left alone, and so are
    the small Conv2d layers of the subsampling front end: NeMo builds its positional tables in the dtype of
    the encoder's first parameter, and those must stay fp32.
    Returns {state-dict key: parameter} of what was cast, so the export can put the original fp32 values back.
    """
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    cast: dict[str, torch.nn.Parameter] = {}
    kinds = (torch.nn.Linear, torch.nn.Conv1d)
    for mod_name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if p.requires_grad or uses[id(p)] > 1 or not p.is_floating_point():
                continue
            p.data = p.data.to(dtype)
            cast[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return cast


def restore_fp32_base(cast: dict[str, torch.nn.Parameter], source: Path) -> int:
    """Put the source checkpoint's own fp32 values back into the parameters `cast_frozen_base` cast.

    The merge must fold adapters into the original fp32 weights, not into their bf16 rounding.
    """
    if not cast:
        return 0
    state = _read_weights(Path(source))
    missing = [k for k in cast if k not in state]
    if missing:
        raise KeyError(f"{source} lacks weights for {missing[:3]} ({len(missing)} keys): cannot restore fp32 base")
    with torch.no_grad():
        for key, p in cast.items():
            p.data = state[key].to(device=p.device, dtype=torch.float32).clone()
    return len(cast)


def _read_weights(nemo: Path) -> dict[str, torch.Tensor]:
    """The state dict stored in a `.nemo` archive (`model_weights.ckpt`), read on CPU."""
    import tempfile

    with tarfile.open(nemo, "r:*") as tar:
        member = next((m for m in tar.getmembers() if m.name.rsplit("/", 1)[-1] == "model_weights.ckpt"), None)
        if member is None:
            raise FileNotFoundError(f"{nemo} has no model_weights.ckpt")
        with tempfile.TemporaryDirectory(prefix="canary_weights_") as tmp:
            path = Path(tmp) / "model_weights.ckpt"
            with tar.extractfile(member) as src, open(path, "wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
            return torch.load(path, map_location="cpu", weights_only=True)


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
    """Append to `target` every file of `source` whose name it lacks (artifacts NeMo does not re-save).

    Only plain files with safe relative names are copied (`unsafe_member`), as preflight demands of the source:
    the export never carries a member that would land outside the folder it is extracted to.
    """
    with tarfile.open(target, "r:*") as t:
        have = {_basename(n) for n in t.getnames()}
    # NeMo prefixes re-registered artifacts with a fresh hash: compare the part after the prefix too.
    have_tails = {n.split("_", 1)[1] for n in have if "_" in n and len(n.split("_", 1)[0]) == 32}
    with tarfile.open(source, "r:*") as s:
        extra = [m for m in s.getmembers() if m.isfile() and unsafe_member(m) is None
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
