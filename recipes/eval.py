"""Evaluate a Canary .nemo on a manifest (WER/CER overall and per language), optionally against a baseline.

    python recipes/eval.py --nemo models/demo/canary-tiny-ru-lora.nemo --manifest val.jsonl \
        --baseline .cache/models/canary-tiny-ru-base.nemo --out exp/eval

Writes eval.md (readable) and eval.json (every transcript, both normalizations) into --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import TrainConfig
from common.flags import add_flags, values_for
from common.quality.evaluate import EvalSettings
from recipes.entry import run_main

SHARED = ("max_duration", "skip_bad", "data_dir", "num_workers", "precision")  # declared by TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Transcribe a manifest with a Canary .nemo and report WER/CER overall and per language; "
                    "with --baseline, compare two models utterance by utterance.")
    add_flags(p, EvalSettings)
    add_flags(p, TrainConfig, only=SHARED, group="data")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    settings = EvalSettings(**values_for(EvalSettings, ns), **{k: getattr(ns, k) for k in SHARED})
    from common.quality.eval_report import print_summary
    from common.quality.evaluate import run_eval

    result = run_eval(settings)
    print_summary(result, Path(settings.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
