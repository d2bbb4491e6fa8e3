"""PEFT's own `LoraConfig`, made from the shared adapter settings for exactly the modules the patterns selected.
This backend has no flags of its own."""
from __future__ import annotations


def lora_config(spec, modules: list[str]):
    """`target_modules` is the list of exact names, never `all-linear` (which would also wrap the tied head)."""
    from peft import LoraConfig

    return LoraConfig(target_modules=modules, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      bias="none", init_lora_weights=True)
