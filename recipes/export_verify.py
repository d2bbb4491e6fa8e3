"""Verify an exported .nemo in a fresh process: restores, no LoRA left, same outputs as training, WER.

    python recipes/export_verify.py                                   # the demo's export, if present
    python recipes/export_verify.py out.nemo --against exp/my_run     # run dir, .ckpt or adapters.safetensors

Exit code 0 when every check passes, 1 when one fails (the failing check says what differed), 2 for bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserError
from common.rundir import REPO, cache_dir
from recipes.entry import run_main

# where `just demo` (recipes/demo.py) writes its run and export
DEMO_EXPORT = REPO / "models" / "demo" / "canary-tiny-ru-lora.nemo"
DEMO_RUN = REPO / "exp" / "demo"


def default_manifest() -> Path | None:
    path = cache_dir() / "demo" / "adapt_val.jsonl"
    return path if path.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="export_verify.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("nemo", nargs="?", default=None,
                   help=f"the exported .nemo (default: the demo's export, {DEMO_EXPORT})")
    p.add_argument("--against", default=None,
                   help="what the export should equal: the run directory (--exp_dir), a .ckpt or an "
                        "adapters.safetensors (default: the demo's run directory when verifying the demo's export)")
    p.add_argument("--base", default=None,
                   help="the base .nemo, if it moved since training (default: the path recorded by the run)")
    p.add_argument("--manifest", default=None,
                   help="validation manifest to transcribe (default: the embedded demo's adapt_val.jsonl)")
    p.add_argument("--bs", type=int, default=4, help="clips per batch when transcribing")
    p.add_argument("--max_utts", type=int, default=None, help="transcribe only the first N clips")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest allowed |difference| of log-probabilities, export vs training state (fp32)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nemo, against = args.nemo, args.against
    if nemo is None:
        if not DEMO_EXPORT.is_file():
            raise UserError(f"no .nemo given and the demo's export {DEMO_EXPORT} is not there: run `just demo` first, "
                            f"or pass the .nemo to check (and --against with its run directory).")
        nemo = DEMO_EXPORT
        if against is None and DEMO_RUN.is_dir():
            against = DEMO_RUN
    manifest = args.manifest or default_manifest()
    if manifest is None:
        raise UserError("no --manifest given and the embedded demo set is not built: pass a validation manifest "
                        "(NeMo JSONL) to transcribe.")

    import torch

    from common.quality.verify import verify_export

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    report = verify_export(nemo, against=against, base=args.base, manifest=manifest, bs=args.bs,
                           max_utts=args.max_utts, tolerance=args.tolerance, device=device)
    failed = [c for c in report.checks if not c.ok]
    if failed:
        print(f"[verify] {nemo}: FAILED ({'; '.join(f'{c.name}: {c.detail}' for c in failed)})", flush=True)
        return 1
    wer = f", WER {report.wer:.4f} on {report.utterances} clips" if report.wer is not None else ""
    print(f"[verify] {nemo}: all {len(report.checks)} checks passed{wer}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
