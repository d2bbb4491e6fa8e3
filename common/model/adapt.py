"""Get a restored model ready to train: freeze the base, hold it in bf16 where that changes nothing but speed,
and apply the chosen backend (or unfreeze everything for full fine-tuning)."""
from __future__ import annotations

from common.errors import UserError


def prepare(model, backend, spec, *, base_dtype: str = "fp32", debug_linear: int = 0):
    """Freeze the base, hold it in `base_dtype`, apply the backend (or unfreeze all for full fine-tuning).

    Returns the adapted module names and {key: parameter} of the base weights cast to bf16 (for the export).
    """
    import torch

    from common.model import io as model_io

    model_io.freeze(model)
    cast = model_io.cast_frozen_base(model, torch.bfloat16) if base_dtype == "bf16" else {}
    adapted = adapt(model, backend, spec, debug_linear)
    for p in model.parameters():
        # adapters are the optimizer's master weights: fp32 whatever the base holds (PEFT copies its dtype)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if cast:
        mb = sum(p.numel() for p in cast.values()) * 2 / 2**20
        print(f"[memory] frozen base held in bf16: {len(cast)} weight tensors ({mb:,.0f} MiB); the export merges "
              f"into the original fp32 weights", flush=True)
    return adapted, cast


def adapt(model, backend, spec, debug_linear: int) -> list[str]:
    """Apply the backend (or unfreeze everything for full fine-tuning); zero matches is an error."""
    from backends.registry import linear_names

    names = linear_names(model)
    if debug_linear:
        print(f"[debug_linear] {len(names)} nn.Linear modules; first {min(debug_linear, len(names))}:", flush=True)
        for n in names[:debug_linear]:
            print(f"[debug_linear]   {n}", flush=True)
    if backend is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return names
    applied = backend.apply(model, spec)
    for note in applied.notes:
        print(f"[lora] {note}", flush=True)
    if not applied.modules:
        shown = "\n".join(f"    {n}" for n in names[:40])
        raise UserError(f"--lora_targets matched no nn.Linear module (patterns: {', '.join(spec.targets)}). "
                        f"The model has {len(names)} Linear modules, e.g.:\n{shown}\nPatterns must match the whole "
                        f"name (e.g. 'encoder\\.layers\\.\\d+\\.self_attn\\.linear_q').")
    if debug_linear:
        print(f"[debug_linear] replaced {len(applied.modules)} modules", flush=True)
    return applied.modules

