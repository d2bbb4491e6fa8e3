"""A run's `adapters.safetensors` as a PEFT LoRA adapter for the transformers Canary port: `adapter_config.json`
and `adapter_model.safetensors`, so `PeftModel.from_pretrained(CanaryForConditionalGeneration.from_pretrained(
base), adapter)` applies the same LoRA to the port's model of the same base.

The LoRA layers keep PEFT's layout (`<module>.lora_A.weight`, `lora_B`, scaling alpha / r); only the module names
change (`common.model.hf_export.hf_name`), and where the decoder's model dimension is reordered for the port, so is
the side of each LoRA pair that touches it (A's inputs, B's outputs).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from common.errors import UserError
from common.model.hf_export import READS_RESIDUAL, WRITES_RESIDUAL, hf_name

ADAPTER_DIR = "adapter"


def read_lora(path: str | Path, base_sha256: str) -> tuple[dict[str, torch.Tensor], dict, str]:
    """The LoRA pairs of `adapters.safetensors`, the run's adapter spec and backend; refuses adapters of another
    base and adapters that are not LoRA."""
    from backends import registry
    from common.checkpoint_files import load_adapters

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"--adapters {file}: not found; pass the adapters.safetensors of a run (in its --exp_dir)")
    state, meta = load_adapters(file)
    backend = meta.get("backend", "?")
    lora = backend in registry.names() and registry.registration(backend).method == "lora"
    if not lora or not state or not all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in state):
        raise UserError(f"--adapters {file}: these are not LoRA adapters (backend {backend}); only LoRA backends "
                        f"have a PEFT equivalent")
    if meta.get("base_sha256") and meta["base_sha256"] != base_sha256:
        raise UserError(f"--adapters {file} were trained on another base ({meta.get('base_nemo', '?')}); pass that "
                        f"base as --nemo (the adapters go onto the base model, not onto a merged export)")
    return state, json.loads(meta.get("spec") or "{}"), backend


def port_lora(state: dict[str, torch.Tensor], permutation: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """PEFT's saved keys (`base_model.model.<port module>.lora_A.weight`) and tensors for the port."""
    out = {}
    for key, value in state.items():
        module, pair = key.rsplit(".lora_", 1)  # pair: "A.weight" or "B.weight"
        name = hf_name(f"{module}.weight")
        if name is None:
            raise UserError(f"adapter on {module}: the transformers Canary port has no such module")
        value = value.detach().float().clone()
        if permutation is not None and pair == "A.weight" and READS_RESIDUAL.search(name):
            value = value[:, permutation]
        elif permutation is not None and pair == "B.weight" and WRITES_RESIDUAL.search(name):
            value = value[permutation]
        out[f"base_model.model.{name.removesuffix('.weight')}.lora_{pair}"] = value.contiguous()
    return out


def write_adapter(state: dict[str, torch.Tensor], spec: dict, base_folder: Path) -> Path:
    from safetensors.torch import save_file

    from common.atomic import write_text

    folder = base_folder / ADAPTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    targets = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in state})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": str(base_folder.resolve()),
              "r": int(spec["r"]), "lora_alpha": float(spec["alpha"]), "lora_dropout": float(spec.get("dropout", 0.0)),
              "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None}
    save_file(state, str(folder / "adapter_model.safetensors"))
    write_text(folder / "adapter_config.json", json.dumps(config, indent=2))
    return folder
