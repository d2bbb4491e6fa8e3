"""Fine-tune a Canary .nemo with LoRA and export a merged .nemo.

    python recipes/finetune_canary.py --nemo canary-1b-v2.nemo --train train.jsonl --val val.jsonl
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run_main  # noqa: E402
from common.config import parse_args  # noqa: E402
from common.import_guard import guard_linear_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    guard_linear_path(sys.argv[1:] if argv is None else argv)  # before NeMo loads: see common/import_guard.py
    cfg = parse_args(argv)
    from common.train import run

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
