"""Add NeMo `LinearAdapter`s to the encoder and decoder, and make the model's cfg name the adapter classes.

NeMo adapters are bottleneck modules, not low-rank deltas of a weight: they cannot be folded into the base
weights. `merge()` therefore keeps them and rewrites the cfg, so the exported `.nemo` restores with stock
`EncDecMultiTaskModel.restore_from` and the adapters come back enabled. `--lora_targets`, `--lora_r` and
`--lora_alpha` do not apply; `--adapter_dim` sets the bottleneck and `--lora_dropout` the adapter's dropout.
"""
from __future__ import annotations

from typing import Any

import torch
from nemo.core.classes.mixins.adapter_mixins import AdapterModuleMixin
from omegaconf import open_dict
from torch import nn

from backends.registry import DEFAULT_TARGETS, AdapterSpec, Applied, copy_adapter_state

from .config import Config
from .layer import (LOCATIONS, adapter_config, adapter_modules, class_path, decoder_cfg, is_adapter_param,
                    location_width)


class NemoAdapterBackend:
    name = ""  # the registry sets it
    mergeable = False

    def apply(self, model: nn.Module, spec: AdapterSpec) -> Applied:
        config = Config.from_spec(spec)
        # swaps the encoder and decoder for their adapter-capable subclasses, in place (same weights, same keys)
        model.replace_adapter_compatible_modules(update_config=True, verbose=False)
        for location, adapter in LOCATIONS:
            model.add_adapter(f"{location}:{adapter}", adapter_config(location_width(model, location), config))
        model.set_enabled_adapters(enabled=True)
        for _, p in self.trainable_parameters(model):
            p.requires_grad_(True)
        modules = [n for n, _ in adapter_modules(model)]
        layers = {loc: sum(n.startswith(f"{loc}.") for n in modules) for loc, _ in LOCATIONS}
        notes = [f"NeMo LinearAdapter (dim {config.dim}) after each of {layers['encoder']} encoder and "
                 f"{layers['transf_decoder']} decoder layers; --lora_targets, --lora_r and --lora_alpha do not "
                 f"apply to this backend",
                 "NeMo adapters cannot be merged into the weights: the exported .nemo keeps them (enabled)"]
        if tuple(spec.targets) != DEFAULT_TARGETS:
            notes.append("--lora_targets was given but is ignored by --backend nemo")
        return Applied(modules=modules, notes=notes)

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in model.named_parameters() if is_adapter_param(n)]

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.trainable_parameters(model)}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        copy_adapter_state(dict(self.trainable_parameters(model)), state)

    def set_enabled(self, model: nn.Module, enabled: bool) -> None:
        model.set_enabled_adapters(enabled=enabled)

    def merge(self, model: nn.Module) -> None:
        """Keep the adapters; point `cfg.encoder` and `cfg.transf_decoder` at the adapter classes.

        `replace_adapter_compatible_modules` swaps the classes but leaves `cfg.encoder._target_` under its short
        alias, and Canary's decoder cfg names a factory; a `.nemo` saved from that cfg would not restore.
        """
        for location, _ in LOCATIONS:
            if not isinstance(getattr(model, location), AdapterModuleMixin):
                raise ValueError(f"model.{location} has no adapters: apply() the nemo backend before merge()")
        new_decoder = decoder_cfg(model)
        with open_dict(model.cfg):
            model.cfg.encoder._target_ = class_path(type(model.encoder))
            model.cfg.transf_decoder = new_decoder

    def describe(self, model: nn.Module) -> dict[str, Any]:
        modules = adapter_modules(model)
        first = modules[0][1] if modules else None
        return {
            "method": "NeMo LinearAdapter (LayerNorm, down, swish, up; residual), not LoRA",
            "adapted_modules": len(modules),
            "trainable_params": sum(p.numel() for _, p in self.trainable_parameters(model)),
            "settings": {"adapter_dim": first.module[1].out_features if first is not None else None},
            "mergeable": self.mergeable,
            "export": "keeps the adapters (enabled); restores with EncDecMultiTaskModel.restore_from. "
                      "--lora_targets, --lora_r and --lora_alpha do not apply",
        }
