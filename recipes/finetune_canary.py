"""Fine-tune a Canary .nemo with LoRA and export a merged .nemo.

    python recipes/finetune_canary.py --nemo canary-1b-v2.nemo --train train.jsonl --val val.jsonl
    python -m recipes.finetune_canary ...          # the same entry function (parity starts it this way)
"""
from __future__ import annotations

import sys

from common.config import parse_args
from common.console import quiet
from common.import_guard import guard_portable_path
from recipes.entry import run_main


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    quiet(verbose=cfg.verbose)  # a --config file may ask for it too
    guard_portable_path(cfg)  # before NeMo loads: see common/import_guard.py
    from common.training.run import run

    result = run(cfg)
    if result.status == "nonfinite":
        return 3
    if result.status == "interrupted":
        return 130
    if result.export_check and not result.export_check.get("ok"):
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
