"""Evaluate a Canary .nemo on a manifest (WER/CER overall and per language), optionally against a baseline.

    python recipes/eval.py --nemo models/demo/canary-tiny-ru-lora.nemo --manifest val.jsonl \
        --baseline .cache/models/canary-tiny-ru-base.nemo --out exp/eval

Writes eval.md (readable) and eval.json (every transcript, both normalizations) into --out.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from common.evaluate import main as evaluate

    return evaluate(argv)


if __name__ == "__main__":
    sys.exit(run_main(main))
