"""Profiles of a measured configuration: Lightning's host time per action, a torch.profiler summary of GPU time
per kind of kernel (host time per operator on a CPU) over 3 steps after the timed ones, and, on a GPU, where in
those steps the host waited for the device (torch's sync debug mode)."""
from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

from common.atomic import write_text
from common.bench.config import BenchConfig
from common.telemetry import device_sync


def profile_name(cfg: BenchConfig) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.label)


def lightning_profiler(profile_dir: Path, cfg: BenchConfig):
    from lightning.pytorch.profilers import SimpleProfiler

    return SimpleProfiler(dirpath=str(profile_dir), filename=profile_name(cfg))  # writes fit-<name>.txt


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


def kernel_profile(profile_dir: Path | None, cfg: BenchConfig, warmup: int, steps: int) -> list:
    """With a profile folder: a callback that runs torch.profiler over the last (up to 3) of `warmup + steps`
    optimizer steps and writes kernels-<config>.txt. Profiling slows those steps: the bench profiles steps after
    its timed ones."""
    if profile_dir is None:
        return []
    import torch
    from lightning.pytorch.callbacks import Callback

    last = warmup + steps
    first = max(warmup + 1, last - 2)
    path = Path(profile_dir) / f"kernels-{profile_name(cfg)}.txt"

    class KernelProfile(Callback):
        def __init__(self):
            self.prof = None
            self.running = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self.prof is None and trainer.global_step == first - 1:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                device_sync()
                self.prof = torch.profiler.profile(activities=activities)
                self.syncs = SyncWatch()
                self.prof.__enter__()
                self.syncs.__enter__()
                self.running = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self.running and trainer.global_step == last:
                device_sync()
                self._stop()
                write_text(path, kernel_report(self.prof.events(), last - first + 1, cfg.label))
                self.syncs.write(Path(profile_dir), cfg.label, last - first + 1)

        def teardown(self, trainer, pl_module, stage) -> None:
            self._stop()  # a run that ended early: no report, but no profiler left running

        def _stop(self) -> None:
            if self.running:
                self.running = False
                self.syncs.__exit__(None, None, None)
                self.prof.__exit__(None, None, None)

    return [KernelProfile()]



def profiled(profile_dir: Path | None, label: str, step, steps: int = 3) -> None:
    """Run `step()` `steps` more times under torch.profiler and write kernels-<label>.txt (for a step that is not
    a Lightning fit, like the peer's); nothing without a profile folder."""
    if profile_dir is None:
        return
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    device_sync()
    with torch.profiler.profile(activities=activities) as prof, SyncWatch() as syncs:
        for _ in range(steps):
            step()
        device_sync()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    write_text(Path(profile_dir) / f"kernels-{name}.txt", kernel_report(prof.events(), steps, label))
    syncs.write(Path(profile_dir), label, steps)


class SyncWatch:
    """While active on a GPU, every operation that makes the host wait for the device (torch's sync debug mode
    warns on each), counted by the Python line that called it: what keeps the host from queueing the next step
    while the device computes. Nothing to watch on a CPU."""

    def __init__(self):
        self.seen: Counter = Counter()
        self._catch = None

    def __enter__(self):
        import torch

        if torch.cuda.is_available():
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self._catch is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        self.seen.update(f"{w.filename}:{w.lineno}" for w in self._records if "synchroniz" in str(w.message))
        self._catch = None

    def write(self, profile_dir: Path, label: str, steps: int) -> None:
        import torch

        if torch.cuda.is_available():
            write_text(profile_dir / f"syncs-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.txt",
                       sync_report(self.seen, steps, label))


def sync_report(seen: Counter, steps: int, title: str) -> str:
    """Host syncs per optimizer step, by calling line, most frequent first."""
    lines = [f"# {title}: host syncs (torch.cuda sync debug mode), per optimizer step (mean of {steps} steps)", "",
             f"total {sum(seen.values()) / steps:.1f} per step", ""]
    lines += [f"{count / steps:6.1f}  {where}" for where, count in seen.most_common(40)]
    return "\n".join(lines) + "\n"
