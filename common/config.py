"""The training settings: every training flag declared once, as a `TrainConfig` field with its help and choices.

`build_parser` is generated from these fields (plus each backend's own flags, from the registry), and `parse_args`
turns argv into a validated `TrainConfig`; every problem is reported at once, naming the flag, the bad value and
the fix. Nothing here imports torch or NeMo, so `--help` and bad flags answer instantly, before any model loads.
The user's original flags keep their original defaults (bs 2, accum 8, bf16, r 8, alpha 16, dropout 0.0,
save_every 500).
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import asdict, dataclass, field, fields

from backends import registry
from common.errors import UserError
from common.flags import add_flags, flag, flag_fields, values_for

BASE_DTYPES = ("auto", "fp32", "bf16")
PRECISIONS = {"bf16": "bf16-mixed", "fp16": "16-mixed", "16": "16-mixed", "32": "32-true", "fp32": "32-true"}
SELECT = ("best", "last")
SCHEDULES = ("cosine", "linear", "constant")  # common.training.module.DECAY
LOGGERS = ("csv", "tb", "wandb", "none")
COMPILE_BACKENDS = ("inductor", "cudagraphs")
# --speedups: changes to the training step that leave its numbers as they were (common.model.speedups)
SPEEDUPS = ("sdpa", "qkv", "nosync")

DATA, BATCH, ADAPT, OPTIM, RUN = ("data and model", "batching and precision", "adapters",
                                  "optimization and devices", "run directory, checkpoints and export")


@dataclass
class TrainConfig:
    # ---- data and model
    nemo: str | None = flag(None, "the base Canary .nemo checkpoint", group=DATA, type=str)
    train: str | None = flag(
        None, "training data: a NeMo JSONL manifest, a Lhotse cut manifest, a NeMo tarred dataset (its folder or "
              "its manifest with shard_id), a Lhotse Shar folder, or an input_cfg YAML with weights", group=DATA,
        type=str)
    mix: tuple[str, ...] = flag(
        (), "mix more data into training against forgetting, DATA:WEIGHT, repeatable (--mix general.jsonl:0.3): DATA "
            "takes any form --train takes; WEIGHT is its relative sampling probability per cut, --train's being 1 "
            "(split at the last ':', so C:\\data\\general.jsonl:0.3 works)", group=DATA, metavar="DATA:WEIGHT")
    val: str | None = flag(None, "validation manifest (NeMo JSONL)", group=DATA, type=str)
    regression_manifest: str | None = flag(
        None, "held-out 'general' manifest evaluated before and after, to catch regressions", group=DATA, type=str)
    regression_threshold: float = flag(
        0.05, "the most a pass may raise the regression set's WER above the base model's, relative (0.05 = 5%%), "
              "to be selected for export; a larger rise is flagged (negative values demand an improvement)",
        group=DATA)
    max_duration: float = flag(40.0, "drop clips longer than this many seconds (they cost memory quadratically)",
                               group=DATA)
    skip_bad: bool = flag(False, "skip missing/unreadable audio instead of stopping", group=DATA)
    data_dir: str = flag("data", "where cut caches (*.jsonl.gz) are kept and reused", group=DATA)
    max_train_cuts: int | None = flag(None, "use only the first N training clips (dry runs)", group=DATA, type=int)
    # ---- batching and precision
    bs: int = flag(2, "clips per batch", group=BATCH)
    accum: int = flag(8, "batches per optimizer step (effective batch bs*accum)", group=BATCH)
    val_bs: int | None = flag(None, "validation batch size (default: --bs)", group=BATCH, type=int)
    batch_duration: float | None = flag(
        None, "seconds of audio per batch with duration bucketing (replaces --bs for training)", group=BATCH)
    precision: str | None = flag(None, "bf16 (default where supported), fp16 (bf16-less GPUs) or 32", group=BATCH,
                                 choices=sorted(PRECISIONS), type=str)
    num_workers: int = flag(0, "data loader workers (0 on Windows)", group=BATCH)
    base_dtype: str = flag(
        "auto", "dtype of the frozen base weights while training: auto = bf16 under bf16 precision on a GPU (same "
                "numbers, less memory, fewer kernels), else fp32; the export always merges into the original fp32 "
                "weights", group=BATCH, choices=BASE_DTYPES)
    vram_budget_gb: float | None = flag(None, "cap the CUDA allocator to this many GB, to behave like a smaller card",
                                        group=BATCH)
    grad_ckpt: bool = flag(
        False, "recompute each encoder and decoder layer in the backward pass instead of keeping its activations: "
               "much less memory (a larger --bs, or longer clips, on a 12 GB card) for about a third more compute; "
               "works with --compile", group=BATCH)
    # ---- adapters
    backend: str = flag(registry.DEFAULT, "adapter implementation (one folder under backends/ each)", group=ADAPT)
    full_finetune: bool = flag(False, "train every weight instead of adapters (reference mode; no backend)",
                               group=ADAPT)
    lora_r: int = flag(8, "LoRA rank", group=ADAPT)
    lora_alpha: float = flag(16.0, "LoRA alpha (scaling = alpha / r)", group=ADAPT)
    lora_dropout: float = flag(0.0, "dropout on the LoRA input", group=ADAPT)
    lora_targets: str | None = flag(
        None, "comma-separated regexes, full match on module names (default: Canary's attention and feed-forward "
              "projections)", group=ADAPT, type=str)
    debug_linear: int = flag(0, "print the first N nn.Linear names and how many were adapted", group=ADAPT)
    # ---- optimization and devices
    max_steps: int = flag(3000, "optimizer steps", group=OPTIM)
    lr: float = flag(3e-4, "AdamW learning rate", group=OPTIM)
    warmup_steps: int = flag(100, "linear warm-up steps", group=OPTIM)
    sched: str = flag("cosine", "decay after warm-up", group=OPTIM, choices=SCHEDULES)
    weight_decay: float = flag(0.0, "AdamW weight decay", group=OPTIM)
    grad_clip: float = flag(1.0, "gradient norm clip (0: off)", group=OPTIM)
    seed: int = flag(42, "random seed", group=OPTIM)
    compile: bool = flag(
        False, "torch.compile the pre-encoder and the encoder's and decoder's layers for training steps (Linux; ~40 s "
               "on the first step; 1.8-2x the eager speed at --bs 32 on an H100/H200, +16%% with --batch_duration; "
               "falls back to eager on failure)", group=OPTIM)
    cuda_graphs: bool = flag(
        True, "with --compile on a GPU: replay the compiled layers as CUDA graphs, with each batch padded to whole "
              "seconds of audio (a little more, for an encoder length that is a multiple of 8) and multiples of 16 "
              "tokens (--no-cuda_graphs: compiled kernels only)", group=OPTIM)
    compile_backend: str = flag(
        "inductor", "with --compile: inductor (fused kernels; needs triton on a GPU) or cudagraphs (the layers "
                    "replayed as CUDA graphs without Inductor or triton, e.g. on Windows)", group=OPTIM,
        choices=COMPILE_BACKENDS)
    speedups: str | None = flag(
        None, "comma-separated changes to the training step that leave its numbers the same, for `just bench` to "
              "compare (e.g. --configs linear:32+sdpa): sdpa (fused attention kernels), qkv (one projection, and one "
              "LoRA A, for q/k/v of one input; linear backend), nosync (no host sync per step in NeMo's "
              "preprocessor or, with DDP, its length check); 'all' for every one", group=OPTIM, type=str)
    devices: int = flag(1, "GPUs per node (DDP when > 1)", group=OPTIM)
    num_nodes: int = flag(1, "machines (DDP via torchrun/SLURM)", group=OPTIM)
    # ---- run directory, checkpoints and export
    exp_dir: str = flag("exp/canary_ru_lora_win", "run directory: checkpoints, logs, report", group=RUN)
    save_every: int = flag(500, "checkpoint every N optimizer steps", group=RUN)
    resume: str | None = flag(None, "'auto' (newest checkpoint in --exp_dir) or a .ckpt path", group=RUN, type=str)
    overwrite: bool = flag(False, "replace an earlier run in --exp_dir and an existing --export_nemo (without it "
                                  "either is refused; --resume auto continues the earlier run instead)", group=RUN)
    keep_last: int = flag(3, "keep the N newest step-N.ckpt files (last.ckpt and best.ckpt always stay)", group=RUN)
    stop_after_steps: int | None = flag(
        None, "stop after this many optimizer steps as Ctrl+C would (interrupt checkpoint + export); the schedule "
              "still runs to --max_steps, so --resume auto later continues the same run", group=RUN, type=int)
    export_nemo: str = flag("models/nemo/canary-ru-lora-merged.nemo", "where the merged .nemo is written", group=RUN)
    val_every_n_steps: int = flag(200, "validate every N optimizer steps", group=RUN)
    limit_val_batches: int | None = flag(None, "validate on at most N batches", group=RUN, type=int)
    eval_before: bool = flag(True, "skip the validation pass before training (the report then has no 'before'; the "
                                   "regression set's reference is still measured)", group=RUN,
                             negate="--no_eval_before")
    select: str = flag("best", "which validation pass is merged and exported: best (the lowest validation WER, ties "
                               "by loss, among passes within --regression_threshold on the regression set; kept in "
                               "checkpoints/best.ckpt) or last (the final state)", group=RUN, choices=SELECT)
    early_stop_patience: int = flag(0, "stop after N validation passes in a row without a better selection score, "
                                       "then export the best pass (0: off)", group=RUN)
    mem_report_steps: int = flag(50, "print [MEM:stepN] every N steps", group=RUN)
    log: str = flag("csv", "training logger (wandb: WANDB_MODE=offline logs locally, under WANDB_DIR if set; "
                           "`wandb sync` uploads later)", group=RUN, choices=LOGGERS)
    status_seconds: float = flag(30.0, "when stderr is not a terminal (a log file, a pipe): a status line (step, loss, "
                                       "audio s/s, ETA) at least this often, in seconds (0: none)", group=RUN)
    verbose: bool = flag(False, "show NeMo's and Lightning's start-up messages and library warnings", group=RUN)
    # the chosen backend's own flags (see backends/<name>/config.py), filled by parse_args
    backend_options: dict = field(default_factory=dict)

    @property
    def targets(self) -> tuple[str, ...] | None:
        if not self.lora_targets:
            return None
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @property
    def speedup_names(self) -> tuple[str, ...]:
        names = tuple(n.strip() for n in (self.speedups or "").split(",") if n.strip())
        return SPEEDUPS if "all" in names else names

    def adapter_spec(self) -> registry.AdapterSpec:
        return registry.AdapterSpec(r=self.lora_r, alpha=self.lora_alpha, dropout=self.lora_dropout,
                                    targets=self.targets or registry.DEFAULT_TARGETS, options=self.backend_options)

    def to_dict(self) -> dict:
        return asdict(self)


REQUIRED = {"nemo": "the .nemo checkpoint", "train": "the training data", "val": "the val JSONL manifest"}
# flags checked for sign: (> 0, >= 0); None means "not given" and is always fine
POSITIVE = ("bs", "accum", "max_steps", "val_every_n_steps", "save_every", "lora_r", "devices", "num_nodes", "lr",
            "lora_alpha", "max_duration", "val_bs", "batch_duration", "vram_budget_gb", "max_train_cuts",
            "limit_val_batches", "stop_after_steps")
NON_NEGATIVE = ("debug_linear", "mem_report_steps", "num_workers", "warmup_steps", "weight_decay", "grad_clip",
                "early_stop_patience", "keep_last", "status_seconds")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every check that needs no file and no model; raises one UserError listing all problems."""
    problems = check_values(cfg)
    for name, what in REQUIRED.items():
        if not getattr(cfg, name):
            problems.append(f"--{name} is required ({what})")
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


def check_values(cfg: TrainConfig) -> list[str]:
    """The problems with the settings' values, one line each (the inputs' presence aside): every command that
    trains (the CLI, the bench, parity, the sweep) checks its settings here."""
    problems: list[str] = []
    for f in flag_fields(TrainConfig):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"--{f.name} must be a finite number, got {value}")
    for name in POSITIVE + NON_NEGATIVE:
        value = getattr(cfg, name)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if value < 0 or (value == 0 and name in POSITIVE):
            problems.append(f"--{name} must be {'> 0' if name in POSITIVE else '>= 0'}, got {value}")
    if math.isfinite(cfg.regression_threshold) and cfg.regression_threshold < -1.0:
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
    for name, allowed in (("precision", PRECISIONS), ("sched", SCHEDULES), ("log", LOGGERS), ("select", SELECT)):
        value = getattr(cfg, name)
        if value is not None and value not in allowed:
            problems.append(f"--{name} {value!r} is not one of {', '.join(allowed)}")
    if cfg.log == "wandb":
        problems += wandb_problems()
    if not cfg.full_finetune and cfg.backend not in registry.names():
        problems.append(f"--backend {cfg.backend!r} is not a backend; known: {', '.join(registry.names())}")
    problems += _step_problems(cfg)
    if cfg.export_nemo and not cfg.export_nemo.endswith(".nemo"):
        problems.append(f"--export_nemo must end with .nemo, got {cfg.export_nemo!r}")
    for spec in cfg.mix:
        try:
            mix_spec(spec)
        except UserError as e:
            problems.append(str(e))
    for pattern in cfg.targets or ():
        try:
            re.compile(pattern)
        except re.error as e:
            problems.append(f"--lora_targets pattern {pattern!r} is not a valid regular expression: {e}")
    return problems + _backend_option_problems(cfg)


def mix_spec(spec: str) -> tuple[str, float]:
    """`--mix DATA:WEIGHT` as (DATA, WEIGHT), split at the last colon: a Windows path has a colon of its own."""
    path, colon, weight = spec.rpartition(":")
    if not colon or not path.strip():
        raise UserError(f"--mix {spec!r} has no weight: write DATA:WEIGHT, e.g. --mix general.jsonl:0.3 (the weight "
                        f"is a relative sampling probability per cut; --train has 1)")
    if len(path) == 1 and path.isalpha() and weight[:1] in ("\\", "/"):
        raise UserError(f"--mix {spec!r} has no weight: the colon after the drive letter {path}: belongs to the path; "
                        f"add the weight after one more colon, e.g. --mix {spec}:0.3")
    try:
        value = float(weight)
    except ValueError:
        raise UserError(f"--mix {spec!r}: the weight {weight!r} after the last ':' is not a number; write "
                        f"DATA:WEIGHT, e.g. --mix {path}:0.3") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--mix {spec!r}: the weight must be a positive finite number (a relative sampling "
                        f"probability per cut; --train has 1), got {weight}")
    return path, value


def wandb_problems() -> list[str]:
    """--log wandb without a way to log: wandb missing, or online mode with no key (it would prompt or hang)."""
    import importlib.util
    import os

    if importlib.util.find_spec("wandb") is None:
        return ["--log wandb: wandb is not installed; `pip install wandb`, or choose --log csv or tb"]
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return []
    netrc = os.path.join(os.path.expanduser("~"), "_netrc" if os.name == "nt" else ".netrc")
    try:
        with open(netrc, encoding="utf-8") as f:
            if "api.wandb.ai" in f.read():
                return []
    except OSError:
        pass
    return ["--log wandb: no W&B API key (no WANDB_API_KEY, no `wandb login`); run `wandb login`, or set "
            "WANDB_MODE=offline to log locally and `wandb sync` the run later"]


def _step_problems(cfg: TrainConfig) -> list[str]:
    """--speedups names and --compile_backend against --compile and --cuda_graphs."""
    problems = []
    unknown = [n for n in cfg.speedup_names if n not in SPEEDUPS]
    if unknown:
        problems.append(f"--speedups: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(SPEEDUPS)} "
                        f"or all, comma-separated")
    if cfg.compile_backend not in COMPILE_BACKENDS:
        problems.append(f"--compile_backend {cfg.compile_backend!r} is not one of {', '.join(COMPILE_BACKENDS)}")
    elif cfg.compile_backend == "cudagraphs" and not (cfg.compile and cfg.cuda_graphs):
        problems.append("--compile_backend cudagraphs replays the layers as CUDA graphs: it needs --compile (and not "
                        "--no-cuda_graphs)")
    return problems


def _backend_option_problems(cfg: TrainConfig) -> list[str]:
    """The chosen backend's own options must build its options dataclass (which checks their values)."""
    if cfg.full_finetune or cfg.backend not in registry.names():
        return []
    cls = registry.options_class(cfg.backend)
    if cls is None:
        return []
    known = {f.name for f in fields(cls)}
    try:
        cls(**{k: v for k, v in cfg.backend_options.items() if k in known})
    except UserError as e:
        return [str(e)]
    return []


def build_parser(prog: str = "finetune_canary.py", *, defaults: dict | None = None) -> argparse.ArgumentParser:
    """The training command line, generated from `TrainConfig` and every backend's own flags."""
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="LoRA fine-tuning of a Canary (NeMo EncDecMultiTaskModel) .nemo on JSONL manifests; "
                    "exports a merged .nemo that loads with EncDecMultiTaskModel.restore_from().")
    add_flags(p, TrainConfig, defaults=defaults)
    p.add_argument("--config", metavar="FILE.yaml", help="take flags from a YAML file (flag names as keys; a run's "
                   "run.json works too, to repeat it); flags on the command line win")
    for action in p._actions:  # the choices of --backend are whatever folders backends/ holds
        if action.dest == "backend":
            action.help = f"{action.help}: {', '.join(registry.names())}"
    for cls in registry.option_classes().values():
        add_flags(p, cls, defaults=defaults)
    return p


def config_from(namespace) -> TrainConfig:
    """A `TrainConfig` from parsed flags; the chosen backend's own flags go into `backend_options`."""
    cfg = TrainConfig(**values_for(TrainConfig, namespace))
    if not cfg.full_finetune and cfg.backend in registry.names():
        cls = registry.options_class(cfg.backend)
        cfg.backend_options = values_for(cls, namespace) if cls is not None else {}
    return cfg


def parse_args(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> TrainConfig:
    import sys

    from common.flags import defaults_from_file

    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file = argparse.ArgumentParser(add_help=False)
    config_file.add_argument("--config")
    given = config_file.parse_known_args(argv)[0].config
    if given:
        parser.set_defaults(**defaults_from_file(given, parser, nested=("backend_options",)))
    return validate(config_from(parser.parse_args(argv)))


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
