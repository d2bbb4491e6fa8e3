"""The measured steps: the real training step through Lightning, assembled exactly as a training run assembles
it, and a no-grad forward pass of the same batch for comparison."""
from __future__ import annotations

import time
from pathlib import Path

from common.bench.config import BenchConfig
from common.bench.profile import kernel_profile, lightning_profiler
from common.telemetry import GB, device_sync


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
            device_sync()
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
            if n > total:
                return  # steps after the timed ones (profiled: see train_steps)
            if n in (1, warmup, total):
                device_sync()
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


def train_steps(model, cfg: BenchConfig, manifest, warmup: int, steps: int, work_dir: Path,
                profile_dir: Path | None = None) -> dict:
    """The real training step through Lightning, set up as `common.training.run` sets it up."""
    import torch

    from backends import registry
    from common.config import resolve_base_dtype
    from common.data.loader import LoaderSettings, manifest_loader
    from common.model.adapt import prepare
    from common.model.speedups import prepare_step
    from common.telemetry import MetricsLog
    from common.training.callbacks import MetricsCallback
    from common.training.trainer import make_module, make_trainer

    # with --profile, 3 more steps after the timed ones are profiled: profiling slows the steps it covers
    extra = 3 if profile_dir else 0
    train = cfg.train_config(max_steps=warmup + steps + extra)
    backend = None if train.full_finetune else registry.get(train.backend)
    precision = cfg.lightning_precision
    prepare(model, backend, train.adapter_spec(),
            base_dtype=resolve_base_dtype(train.base_dtype, precision, train.full_finetune))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    module = make_module(model, backend, train, meta={"backend": cfg.mode})
    graphs = prepare_step(model, backend, train)  # --speedups, --grad_ckpt, --compile, as training applies them
    if graphs is not None:
        module.compiled_layers(cuda_graphs=graphs)
    # full batches only: a short last batch is a new shape, which a compiled model would recompile mid-timing
    settings = LoaderSettings(batch_size=train.bs, batch_duration=train.batch_duration, num_workers=train.num_workers,
                              seed=train.seed, drop_last=True, pin_memory=torch.cuda.is_available())
    loader = manifest_loader(manifest, model, settings, data_dir=work_dir / "cuts", train=True).loader
    module.train_sampler = loader.sampler
    timer = _make_step_timer(warmup, warmup + steps)
    metrics = work_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    tracker = MetricsCallback(MetricsLog(metrics), mem_every=0)
    trainer = make_trainer(
        train, precision=precision, root=work_dir, devices=1, num_nodes=1, strategy="auto",
        callbacks=[tracker, timer, *kernel_profile(profile_dir, cfg, warmup + steps, extra)],
        enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
        # host time per Lightning action (forward, backward, optimizer, data): where a launch-bound step goes
        profiler=lightning_profiler(profile_dir, cfg) if profile_dir else None)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loader)
    peak = torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else timer.peak_rss_gb
    return {"step_s": timer.step_s, "audio_s": timer.audio_s, "clips": timer.clips, "peak_gb": peak,
            "trainable_params": trainable, "window_s": timer.window_s, "last_loss": tracker.last_loss}


def forward_steps(model, cfg: BenchConfig, manifest, warmup: int, steps: int, work_dir: Path) -> dict:
    """No-grad teacher-forced forward (encoder, decoder, loss) of one batch, repeated."""
    import contextlib

    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from common.config import resolve_base_dtype
    from common.data.loader import LoaderSettings, manifest_loader
    from common.model.io import cast_frozen_base, freeze
    from common.model.speedups import apply_speedups
    from common.model.steps import compute_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = cfg.lightning_precision
    freeze(model)
    if resolve_base_dtype(cfg.base_dtype, precision, False) == "bf16":  # the same weights the LoRA rows train on
        cast_frozen_base(model, torch.bfloat16)
    for note in apply_speedups(model, None, cfg.speedups):  # sdpa and qkv change the forward pass too
        print(f"[speedups] {note}", flush=True)
    model.to(device)
    model.eval()
    settings = LoaderSettings(batch_size=cfg.bs, batch_duration=cfg.batch_duration, num_workers=0, seed=0)
    loader = manifest_loader(manifest, model, settings, data_dir=work_dir / "cuts", train=True).loader
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
            device_sync()
            t = time.perf_counter()
            compute_loss(model, batch)
            device_sync()
            times.append(time.perf_counter() - t)
            if device.type == "cpu":
                peak_rss = max(peak_rss, _rss_gb())
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else peak_rss
    return {"step_s": times, "audio_s": [audio] * len(times), "clips": [clips] * len(times), "peak_gb": peak,
            "trainable_params": 0}
