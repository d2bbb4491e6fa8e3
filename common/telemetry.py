"""Memory lines in the original format, and the run's append-only `metrics.jsonl`.

On CUDA: `[MEM:tag] alloc=X.XXG  reserved=X.XXG  free=X.XXG  total=X.XXG  peak=X.XXG`.
On CPU there is no device memory to report, so the line gives the process resident set size instead.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

GB = 1024**3


def _rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss
    except ImportError:  # pragma: no cover - psutil comes with lightning
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_snapshot() -> dict[str, float]:
    """Current memory figures in GB: device memory on CUDA, process RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        return {"alloc": torch.cuda.memory_allocated() / GB, "reserved": torch.cuda.memory_reserved() / GB,
                "free": free / GB, "total": total / GB, "peak": torch.cuda.max_memory_allocated() / GB}
    return {"rss": _rss_bytes() / GB}


def allocated_gb() -> tuple[float, float]:
    """Device memory now and at its peak in GB, from the allocator's host-side counters (no device sync and
    no driver call, unlike `memory_snapshot`'s free/total): cheap enough for every step. Process RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / GB, torch.cuda.max_memory_allocated() / GB
    rss = _rss_bytes() / GB
    return rss, rss


def mem_line(tag: str, snap: dict[str, float] | None = None) -> str:
    snap = snap or memory_snapshot()
    if "alloc" in snap:
        return (f"[MEM:{tag}] alloc={snap['alloc']:.2f}G  reserved={snap['reserved']:.2f}G  "
                f"free={snap['free']:.2f}G  total={snap['total']:.2f}G  peak={snap['peak']:.2f}G")
    return f"[MEM:{tag}] cpu rss={snap['rss']:.2f}G"


def report_memory(tag: str) -> dict[str, float]:
    snap = memory_snapshot()
    print(mem_line(tag, snap), flush=True)
    return snap


class MetricsLog:
    """Append-only JSONL of training and validation records; one line per event, flushed at once so a
    crash loses at most the line being written (readers skip a broken last line)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.time()

    def write(self, kind: str, *, at: float | None = None, **fields) -> None:
        """`at`: when the event happened (a `time.time()` value) if not now, e.g. a training step read later."""
        from common.atomic import no_space_error

        record = {"kind": kind, "time_s": round((time.time() if at is None else at) - self.t0, 3), **fields}
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        except OSError as e:
            raise no_space_error(e, self.path) or e


def set_memory_cap(budget_gb: float | None, *, announce: bool = False) -> None:
    """Cap the CUDA allocator at `budget_gb` (None: the whole card), so a run behaves like one on a smaller card;
    allocations past the cap fail as on that card. Nothing happens without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 1.0 if budget_gb is None else min(1.0, budget_gb * GB / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    if announce and budget_gb is not None:
        print(f"[vram] allocator capped at {budget_gb:.1f} GB of {total / GB:.1f} GB ({fraction:.3f})", flush=True)


def device_sync() -> None:
    """Wait for the GPU's queued work (a host sync: only where a clock is read or a profile starts)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
