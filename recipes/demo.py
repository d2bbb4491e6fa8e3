"""The embedded default, end to end: build (or reuse) the tiny Canary and the Russian speech set, fine-tune
with LoRA on the "adapt" slice, export a merged .nemo, restore it in a fresh process, print before/after.

    just demo                      # defaults below
    just demo --max_steps 600      # any finetune_canary.py flag passes through
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.rundir import REPO
from recipes.entry import run_main


def demo_args(emb) -> list[str]:
    """The demo's settings: short enough for 2 CPU cores, long enough that validation loss drops clearly."""
    import torch

    return [
        "--nemo", str(emb.base_nemo), "--train", str(emb.data.adapt_train), "--val", str(emb.data.adapt_val),
        "--regression_manifest", str(emb.data.base_val),
        "--bs", "8", "--accum", "1", "--max_steps", "300", "--val_every_n_steps", "100", "--save_every", "100",
        "--lr", "2e-3", "--warmup_steps", "30", "--lora_r", "8", "--lora_alpha", "16",
        "--precision", "bf16" if torch.cuda.is_available() else "32",
        "--mem_report_steps", "50", "--exp_dir", "exp/demo", "--export_nemo", "models/demo/canary-tiny-ru-lora.nemo",
        "--data_dir", str(emb.data.root.parent / "cuts"), "--log", "csv",
        "--overwrite",  # the demo's own folder and export: a repeat run replaces them
    ]


def restore_in_fresh_process(nemo: Path) -> bool:
    code = ("import sys; from nemo.collections.asr.models import EncDecMultiTaskModel as M; "
            "m = M.restore_from(sys.argv[1], map_location='cpu'); "
            "print(f'[demo] fresh process restored {type(m).__name__} with', sum(p.numel() for p in m.parameters()), "
            "'parameters')")
    return subprocess.run([sys.executable, "-c", code, str(nemo)], cwd=REPO).returncode == 0


def main(argv: list[str] | None = None) -> int:
    from common.config import parse_args
    from common.embedded.default import ensure_embedded
    from common.training.run import run

    emb = ensure_embedded(pretrain=True)
    cfg = parse_args(demo_args(emb) + list(sys.argv[1:] if argv is None else argv))
    result = run(cfg)
    if result.status != "finished" or result.export is None:
        print(f"[demo] run ended: {result.status}", flush=True)
        return 1
    restored = restore_in_fresh_process(result.export)
    b, a = result.before, result.after
    print("\n[demo] adapt slice (female voices, fast, noisy), validation:")
    print(f"[demo]   loss  before {b['val_loss']:.4f} -> after {a['val_loss']:.4f}")
    print(f"[demo]   WER   before {b['val_wer']:.4f} -> after {a['val_wer']:.4f}")
    print(f"[demo] merged export: {result.export} ({'restores' if restored else 'DOES NOT RESTORE'} in a fresh process)")
    print(f"[demo] run report: {result.exp_dir / 'report.md'}")
    ok = restored and a["val_loss"] < b["val_loss"] and result.export_check.get("ok")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
