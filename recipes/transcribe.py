"""Transcribe audio with a Canary .nemo (a merged export or a base model): one JSONL row per file.

    python recipes/transcribe.py --nemo models/nemo/canary-ru-lora-merged.nemo --audio recordings/ --out hyp.jsonl
    python recipes/transcribe.py --nemo canary-1b-v2.nemo --audio test.jsonl --out hyp.jsonl   # + WER/CER
"""
from __future__ import annotations

import argparse
import sys

from common.config import TrainConfig
from common.flags import add_flags, values_for
from common.quality.transcribe import TranscribeSettings
from recipes.entry import run_main

SHARED = ("num_workers",)  # declared by TrainConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transcribe.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Transcribe audio files with a Canary .nemo, in batches, longest first; audio longer than the "
                    "checkpoint's window (40 s for canary-1b-v2) is cut at pauses and the texts joined.")
    add_flags(p, TranscribeSettings)
    add_flags(p, TrainConfig, only=SHARED + ("verbose",), group="loading and console")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    settings = TranscribeSettings(**values_for(TranscribeSettings, ns), **{k: getattr(ns, k) for k in SHARED})
    from common.quality.transcribe import run_transcribe

    result = run_transcribe(settings)
    if settings.vs_nemo:
        from common.bench.transcribe_speed import compare_with_nemo

        compare_with_nemo(settings, result)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
