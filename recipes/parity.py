"""Compare the backends on the tiny default: backends of one method (LoRA: linear, peft) must agree; the others sit
beside them.

    just parity                      # 5 steps per backend, report in exp/parity/parity.md (+ loss.png)
    just parity --steps 20 --out exp/parity-20

Checks: the same adapter weights give the same log-probs; the same seed gives the same loss at every step and the
same merged weights; the merged exports restore with equal outputs. Exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recipes.entry import run_main

# each training run starts the same entry function as the command line, in a process of its own
TRAIN_COMMAND = (sys.executable, "-m", "recipes.finetune_canary")


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="parity.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per backend (more: slower, longer curves)")
    p.add_argument("--seed", type=int, default=0, help="seed shared by every run")
    p.add_argument("--max_generation_delta", type=int, default=50,
                   help="cap validation decoding at encoder length + N tokens; -1 keeps the model's 512-token limit "
                        "(a random model never stops early: about a minute per validation batch on 2 CPU cores)")
    p.add_argument("--out", default="exp/parity", help="run directory: parity.md, loss.png, one folder per backend")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from common.embedded.default import ensure_embedded
    from common.quality import parity
    from common.quality.parity_report import write_report

    settings = parity.Settings(steps=args.steps, seed=args.seed, max_generation_delta=args.max_generation_delta)
    embedded = ensure_embedded(pretrain=False)  # demo speech + the random tiny Canary, cached
    result = parity.compare(embedded, settings, Path(args.out), TRAIN_COMMAND)
    report = write_report(result)
    for check in result.checks:
        print(f"[parity] {'PASS' if check.ok else 'FAIL'}  {check.name}", flush=True)
    print(f"[parity] {'all checks pass' if result.ok else 'a check FAILED'}; report: {report}", flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
