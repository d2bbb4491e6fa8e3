"""The contract between the training core and a LoRA backend, and the registry that names them.

A backend registers a name and an import path (`"backends.linear.model:LinearBackend"`); the import happens
only when the backend is asked for, so choosing `linear` never loads peft or NeMo's adapter classes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, runtime_checkable

import torch
from torch import nn

# Canary's real projection layers (see CANARY_FACTS): encoder attention q/k/v/out and both feed-forward
# blocks, decoder self/cross attention and feed-forward. Full match on module names. The tied output head
# (`log_softmax.mlp.layer0`) is never adapted, whatever the patterns say.
DEFAULT_TARGETS: tuple[str, ...] = (
    r"encoder\.layers\.\d+\.self_attn\.linear_(q|k|v|out)",
    r"encoder\.layers\.\d+\.feed_forward[12]\.linear[12]",
    r"transf_decoder\._decoder\.layers\.\d+\.(first|second)_sub_layer\.(query_net|key_net|value_net|out_projection)",
    r"transf_decoder\._decoder\.layers\.\d+\.third_sub_layer\.dense_(in|out)",
)


@dataclass(frozen=True)
class AdapterSpec:
    """What to adapt and how; the same for every backend."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    adapter_dim: int = 32  # NeMo native adapters only (bottleneck width)

    def __post_init__(self) -> None:
        problems = []
        if self.r <= 0:
            problems.append(f"--lora_r must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"--lora_alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"--lora_dropout must be in [0, 1), got {self.dropout}")
        if self.adapter_dim <= 0:
            problems.append(f"--adapter_dim must be a positive integer, got {self.adapter_dim}")
        if not self.targets:
            problems.append("--lora_targets is empty: give at least one regular expression")
        if problems:
            from common.errors import UserError

            raise UserError("Invalid adapter settings:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class Applied:
    """What `apply` did: the adapted module names (in model order) and anything worth telling the user."""

    modules: list[str]
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class LoraBackend(Protocol):
    """What the training core needs from a backend. Backends are plain objects, no shared base class."""

    name: str
    mergeable: bool  # False: the export keeps adapter modules (NeMo native adapters)

    def apply(self, model: nn.Module, spec: AdapterSpec) -> Applied: ...

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]: ...

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]: ...

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def set_enabled(self, model: nn.Module, enabled: bool) -> None: ...

    def merge(self, model: nn.Module) -> None: ...

    def describe(self, model: nn.Module) -> dict[str, Any]: ...


_REGISTRY: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Register backend `name` as `"module.path:Factory"`; the module is imported on first use."""
    if name in _REGISTRY and _REGISTRY[name] != target:
        raise ValueError(f"backend {name!r} is already registered ({_REGISTRY[name]})")
    _REGISTRY[name] = target


def _load_builtin() -> None:
    # Importing a backend package runs its one `register(...)` call; its heavy code stays unimported.
    for pkg in ("linear", "peft", "nemo"):
        try:
            importlib.import_module(f"backends.{pkg}")
        except ModuleNotFoundError as e:
            if e.name != f"backends.{pkg}":
                raise


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> LoraBackend:
    """Instantiate backend `name`; an unknown name is an error listing the known ones."""
    known = names()
    if name not in _REGISTRY:
        from common.errors import UserError

        raise UserError(f"Unknown backend {name!r}. Known backends: {', '.join(known)}. Pass one with --backend.")
    module_path, _, factory = _REGISTRY[name].partition(":")
    backend = getattr(importlib.import_module(module_path), factory)()
    if not isinstance(backend, LoraBackend):
        raise TypeError(f"backend {name!r} ({_REGISTRY[name]}) does not satisfy the LoraBackend protocol")
    return backend


def match_targets(model: nn.Module, patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Names of `nn.Linear` modules whose full name matches a pattern, and notes on excluded ones.

    A Linear whose weight is shared with another parameter (Canary's output head is tied to the decoder
    embedding) is never returned: merging into it would silently change the embedding too.
    """
    import re

    compiled = [re.compile(p) for p in patterns]
    shared = _shared_weight_ids(model)
    chosen, notes = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not any(c.fullmatch(name) for c in compiled):
            continue
        if id(module.weight) in shared:
            notes.append(f"{name} shares its weight with another module (tied head): not adapted")
            continue
        chosen.append(name)
    return chosen, notes


def _shared_weight_ids(model: nn.Module) -> set[int]:
    owners: dict[int, int] = {}
    for _, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, count in owners.items() if count > 1}


def linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_adapter_keys(own: Iterable[str], state: dict[str, torch.Tensor]) -> None:
    """Raise KeyError naming the first missing and unexpected adapter keys, if the two sets differ."""
    own = set(own)
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise KeyError(f"adapter keys do not match: missing {missing[:5]} ({len(missing)}), "
                       f"unexpected {unexpected[:5]} ({len(unexpected)})")


def copy_adapter_state(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Check that `state` has exactly the keys of `params`, then copy it in (each in its parameter's dtype)."""
    check_adapter_keys(params, state)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
