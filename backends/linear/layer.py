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


def lora_together(layers: list[LoRALinear], x: torch.Tensor) -> list[torch.Tensor]:
    """`[layer(x) for layer in layers]` for layers that share the input `x`, in fewer matrix products: one over
    the concatenated frozen weights and one over the concatenated A's, then each layer's own B. The same function
    as the separate calls (each adapter keeps its own weights); layers with LoRA dropout (one mask each), merged or
    disabled ones, or a mix of biased and unbiased base layers are called one by one."""
    bases = [layer.base_layer for layer in layers]
    plain = all(layer.enabled and not layer.merged and isinstance(layer.lora_dropout, nn.Identity) for layer in layers)
    biases = [base.bias for base in bases]
    if not plain or len({b is None for b in biases}) > 1:
        return [layer(x) for layer in layers]
    bias = torch.cat(biases) if biases[0] is not None else None
    y = nn.functional.linear(x, torch.cat([base.weight for base in bases]), bias)
    a = torch.cat([layer.lora_A.weight for layer in layers])
    autocast = torch.is_autocast_enabled()
    h = nn.functional.linear(x, a if autocast else a.to(x.dtype))
    outs = []
    for layer, part, low in zip(layers, y.split([b.out_features for b in bases], dim=-1), h.split(
            [layer.r for layer in layers], dim=-1)):
        b = layer.lora_B.weight if autocast else layer.lora_B.weight.to(x.dtype)
        outs.append(part + nn.functional.linear(low, b) * layer.scaling)
    return outs
