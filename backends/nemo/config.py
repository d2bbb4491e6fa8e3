"""The NeMo adapter's settings: its own flag (--adapter_dim) and the shared dropout. --lora_targets, --lora_r and
--lora_alpha do not apply to it. Imports nothing heavy: the command line reads `Options` to offer its flags."""
from __future__ import annotations

from dataclasses import dataclass

from common.flags import flag


@dataclass(frozen=True)
class Options:
    adapter_dim: int = flag(32, "bottleneck width of each NeMo LinearAdapter (--backend nemo)",
                            group="backend nemo")

    def __post_init__(self) -> None:
        if self.adapter_dim <= 0:
            from common.errors import UserError

            raise UserError(f"--adapter_dim must be a positive integer, got {self.adapter_dim}")


@dataclass(frozen=True)
class Config:
    dim: int
    dropout: float

    @classmethod
    def from_spec(cls, spec) -> Config:
        known = Options.__dataclass_fields__
        options = Options(**{k: v for k, v in spec.options.items() if k in known})
        return cls(dim=options.adapter_dim, dropout=spec.dropout)
