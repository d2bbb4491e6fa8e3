"""Keep Linux/GPU-only packages out of the Windows path (`linear` backend, no --compile).

NeMo probes apex and Megatron when its ASR models are imported (`nemo/utils/megatron_utils.py`, inside
try/except), and torch probes triton when `torch._dynamo` loads. Where such a package is installed but broken
(a common state on Windows: a stray triton wheel, a half-built apex) the probe itself can crash or print
pages of errors. Marking the names as absent in `sys.modules` before anything heavy loads makes every such
import fail at once with ImportError, before any finder looks at the disk; the probes then take their
"not installed" branch. `torch.compile` needs triton on a GPU, so a run with --compile is left alone, as are
the other backends.
"""
from __future__ import annotations

import argparse
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


def is_linear_path(argv: Sequence[str]) -> bool:
    """Whether a training command line runs the Windows path: the `linear` backend (or full fine-tuning)
    without --compile. Reads only those flags, so it works before the full parser (and NeMo) load."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--backend", default="linear")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--full_finetune", action="store_true")
    ns, _ = p.parse_known_args(list(argv))
    return not ns.compile and (ns.backend == "linear" or ns.full_finetune)


def guard_linear_path(argv: Sequence[str]) -> list[str]:
    """`block()` when `argv` runs the Windows path; returns what was blocked (empty otherwise)."""
    return block() if is_linear_path(argv) else []
