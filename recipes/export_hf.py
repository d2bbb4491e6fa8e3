"""Write a Hugging Face transformers folder (CanaryForConditionalGeneration) from a Canary .nemo and prove it
computes the same: log-probabilities within 1e-4 in fp32 and the same greedy text from raw audio.

    python recipes/export_hf.py --nemo models/nemo/canary-ru-lora-merged.nemo --out models/hf/canary-ru-lora
    python recipes/export_hf.py --nemo canary-1b-v2.nemo --out models/hf/base --adapters exp/run/adapters.safetensors
"""
from __future__ import annotations

import argparse
import sys

from common.config import TrainConfig
from common.flags import add_flags, values_for
from common.quality.hf_export_check import HfExportSettings
from recipes.entry import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_hf.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Convert a unified-tokenizer Canary .nemo (canary-1b-v2's layout) into a transformers "
                    "CanaryForConditionalGeneration folder (config, safetensors, tokenizer, processor) and check it "
                    "against NeMo; --adapters also writes the run's LoRA as a PEFT adapter.")
    add_flags(p, HfExportSettings)
    add_flags(p, TrainConfig, only=("verbose",), group="console")
    return p


def main(argv: list[str] | None = None) -> int:
    settings = HfExportSettings(**values_for(HfExportSettings, build_parser().parse_args(argv)))
    from common.quality.hf_export_check import export_and_check

    check = export_and_check(settings)
    verdict = "OK" if check["ok"] else "FAILED"
    print(f"[export-hf] check: {verdict} (log-probs max |diff| {check['log_prob_max_abs_diff']:.2e}, tolerance "
          f"{check['tolerance']:g}; prompt {'equal' if check['prompt_equal'] else 'DIFFERENT'}; greedy text "
          f"{'equal' if check['texts_equal'] else 'DIFFERENT'}: {check['transformers_texts']})", flush=True)
    return 0 if check["ok"] else 4


if __name__ == "__main__":
    sys.exit(run_main(main))
