"""Speed and memory of the real training step, for many configurations in one process.

`measure` builds a fresh model per configuration, applies the backend exactly as `common.train.run` does
(`adapt` + `CanaryFinetune`, the same Trainer settings and `MetricsCallback`) and runs a few optimizer steps
through Lightning, timing each step between host syncs. A configuration that runs out of memory becomes a row
with status "oom" and the next one runs, so one process can walk a grid, a batch-size ladder or a search for
the largest batch that fits a memory budget (`largest_batch`, `ladder`).

The data is synthetic (`synthetic_set`): speech-shaped noise with Russian transcripts of a realistic length,
generated with numpy in a second, so a GPU machine without espeak can make its own.

Figures: the median optimizer-step time after warm-up, audio seconds trained per wall second, peak memory
(CUDA: `max_memory_allocated` since the fit started; CPU: the largest process RSS seen at a step boundary) and
trainable parameters. Results are plain dicts; `write_table` and `Report` write them as markdown, CSV, JSON.
"""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
import traceback
import wave
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from common.atomic import atomic_path, write_text
from common.errors import UserError

SAMPLE_RATE = 16000
GB = 1024**3
SPECIAL_MODES = ("full", "forward")  # reference modes outside the backend registry


# ---------------------------------------------------------------------------------------------------------
# Synthetic speech-shaped data
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticSet:
    root: Path
    manifest: Path
    label: str  # "15s" or "2-30s": names the set in tables
    durations: tuple[float, ...]
    mean_tokens: float

    @property
    def total_s(self) -> float:
        return float(sum(self.durations))

    @property
    def mean_s(self) -> float:
        return self.total_s / max(1, len(self.durations))


def approx_tokens(text: str) -> int:
    """Rough token count when no tokenizer is at hand (about 3 characters per piece for Russian)."""
    return max(1, round(len(text) / 3.0))


def token_counter(tokenizer, lang: str = "ru") -> Callable[[str], int]:
    """Count tokens as `tokenizer` (unified or aggregate Canary tokenizer) would for `lang`."""
    if hasattr(tokenizer, "tokenizers_dict"):  # aggregate: one SentencePiece model per language
        return lambda text: len(tokenizer.text_to_ids(text, lang))
    return lambda text: len(tokenizer.text_to_tokens(text))


def speech_like_noise(n_samples: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Noise with speech's long-term spectrum, modulated at syllable rate with short pauses (float32, peak 0.3)."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.fft.rfftfreq(n_samples, 1.0 / sample_rate)
    # rises to a plateau around 150-500 Hz, then falls about 6 dB per octave, like the long-term speech spectrum
    shape = (f / 150.0) ** 2 / (1.0 + (f / 150.0) ** 2) / (1.0 + f / 500.0)
    y = np.fft.irfft(spectrum * shape, n_samples)
    t = np.arange(n_samples) / sample_rate
    rate = rng.uniform(3.5, 5.5)  # syllables per second
    envelope = np.sin(np.pi * rate * t + rng.uniform(0, np.pi)) ** 2
    # pauses between words: about one 0.25-s frame in seven is silent, edges smoothed over 25 ms
    frame = int(0.25 * sample_rate)
    gate = (rng.random(n_samples // frame + 1) > 0.15).astype(np.float64).repeat(frame)[:n_samples]
    width = int(0.025 * sample_rate)
    c = np.cumsum(np.concatenate([np.zeros(width), gate]))
    gate = (c[width:] - c[:-width]) / width
    y *= envelope * gate
    peak = float(np.abs(y).max()) or 1.0
    return (0.3 * y / peak).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(audio * 32767.0, -32768, 32767).astype("<i2")
    with atomic_path(path, suffix=".wav") as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def synthetic_set(root: str | os.PathLike, n: int, duration_s: float | tuple[float, float], *, seed: int = 0,
                  tokens_per_second: float = 5.5, count_tokens: Callable[[str], int] | None = None,
                  lang: str = "ru") -> SyntheticSet:
    """Write `n` 16 kHz mono WAVs and a canary2 JSONL manifest under `root` (regenerated every call).

    `duration_s` is one length for every clip, or `(min, max)` for a mixed-length set (uniform). Each transcript
    concatenates Russian demo sentences until it reaches about `tokens_per_second` tokens per second of audio
    (about 80 tokens for 15 s, as in real read speech), counted by `count_tokens` (pass the model tokenizer's).
    """
    from common.demo_data import generate_sentences

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    mixed = isinstance(duration_s, (tuple, list))
    lo, hi = (float(duration_s[0]), float(duration_s[1])) if mixed else (float(duration_s), float(duration_s))
    if not 0 < lo <= hi:
        raise ValueError(f"clip durations must be positive with min <= max, got {duration_s}")
    count = count_tokens or approx_tokens
    root = Path(root).resolve()
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for old in wav_dir.glob("*.wav"):  # a previous set with more clips must not leave strays behind
        old.unlink()
    rng = np.random.default_rng(seed)
    pool = generate_sentences(400, seed)
    lines, durations, tokens = [], [], []
    for i in range(n):
        dur = round(float(rng.uniform(lo, hi)) if mixed else lo, 3)
        samples = int(round(dur * SAMPLE_RATE))
        path = wav_dir / f"clip{i:05d}.wav"
        _write_wav(path, speech_like_noise(samples, rng), SAMPLE_RATE)
        target = max(1, round(tokens_per_second * dur))
        text, n_tok = "", 0
        while n_tok < target:
            text = f"{text} {pool[int(rng.integers(len(pool)))]}".strip()
            n_tok = count(text)
        # a whole sentence overshoots by up to ~15 tokens: drop words while the target is still reached
        words = text.split()
        while len(words) > 1 and count(" ".join(words[:-1])) >= target:
            words.pop()
        text = " ".join(words)
        n_tok = count(text)
        durations.append(samples / SAMPLE_RATE)
        tokens.append(n_tok)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": samples / SAMPLE_RATE, "text": text,
                                 "source_lang": lang, "target_lang": lang, "pnc": "yes"}, ensure_ascii=False))
    manifest = write_text(root / "manifest.jsonl", "".join(line + "\n" for line in lines))
    label = f"{lo:g}-{hi:g}s" if mixed else f"{lo:g}s"
    return SyntheticSet(root=root, manifest=manifest, label=label, durations=tuple(durations),
                        mean_tokens=float(np.mean(tokens)))


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------
class NemoFactory:
    """A fresh model per call, restored from a `.nemo` (the tiny default or a user's checkpoint)."""

    def __init__(self, path: str | os.PathLike):
        from common.preflight import inspect_nemo

        self.path = Path(path)
        self.info = inspect_nemo(self.path)
        self.name = self.path.name
        self.prompt_format = self.info.prompt_format
        self._count = None

    def __call__(self):
        from common.model_io import restore

        return restore(self.path, info=self.info)

    def count_tokens(self, text: str, lang: str = "ru") -> int:
        if self._count is None:
            self._count = token_counter(self().tokenizer, lang)  # the model itself is dropped at once
        return self._count(text)


class StandInFactory:
    """A fresh random-weight model of a `common.model_builder` preset per call (`1b-v2`: canary-1b-v2's shape).

    The tokenizer is trained once; each call only builds the network. On a GPU the weights are created there
    directly: initializing a billion parameters on the host takes far longer than the measurement itself.
    """

    def __init__(self, preset: str, work_dir: str | os.PathLike):
        from common.demo_data import tokenizer_corpus
        from common.model_builder import SHAPES, model_config, train_unified_tokenizer

        self.preset = preset
        self.name = f"{preset} (random weights)"
        tok_dir = Path(work_dir) / f"tokenizer-{preset}"
        train_unified_tokenizer(tokenizer_corpus(), tok_dir, ("ru", "en"), SHAPES[preset].vocab_size)
        tokenizer_cfg = {"dir": str(tok_dir), "type": "bpe", "custom_tokenizer": {
            "_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryBPETokenizer"}}
        self.cfg = model_config(SHAPES[preset], tokenizer_cfg, "canary2")
        self.prompt_format = "canary2"
        self._on_gpu = True
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))

    def count_tokens(self, text: str, lang: str = "ru") -> int:
        return len(self._sp.encode(text))

    def __call__(self):
        import torch
        from nemo.collections.asr.models import EncDecMultiTaskModel
        from omegaconf import OmegaConf

        torch.manual_seed(0)
        if self._on_gpu and torch.cuda.is_available():
            try:
                with torch.device("cuda"):
                    return EncDecMultiTaskModel(cfg=OmegaConf.create(self.cfg))
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - some init code may insist on host tensors: build there
                self._on_gpu = False
                print(f"[bench] building on the GPU failed ({type(e).__name__}: {e}); building on the host from "
                      f"now on (slower)", flush=True)
                gc.collect()
                torch.cuda.empty_cache()
        return EncDecMultiTaskModel(cfg=OmegaConf.create(self.cfg))


# ---------------------------------------------------------------------------------------------------------
# Configurations and rows
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    """One measured configuration. `mode`: a backend name, "full" (every weight trains) or "forward"."""

    mode: str
    bs: int = 8
    accum: int = 1
    precision: str | None = None  # Lightning string; None: bf16-mixed on CUDA (fp16 without bf16), 32-true on CPU
    vram_budget_gb: float | None = None
    compile: bool = False
    cuda_graphs: bool = True  # with compile on a GPU, as --compile does (--no-cuda_graphs: False)
    batch_duration: float | None = None  # seconds of audio per batch with duration bucketing (bs is then unused)
    lora_r: int = 8
    lora_alpha: float = 16.0
    adapter_dim: int = 32
    num_workers: int = 0
    base_dtype: str = "auto"  # frozen base weights: auto (bf16 under bf16 precision on a GPU), fp32 or bf16
    tag: str = ""  # free text shown in the label, e.g. "largest"

    def __post_init__(self) -> None:
        problems = []
        if not self.mode:
            problems.append("mode is empty: give a backend name, 'full' or 'forward'")
        for name in ("bs", "accum", "lora_r", "adapter_dim"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("vram_budget_gb", "batch_duration"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be > 0, got {value}")
        from common.config import BASE_DTYPES

        if self.base_dtype not in BASE_DTYPES:
            problems.append(f"base_dtype must be one of {', '.join(BASE_DTYPES)}, got {self.base_dtype!r}")
        if self.compile and self.mode == "forward":
            problems.append("compile applies to training steps only (validation and decoding stay eager): a "
                            "compiled forward row would time the eager forward")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {self.num_workers}")
        if problems:
            raise UserError("Invalid bench configuration:\n" + "\n".join(f"  - {p}" for p in problems))

    @property
    def label(self) -> str:
        size = f"bd{self.batch_duration:g}s" if self.batch_duration else f"bs{self.bs}"
        parts = [self.mode, size + (f"x{self.accum}" if self.accum > 1 else "")]
        if self.compile:
            parts.append("compile" if self.cuda_graphs else "compile no-graphs")
        if self.base_dtype != "auto":
            parts.append(f"{self.base_dtype}-base")
        if self.vram_budget_gb:
            parts.append(f"@{self.vram_budget_gb:g}GB")
        if self.tag:
            parts.append(self.tag)
        return " ".join(parts)


def quiet_lightning() -> None:
    """Lightning's per-Trainer info lines (GPU available, max_steps reached), once per config, are noise here.

    Both the `lightning` and the standalone `pytorch_lightning` package (NeMo imports it) set their loggers to
    INFO when first imported, so this is called again before every configuration.
    """
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_precision(requested: str | None) -> str:
    import torch

    from common.config import PRECISIONS

    if requested:
        return PRECISIONS.get(requested, requested)
    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _empty_row(cfg: BenchConfig, data: SyntheticSet, status: str, message: str = "") -> dict:
    return {
        "label": cfg.label, "set": data.label, "clip_s": round(data.mean_s, 2), "mode": cfg.mode,
        "bs": None if cfg.batch_duration else cfg.bs, "accum": cfg.accum,
        "eff_bs": None if cfg.batch_duration else cfg.bs * cfg.accum, "batch_duration": cfg.batch_duration,
        "precision": resolve_precision(cfg.precision), "budget_gb": cfg.vram_budget_gb, "compile": cfg.compile,
        "cuda_graphs": cfg.compile and cfg.cuda_graphs and not cfg.batch_duration and _cuda(), "status": status,
        "median_step_s": None, "first_step_s": None, "clips_per_step": None,
        "audio_per_step_s": None, "audio_s_per_s": None, "peak_gb": None, "trainable_params": None,
        "step_over_fwd": None, "last_loss": None, "steps": 0, "wall_s": 0.0, "message": message,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fits(row: dict, peak_limit_gb: float | None = None) -> bool:
    """A row ran and (when a limit is given) peaked at or under it."""
    if row.get("status") != "ok":
        return False
    return peak_limit_gb is None or (row.get("peak_gb") or 0.0) <= peak_limit_gb


def add_forward_ratios(rows: list[dict]) -> None:
    """Set `step_over_fwd` on training rows: step time / (accum x forward time) at the same set and batch size."""
    forward = {(r["set"], r["bs"], r["precision"]): r["median_step_s"] for r in rows
               if r["mode"] == "forward" and r["status"] == "ok" and r["median_step_s"]}
    for r in rows:
        fwd = forward.get((r["set"], r["bs"], r["precision"]))
        if r["mode"] != "forward" and r["status"] == "ok" and fwd and r["median_step_s"]:
            r["step_over_fwd"] = round(r["median_step_s"] / (r["accum"] * fwd), 2)


# ---------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a host sync: the step's kernels are finished when the clock is read


def _rss_gb() -> float:
    from common.telemetry import memory_snapshot

    snap = memory_snapshot()
    return snap.get("rss", 0.0)


def _make_step_timer(warmup: int, total: int):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Wall time, audio seconds and clips of each optimizer step.

        The device is synchronized only after the first step, at the end of the warm-up and after the last
        step: a sync every step would stop the host from queueing the next step while the device computes,
        which is exactly the overlap the training loop relies on. The timed window (warm-up end to last step)
        gives the steady-state step time; per-step times in between are host-side only.
        """

        def __init__(self):
            self.step_s: list[float] = []
            self.audio_s: list[float] = []
            self.clips: list[int] = []
            self.window_s: float | None = None
            self.peak_rss_gb = 0.0
            self._t = 0.0
            self._t_warm = None
            self._audio = 0.0
            self._clips = 0
            self._step_at_start = -1

        def on_train_start(self, trainer, pl_module) -> None:
            _sync()
            self._t = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._step_at_start = trainer.global_step
            # cut durations live on the host: no device read needed
            self._audio += float(sum(c.duration for c in batch.cuts))
            self._clips += len(batch.cuts)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == self._step_at_start:
                return  # still accumulating
            n = len(self.step_s) + 1
            if n in (1, warmup, total):
                _sync()
            now = time.perf_counter()
            self.step_s.append(now - self._t)
            self.audio_s.append(self._audio)
            self.clips.append(self._clips)
            if n == warmup:
                self._t_warm = now
            if n == total and self._t_warm is not None and total > warmup:
                self.window_s = now - self._t_warm
            self._t, self._audio, self._clips = now, 0.0, 0
            import torch

            if not torch.cuda.is_available():
                self.peak_rss_gb = max(self.peak_rss_gb, _rss_gb())

    return StepTimer()


def _train_steps(model, cfg: BenchConfig, cuts_path: Path, warmup: int, steps: int, work_dir: Path,
                 profile_dir: Path | None = None) -> dict:
    """The real training step through Lightning, as `common.train.run` sets it up."""
    import lightning.pytorch as pl
    import torch

    from backends import registry
    from common import data
    from common.callbacks import MetricsCallback
    from common.config import TrainConfig, resolve_base_dtype
    from common.module import CanaryFinetune, OptimSettings
    from common.telemetry import MetricsLog
    from common.train import compile_for_training, prepare

    defaults = TrainConfig()
    backend = None if cfg.mode == "full" else registry.get(cfg.mode)
    spec = registry.AdapterSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0, adapter_dim=cfg.adapter_dim)
    precision = resolve_precision(cfg.precision)
    prepare(model, backend, spec, base_dtype=resolve_base_dtype(cfg.base_dtype, precision, backend is None))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    module = CanaryFinetune(model, backend, OptimSettings(lr=1e-4, warmup_steps=0, max_steps=warmup + steps,
                                                          sched="constant"), meta={"backend": cfg.mode})
    if cfg.compile:
        compile_for_training(model, module, cuda_graphs=cfg.cuda_graphs, bucketed=cfg.batch_duration is not None)
    # full batches only: a short last batch is a new shape, which a compiled model would recompile mid-timing
    settings = data.LoaderSettings(batch_size=cfg.bs, batch_duration=cfg.batch_duration, num_workers=cfg.num_workers,
                                   seed=0, drop_last=True, pin_memory=torch.cuda.is_available())
    loader = data.make_loader(cuts_path, model.tokenizer, model.prompt, settings, train=True)
    module.train_sampler = loader.sampler
    timer = _make_step_timer(warmup, warmup + steps)
    metrics = work_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    tracker = MetricsCallback(MetricsLog(metrics), mem_every=0)
    trainer = pl.Trainer(
        accelerator="auto", devices=1, precision=precision, max_steps=warmup + steps,
        max_epochs=-1, accumulate_grad_batches=cfg.accum, gradient_clip_val=defaults.grad_clip or None,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False, log_every_n_steps=1,
        default_root_dir=str(work_dir), callbacks=[tracker, timer, *_kernel_profile(profile_dir, cfg, warmup, steps)],
        # host time per Lightning action (forward, backward, optimizer, data): where a launch-bound step goes
        profiler=_profiler(profile_dir, cfg) if profile_dir else None,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)
    peak = torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else timer.peak_rss_gb
    return {"step_s": timer.step_s, "audio_s": timer.audio_s, "clips": timer.clips, "peak_gb": peak,
            "trainable_params": trainable, "window_s": timer.window_s, "last_loss": tracker.last_loss}


def _profile_name(cfg: BenchConfig) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.label)


def _profiler(profile_dir: Path, cfg: BenchConfig):
    from lightning.pytorch.profilers import SimpleProfiler

    return SimpleProfiler(dirpath=str(profile_dir), filename=_profile_name(cfg))  # writes fit-<name>.txt


# Kinds of CUDA kernels, by the names cuBLAS, cuDNN, Inductor and torch give them; the first match wins.
# Inductor names a fused kernel after the ops it absorbed (`triton_red_fused_..._convolution_...`): fused first.
KERNEL_KINDS = (
    ("copy/memset", ("memcpy", "memset")),
    ("fused (Triton)", ("triton",)),
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad")),
    # cutlass kernels for operands whose rows are not 16-byte aligned (a length that is not a multiple of 8)
    ("matmul, unaligned", ("align1", "align2")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk", "aten::mm", "aten::addmm", "aten::bmm")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other")


def kernel_report(events, steps: int, title: str) -> str:
    """Time per kind of kernel and the costliest kernels, per optimizer step, from torch.profiler events.

    On a GPU: device time of each kernel (inside CUDA graphs too); user annotations, which span kernels, are left
    out. Without a GPU: self host time of each operator.
    """
    from torch.autograd import DeviceType

    on_device = any(e.device_type == DeviceType.CUDA for e in events)
    totals: dict[str, list] = {}
    for e in events:
        if on_device:
            if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
                continue
            us = e.time_range.elapsed_us()
        else:
            us = e.self_cpu_time_total
        entry = totals.setdefault(e.name, [0.0, 0])
        entry[0] += us / 1000 / steps
        entry[1] += 1 / steps
    what = "GPU time per kernel" if on_device else "host time per operator (self)"
    total = sum(ms for ms, _ in totals.values())
    kinds: dict[str, list] = {}
    for name, (ms, calls) in totals.items():
        entry = kinds.setdefault(kernel_kind(name), [0.0, 0.0])
        entry[0] += ms
        entry[1] += calls
    lines = [f"# {title}: {what}, per optimizer step (mean of {steps} profiled steps)", "",
             f"total {total:.2f} ms in {sum(c for _, c in totals.values()):.0f} calls", "",
             f"{'kind':20s} {'ms':>9s} {'share':>6s} {'calls':>7s}"]
    for kind, (ms, calls) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{kind:20s} {ms:9.2f} {ms / total if total else 0:6.1%} {calls:7.0f}")
    lines += ["", f"{'ms':>9s} {'calls':>6s}  {'kind':20s} name"]
    for name, (ms, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:40]:
        lines.append(f"{ms:9.3f} {calls:6.0f}  {kernel_kind(name):20s} {name[:160]}")
    return "\n".join(lines) + "\n"


def _kernel_profile(profile_dir: Path | None, cfg: BenchConfig, warmup: int, steps: int) -> list:
    """With a profile folder: a callback that runs torch.profiler over the last (up to 3) timed optimizer steps
    and writes kernels-<config>.txt. Profiling slows those steps: time configurations without it."""
    if profile_dir is None:
        return []
    import torch
    from lightning.pytorch.callbacks import Callback

    last = warmup + steps
    first = max(warmup + 1, last - 2)
    path = Path(profile_dir) / f"kernels-{_profile_name(cfg)}.txt"

    class KernelProfile(Callback):
        def __init__(self):
            self.prof = None
            self.running = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.prof is None and trainer.global_step == first - 1:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                _sync()
                self.prof = torch.profiler.profile(activities=activities)
                self.prof.__enter__()
                self.running = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.running and trainer.global_step == last:
                _sync()
                self._stop()
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text(path, kernel_report(self.prof.events(), last - first + 1, cfg.label))

        def teardown(self, trainer, pl_module, stage) -> None:
            self._stop()  # a run that ended early: no report, but no profiler left running

        def _stop(self) -> None:
            if self.running:
                self.running = False
                self.prof.__exit__(None, None, None)

    return [KernelProfile()]


def _forward_steps(model, cfg: BenchConfig, cuts_path: Path, warmup: int, steps: int) -> dict:
    """No-grad teacher-forced forward (encoder, decoder, loss) of one batch, repeated."""
    import contextlib

    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from common import data
    from common.config import resolve_base_dtype
    from common.model_io import cast_frozen_base, freeze
    from common.module import compute_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg.precision)
    freeze(model)
    if resolve_base_dtype(cfg.base_dtype, precision, False) == "bf16":  # the same weights the LoRA rows train on
        cast_frozen_base(model, torch.bfloat16)
    model.to(device)
    model.eval()
    settings = data.LoaderSettings(batch_size=cfg.bs, batch_duration=cfg.batch_duration, num_workers=0, seed=0)
    loader = data.make_loader(cuts_path, model.tokenizer, model.prompt, settings, train=True)
    batch = move_data_to_device(next(iter(loader)), device)
    audio, clips = float(sum(c.duration for c in batch.cuts)), len(batch.cuts)
    autocast = contextlib.nullcontext()
    if device.type == "cuda" and precision in ("bf16-mixed", "16-mixed"):
        autocast = torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16-mixed" else torch.float16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, peak_rss = [], 0.0
    with torch.no_grad(), autocast:
        for _ in range(warmup + steps):
            _sync()
            t = time.perf_counter()
            compute_loss(model, batch)
            _sync()
            times.append(time.perf_counter() - t)
            if device.type == "cpu":
                peak_rss = max(peak_rss, _rss_gb())
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else peak_rss
    return {"step_s": times, "audio_s": [audio] * len(times), "clips": [clips] * len(times), "peak_gb": peak,
            "trainable_params": 0}


def _classify(e: BaseException) -> tuple[str, str]:
    import torch

    from common.train import NonFiniteLoss

    text = " ".join(str(e).split())
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return "oom", text[:300]
    if isinstance(e, NonFiniteLoss):
        return "nonfinite", text
    return "error", f"{type(e).__name__}: {text[:300]}"


def _set_budget(budget_gb: float | None) -> None:
    import torch

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if budget_gb is None else min(1.0, budget_gb * GB / total))


def _free(compiled: bool) -> None:
    import torch

    gc.collect()
    if compiled:
        import torch._dynamo

        torch._dynamo.reset()  # drop compiled graphs that hold on to the freed model
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure_one(model_factory: Callable[[], object], cfg: BenchConfig, data: SyntheticSet, cuts_path: Path,
                warmup: int, steps: int, work_dir: Path, profile_dir: Path | None = None) -> dict:
    """Build, adapt and run one configuration; never raises for OOM or a failing config (status says why)."""
    import lightning.pytorch as pl
    import torch

    row = _empty_row(cfg, data, "ok")
    print(f"[bench] {cfg.label} on {data.label} clips ...", flush=True)
    t0 = time.perf_counter()
    _set_budget(cfg.vram_budget_gb)
    pl.seed_everything(0, verbose=False)
    torch.set_float32_matmul_precision("high")
    result = None
    try:
        result = _run_config(model_factory, cfg, cuts_path, warmup, steps, work_dir, profile_dir)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one bad configuration must not end a long measuring run
        row["status"], row["message"] = _classify(e)
        if row["status"] == "error":
            traceback.print_exc(file=sys.stderr)
        # leaving the except block drops the traceback, whose frames hold the model and activations
    finally:
        _free(cfg.compile)
        _set_budget(None)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if result is not None:
        _fill(row, result, warmup)
    print(f"[bench]   {format_row(row)}", flush=True)
    return row


def _run_config(model_factory, cfg: BenchConfig, cuts_path: Path, warmup: int, steps: int, work_dir: Path,
                profile_dir: Path | None = None) -> dict:
    model = model_factory()
    if cfg.mode == "forward":
        return _forward_steps(model, cfg, cuts_path, warmup, steps)
    return _train_steps(model, cfg, cuts_path, warmup, steps, work_dir, profile_dir)


def _fill(row: dict, result: dict, warmup: int) -> None:
    times, audio, clips = result["step_s"], result["audio_s"], result["clips"]
    measured = list(range(min(warmup, max(0, len(times) - 1)), len(times)))  # keep at least one step
    if not measured:
        row["status"], row["message"] = "error", "no optimizer step completed"
        return
    row["steps"] = len(measured)
    row["first_step_s"] = round(times[0], 3)
    row["clips_per_step"] = statistics.median(clips[i] for i in measured)
    row["audio_per_step_s"] = round(statistics.median(audio[i] for i in measured), 2)
    window = result.get("window_s")
    if window and len(measured) == len(times) - warmup:  # training: one synced window over the timed steps
        row["median_step_s"] = round(window / len(measured), 4)
        row["audio_s_per_s"] = round(sum(audio[i] for i in measured) / window, 1)
    else:  # forward passes are synced one by one
        row["median_step_s"] = round(statistics.median(times[i] for i in measured), 4)
        row["audio_s_per_s"] = round(statistics.median(audio[i] / times[i] for i in measured), 1)
    row["peak_gb"] = round(result["peak_gb"], 3)
    row["trainable_params"] = result["trainable_params"]
    if result.get("last_loss") is not None:  # the same seed and batches: compiled paths must train alike
        row["last_loss"] = round(float(result["last_loss"]), 4)


class _Cuts:
    """Cut sets per (manifest, prompt format), built once per process."""

    def __init__(self, work_dir: Path):
        self.work_dir = work_dir
        self._paths: dict[tuple[str, str], Path] = {}

    def get(self, data: SyntheticSet, prompt_format: str) -> Path:
        from common.data import build_cuts
        from common.manifest import load_manifest

        key = (str(data.manifest), prompt_format)
        if key not in self._paths:
            report = load_manifest(data.manifest, max_duration=None)
            self._paths[key], _ = build_cuts(report, self.work_dir / "cuts", prompt_format)
        return self._paths[key]


def skipped_row(cfg: BenchConfig, data: SyntheticSet, why: str = "time budget used up") -> dict:
    row = _empty_row(cfg, data, "skipped", why)
    print(f"[bench] {cfg.label} on {data.label}: skipped ({why})", flush=True)
    return row


class Bench:
    """Shared state of one measuring process: the model factory, cut caches, warm-up/steps and a deadline."""

    def __init__(self, model_factory: Callable[[], object], prompt_format: str, work_dir: str | os.PathLike, *,
                 warmup: int = 3, steps: int = 8, deadline: float | None = None,
                 on_row: Callable[[dict], None] | None = None, quiet: bool = True,
                 profile_dir: str | os.PathLike | None = None):
        if warmup < 0 or steps < 1:
            raise UserError(f"warmup must be >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
        self.model_factory = model_factory
        self.prompt_format = prompt_format
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.warmup, self.steps = warmup, steps
        self.deadline = deadline  # time.monotonic() value after which configs are skipped
        self.on_row = on_row
        self.quiet = quiet
        self.profile_dir = Path(profile_dir) if profile_dir else None
        self._cuts = _Cuts(self.work_dir)

    def run(self, cfg: BenchConfig, data: SyntheticSet, *, warmup: int | None = None,
            steps: int | None = None) -> dict:
        if self.deadline is not None and time.monotonic() > self.deadline:
            row = skipped_row(cfg, data)
        else:
            if self.quiet:
                quiet_lightning()
            cuts = self._cuts.get(data, self.prompt_format)
            row = measure_one(self.model_factory, cfg, data, cuts, self.warmup if warmup is None else warmup,
                              self.steps if steps is None else steps, self.work_dir, self.profile_dir)
        if self.on_row:
            self.on_row(row)
        return row


def measure(model_factory: Callable[[], object], configs: Iterable[BenchConfig], data: SyntheticSet,
            warmup: int = 3, steps: int = 8, *, work_dir: str | os.PathLike | None = None,
            on_row: Callable[[dict], None] | None = None, deadline: float | None = None) -> list[dict]:
    """Measure every configuration on `data`, one fresh model each; rows in order, forward ratios filled in."""
    from common.embedded import cache_dir

    prompt_format = getattr(model_factory, "prompt_format", None)
    if prompt_format is None:
        probe = model_factory()
        prompt_format = probe.prompt_format
        del probe
        _free(False)
    bench = Bench(model_factory, prompt_format, work_dir or cache_dir() / "bench", warmup=warmup, steps=steps,
                  deadline=deadline, on_row=on_row)
    rows = [bench.run(cfg, data) for cfg in configs]
    add_forward_ratios(rows)
    return rows


def largest_batch(run_one: Callable[[int], dict], start: int, step: int, *, peak_limit_gb: float | None,
                  max_bs: int = 512) -> tuple[list[dict], dict | None]:
    """Step the batch size up from `start` by `step` until a row does not fit (OOM, or peak over the limit).

    If `start` itself does not fit, step down instead until one does. Returns every row and the largest fitting.
    """
    rows: list[dict] = []
    best = None
    bs = start
    going_up = None
    while 1 <= bs <= max_bs:
        row = run_one(bs)
        rows.append(row)
        if row["status"] == "skipped":
            break
        ok = fits(row, peak_limit_gb)
        if going_up is None:
            going_up = ok
        if ok:
            best = row
            if not going_up:
                break
            bs += step
        elif going_up:
            break
        else:
            bs -= step
    return rows, best


# The Windows runbook's ladder: the same effective batch (about 16) with fewer, larger micro-batches, then
# larger batches for cards with room to spare.
LADDER: tuple[tuple[int, int], ...] = ((2, 8), (3, 6), (4, 4), (6, 3), (8, 2), (16, 1), (24, 1), (32, 1))


def ladder(run_one: Callable[[int, int], dict], rungs: Sequence[tuple[int, int]] = LADDER, *,
           min_gain: float = 0.02) -> tuple[list[dict], dict | None]:
    """Walk bs/accum rungs until the first one that fails or gains less than `min_gain` in audio seconds/s.

    Returns every row and the recommendation: the fastest row that ran.
    """
    rows: list[dict] = []
    best = None
    for bs, accum in rungs:
        row = run_one(bs, accum)
        rows.append(row)
        if row["status"] != "ok":
            break
        rate = row["audio_s_per_s"] or 0.0
        improved = best is None or rate >= (best["audio_s_per_s"] or 0.0) * (1.0 + min_gain)
        if best is None or rate > (best["audio_s_per_s"] or 0.0):
            best = row
        if not improved:
            break
    return rows, best


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
def environment(argv: Sequence[str] | None = None) -> dict:
    """Device, versions, date and command line for table headers."""
    import platform

    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.get_device_name(0)} ({props.total_memory / GB:.1f} GB)"
        peak = "CUDA max_memory_allocated since the fit started"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = f"CPU ({cores} cores{', ' + platform.machine() if platform.machine() else ''})"
        peak = "largest process RSS at a step boundary"
    args = list(sys.argv if argv is None else argv)
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + " ".join(shlex.quote(a) for a in args), "peak_memory": peak}


# (key, header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("label", "config", "{}"), ("set", "clips", "{}"), ("eff_bs", "eff. batch", "{}"),
    ("status", "status", "{}"), ("median_step_s", "step s", "{:.3f}"),
    ("first_step_s", "first step s", "{:.2f}"), ("audio_s_per_s", "audio s/s", "{:.1f}"),
    ("peak_gb", "peak GB", "{:.2f}"), ("trainable_params", "trainable", "{:,}"),
    ("step_over_fwd", "step/fwd", "{:.2f}"), ("last_loss", "last loss", "{:.3f}"),
)


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k), f).replace("|", "/") for k, _, f in columns) + " |")
    notes = [f"- {r['label']} ({r['set']}): {r['status']}: {r['message']}" for r in rows
             if r.get("status") not in ("ok", None) and r.get("message")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def format_row(row: dict) -> str:
    """One progress line per row."""
    if row["status"] != "ok":
        return f"{row['label']} ({row['set']}): {row['status']} {row['message'][:160]}"
    ratio = f"  step/fwd {row['step_over_fwd']:.2f}" if row.get("step_over_fwd") else ""
    return (f"{row['label']} ({row['set']}): step {row['median_step_s']:.3f} s (first {row['first_step_s']:.2f} s)  "
            f"{row['audio_s_per_s']:.1f} audio s/s  peak {row['peak_gb']:.2f} GB  "
            f"trainable {row['trainable_params']:,}{ratio}  [{row['wall_s']:.0f} s]")


def _header(title: str, env: dict) -> str:
    return (f"# {title}\n\n"
            f"- device: {env['device']}; torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
            + f"\n- date: {env['date']}\n- command: `{env['command']}`\n- peak memory: {env['peak_memory']}\n")


def csv_text(rows: Sequence[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def write_table(rows: Sequence[dict], out_dir: str | os.PathLike, name: str, *, title: str | None = None,
                notes: Sequence[str] = (), columns: Sequence[tuple[str, str, str]] = COLUMNS,
                formats: Sequence[str] = ("md", "csv", "json"), env: dict | None = None) -> dict[str, Path]:
    """Write `<name>.md`, `.csv` and `.json` into `out_dir` (each atomically) with a header naming the device."""
    env = env or environment()
    out = Path(out_dir)
    written: dict[str, Path] = {}
    if "md" in formats:
        body = _header(title or name, env) + "\n" + markdown_table(rows, columns)
        if notes:
            body += "\n" + "\n".join(notes) + "\n"
        written["md"] = write_text(out / f"{name}.md", body)
    if "csv" in formats:
        written["csv"] = write_text(out / f"{name}.csv", csv_text(rows))
    if "json" in formats:
        written["json"] = write_text(out / f"{name}.json", json.dumps(
            {"title": title or name, "environment": env, "notes": list(notes), "rows": list(rows)},
            indent=1, ensure_ascii=False))
    return written


@dataclass
class Section:
    title: str
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Report:
    """Several tables in ONE markdown and ONE JSON file, rewritten after every row so a killed run keeps them."""

    def __init__(self, out_dir: str | os.PathLike, name: str, title: str):
        self.out_dir, self.name, self.title = Path(out_dir), name, title
        self.env = environment()
        self.sections: list[Section] = []
        self.t0 = time.monotonic()

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def add(self, section: Section, row: dict) -> None:
        section.rows.append(row)
        self.write()

    def write(self) -> dict[str, Path]:
        add_forward_ratios([r for s in self.sections for r in s.rows])
        elapsed = f"- elapsed: {time.monotonic() - self.t0:.0f} s\n"
        md = [_header(self.title, self.env) + elapsed]
        for s in self.sections:
            md.append(f"\n## {s.title}\n\n" + markdown_table(s.rows) + "".join(f"\n{n}\n" for n in s.notes))
        doc = {"title": self.title, "environment": self.env, "elapsed_s": round(time.monotonic() - self.t0, 1),
               "sections": [{"title": s.title, "notes": s.notes, "rows": s.rows} for s in self.sections]}
        return {"md": write_text(self.out_dir / f"{self.name}.md", "".join(md)),
                "json": write_text(self.out_dir / f"{self.name}.json", json.dumps(doc, indent=1, ensure_ascii=False))}
