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
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli import run_main  # noqa: E402

# Columns for the ladder: the effective batch matters here, the forward ratio does not.
COLUMNS = (
    ("bs", "bs", "{}"), ("accum", "accum", "{}"), ("eff_bs", "effective batch", "{}"), ("status", "status", "{}"),
    ("median_step_s", "step s (median)", "{:.3f}"), ("audio_s_per_s", "audio s/s", "{:.1f}"),
    ("peak_gb", "peak GB", "{:.2f}"), ("wall_s", "rung wall s", "{:.0f}"),
)


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="tune_batch.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nemo", default=None, help="your Canary .nemo (default: the canary-1b-v2-shaped stand-in on a "
                                                "GPU, the tiny default on a CPU)")
    p.add_argument("--tiny", action="store_true", help="the tiny default model (automatic without a GPU)")
    p.add_argument("--backend", default="linear", help="LoRA backend to measure (linear, peft, nemo) or 'full'")
    p.add_argument("--clip_s", type=float, default=20.0,
                   help="clip length in seconds; use your data's longest clips (--max_duration)")
    p.add_argument("--vram_budget_gb", type=float, default=None,
                   help="cap the CUDA allocator at this many GB (default 11 on CUDA, for a 12 GB card; none on CPU)")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps per rung that are not timed")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per rung")
    p.add_argument("--min_gain", type=float, default=0.02,
                   help="stop when a rung gains less than this fraction of audio seconds per second")
    p.add_argument("--n_clips", type=int, default=64, help="synthetic clips to draw batches from")
    p.add_argument("--lang", default="ru", help="language code of the synthetic transcripts' prompt")
    p.add_argument("--num_workers", type=int, default=0, help="data loader workers (as in training)")
    p.add_argument("--precision", default=None, help="bf16, fp16 or 32 (default: bf16 on CUDA, 32 on CPU)")
    p.add_argument("--out", default="exp/tune_batch", help="where tune_batch.md and tune_batch.csv go")
    p.add_argument("--work", default=None, help="scratch folder for the synthetic clips (default: <cache>/bench)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from common import bench
    from common.embedded import cache_dir, ensure_embedded

    # ---- setup: model, budget, clips -----------------------------------------------------------------
    cuda = torch.cuda.is_available()
    if args.nemo:
        factory = bench.NemoFactory(args.nemo)
    elif args.tiny or not cuda:
        factory = bench.NemoFactory(ensure_embedded(pretrain=False).random_nemo)
    else:
        factory = bench.StandInFactory("1b-v2", cache_dir() / "bench")
    budget = args.vram_budget_gb if args.vram_budget_gb is not None else (11.0 if cuda else None)
    work = Path(args.work) if args.work else cache_dir() / "bench"
    data = bench.synthetic_set(work / f"tune-{args.clip_s:g}s", args.n_clips, args.clip_s, lang=args.lang,
                               count_tokens=lambda text: factory.count_tokens(text, args.lang))
    print(f"[tune-batch] {factory.name}, backend {args.backend}, {args.clip_s:g} s clips, "
          f"{'cap ' + format(budget, 'g') + ' GB' if budget and cuda else 'no memory cap'}", flush=True)
    runner = bench.Bench(factory, factory.prompt_format, work, warmup=args.warmup, steps=args.steps)

    # ---- walk the ladder ---------------------------------------------------------------------------
    rows, best = bench.ladder(
        lambda bs, accum: runner.run(bench.BenchConfig(args.backend, bs, accum=accum, vram_budget_gb=budget,
                                                       precision=args.precision, num_workers=args.num_workers),
                                     data),
        min_gain=args.min_gain)

    # ---- report --------------------------------------------------------------------------------------
    last = rows[-1]
    why = (f"stopped at {last['bs']}/{last['accum']}: {last['status']}" if last["status"] != "ok"
           else f"stopped at {last['bs']}/{last['accum']}: less than {args.min_gain:.0%} faster than the best so far"
           if len(rows) < len(bench.LADDER) else "every rung ran")
    cap = f" under the {budget:g} GB cap" if budget and cuda else ""
    if best is None:
        rec = (f"No rung fit{cap}: shorten the clips (--max_duration) or free memory, then try --bs 1 --accum 16.")
    else:
        rec = (f"Recommended: --bs {best['bs']} --accum {best['accum']} (effective batch {best['eff_bs']}): "
               f"{best['audio_s_per_s']} audio s/s, peak {best['peak_gb']} GB{cap} at {args.clip_s:g} s clips.")
    notes = [f"Model: {factory.name}; backend {args.backend}; {data.label} clips, about {data.mean_tokens:.0f} "
             f"tokens each; {args.warmup} warm-up + {args.steps} timed steps per rung.", f"Ladder {why}.",
             f"**{rec}**"]
    paths = bench.write_table(rows, args.out, "tune_batch", title="Batch size ladder", notes=notes, columns=COLUMNS,
                              formats=("md", "csv"))
    print("\n" + bench.markdown_table(rows, COLUMNS) + "\n".join(notes), flush=True)
    print(f"[tune-batch] wrote {paths['md']} and {paths['csv']} ({time.monotonic() - T_START:.0f} s)", flush=True)
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
