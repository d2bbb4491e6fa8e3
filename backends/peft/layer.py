"""PEFT's LoRA layers inside a NeMo model: finding them, naming their weights, folding them back.

PEFT keeps every weight under an adapter name (`<module>.lora_A.default.weight`); its saved layout drops that
name (`<module>.lora_A.weight`), which is also the `linear` backend's layout, so adapter files move between them.
"""
from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

ADAPTER = "default"  # PEFT's adapter name; it never reaches a saved file


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLayer]]:
    """Every PEFT LoRA layer of `model`, in model order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def is_lora_param(name: str) -> bool:
    return f".lora_A.{ADAPTER}." in name or f".lora_B.{ADAPTER}." in name


def saved_name(name: str) -> str:
    """`x.lora_A.default.weight` -> `x.lora_A.weight` (PEFT's saved layout)."""
    return name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def delta_is_finite(layer: LoraLayer) -> bool:
    return bool(torch.isfinite(layer.get_delta_weight(ADAPTER)).all())


@torch.no_grad()
def merge_layer(layer: LoraLayer) -> nn.Module:
    """PEFT's own merge (a checked copy of the weight, `safe_merge`), then the plain base layer to put back."""
    layer.merge(safe_merge=True, adapter_names=[ADAPTER])
    return layer.get_base_layer()
