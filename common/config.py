"""The training command line: the user's original flags with their original defaults, plus the new ones.

`parse_args` turns argv into a validated `TrainConfig`; every problem is reported at once, naming the flag,
the bad value and the fix. Nothing here imports torch or NeMo, so `--help` and bad flags answer instantly.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.errors import UserError

BASE_DTYPES = ("auto", "fp32", "bf16")
PRECISIONS = {"bf16": "bf16-mixed", "fp16": "16-mixed", "16": "16-mixed", "32": "32-true", "fp32": "32-true"}
SCHEDULES = ("cosine", "linear", "constant")
LOGGERS = ("csv", "tb", "none")


@dataclass
class TrainConfig:
    # the original command line
    nemo: str | None = None
    train: str | None = None
    val: str | None = None
    bs: int = 2
    accum: int = 8
    precision: str | None = None  # None: bf16 where supported, else fp16 (see resolve_precision)
    max_steps: int = 3000
    val_every_n_steps: int = 200
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    debug_linear: int = 0
    exp_dir: str = "exp/canary_ru_lora_win"
    save_every: int = 500
    export_nemo: str = "models/nemo/canary-ru-lora-merged.nemo"
    mem_report_steps: int = 50
    log: str = "csv"
    # new
    backend: str = "linear"
    full_finetune: bool = False
    seed: int = 42
    lora_targets: str | None = None
    adapter_dim: int = 32
    num_workers: int = 0
    lr: float = 3e-4
    warmup_steps: int = 100
    sched: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_bs: int | None = None
    batch_duration: float | None = None
    max_duration: float = 40.0
    skip_bad: bool = False
    data_dir: str = "data"
    max_train_cuts: int | None = None
    limit_val_batches: int | None = None
    resume: str | None = None
    stop_after_steps: int | None = None
    regression_manifest: str | None = None
    regression_threshold: float = 0.05  # relative WER rise on the regression set that is flagged
    vram_budget_gb: float | None = None
    devices: int = 1
    num_nodes: int = 1
    compile: bool = False
    cuda_graphs: bool = True  # with --compile on a GPU: replay the compiled layers as CUDA graphs
    base_dtype: str = "auto"  # dtype the frozen base weights are held in while training
    eval_before: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...] | None:
        if not self.lora_targets:
            return None
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    def to_dict(self) -> dict:
        return asdict(self)


def _positive(problems: list[str], name: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        problems.append(f"--{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: TrainConfig) -> TrainConfig:
    problems: list[str] = []
    for name in ("bs", "accum", "max_steps", "val_every_n_steps", "save_every", "lora_r", "adapter_dim",
                 "devices", "num_nodes"):
        _positive(problems, name, getattr(cfg, name))
    for name in ("debug_linear", "mem_report_steps", "num_workers", "warmup_steps", "weight_decay", "grad_clip"):
        _positive(problems, name, getattr(cfg, name), allow_zero=True)
    for name in ("lr", "lora_alpha", "max_duration", "val_bs", "batch_duration", "vram_budget_gb",
                 "max_train_cuts", "limit_val_batches", "stop_after_steps"):
        _positive(problems, name, getattr(cfg, name))
    if not isinstance(cfg.regression_threshold, (int, float)) or not -1.0 <= cfg.regression_threshold < float("inf"):
        problems.append(f"--regression_threshold must be a finite number >= -1 (0.05 flags a 5% relative WER rise), "
                        f"got {cfg.regression_threshold}")
    if cfg.base_dtype not in BASE_DTYPES:
        problems.append(f"--base_dtype {cfg.base_dtype!r} is not one of {', '.join(BASE_DTYPES)}")
    elif cfg.base_dtype == "bf16" and cfg.full_finetune:
        problems.append("--base_dtype bf16 holds frozen weights in bf16, but --full_finetune trains every weight: "
                        "drop --base_dtype (or use fp32)")
    elif cfg.base_dtype == "bf16" and cfg.precision not in (None, "bf16"):
        problems.append(f"--base_dtype bf16 needs --precision bf16 (got {cfg.precision}): under {cfg.precision} "
                        f"the bf16 weights would be rounded again; use --base_dtype fp32")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        problems.append(f"--lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    if cfg.precision is not None and cfg.precision not in PRECISIONS:
        problems.append(f"--precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    if cfg.sched not in SCHEDULES:
        problems.append(f"--sched {cfg.sched!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.log not in LOGGERS:
        problems.append(f"--log {cfg.log!r} is not one of {', '.join(LOGGERS)}")
    for name in ("nemo", "train", "val"):
        if not getattr(cfg, name):
            problems.append(f"--{name} is required (the {'.nemo checkpoint' if name == 'nemo' else name + ' JSONL manifest'})")
    if cfg.export_nemo and not cfg.export_nemo.endswith(".nemo"):
        problems.append(f"--export_nemo must end with .nemo, got {cfg.export_nemo!r}")
    if cfg.targets is not None:
        import re

        for pattern in cfg.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(f"--lora_targets pattern {pattern!r} is not a valid regular expression: {e}")
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


def build_parser(prog: str = "finetune_canary.py") -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="LoRA fine-tuning of a Canary (NeMo EncDecMultiTaskModel) .nemo on JSONL manifests; "
                    "exports a merged .nemo that loads with EncDecMultiTaskModel.restore_from().")
    g = p.add_argument_group("data and model")
    g.add_argument("--nemo", default=d.nemo, help="the base Canary .nemo checkpoint")
    g.add_argument("--train", default=d.train, help="training manifest (NeMo JSONL)")
    g.add_argument("--val", default=d.val, help="validation manifest (NeMo JSONL)")
    g.add_argument("--regression_manifest", default=d.regression_manifest,
                   help="held-out 'general' manifest evaluated before and after, to catch regressions")
    g.add_argument("--regression_threshold", type=float, default=d.regression_threshold,
                   help="flag a relative WER rise on the regression set above this (0.05 = 5%%; negative values "
                        "demand an improvement)")
    g.add_argument("--max_duration", type=float, default=d.max_duration,
                   help="drop clips longer than this many seconds (they cost memory quadratically)")
    g.add_argument("--skip_bad", action="store_true", help="skip missing/unreadable audio instead of stopping")
    g.add_argument("--data_dir", default=d.data_dir, help="where cut caches (*.jsonl.gz) are kept and reused")
    g.add_argument("--max_train_cuts", type=int, default=d.max_train_cuts,
                   help="use only the first N training clips (dry runs)")
    g = p.add_argument_group("batching and precision")
    g.add_argument("--bs", type=int, default=d.bs, help="clips per batch")
    g.add_argument("--accum", type=int, default=d.accum, help="batches per optimizer step (effective batch bs*accum)")
    g.add_argument("--val_bs", type=int, default=d.val_bs, help="validation batch size (default: --bs)")
    g.add_argument("--batch_duration", type=float, default=d.batch_duration,
                   help="seconds of audio per batch with duration bucketing (replaces --bs for training)")
    g.add_argument("--precision", default=d.precision, choices=sorted(PRECISIONS),
                   help="bf16 (default where supported), fp16 (bf16-less GPUs) or 32")
    g.add_argument("--num_workers", type=int, default=d.num_workers, help="data loader workers (0 on Windows)")
    g.add_argument("--base_dtype", default=d.base_dtype, choices=BASE_DTYPES,
                   help="dtype of the frozen base weights while training: auto = bf16 under bf16 precision on a "
                        "GPU (same numbers, less memory, fewer kernels), else fp32; the export always merges into "
                        "the original fp32 weights")
    g.add_argument("--vram_budget_gb", type=float, default=d.vram_budget_gb,
                   help="cap the CUDA allocator to this many GB, to behave like a smaller card")
    g = p.add_argument_group("LoRA")
    g.add_argument("--backend", default=d.backend, help="LoRA implementation: linear, peft or nemo")
    g.add_argument("--full_finetune", action="store_true",
                   help="train every weight instead of adapters (reference mode; no backend)")
    g.add_argument("--lora_r", type=int, default=d.lora_r, help="LoRA rank")
    g.add_argument("--lora_alpha", type=float, default=d.lora_alpha, help="LoRA alpha (scaling = alpha / r)")
    g.add_argument("--lora_dropout", type=float, default=d.lora_dropout, help="dropout on the LoRA input")
    g.add_argument("--lora_targets", default=d.lora_targets,
                   help="comma-separated regexes, full match on module names (default: Canary's attention and "
                        "feed-forward projections)")
    g.add_argument("--adapter_dim", type=int, default=d.adapter_dim, help="NeMo adapter bottleneck (--backend nemo)")
    g.add_argument("--debug_linear", type=int, default=d.debug_linear,
                   help="print the first N nn.Linear names and how many were adapted")
    g = p.add_argument_group("optimization")
    g.add_argument("--max_steps", type=int, default=d.max_steps, help="optimizer steps")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    g.add_argument("--warmup_steps", type=int, default=d.warmup_steps, help="linear warm-up steps")
    g.add_argument("--sched", default=d.sched, choices=SCHEDULES, help="decay after warm-up")
    g.add_argument("--weight_decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--grad_clip", type=float, default=d.grad_clip, help="gradient norm clip (0: off)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the pre-encoder and the encoder's and decoder's layers for training steps "
                        "(Linux; ~40 s on the first step; 1.8-2x the eager speed at --bs 32 on an H100/H200, +16%% "
                        "with --batch_duration; falls back to eager on failure)")
    g.add_argument("--cuda_graphs", action=argparse.BooleanOptionalAction, default=d.cuda_graphs,
                   help="with --compile on a GPU: replay the compiled layers as CUDA graphs, with each batch padded "
                        "to whole seconds of audio (a little more, for an encoder length that is a multiple of 8) "
                        "and multiples of 16 tokens (--no-cuda_graphs: compiled kernels only)")
    g.add_argument("--devices", type=int, default=d.devices, help="GPUs per node (DDP when > 1)")
    g.add_argument("--num_nodes", type=int, default=d.num_nodes, help="machines (DDP via torchrun/SLURM)")
    g = p.add_argument_group("run directory, checkpoints and export")
    g.add_argument("--exp_dir", default=d.exp_dir, help="run directory: checkpoints, logs, report")
    g.add_argument("--save_every", type=int, default=d.save_every, help="checkpoint every N optimizer steps")
    g.add_argument("--resume", default=d.resume, help="'auto' (newest checkpoint in --exp_dir) or a .ckpt path")
    g.add_argument("--stop_after_steps", type=int, default=d.stop_after_steps,
                   help="stop after this many optimizer steps as Ctrl+C would (interrupt checkpoint + export); the "
                        "schedule still runs to --max_steps, so --resume auto later continues the same run")
    g.add_argument("--export_nemo", default=d.export_nemo, help="where the merged .nemo is written")
    g.add_argument("--val_every_n_steps", type=int, default=d.val_every_n_steps, help="validate every N optimizer steps")
    g.add_argument("--limit_val_batches", type=int, default=d.limit_val_batches, help="validate on at most N batches")
    g.add_argument("--no_eval_before", dest="eval_before", action="store_false",
                   help="skip the validation pass before training (the report then has no 'before')")
    g.add_argument("--mem_report_steps", type=int, default=d.mem_report_steps, help="print [MEM:stepN] every N steps")
    g.add_argument("--log", default=d.log, choices=LOGGERS, help="training logger")
    return p


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    parser = parser or build_parser()
    ns = parser.parse_args(argv)
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in vars(ns).items() if k in known})
    cfg.extra = {k: v for k, v in vars(ns).items() if k not in known}
    return validate(cfg)


def resolve_precision(requested: str | None) -> tuple[str, str | None]:
    """Lightning precision string and an optional notice. bf16 unless a CUDA GPU lacks it; --precision wins."""
    import torch

    if requested is not None:
        return PRECISIONS[requested], None
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "16-mixed", ("This GPU has no bf16 support: training in fp16 mixed precision with loss scaling "
                            "(pass --precision to choose).")
    return "bf16-mixed", None


def resolve_base_dtype(choice: str, precision: str, full_finetune: bool) -> str:
    """'bf16' or 'fp32' for the frozen base. auto: bf16 exactly when the layers compute in bf16 anyway
    (bf16-mixed on a GPU) and nothing of the base trains."""
    import torch

    if choice != "auto":
        return choice
    gpu = torch.cuda.is_available()
    return "bf16" if gpu and precision == "bf16-mixed" and not full_finetune else "fp32"


def exp_paths(exp_dir: str | Path) -> dict[str, Path]:
    root = Path(exp_dir)
    return {"root": root, "checkpoints": root / "checkpoints", "metrics": root / "metrics.jsonl",
            "run": root / "run.json", "adapters": root / "adapters.safetensors", "report": root / "report.md"}
