"""Merge adapters into the base weights and export a `.nemo` that `EncDecMultiTaskModel.restore_from()` loads.

The check after export is numeric, not just "it loads": the restored model's outputs on a fixed batch must
equal the trained (unmerged) model's within tolerance, and its state-dict keys must equal the base's.
"""
from __future__ import annotations

from pathlib import Path

from common.model import io as model_io
from common.model.archive import NemoInfo
from common.model.steps import fixed_batch, log_probs

TOLERANCE = 1e-4  # fp32 on CPU; merged vs unmerged differ by ~1e-6 on the tiny model


def state_keys(model) -> set[str]:
    return set(model.state_dict().keys())


def export_model(module, backend, info: NemoInfo, out: Path, val_loader,
                 base_keys: set[str] | None = None, fp32_base: dict | None = None) -> tuple[Path, list[str], dict]:
    """Merge (or, for unmergeable backends, keep adapters), save, restore and compare. Returns the export path,
    the source-archive members copied over, and the check's figures.

    `fp32_base`: base weights that trained in bf16 ({key: parameter}); their original fp32 values are read back
    from the source `.nemo` first, so the adapters fold into exactly the weights the user gave.
    """
    from nemo.collections.asr.models import EncDecMultiTaskModel

    model = module.model
    model.cpu().float()
    if fp32_base:
        model_io.restore_fp32_base(fp32_base, info.path)
    batch = fixed_batch(val_loader)
    reference = log_probs(model, batch)
    if backend is not None:
        # mergeable backends fold adapters into the weights; NeMo adapters stay modules, and merge() makes the
        # config name their classes so the archive restores with stock restore_from
        backend.merge(model)
    merged = log_probs(model, batch)
    kept = model_io.save_nemo(model, out, source=info)
    print(f"[export] wrote {out}" + (f" (kept from the source archive: {', '.join(kept)})" if kept else ""), flush=True)
    restored = EncDecMultiTaskModel.restore_from(str(out), map_location="cpu")
    restored_out = log_probs(restored, batch)
    check = {
        "merge_max_abs_diff": float((merged - reference).abs().max()),
        "restore_max_abs_diff": float((restored_out - reference).abs().max()),
        "keys_equal_base": state_keys(restored) == (base_keys or state_keys(model)),
        "keys_cover_base": (base_keys or set()) <= state_keys(restored),
        "lora_keys_left": sorted(k for k in state_keys(restored) if "lora_" in k)[:5],
        "tolerance": TOLERANCE,
        # NeMo adapters cannot be folded into the weights: the archive keeps them as (enabled) modules
        "adapters_kept": backend is not None and not backend.mergeable,
    }
    check["ok"] = (check["restore_max_abs_diff"] <= TOLERANCE and check["merge_max_abs_diff"] <= TOLERANCE
                   and check["keys_cover_base"] and not check["lora_keys_left"]
                   and (check["keys_equal_base"] or (backend is not None and not backend.mergeable)))
    print(f"[export] restore check: {'OK' if check['ok'] else 'FAILED'} (max |diff| restored vs trained "
          f"{check['restore_max_abs_diff']:.2e}, tolerance {TOLERANCE:g})"
          + ("; the export keeps the adapters (NeMo adapters cannot be merged into the weights)"
             if check["adapters_kept"] else ""), flush=True)
    del restored
    return out, kept, check
