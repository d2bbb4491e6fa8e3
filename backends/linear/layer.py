"""A LoRA wrapper around one `nn.Linear`: y = W x + (alpha / r) * B A dropout(x)."""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """Wraps (does not copy) the frozen base layer, so its state-dict keys move under `base_layer.`.

    A is kaiming-uniform and B zero, so a fresh adapter leaves the output unchanged. Key names
    (`lora_A.weight`, `lora_B.weight`) follow PEFT's saved layout, so adapters move between backends.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        self.r = r
        self.scaling = alpha / r
        # LoRA weights stay fp32 (they are the optimizer's master weights) whatever the base dtype is.
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=base.weight.device, dtype=torch.float32)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or not self.enabled:
            return y
        a = self.lora_A.weight.to(x.dtype) if not torch.is_autocast_enabled() else self.lora_A.weight
        b = self.lora_B.weight.to(x.dtype) if not torch.is_autocast_enabled() else self.lora_B.weight
        return y + nn.functional.linear(nn.functional.linear(self.lora_dropout(x), a), b) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B @ A in fp32, whatever dtype the layers hold."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight; idempotent; refuses a non-finite result."""
        if self.merged:
            return
        weight = self.base_layer.weight
        merged = weight.float() + self.delta_weight()
        if not torch.isfinite(merged).all():
            raise ValueError("LoRA merge produced non-finite weights; the adapter is corrupt (NaN/Inf)")
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self.base_layer.weight
        weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}"
