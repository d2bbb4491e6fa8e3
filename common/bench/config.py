"""One measured configuration: a mode (a backend, full fine-tuning or a forward pass) and the training flags it
sets, checked where every training command line is checked."""
from __future__ import annotations

from dataclasses import dataclass

from backends import registry
from common.config import TrainConfig, check_values, resolve_precision
from common.errors import UserError

FORWARD = "forward"  # not training: a no-grad forward pass of the same batch, for comparison


# transformers' Canary port with PEFT LoRA, and its forward pass (common.bench.peer; its names, kept here so that
# checking a configuration imports nothing heavy)
PEER, PEER_FORWARD = "peer", "peer-forward"
FORWARD_MODES = (FORWARD, PEER_FORWARD)  # no-grad forward passes: nothing trains, nothing compiles
SPECIAL_MODES = (registry.FULL, FORWARD, PEER, PEER_FORWARD)  # reference modes outside the backend registry


def _default(name: str):
    return TrainConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration: `mode` (a backend name, "full" for every weight, or "forward") and the training
    flags it sets. Every other flag is `TrainConfig`'s default: `train_config` is what the shared assembly gets,
    and it is checked where every training command line is (`common.config.check_values`)."""

    mode: str
    bs: int = 8
    accum: int = 1
    precision: str | None = None  # --precision's values; None resolves as training does
    vram_budget_gb: float | None = None
    compile: bool = False
    cuda_graphs: bool = _default("cuda_graphs")
    batch_duration: float | None = None  # seconds of audio per batch with duration bucketing (bs is then unused)
    lora_r: int = _default("lora_r")
    lora_alpha: float = _default("lora_alpha")
    num_workers: int = 0
    base_dtype: str = _default("base_dtype")
    speedups: tuple[str, ...] = ()  # --speedups names
    grad_ckpt: bool = False
    compile_backend: str = _default("compile_backend")
    tag: str = ""  # free text shown in the label, e.g. "largest"

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in registry.names() and self.mode not in SPECIAL_MODES:
            problems.append(f"mode {self.mode!r} is none of the backends ({', '.join(registry.names())}) or "
                            f"{', '.join(SPECIAL_MODES)}")
        if self.compile and self.mode in FORWARD_MODES:
            problems.append("compile applies to training steps only (validation and decoding stay eager): a "
                            "compiled forward row would time the eager forward")
        if self.mode in (PEER, PEER_FORWARD) and (self.speedups or self.grad_ckpt or
                                                  self.compile_backend != _default("compile_backend")):
            problems.append("the peer (transformers + PEFT) takes --compile and --cuda_graphs only: speed-ups, "
                            "--grad_ckpt and --compile_backend are this project's")
        if self.grad_ckpt and self.mode in FORWARD_MODES:
            problems.append("--grad_ckpt saves memory for a backward pass: a forward row has none")
        problems += check_values(self.train_config(max_steps=1))
        if problems:
            raise UserError("Invalid bench configuration:\n" + "\n".join(f"  - {p}" for p in problems))

    def train_config(self, max_steps: int) -> TrainConfig:
        """The training settings of this row: a constant small learning rate, no dropout, no validation."""
        return TrainConfig(
            backend=self.mode if self.mode in registry.names() else registry.DEFAULT,
            full_finetune=self.mode == registry.FULL, bs=self.bs, accum=self.accum, precision=self.precision,
            vram_budget_gb=self.vram_budget_gb, compile=self.compile, cuda_graphs=self.cuda_graphs,
            batch_duration=self.batch_duration, lora_r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=0.0,
            num_workers=self.num_workers, base_dtype=self.base_dtype, max_steps=max_steps, lr=1e-4,
            warmup_steps=0, sched="constant", seed=0, log="none", speedups=",".join(self.speedups) or None,
            grad_ckpt=self.grad_ckpt, compile_backend=self.compile_backend)

    @property
    def lightning_precision(self) -> str:
        return resolve_precision(self.precision)[0]

    @property
    def label(self) -> str:
        size = f"bd{self.batch_duration:g}s" if self.batch_duration else f"bs{self.bs}"
        parts = [self.mode, size + (f"x{self.accum}" if self.accum > 1 else "")]
        if self.compile:
            parts.append("compile cudagraphs-backend" if self.compile_backend == "cudagraphs" else
                         "compile" if self.cuda_graphs else "compile no-graphs")
        parts += [f"+{name}" for name in self.speedups] + (["+ckpt"] if self.grad_ckpt else [])
        if self.base_dtype != "auto":
            parts.append(f"{self.base_dtype}-base")
        if self.vram_budget_gb:
            parts.append(f"@{self.vram_budget_gb:g}GB")
        if self.tag:
            parts.append(self.tag)
        return " ".join(parts)

