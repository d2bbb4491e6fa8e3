"""The 12 GB card on the Windows path (`--sections win12`): triton blocked for the whole process, as the import
guard blocks it on Windows, no loader workers, the `linear` backend, the allocator capped at 11 GB.

Rows, in order of value: eager against CUDA graphs without Inductor (`--compile --compile_backend cudagraphs`,
which needs no triton) at bs 8 x 20 s; then --grad_ckpt at bs 16 x 20 s (plain, and with those graphs) and at
bs 4 x 40 s; last, bs 16 x 20 s without checkpointing, which ran out of memory before it.
"""
from __future__ import annotations

import sys

from backends import registry


def windows12(runner, sets, scale, add) -> list[str]:
    budget = scale.env12_budget_gb
    short, long_ = sets.get(scale.win12_clips[0], 64), sets.get(scale.win12_clips[1], 32)
    small, large = scale.win12_sizes
    graphs = {"compile": True, "compile_backend": "cudagraphs"}
    plan = [(short, small, {}), (short, small, graphs), (short, large, {"grad_ckpt": True}),
            (short, large, {"grad_ckpt": True, **graphs}), (long_, max(1, small // 2), {"grad_ckpt": True}),
            (short, large, {})]
    for data, bs, kw in plan:
        add(runner.run(scale.row(registry.DEFAULT, bs, 0, vram_budget_gb=budget, tag="win12", **kw), data))
    blocked = "triton" in sys.modules and sys.modules["triton"] is None
    return [f"triton {'blocked' if blocked else 'NOT blocked (run --sections win12 on its own)'} in this process, "
            f"as on Windows; no loader workers; {budget:g} GB allocator cap."]
