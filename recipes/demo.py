"""The embedded default, end to end: build (or reuse) the tiny Canary and the Russian speech set, fine-tune
with LoRA on the "adapt" slice with some of the base slice mixed in, export the best validation pass that keeps
the regression set (the base voices) within 5%, restore it in a fresh process, print before/after for both sets.
It exits non-zero when its own goals fail: the adapted slice's WER down by at least 40% (relative), the
regression set's up by at most 5%.

    just demo                      # defaults below
    just demo --max_steps 900      # any finetune_canary.py flag passes through
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common.fmt import relative_change
from common.rundir import REPO
from recipes.entry import run_main

ADAPT_GOAL = 0.40  # the adapted slice's WER falls by at least this much, relative to the base model's
REGRESSION_LIMIT = 0.05  # the regression set's WER rises by at most this much (also the selection's threshold)
MIX_WEIGHT = "0.5"  # the base slice's sampling weight beside --train's 1: keeps the base voices in training


def demo_args(emb) -> list[str]:
    """The demo's settings: short enough for 2 CPU cores, long enough that validation loss drops clearly."""
    import torch

    return [
        "--nemo", str(emb.base_nemo), "--train", str(emb.data.adapt_train), "--val", str(emb.data.adapt_val),
        "--regression_manifest", str(emb.data.base_val), "--mix", f"{emb.data.base_train}:{MIX_WEIGHT}",
        "--select", "best", "--regression_threshold", str(REGRESSION_LIMIT),
        "--bs", "8", "--accum", "1", "--max_steps", "600", "--val_every_n_steps", "100", "--save_every", "100",
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
    # NeMo's start-up lines stay out of the console (as in training); they are shown when the restore fails
    proc = subprocess.run([sys.executable, "-c", code, str(nemo)], cwd=REPO, check=False, capture_output=True,
                          text=True)
    shown = [line for line in proc.stdout.splitlines() if line.startswith("[demo]")]
    print("\n".join(shown or [proc.stdout[-2000:], proc.stderr[-2000:]]), flush=True)
    return proc.returncode == 0


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
    print("\n[demo] adapt slice (female voices, fast, noisy), validation:")
    adapt = change_line(result.before, result.after)
    print("[demo] regression set (the base model's male voices, held out):")
    regression = change_line(result.regression_before, result.regression_after)
    print(f"[demo] merged export: {result.export} (step {result.selected_step}; "
          f"{'restores' if restored else 'DOES NOT RESTORE'} in a fresh process)")
    print(f"[demo] run report: {result.exp_dir / 'report.md'}")
    missed = [what for what, ok in (
        (f"adapted WER down >= {ADAPT_GOAL:.0%}", adapt is not None and adapt <= -ADAPT_GOAL),
        (f"regression WER up <= {REGRESSION_LIMIT:.0%}", regression is not None and regression <= REGRESSION_LIMIT),
        ("the export restores and verifies", restored and result.export_check.get("ok"))) if not ok]
    print(f"[demo] goals: {'met' if not missed else 'MISSED: ' + '; '.join(missed)}", flush=True)
    return 1 if missed else 0


def change_line(before: dict, after: dict) -> float | None:
    """Print a set's loss and WER before -> after; return the WER's relative change (None without a 'before')."""
    if not before or not after:
        print("[demo]   (no before/after figures)")
        return None
    rel = relative_change(before["val_wer"], after["val_wer"])  # the rule the selection's guard applies
    print(f"[demo]   loss  before {before['val_loss']:.4f} -> after {after['val_loss']:.4f}")
    print(f"[demo]   WER   before {before['val_wer']:.4f} -> after {after['val_wer']:.4f}"
          + (f"  ({rel:+.1%} relative)" if rel is not None else ""))
    return rel

if __name__ == "__main__":
    sys.exit(run_main(main))
