"""Keep Linux/GPU-only packages out of the Windows path (a backend registered as portable, no --compile).

NeMo probes apex and Megatron when its ASR models are imported (`nemo/utils/megatron_utils.py`, inside
try/except), and torch probes triton when `torch._dynamo` loads. Where such a package is installed but broken
(a common state on Windows: a stray triton wheel, a half-built apex) the probe itself can crash or print
pages of errors. Marking the names as absent in `sys.modules` before anything heavy loads makes every such
import fail at once with ImportError, before any finder looks at the disk; the probes then take their
"not installed" branch. `torch.compile` needs triton on a GPU, so a run with --compile is left alone, as are
backends that are not portable. `--compile_backend cudagraphs` needs no triton (CUDA graphs without Inductor),
so it stays on the Windows path.
"""
from __future__ import annotations

import sys
from typing import Sequence

BLOCKED = ("triton", "deepspeed", "apex", "megatron", "transformer_engine")


def block(names: Sequence[str] = BLOCKED) -> list[str]:
    """Make `import <name>` raise ImportError for each name not already imported; returns the names blocked."""
    done = []
    for name in names:
        if sys.modules.get(name) is not None:  # imported before the guard (by the caller): leave it working
            continue
        sys.modules[name] = None
        done.append(name)
    return done


def is_portable_path(cfg) -> bool:
    """Whether a training run takes the Windows path: a portable backend (or full fine-tuning), and no --compile
    or one that needs no triton (--compile_backend cudagraphs)."""
    from backends import registry

    no_triton = not cfg.compile or getattr(cfg, "compile_backend", "inductor") == "cudagraphs"
    return no_triton and (cfg.full_finetune or registry.is_portable(cfg.backend))


def guard_portable_path(cfg) -> list[str]:
    """`block()` when `cfg` runs the Windows path (call it before NeMo loads); returns what was blocked."""
    return block() if is_portable_path(cfg) else []
