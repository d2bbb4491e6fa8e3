"""Step time, audio seconds per second and peak memory of every backend, in one process, on synthetic speech.

    just bench --tiny                          # tiny default on CPU, under a minute: exp/bench/bench.md/.csv/.json
    just bench                                 # GPU: canary-1b-v2-shaped model, 15 s clips, bs 8 / 32 / largest
    just bench --configs linear:8,forward:8    # a subset (MODE, MODE:BS, MODE:BSxACCUM, largest, bucketed)
    just bench --compile                       # training rows as --compile trains (CUDA graphs on a GPU)
    python recipes/bench.py --gpu-suite --out $OUT   # everything for the GPU report: ONE .md and ONE .json

The GPU suite runs, in order: (bench) the table above; (env12) the bs/accum ladder under an 11 GB cap for 10 s
and 20 s clips; (env48) 20 s clips at bs 8, 12 and the largest that fits 48 GB, for linear and nemo; (env48c) the
same with the layers compiled; and, only when named: (perf) the before/after rows of docs/performance.md; (ddp) the
training CLI on 1 and 2 GPUs; (firststep) the first compiled step with a cold and a warm cache; (win12) the 12 GB
Windows path, triton blocked (on its own); (eval) `just eval` against NeMo's transcribe(). Rows may add options:
`--configs linear:32+sdpa+qkv` (--speedups names, +ckpt, +cudagraphs), and `peer`/`peer-forward` are the
transformers + PEFT port of the same shape. --profile
DIR writes Lightning's per-action host times of each training configuration. Both files are rewritten after every
configuration and configurations past --deadline_s are skipped, so a run cut short still leaves what it measured. Pick parts with --sections: the first
three take about 7 minutes on an H100; compiling costs a minute or more per configuration, so under a 10-minute
limit run them as a second call, passing the sizes env48 found:

    python recipes/bench.py --gpu-suite --sections bench,env12,env48 --out $OUT
    python recipes/bench.py --gpu-suite --sections env48c --largest linear:40,nemo:56 --out $OUT
"""
from __future__ import annotations

import argparse
import sys
import time

T_START = time.monotonic()

from common.bench.suite import DEFAULT_SECTIONS, SECTIONS, Sets, bench_table, gpu_suite, modes, setup  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.flags import add_flags  # noqa: E402
from recipes.entry import run_main  # noqa: E402


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="tiny default model and 2 s clips (automatic without a GPU)")
    p.add_argument("--configs", default=None,
                   help="comma-separated subset: MODE (every bench size), MODE:BS, MODE:BSxACCUM (gradient "
                        "accumulation), 'largest' (the default backend, largest bs under the budget), 'bucketed' "
                        f"(mixed lengths); modes: {', '.join(modes())}")
    add_flags(p, TrainConfig, only=("compile", "cuda_graphs"), group="training rows (as training takes them)")
    p.add_argument("--gpu-suite", dest="gpu_suite", action="store_true",
                   help="run the GPU report's sections into ONE gpu_suite.md and ONE gpu_suite.json under --out")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"with --gpu-suite: which parts, in order ({', '.join(SECTIONS)})")
    p.add_argument("--largest", default=None,
                   help="with --gpu-suite: largest batch per backend for env48c when env48 ran in an earlier call, "
                        "e.g. linear:40,nemo:56")
    p.add_argument("--out", default="exp/bench", help="where the tables go (only the tables; the ddp and firststep "
                                                        "sections add their processes' logs under logs/)")
    p.add_argument("--ddp_devices", default=None,
                   help="with --sections ddp: device counts to run the CLI on, e.g. 1,2 (default: 1,2 with two GPUs, "
                        "else 1)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="for every training configuration, write to DIR Lightning's host time per action "
                        "(fit-<config>.txt: where a launch-bound step spends its time) and a torch.profiler summary "
                        "of the last 3 timed steps (kernels-<config>.txt: GPU time per kind of kernel and per "
                        "kernel; on a CPU, host time per operator). Profiling slows the steps it covers: take "
                        "speed figures from runs without it")
    p.add_argument("--work", default=None,
                   help="scratch folder for synthetic audio, cut caches, tokenizer (default: <cache>/bench)")
    p.add_argument("--warmup", type=int, default=None, help="optimizer steps not timed (default: 3 GPU, 1 tiny)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default: 8 GPU, 3 tiny)")
    add_flags(p, TrainConfig, only=("num_workers",), defaults={"num_workers": None},
              group="training rows (as training takes them)")
    p.add_argument("--deadline_s", type=float, default=None,
                   help="skip configurations that would start after this many seconds (default: 540 with "
                        "--gpu-suite, for a 10-minute limit; none otherwise)")
    args = p.parse_args(argv)
    args.t_start = T_START
    # the commands the process sections start (the wing never imports recipes/)
    args.train_command = [sys.executable, "-m", "recipes.finetune_canary"]
    args.bench_command = [sys.executable, "-m", "recipes.bench"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.gpu_suite:
        if "win12" in args.sections.split(","):
            from common.import_guard import block

            block()  # before torch loads anything that probes triton: the process runs as on Windows
        return gpu_suite(args)
    from common.bench.measure import add_forward_ratios
    from common.bench.tables import markdown_table, write_table

    factory, scale, work, runner, workers = setup(args)
    sets = Sets(factory, work, scale)
    rows: list[dict] = []

    def add(row):
        rows.append(row)
        return row

    notes = bench_table(runner, sets, scale, workers, args.configs, add, compiled=args.compile,
                        cuda_graphs=args.cuda_graphs)
    add_forward_ratios(rows)
    paths = write_table(rows, args.out, "bench", title=f"Canary LoRA bench: {factory.name}", notes=notes)
    print("\n" + markdown_table(rows) + "\n".join(notes), flush=True)
    print(f"[bench] wrote {', '.join(str(p) for p in paths.values())} ({time.monotonic() - T_START:.0f} s)",
          flush=True)
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
