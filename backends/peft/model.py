"""Apply PEFT LoRA to exactly the modules `match_targets` selects, and merge it back with PEFT for export.

`inject_adapter_in_model` (not `get_peft_model`) changes the NeMo model in place, so Lightning trains it as
before. PEFT is given the exact module names, never `all-linear`, which would also wrap the tied output head.
"""
from __future__ import annotations

from typing import Any

import torch
from peft import inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from backends.registry import AdapterSpec, Applied, check_adapter_keys, match_targets, set_submodule

from .config import lora_config
from .layer import ADAPTER, delta_is_finite, is_lora_param, lora_layers, merge_layer, saved_name


class PeftBackend:
    name = ""  # the registry sets it
    mergeable = True

    def apply(self, model: nn.Module, spec: AdapterSpec) -> Applied:
        names, notes = match_targets(model, spec.targets)
        if not names:  # PEFT would raise its own error; the training core explains what matched nothing
            return Applied(modules=[], notes=notes)
        inject_adapter_in_model(lora_config(spec, names), model, adapter_name=ADAPTER)
        wrapped = [n for n, _ in lora_layers(model)]
        if wrapped != names:  # PEFT matches by suffix: make sure it wrapped exactly what was asked, nothing more
            extra, missing = sorted(set(wrapped) - set(names)), sorted(set(names) - set(wrapped))
            raise RuntimeError(f"PEFT wrapped other modules than requested: extra {extra[:5]}, missing {missing[:5]}")
        for _, layer in lora_layers(model):
            # PEFT casts each layer's input to the adapter's dtype (fp32 here) before the LoRA branch; under
            # bf16 autocast the matmul casts it straight back, so the two full-activation copies per layer buy
            # nothing. This is the attribute behind peft.helpers.disable_input_dtype_casting.
            layer.cast_input_dtype_enabled = False
        return Applied(modules=names, notes=notes)

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        # by name, not requires_grad: PEFT's disable_adapters also switches requires_grad off
        return [(n, p) for n, p in model.named_parameters() if is_lora_param(n)]

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(model, adapter_name=ADAPTER, save_embedding_layers=False)
        return {k: v.detach().clone() for k, v in state.items()}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        check_adapter_keys((saved_name(n) for n, _ in self.trainable_parameters(model)), state)
        result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
        if result.unexpected_keys:
            raise KeyError(f"PEFT did not place adapter keys {sorted(result.unexpected_keys)[:5]}")

    def set_enabled(self, model: nn.Module, enabled: bool) -> None:
        for _, layer in lora_layers(model):
            layer.enable_adapters(enabled)

    def merge(self, model: nn.Module) -> None:
        """PEFT's per-layer merge, then each wrapper is replaced by its base `nn.Linear` (`merge_and_unload`).

        Every delta is checked first, so a broken adapter never leaves a half-merged model.
        """
        layers = lora_layers(model)
        for name, layer in layers:
            if not delta_is_finite(layer):
                raise ValueError(f"LoRA weights of {name} are not finite: refusing to merge")
        for name, layer in layers:
            set_submodule(model, name, merge_layer(layer))
        if hasattr(model, "peft_config"):  # PEFT's bookkeeping on the model; the merged model has no adapters
            del model.peft_config

    def describe(self, model: nn.Module) -> dict[str, Any]:
        layers = lora_layers(model)
        first = layers[0][1] if layers else None
        return {
            "method": "LoRA, Hugging Face PEFT (inject_adapter_in_model, in place)",
            "adapted_modules": len(layers),
            "trainable_params": sum(p.numel() for _, p in self.trainable_parameters(model)),
            "settings": {"rank": first.r[ADAPTER] if first else None,
                         "scaling": first.scaling[ADAPTER] if first else None},
            "mergeable": self.mergeable,
            "export": "merged with PEFT's per-layer merge(); wrappers replaced by their base layers",
        }
