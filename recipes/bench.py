"""Step time, audio seconds per second and peak memory of every backend, in one process, on synthetic speech.

    just bench --tiny                          # tiny default on CPU, under a minute: exp/bench/bench.md/.csv/.json
    just bench                                 # GPU: canary-1b-v2-shaped model, 15 s clips, bs 8 / 32 / largest
    just bench --configs linear:8,forward:8    # a subset (MODE, MODE:BS, MODE:BSxACCUM, largest, bucketed)
    just bench --compile                       # training rows as --compile trains (CUDA graphs on a GPU)
    python recipes/bench.py --gpu-suite --out $OUT   # everything for the GPU report: ONE .md and ONE .json

The GPU suite runs, in order: (bench) the table above; (env12) the bs/accum ladder under an 11 GB cap for 10 s
and 20 s clips; (env48) 20 s clips at bs 8, 12 and the largest that fits 48 GB, for linear and nemo; (env48c) the
same with the layers compiled; (perf, only when named) the before/after rows of docs/performance.md. --profile
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
from dataclasses import dataclass
from pathlib import Path

T_START = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli import run_main  # noqa: E402
from common.errors import UserError  # noqa: E402

MODES = ("linear", "peft", "nemo", "full", "forward")
SECTIONS = ("bench", "env12", "env48", "env48c", "perf")
DEFAULT_SECTIONS = ("bench", "env12", "env48", "env48c")


@dataclass(frozen=True)
class Scale:
    """Sizes for one model: the real one on a GPU, or the tiny default on a CPU (same code path, small numbers)."""

    clip_s: float  # the bench table's clip length
    n_clips: int
    sizes: tuple[int, ...]  # bench batch sizes
    search_start: int  # largest-batch search: first size and step
    search_step: int
    search_max: int
    mixed: tuple[float, float]  # the bucketed row's clip range, clip count and seconds of audio per batch
    mixed_clips: int
    batch_duration: float
    budget_gb: float | None  # allocator cap for the search and the bucketed row
    peak_limit_gb: float | None  # a size "fits" when its peak stays at or under this
    warmup: int
    steps: int
    # the bucketed row meets a new batch shape nearly every step at first: a compiled run compiles (and records
    # CUDA graphs) for each, so it warms up longer and times more steps
    bucketed_warmup: int = 1
    bucketed_steps: int = 3
    # GPU suite
    env12_clips: tuple[float, ...] = (10.0, 20.0)
    env12_budget_gb: float = 11.0
    env48_clip_s: float = 20.0
    env48_sizes: tuple[int, ...] = (8, 12)
    env48_budget_gb: float = 48.0
    env48_peak_limit_gb: float | None = 46.0
    env48_search_tries: int = 6  # sizes tried above the predicted largest, 4 apart
    ladder_warmup: int = 1
    ladder_steps: int = 2


GPU = Scale(clip_s=15.0, n_clips=256, sizes=(8, 32), search_start=40, search_step=8, search_max=512,
            mixed=(2.0, 30.0), mixed_clips=384, batch_duration=480.0, budget_gb=48.0, peak_limit_gb=46.0,
            warmup=3, steps=8, bucketed_warmup=12, bucketed_steps=20)
# On a CPU the caps and peak limits mean nothing (no CUDA allocator); the search just stops at search_max.
TINY = Scale(clip_s=2.0, n_clips=48, sizes=(2, 4), search_start=8, search_step=8, search_max=8,
             mixed=(1.0, 4.0), mixed_clips=48, batch_duration=8.0, budget_gb=None, peak_limit_gb=None,
             warmup=1, steps=3, env12_clips=(2.0, 4.0), env48_clip_s=4.0, env48_sizes=(2, 4),
             env48_peak_limit_gb=None, env48_search_tries=0, ladder_steps=2)


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="tiny default model and 2 s clips (automatic without a GPU)")
    p.add_argument("--configs", default=None,
                   help="comma-separated subset: MODE (every bench size), MODE:BS, MODE:BSxACCUM (gradient "
                        "accumulation), 'largest' (linear, largest bs "
                        f"under the budget), 'bucketed' (mixed lengths); modes: {', '.join(MODES)}")
    p.add_argument("--compile", action="store_true",
                   help="train with --compile (the layers compiled; on a GPU replayed as CUDA graphs) in the bench "
                        "table's training rows")
    p.add_argument("--cuda_graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="with --compile on a GPU: CUDA graphs, as training's --cuda_graphs")
    p.add_argument("--gpu-suite", dest="gpu_suite", action="store_true",
                   help="run the GPU report's sections into ONE gpu_suite.md and ONE gpu_suite.json under --out")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"with --gpu-suite: which parts, in order ({', '.join(SECTIONS)})")
    p.add_argument("--largest", default=None,
                   help="with --gpu-suite: largest batch per backend for env48c when env48 ran in an earlier call, "
                        "e.g. linear:40,nemo:56")
    p.add_argument("--out", default="exp/bench", help="where the tables go (only the tables)")
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
    p.add_argument("--num_workers", type=int, default=None,
                   help="data loader workers (default: 4 with a GPU so WAV reading overlaps the step, else 0)")
    p.add_argument("--deadline_s", type=float, default=None,
                   help="skip configurations that would start after this many seconds (default: 540 with "
                        "--gpu-suite, for a 10-minute limit; none otherwise)")
    return p.parse_args(argv)


def setup(args):
    """Model factory, scale, scratch folder and the shared Bench."""
    import torch

    from common import bench
    from common.embedded import cache_dir, ensure_embedded

    tiny = args.tiny or not torch.cuda.is_available()
    if tiny and not args.tiny:
        print("[bench] no CUDA device: measuring the tiny default on the CPU", flush=True)
    scale = TINY if tiny else GPU
    work = Path(args.work) if args.work else cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    factory = (bench.NemoFactory(ensure_embedded(pretrain=False).random_nemo) if tiny
               else bench.StandInFactory("1b-v2", work))
    print(f"[bench] model: {factory.name}; tokenizer ready in {time.monotonic() - t:.0f} s", flush=True)
    deadline_s = args.deadline_s if args.deadline_s is not None else (540.0 if args.gpu_suite else None)
    runner = bench.Bench(factory, factory.prompt_format, work,
                         warmup=scale.warmup if args.warmup is None else args.warmup,
                         steps=scale.steps if args.steps is None else args.steps,
                         deadline=T_START + deadline_s if deadline_s else None, profile_dir=args.profile)
    workers = args.num_workers if args.num_workers is not None else (0 if tiny else 4)
    return factory, scale, work, runner, workers


class Sets:
    """Synthetic clip sets, made when first asked for (each takes a second or two)."""

    def __init__(self, factory, work: Path, scale: Scale):
        self.factory, self.work, self.scale = factory, work, scale
        self._sets = {}

    def get(self, duration, n: int):
        from common import bench

        key = (duration, n)
        if key not in self._sets:
            name = f"set-{duration[0]:g}-{duration[1]:g}s" if isinstance(duration, tuple) else f"set-{duration:g}s"
            t = time.monotonic()
            self._sets[key] = bench.synthetic_set(self.work / name, n, duration, count_tokens=self.factory.count_tokens)
            s = self._sets[key]
            print(f"[bench] {n} synthetic clips of {s.label} ({s.total_s / 60:.0f} min, {s.mean_tokens:.0f} tokens "
                  f"per clip) in {time.monotonic() - t:.1f} s", flush=True)
        return self._sets[key]


def parse_configs(spec: str | None, scale: Scale) -> tuple[list[tuple[str, int, int]], bool, bool]:
    """(mode, bs, accum) triples, whether to search the largest batch, whether to add the bucketed row."""
    from backends import registry

    known = sorted(set(registry.names()) | {"full", "forward"})
    if not spec:
        return [(m, bs, 1) for bs in scale.sizes for m in MODES], True, True
    triples, largest, bucketed, problems = [], False, False, []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "largest":
            largest = True
            continue
        if item == "bucketed":
            bucketed = True
            continue
        mode, _, size = item.partition(":")
        bs, _, accum = size.partition("x")
        if mode not in known:
            problems.append(f"{item!r}: unknown mode {mode!r} (known: {', '.join(known)}, largest, bucketed)")
        elif size and not (bs.isdigit() and int(bs) > 0 and (not accum or accum.isdigit() and int(accum) > 0)):
            problems.append(f"{item!r}: after ':' give a positive batch size, optionally x a positive number of "
                            f"accumulated micro-batches (e.g. linear:8x4)")
        elif accum and mode == "forward":
            problems.append(f"{item!r}: a forward pass accumulates nothing; give forward:BS")
        else:
            accum_n = int(accum) if accum else 1
            triples += [(mode, int(bs), accum_n)] if bs else [(mode, b, 1) for b in scale.sizes]
    if problems:
        raise UserError("--configs:\n" + "\n".join(f"  - {p}" for p in problems))
    return sorted(triples, key=lambda t: (t[1], MODES.index(t[0]) if t[0] in MODES else 99, t[2])), largest, bucketed


def bench_table(runner, sets: Sets, scale: Scale, workers: int, configs: str | None, add, *,
                compiled: bool = False, cuda_graphs: bool = True) -> list[str]:
    """The bench table: every mode at each size, the largest linear batch under the budget, one bucketed row.
    `compiled`: the training rows as `--compile [--no-cuda_graphs]` trains (forward rows stay eager)."""
    from common.bench import BenchConfig, largest_batch

    def config(mode: str, bs: int = 8, **kw) -> BenchConfig:
        train = mode != "forward"
        return BenchConfig(mode, bs, compile=compiled and train, cuda_graphs=cuda_graphs, num_workers=workers, **kw)

    triples, largest, bucketed = parse_configs(configs, scale)
    data = sets.get(scale.clip_s, scale.n_clips)
    for mode, bs, accum in triples:
        add(runner.run(config(mode, bs, accum=accum), data))
    notes = []
    if largest:
        rows, best = largest_batch(
            lambda bs: add(runner.run(config("linear", bs, vram_budget_gb=scale.budget_gb, tag="search"), data)),
            scale.search_start, scale.search_step, peak_limit_gb=scale.peak_limit_gb, max_bs=scale.search_max)
        if best is not None:
            limit = f"peak <= {scale.peak_limit_gb:g} GB under a {scale.budget_gb:g} GB cap" if scale.budget_gb else \
                "no memory cap on this device"
            notes.append(f"Largest linear batch at {data.label}: bs {best['bs']} ({limit}): "
                         f"{best['audio_s_per_s']} audio s/s, peak {best['peak_gb']} GB.")
            add(runner.run(config("forward", best["bs"]), data))
        else:
            notes.append(f"No linear batch from bs {scale.search_start} fit (see the search rows).")
    if bucketed:
        mixed = sets.get(scale.mixed, scale.mixed_clips)
        add(runner.run(config("linear", batch_duration=scale.batch_duration, vram_budget_gb=scale.budget_gb,
                              tag="bucketed"), mixed, warmup=scale.bucketed_warmup, steps=scale.bucketed_steps))
    return notes


def envelope12(runner, sets: Sets, scale: Scale, workers: int, add) -> list[str]:
    """The tune-batch ladder under an 11 GB cap (a 12 GB card), linear backend, for each clip length."""
    from common.bench import BenchConfig, ladder

    notes = []
    for clip in scale.env12_clips:
        data = sets.get(clip, 64)
        rows, best = ladder(lambda bs, accum: add(runner.run(
            BenchConfig("linear", bs, accum=accum, vram_budget_gb=scale.env12_budget_gb, num_workers=workers,
                        tag="ladder"), data, warmup=scale.ladder_warmup, steps=scale.ladder_steps)))
        notes.append(recommendation(best, data.label, scale.env12_budget_gb))
    return notes


def recommendation(best: dict | None, clips: str, budget_gb: float | None) -> str:
    cap = f" under the {budget_gb:g} GB cap" if budget_gb else ""
    if best is None:
        return f"{clips} clips: no rung ran{cap}; use a smaller --bs or shorter --max_duration."
    return (f"{clips} clips: recommended --bs {best['bs']} --accum {best['accum']} (effective {best['eff_bs']}): "
            f"{best['audio_s_per_s']} audio s/s, peak {best['peak_gb']} GB{cap}.")


def predict_largest(rows: list[dict], limit_gb: float | None, floor: int) -> int:
    """Largest bs whose peak a straight line through the measured (bs, peak) points keeps under the limit."""
    ok = sorted((r["bs"], r["peak_gb"]) for r in rows if r["status"] == "ok" and r["peak_gb"])
    if limit_gb is None or len(ok) < 2 or ok[-1][0] == ok[0][0]:
        return floor + 4
    (b0, p0), (b1, p1) = ok[0], ok[-1]
    slope = (p1 - p0) / (b1 - b0)
    if slope <= 0:
        return floor + 4
    return max(floor + 4, int((limit_gb - p0) / slope + b0) // 4 * 4)


def envelope48(runner, sets: Sets, scale: Scale, workers: int, add, *, compiled: bool,
               found: dict[str, int]) -> list[str]:
    """20 s clips at bs 8, 12 and the largest that fits 48 GB, linear and nemo; `found` carries the largest."""
    from common.bench import BenchConfig, largest_batch

    data = sets.get(scale.env48_clip_s, 128)
    notes = []
    for mode in ("linear", "nemo"):
        def cfg(bs: int, tag: str = "") -> BenchConfig:
            return BenchConfig(mode, bs, vram_budget_gb=scale.env48_budget_gb, compile=compiled,
                               num_workers=workers, tag=tag)

        fixed = [add(runner.run(cfg(bs), data)) for bs in scale.env48_sizes]
        if compiled:
            bs = found.get(mode)
            if bs is not None and bs not in scale.env48_sizes:
                add(runner.run(cfg(bs, "largest"), data))
            continue
        start = predict_largest(fixed, scale.env48_peak_limit_gb, max(scale.env48_sizes))
        rows, best = largest_batch(lambda b: add(runner.run(cfg(b, "search"), data)), start, 4,
                                   peak_limit_gb=scale.env48_peak_limit_gb,
                                   max_bs=start + 4 * scale.env48_search_tries)
        candidates = [r for r in fixed + rows if r["status"] == "ok"
                      and (scale.env48_peak_limit_gb is None or r["peak_gb"] <= scale.env48_peak_limit_gb)]
        if candidates:
            top = max(candidates, key=lambda r: r["bs"])
            found[mode] = top["bs"]
            notes.append(f"{mode}: largest bs at {data.label} that fits {scale.env48_budget_gb:g} GB: {top['bs']} "
                         f"({top['audio_s_per_s']} audio s/s, peak {top['peak_gb']} GB).")
        else:
            notes.append(f"{mode}: no batch size fit {scale.env48_budget_gb:g} GB at {data.label}.")
    return notes


def perf_changes(runner, sets: Sets, scale: Scale, workers: int, add) -> list[str]:
    """Before/after of each speed change at the bench's clip length and bs 32 (its second size), most telling
    first (a deadline cuts from the end): the bf16 base uncompiled, compiled, compiled with CUDA graphs, the
    forward pass they are compared with, full fine-tuning and the other backends, then the fp32-base baseline."""
    from common.bench import BenchConfig

    data = sets.get(scale.clip_s, scale.n_clips)
    bs = scale.sizes[-1]
    for mode, kw in (("linear", {}), ("linear", {"compile": True, "cuda_graphs": False}),
                     ("linear", {"compile": True}), ("forward", {}), ("full", {}), ("full", {"compile": True}),
                     ("peft", {"compile": True}), ("nemo", {"compile": True}),
                     ("forward", {"base_dtype": "fp32"}), ("linear", {"base_dtype": "fp32"})):
        add(runner.run(BenchConfig(mode, bs, num_workers=workers, **kw), data))
    return []


def gpu_suite(args) -> int:
    from common.bench import Report

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise UserError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    factory, scale, work, runner, workers = setup(args)
    sets = Sets(factory, work, scale)
    report = Report(args.out, "gpu_suite", f"Canary LoRA: speed and memory, {factory.name}")
    found: dict[str, int] = {}
    for item in (x.strip() for x in (args.largest or "").split(",") if x.strip()):
        mode, _, bs = item.partition(":")
        if not bs.isdigit() or int(bs) < 1:
            raise UserError(f"--largest {item!r}: expected MODE:BS with a positive batch size, e.g. linear:40")
        found[mode] = int(bs)
    compiled = (" with --compile" + ("" if args.cuda_graphs else " --no-cuda_graphs")) if args.compile else ""
    titles = {
        "bench": f"Backends at {scale.clip_s:g} s clips{compiled} (no cap" + (
            f"; the search and bucketed rows under a {scale.budget_gb:g} GB cap)" if scale.budget_gb else ")"),
        "env12": f"12 GB envelope: bs/accum ladder under an {scale.env12_budget_gb:g} GB cap, linear backend",
        "env48": f"48 GB envelope: {scale.env48_clip_s:g} s clips under a {scale.env48_budget_gb:g} GB cap",
        "env48c": "48 GB envelope with the encoder and decoder layers compiled (torch.compile)",
        "perf": f"Speed changes at {scale.clip_s:g} s clips, bs {scale.sizes[-1]}: bf16 base -> compiled layers "
                f"-> CUDA graphs; fp32 base (baseline) last",
    }
    print(f"[suite] sections: {', '.join(sections)}; output: {report.out_dir}/gpu_suite.md + .json", flush=True)
    import torch

    for name in sections:
        section = report.section(titles[name])
        if not torch.cuda.is_available():
            section.notes.append("No CUDA device: memory caps are not applied and peaks are process RSS.")

        def add(row, section=section):
            report.add(section, row)
            return row

        t = time.monotonic()
        if name == "bench":
            section.notes += bench_table(runner, sets, scale, workers, args.configs, add, compiled=args.compile,
                                         cuda_graphs=args.cuda_graphs)
        elif name == "perf":
            section.notes += perf_changes(runner, sets, scale, workers, add)
        elif name == "env12":
            section.notes += envelope12(runner, sets, scale, workers, add)
        else:
            section.notes += envelope48(runner, sets, scale, workers, add, compiled=name == "env48c", found=found)
        section.notes.append(f"Section time: {time.monotonic() - t:.0f} s.")
        paths = report.write()
        print(f"[suite] {name} done in {time.monotonic() - t:.0f} s ({time.monotonic() - T_START:.0f} s total)",
              flush=True)
    print(Path(paths["md"]).read_text(encoding="utf-8"), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.gpu_suite:
        return gpu_suite(args)
    from common.bench import add_forward_ratios, markdown_table, write_table

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
