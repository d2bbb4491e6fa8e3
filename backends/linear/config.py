"""What one `LoRALinear` is made with, read from the shared adapter settings (--lora_r, --lora_alpha, --lora_dropout).
This backend has no flags of its own."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    r: int
    alpha: float
    dropout: float

    @classmethod
    def from_spec(cls, spec) -> Config:
        return cls(r=spec.r, alpha=spec.alpha, dropout=spec.dropout)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r
