"""Build a NeMo JSONL manifest from a folder of recordings, a Common Voice TSV or Lhotse manifests.

    python recipes/manifest.py --audio_dir recordings/ --out data/train.jsonl --split val=0.05
    python recipes/manifest.py --tsv cv-corpus/ru/validated.tsv --out data/cv_ru.jsonl --split val=0.02
    python recipes/manifest.py --cuts data/golos_recordings_test.jsonl.gz --cuts data/golos_supervisions_test.jsonl.gz \
        --out data/golos_test.jsonl
"""
from __future__ import annotations

import argparse
import sys

from common.data.build_manifest import ManifestSettings
from common.flags import add_flags, values_for
from recipes.entry import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="manifest.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write a NeMo JSONL manifest (audio_filepath, duration, text, source_lang, target_lang, pnc) "
                    "that `just finetune` accepts, from one source: --audio_dir, --tsv or --cuts.")
    add_flags(p, ManifestSettings)
    return p


def main(argv: list[str] | None = None) -> int:
    settings = ManifestSettings(**values_for(ManifestSettings, build_parser().parse_args(argv)))
    from common.data.build_manifest import build, print_totals

    written, found = build(settings)
    print_totals(written, found)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
