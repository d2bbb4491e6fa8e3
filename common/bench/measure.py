"""Speed and memory of the real training step, for many configurations in one process.

`measure` builds a fresh model per configuration, applies the backend exactly as a training run does (the same
`prepare`, module, Trainer assembly and `MetricsCallback`, from `common.training.trainer`) and runs a few optimizer
steps through Lightning, timing each step between host syncs (`common.bench.steps`). A configuration that runs out
of memory becomes a row with status "oom" and the next one runs, so one process can walk a grid, a batch-size
ladder or a search for the largest batch that fits a memory budget (`common.bench.search`).

The data is synthetic (`common.bench.synthetic`). Figures: the median optimizer-step time after warm-up, audio
seconds trained per wall second, peak memory (CUDA: `max_memory_allocated` since the fit started; CPU: the largest
process RSS seen at a step boundary) and trainable parameters. Results are plain dicts; `common.bench.tables`
writes them as markdown, CSV and JSON.
"""
from __future__ import annotations

import gc
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from common.bench.config import FORWARD, BenchConfig
from common.bench.peer import PEER, PEER_FORWARD, PEER_MODES
from common.bench.synthetic import SyntheticSet
from common.bench.steps import forward_steps, train_steps
from common.errors import NonFiniteLoss, UserError
from common.telemetry import set_memory_cap


def quiet_lightning() -> None:
    """Lightning's per-Trainer info lines (GPU available, max_steps reached), once per config, are noise here.

    Both the `lightning` and the standalone `pytorch_lightning` package (NeMo imports it) set their loggers to
    INFO when first imported, so this is called again before every configuration.
    """
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _empty_row(cfg: BenchConfig, data: SyntheticSet, status: str, message: str = "") -> dict:
    return {
        "label": cfg.label, "set": data.label, "clip_s": round(data.mean_s, 2), "mode": cfg.mode,
        "bs": None if cfg.batch_duration else cfg.bs, "accum": cfg.accum,
        "eff_bs": None if cfg.batch_duration else cfg.bs * cfg.accum, "batch_duration": cfg.batch_duration,
        "precision": cfg.lightning_precision, "budget_gb": cfg.vram_budget_gb, "compile": cfg.compile,
        "speedups": ",".join(cfg.speedups), "grad_ckpt": cfg.grad_ckpt, "compile_backend": cfg.compile_backend,
        "cuda_graphs": cfg.compile and cfg.cuda_graphs and not cfg.batch_duration and _cuda(), "status": status,
        "median_step_s": None, "first_step_s": None, "clips_per_step": None,
        "audio_per_step_s": None, "audio_s_per_s": None, "peak_gb": None, "trainable_params": None,
        "step_over_fwd": None, "vs_peer": None, "last_loss": None, "steps": 0, "wall_s": 0.0, "message": message,
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
    """Set `step_over_fwd` on training rows: step time / (accum x forward time) at the same set and batch size,
    the peer's against its own forward pass; and `vs_peer` on ours: audio s/s over the peer's at the same set,
    batch and precision (training rows against the peer's step, forward rows against its forward pass)."""
    def ok(r: dict) -> bool:
        return r["status"] == "ok" and bool(r["median_step_s"])

    def key(r: dict, mode: str, speedups: str = "") -> tuple:
        return mode, r["set"], r["bs"], r["precision"], speedups

    reference = {key(r, r["mode"], r.get("speedups", "")): r for r in rows
                 if ok(r) and r["mode"] in (FORWARD, PEER, PEER_FORWARD)}
    for r in rows:
        if not ok(r):
            continue
        peer_mode = r["mode"] in PEER_MODES
        # a row with speed-ups against the forward pass with the same ones where there is one, else the plain one
        fwd = reference.get(key(r, FORWARD, r.get("speedups", ""))) if not peer_mode else None
        fwd = fwd or reference.get(key(r, PEER_FORWARD if peer_mode else FORWARD))
        if r["mode"] not in (FORWARD, PEER_FORWARD) and fwd:
            r["step_over_fwd"] = round(r["median_step_s"] / (r["accum"] * fwd["median_step_s"]), 2)
        peer = None if peer_mode else reference.get(key(r, PEER_FORWARD if r["mode"] == FORWARD else PEER))
        if peer and peer.get("audio_s_per_s") and r.get("audio_s_per_s"):
            r["vs_peer"] = round(r["audio_s_per_s"] / peer["audio_s_per_s"], 2)


# ---------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------


def format_row(row: dict) -> str:
    """One progress line per row."""
    if row["status"] != "ok":
        return f"{row['label']} ({row['set']}): {row['status']} {row['message'][:160]}"
    ratio = f"  step/fwd {row['step_over_fwd']:.2f}" if row.get("step_over_fwd") else ""
    return (f"{row['label']} ({row['set']}): step {row['median_step_s']:.3f} s (first {row['first_step_s']:.2f} s)  "
            f"{row['audio_s_per_s']:.1f} audio s/s  peak {row['peak_gb']:.2f} GB  "
            f"trainable {row['trainable_params']:,}{ratio}  [{row['wall_s']:.0f} s]")


def _classify(e: BaseException) -> tuple[str, str]:
    import torch

    text = " ".join(str(e).split())
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text.lower():
        return "oom", text[:300]
    if isinstance(e, NonFiniteLoss):
        return "nonfinite", text
    return "error", f"{type(e).__name__}: {text[:300]}"


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


def measure_one(model_factory: Callable[[], object], cfg: BenchConfig, data: SyntheticSet, manifest,
                warmup: int, steps: int, work_dir: Path, profile_dir: Path | None = None) -> dict:
    """Build, adapt and run one configuration; never raises for OOM or a failing config (status says why)."""
    import lightning.pytorch as pl
    import torch

    row = _empty_row(cfg, data, "ok")
    print(f"[bench] {cfg.label} on {data.label} clips ...", flush=True)
    t0 = time.perf_counter()
    set_memory_cap(cfg.vram_budget_gb)
    pl.seed_everything(0, verbose=False)
    torch.set_float32_matmul_precision("high")
    result = None
    try:
        result = _run_config(model_factory, cfg, data, manifest, warmup, steps, work_dir, profile_dir)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one bad configuration must not end a long measuring run
        row["status"], row["message"] = _classify(e)
        if row["status"] == "error":
            traceback.print_exc(file=sys.stderr)
        # leaving the except block drops the traceback, whose frames hold the model and activations
    finally:
        _free(cfg.compile)
        set_memory_cap(None)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if result is not None:
        _fill(row, result, warmup)
    print(f"[bench]   {format_row(row)}", flush=True)
    return row


def _run_config(model_factory, cfg: BenchConfig, data: SyntheticSet, manifest, warmup: int, steps: int,
                work_dir: Path, profile_dir: Path | None = None) -> dict:
    if cfg.mode in PEER_MODES:  # transformers' model of the same shape: no NeMo model is built
        from common.bench.peer import peer_steps

        return peer_steps(cfg, model_factory.nemo_config, model_factory.vocab_size, data, warmup, steps,
                          profile_dir)
    model = model_factory()
    if cfg.mode == FORWARD:
        return forward_steps(model, cfg, manifest, warmup, steps, work_dir)
    return train_steps(model, cfg, manifest, warmup, steps, work_dir, profile_dir)


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
    row.update(result.get("row", {}))  # what the step found out about itself (the peer compiles on a GPU only)


class _Manifests:
    """Each synthetic set's manifest, checked once per process (its cuts are cached on disk by content)."""

    def __init__(self):
        self._reports: dict[str, object] = {}

    def get(self, data: SyntheticSet):
        from common.data.manifest import load_manifest

        key = str(data.manifest)
        if key not in self._reports:
            self._reports[key] = load_manifest(data.manifest, max_duration=None)
        return self._reports[key]


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
        self._manifests = _Manifests()

    def run(self, cfg: BenchConfig, data: SyntheticSet, *, warmup: int | None = None,
            steps: int | None = None) -> dict:
        if self.deadline is not None and time.monotonic() > self.deadline:
            row = skipped_row(cfg, data)
        else:
            if self.quiet:
                quiet_lightning()
            manifest = self._manifests.get(data)
            row = measure_one(self.model_factory, cfg, data, manifest, self.warmup if warmup is None else warmup,
                              self.steps if steps is None else steps, self.work_dir, self.profile_dir)
        if self.on_row:
            self.on_row(row)
        return row


def measure(model_factory: Callable[[], object], configs: Iterable[BenchConfig], data: SyntheticSet,
            warmup: int = 3, steps: int = 8, *, work_dir: str | os.PathLike | None = None,
            on_row: Callable[[dict], None] | None = None, deadline: float | None = None) -> list[dict]:
    """Measure every configuration on `data`, one fresh model each; rows in order, forward ratios filled in."""
    from common.rundir import cache_dir

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


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


