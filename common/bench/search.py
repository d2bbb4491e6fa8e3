"""Walks over batch sizes: the largest batch that fits a memory limit, and the bs/accum ladder of the Windows
runbook. Each takes a function that measures one size and returns its row."""
from __future__ import annotations

from typing import Callable, Sequence

from common.bench.measure import fits


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

