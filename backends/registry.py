"""The contract between the training core and an adapter backend, and the registry that finds them.

Every folder `backends/<name>/` is a backend. Its `__init__.py` registers itself with one `register(__name__, ...)`
call and imports nothing heavy; the registry discovers the folders, so the core never names a backend and a new
one is a new folder. The backend's name is its folder's name. What `register` records:

- `factory`: `"model:LinearBackend"`, the object the core talks to (the `AdapterBackend` protocol), imported
  only when that backend is used, so choosing one never loads another's dependencies (peft, NeMo adapters);
- `method`: backends of one method compute the same function (`linear` and `peft` are both LoRA), so parity
  must find them equal; backends of other methods are set beside them;
- `portable`: it runs on the Windows path (no triton, Megatron or apex), so the import guard may block those;
- `options`: `"config:Options"`, a small dataclass of the backend's own flags (`flag()` fields, light to import):
  the command line offers them, and `AdapterSpec.options` carries their values to the backend.

Only this module and the backend folders name backends; `DEFAULT` is the one used when none is chosen.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT = "linear"
FULL = "full"  # not a backend: every weight trains (reference mode); --full_finetune

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
    """What to adapt and how: the shared settings (the original --lora_* flags) plus the backend's own options."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    options: Mapping[str, Any] = field(default_factory=dict)  # the backend's own flags (see `options_class`)

    def __post_init__(self) -> None:
        problems = []
        if self.r <= 0:
            problems.append(f"--lora_r must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"--lora_alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"--lora_dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            problems.append("--lora_targets is empty: give at least one regular expression")
        if problems:
            from common.errors import UserError

            raise UserError("Invalid adapter settings:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> AdapterSpec:
        """The spec a run recorded (run.json, a checkpoint, adapters.safetensors), older layouts included."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in saved.items() if k in known}
        if "targets" in kwargs:
            kwargs["targets"] = tuple(kwargs["targets"])
        options = dict(kwargs.pop("options", None) or {})
        options.update({k: v for k, v in saved.items() if k not in known})  # once top-level, e.g. adapter_dim
        return cls(**kwargs, options=options)


@dataclass
class Applied:
    """What `apply` did: the adapted module names (in model order) and anything worth telling the user."""

    modules: list[str]
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class AdapterBackend(Protocol):
    """What the training core needs from a backend. Backends are plain objects, no shared base class.

    Optional, asked for with `getattr`: `shared_input(modules) -> callable | None`, a function computing the
    outputs of several adapted layers that share one input (attention's q, k and v) in fewer matrix products,
    for `--speedups qkv`; a backend without it computes them one by one."""

    name: str  # set by the registry: the backend's folder name
    mergeable: bool  # False: the export keeps the adapter modules

    def apply(self, model: nn.Module, spec: AdapterSpec) -> Applied: ...

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]: ...

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]: ...

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None: ...

    def set_enabled(self, model: nn.Module, enabled: bool) -> None: ...

    def merge(self, model: nn.Module) -> None: ...

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """One schema for every backend: `method` (what it is, in words), `adapted_modules`, `trainable_params`,
        `settings` (what shaped the adapters, e.g. rank and scaling), `mergeable`, `export` (what the export
        holds, in words)."""
        ...


DESCRIBE_KEYS = ("method", "adapted_modules", "trainable_params", "settings", "mergeable", "export")


@dataclass(frozen=True)
class Registration:
    name: str
    package: str
    factory: str
    method: str
    portable: bool
    options: str | None


_REGISTRY: dict[str, Registration] = {}
_DISCOVERED = False


def register(package: str, *, factory: str, method: str, portable: bool = False, options: str | None = None) -> None:
    """Called once by each backend's `__init__.py` with its own `__name__`."""
    name = package.rsplit(".", 1)[-1]
    entry = Registration(name, package, factory, method, portable, options)
    if name in _REGISTRY and _REGISTRY[name] != entry:
        raise ValueError(f"backend {name!r} is already registered ({_REGISTRY[name].package})")
    _REGISTRY[name] = entry


def _discover() -> None:
    """Import every package under `backends/` once; each registers itself."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import backends

    for info in pkgutil.iter_modules(backends.__path__):
        if info.ispkg:
            importlib.import_module(f"backends.{info.name}")
    _DISCOVERED = True


def names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def registration(name: str) -> Registration:
    _discover()
    if name not in _REGISTRY:
        from common.errors import UserError

        raise UserError(f"Unknown backend {name!r}. Known backends: {', '.join(names())}. Pass one with --backend.")
    return _REGISTRY[name]


def _load(package: str, target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(f"{package}.{module}"), attr)


def get(name: str) -> AdapterBackend:
    """Instantiate backend `name`; an unknown name is an error listing the known ones."""
    reg = registration(name)
    backend = _load(reg.package, reg.factory)()
    backend.name = reg.name
    if not isinstance(backend, AdapterBackend):
        raise TypeError(f"backend {name!r} ({reg.package}.{reg.factory}) does not satisfy the AdapterBackend protocol")
    return backend


def options_class(name: str):
    """The dataclass of backend `name`'s own flags, or None."""
    reg = registration(name)
    return _load(reg.package, reg.options) if reg.options else None


def option_classes() -> dict[str, type]:
    """{backend name: its options dataclass} for every backend that has flags of its own."""
    return {n: cls for n in names() if (cls := options_class(n)) is not None}


def same_method(name: str) -> list[str]:
    """The backends that compute the same function as `name` (itself included)."""
    method = registration(name).method
    return [n for n in names() if _REGISTRY[n].method == method]


def is_portable(name: str) -> bool:
    return name in names() and _REGISTRY[name].portable


# ---- helpers the backends share ----------------------------------------------------------------------------
def match_targets(model: nn.Module, patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """Names of `nn.Linear` modules whose full name matches a pattern, and notes on excluded ones.

    A Linear whose weight is shared with another parameter (Canary's output head is tied to the decoder
    embedding) is never returned: merging into it would silently change the embedding too.
    """
    import re

    from torch import nn

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
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def check_adapter_keys(own: Iterable[str], state: Mapping[str, Any]) -> None:
    """Raise KeyError naming the first missing and unexpected adapter keys, if the two sets differ."""
    own = set(own)
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise KeyError(f"adapter keys do not match: missing {missing[:5]} ({len(missing)}), "
                       f"unexpected {unexpected[:5]} ({len(unexpected)})")


def copy_adapter_state(params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor]) -> None:
    """Check that `state` has exactly the keys of `params`, then copy it in (each in its parameter's dtype)."""
    import torch

    check_adapter_keys(params, state)
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
