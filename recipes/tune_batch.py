"""Find the fastest --bs/--accum that fits your card: walk the Windows runbook's ladder, a short run per rung.

    just tune-batch                                  # GPU: canary-1b-v2-shaped model, 20 s clips, 11 GB cap
    just tune-batch --nemo canary-1b-v2.nemo --vram_budget_gb 22 --clip_s 30
    just tune-batch --tiny                           # tiny default on the CPU (automatic without a GPU)

Rungs: 2/8, 3/6, 4/4, 6/3 (effective 18), 8/2, 16/1, then 24/1, 32/1. Each rung trains a few optimizer steps on
synthetic clips of --clip_s seconds (your longest clips decide the memory peak); the walk stops at the first
out-of-memory rung or when audio seconds per second gains less than --min_gain. Writes tune_batch.md and
tune_batch.csv with the recommendation: the fastest rung that fit, and its peak.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

T_START = time.monotonic()

from common.config import TrainConfig
from common.flags import add_flags
from recipes.entry import run_main

# Columns for the ladder: the effective batch matters here, the forward ratio does not.
COLUMNS = (
    ("bs", "bs", "{}"), ("accum", "accum", "{}"), ("eff_bs", "effective batch", "{}"), ("status", "status", "{}"),
    ("median_step_s", "step s (median)", "{:.3f}"), ("audio_s_per_s", "audio s/s", "{:.1f}"),
    ("peak_gb", "peak GB", "{:.2f}"), ("wall_s", "rung wall s", "{:.0f}"),
)


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="tune_batch.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny default model (automatic without a GPU)")
    # the flags a training run takes, from TrainConfig; --nemo defaults to the canary-1b-v2-shaped stand-in on a
    # GPU and to the tiny default on a CPU, and --vram_budget_gb to 11 GB on CUDA (a 12 GB card), none on a CPU
    add_flags(p, TrainConfig, only=("nemo", "backend", "full_finetune", "vram_budget_gb", "num_workers", "precision"),
              group="training flags")
    p.add_argument("--clip_s", type=float, default=20.0,
                   help="clip length in seconds; use your data's longest clips (--max_duration)")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps per rung that are not timed")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per rung")
    p.add_argument("--min_gain", type=float, default=0.02,
                   help="stop when a rung gains less than this fraction of audio seconds per second")
    p.add_argument("--n_clips", type=int, default=64, help="synthetic clips to draw batches from")
    p.add_argument("--lang", default="ru", help="language code of the synthetic transcripts' prompt")
    p.add_argument("--out", default="exp/tune_batch", help="where tune_batch.md and tune_batch.csv go")
    p.add_argument("--work", default=None, help="scratch folder for the synthetic clips (default: <cache>/bench)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from backends import registry
    from common.bench.factories import NemoFactory, StandInFactory
    from common.bench.config import BenchConfig
    from common.bench.measure import Bench
    from common.bench.search import LADDER, ladder
    from common.bench.synthetic import synthetic_set
    from common.bench.tables import markdown_table, write_table
    from common.embedded.default import ensure_embedded
    from common.rundir import cache_dir

    # ---- setup: model, budget, clips -----------------------------------------------------------------
    cuda = torch.cuda.is_available()
    if args.nemo:
        factory = NemoFactory(args.nemo)
    elif args.tiny or not cuda:
        factory = NemoFactory(ensure_embedded(pretrain=False).random_nemo)
    else:
        factory = StandInFactory("1b-v2", cache_dir() / "bench")
    mode = registry.FULL if args.full_finetune else args.backend
    precision = args.precision or (None if cuda else "32")  # on a CPU bf16 autocast only slows the model down
    budget = args.vram_budget_gb if args.vram_budget_gb is not None else (11.0 if cuda else None)
    work = Path(args.work) if args.work else cache_dir() / "bench"
    data = synthetic_set(work / f"tune-{args.clip_s:g}s", args.n_clips, args.clip_s, lang=args.lang,
                               count_tokens=lambda text: factory.count_tokens(text, args.lang))
    print(f"[tune-batch] {factory.name}, {mode}, {args.clip_s:g} s clips, "
          f"{'cap ' + format(budget, 'g') + ' GB' if budget and cuda else 'no memory cap'}", flush=True)
    runner = Bench(factory, factory.prompt_format, work, warmup=args.warmup, steps=args.steps)

    # ---- walk the ladder ---------------------------------------------------------------------------
    rows, best = ladder(
        lambda bs, accum: runner.run(BenchConfig(mode, bs, accum=accum, vram_budget_gb=budget,
                                                       precision=precision, num_workers=args.num_workers),
                                     data),
        min_gain=args.min_gain)

    # ---- report --------------------------------------------------------------------------------------
    last = rows[-1]
    why = (f"stopped at {last['bs']}/{last['accum']}: {last['status']}" if last["status"] != "ok"
           else f"stopped at {last['bs']}/{last['accum']}: less than {args.min_gain:.0%} faster than the best so far"
           if len(rows) < len(LADDER) else "every rung ran")
    cap = f" under the {budget:g} GB cap" if budget and cuda else ""
    if best is None:
        rec = (f"No rung fit{cap}: shorten the clips (--max_duration) or free memory, then try --bs 1 --accum 16.")
    else:
        rec = (f"Recommended: --bs {best['bs']} --accum {best['accum']} (effective batch {best['eff_bs']}): "
               f"{best['audio_s_per_s']} audio s/s, peak {best['peak_gb']} GB{cap} at {args.clip_s:g} s clips.")
    notes = [f"Model: {factory.name}; {mode}; {data.label} clips, about {data.mean_tokens:.0f} "
             f"tokens each; {args.warmup} warm-up + {args.steps} timed steps per rung.", f"Ladder {why}.",
             f"**{rec}**"]
    paths = write_table(rows, args.out, "tune_batch", title="Batch size ladder", notes=notes, columns=COLUMNS,
                              formats=("md", "csv"))
    print("\n" + markdown_table(rows, COLUMNS) + "\n".join(notes), flush=True)
    print(f"[tune-batch] wrote {paths['md']} and {paths['csv']} ({time.monotonic() - T_START:.0f} s)", flush=True)
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
