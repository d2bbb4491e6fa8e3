"""Apply `LoRALinear` to the modules a regex list selects, and fold it back for export."""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from backends.registry import AdapterSpec, Applied, copy_adapter_state, match_targets, set_submodule

from .config import Config
from .layer import LoRALinear, lora_together


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


class LinearBackend:
    name = ""  # the registry sets it
    mergeable = True

    def apply(self, model: nn.Module, spec: AdapterSpec) -> Applied:
        config = Config.from_spec(spec)
        names, notes = match_targets(model, spec.targets)
        for name in names:
            base = model.get_submodule(name)
            set_submodule(model, name, LoRALinear(base, config.r, config.alpha, config.dropout))
        return Applied(modules=names, notes=notes)

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_parameters(model)}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        copy_adapter_state(dict(self.trainable_parameters(model)), state)

    def set_enabled(self, model: nn.Module, enabled: bool) -> None:
        for _, layer in _lora_layers(model):
            layer.enabled = enabled

    def merge(self, model: nn.Module) -> None:
        """Fold every adapter into its base weight (fp32 delta) and put the plain `nn.Linear` back.

        All deltas are checked before any weight changes, so a bad adapter never leaves a half-merged model.
        """
        layers = _lora_layers(model)
        for name, layer in layers:
            if not torch.isfinite(layer.delta_weight()).all():
                raise ValueError(f"LoRA weights of {name} are not finite: refusing to merge")
        for name, layer in layers:
            layer.merge()
            set_submodule(model, name, layer.base_layer)

    def shared_input(self, modules: list[nn.Module]):
        """For `--speedups qkv`: one call computing every module's output from their shared input, or None."""
        if len(modules) < 2 or not all(isinstance(m, LoRALinear) for m in modules):
            return None
        return functools.partial(lora_together, list(modules))

    def describe(self, model: nn.Module) -> dict[str, Any]:
        layers = _lora_layers(model)
        first = layers[0][1] if layers else None
        return {
            "method": "LoRA, hand-rolled (plain PyTorch nn.Linear wrappers)",
            "adapted_modules": len(layers),
            "trainable_params": sum(p.numel() for _, p in self.trainable_parameters(model)),
            "settings": {"rank": first.r if first else None, "scaling": first.scaling if first else None},
            "mergeable": self.mergeable,
            "export": "merged into the base weights: the .nemo has exactly the base model's keys",
        }
