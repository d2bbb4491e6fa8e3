"""The bench's tables and the GPU suite: which configurations are measured, at which sizes, in which order.

`bench_table` is `just bench`: every mode at each size, the largest batch under the budget and one bucketed row.
`gpu_suite` runs the GPU report's sections into ONE markdown and ONE JSON file: (bench) that table; (env12) the
bs/accum ladder under an 11 GB cap; (env48) 20 s clips at bs 8, 12 and the largest that fits 48 GB, one backend per
method; (env48c) the same compiled; (perf) the before/after rows of docs/performance.md. `args` is what
recipes/bench.py parsed (its --help names every field).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from backends import registry
from common.bench.config import FORWARD, FORWARD_MODES, SPECIAL_MODES, BenchConfig
from common.config import SPEEDUPS
from common.errors import UserError

SECTIONS = ("bench", "env12", "env48", "env48c", "perf", "ddp", "firststep", "win12", "eval")
DEFAULT_SECTIONS = ("bench", "env12", "env48", "env48c")


def modes() -> list[str]:
    """What a row can measure: the default backend first, the other backends, then full fine-tuning and forward."""
    return [registry.DEFAULT] + [n for n in registry.names() if n != registry.DEFAULT] + list(SPECIAL_MODES)


def one_per_method() -> list[str]:
    """The default backend, then the first backend of each other method."""
    seen = {registry.registration(registry.DEFAULT).method}
    out = [registry.DEFAULT]
    for name in registry.names():
        method = registry.registration(name).method
        if method not in seen:
            seen.add(method)
            out.append(name)
    return out


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
    precision: str | None = None  # --precision of every row; None resolves as training does
    ddp_steps: int = 30  # the CLI runs of `ddp`: optimizer steps, and those before the measured ones
    ddp_warm: int = 10
    win12_clips: tuple[float, float] = (20.0, 40.0)  # `win12`: clip lengths, and batch sizes at the shorter one
    win12_sizes: tuple[int, int] = (8, 16)
    eval_clips: tuple[float, float] = (2.0, 20.0)  # `eval`: clip lengths and count
    eval_n: int = 256

    def row(self, mode: str, bs: int = 8, workers: int = 0, **kw) -> BenchConfig:
        return BenchConfig(mode, bs, precision=self.precision, num_workers=workers, **kw)


GPU = Scale(clip_s=15.0, n_clips=256, sizes=(8, 32), search_start=40, search_step=8, search_max=512,
            mixed=(2.0, 30.0), mixed_clips=384, batch_duration=480.0, budget_gb=48.0, peak_limit_gb=46.0,
            warmup=3, steps=8, bucketed_warmup=12, bucketed_steps=20)


# On a CPU the caps and peak limits mean nothing (no CUDA allocator); the search just stops at search_max.
TINY = Scale(clip_s=2.0, n_clips=48, sizes=(2, 4), search_start=8, search_step=8, search_max=8,
             mixed=(1.0, 4.0), mixed_clips=48, batch_duration=8.0, budget_gb=None, peak_limit_gb=None,
             warmup=1, steps=3, env12_clips=(2.0, 4.0), env48_clip_s=4.0, env48_sizes=(2, 4),
             env48_peak_limit_gb=None, env48_search_tries=0, ladder_steps=2, ddp_steps=6, ddp_warm=2,
             win12_clips=(2.0, 4.0), win12_sizes=(2, 4), eval_clips=(1.0, 4.0), eval_n=8,
             precision="32")  # on a CPU bf16 autocast only slows the tiny model down


def setup(args):
    """Model factory, scale, scratch folder and the shared Bench."""
    import torch

    from common.bench.factories import NemoFactory, StandInFactory
    from common.bench.measure import Bench
    from common.embedded.default import ensure_embedded
    from common.rundir import cache_dir

    tiny = args.tiny or not torch.cuda.is_available()
    if tiny and not args.tiny:
        print("[bench] no CUDA device: measuring the tiny default on the CPU", flush=True)
    scale = TINY if tiny else GPU
    work = Path(args.work) if args.work else cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    factory = (NemoFactory(ensure_embedded(pretrain=False).random_nemo) if tiny
               else StandInFactory("1b-v2", work))
    print(f"[bench] model: {factory.name}; tokenizer ready in {time.monotonic() - t:.0f} s", flush=True)
    deadline_s = args.deadline_s if args.deadline_s is not None else (540.0 if args.gpu_suite else None)
    runner = Bench(factory, factory.prompt_format, work,
                   warmup=scale.warmup if args.warmup is None else args.warmup,
                   steps=scale.steps if args.steps is None else args.steps,
                   deadline=args.t_start + deadline_s if deadline_s else None, profile_dir=args.profile)
    workers = args.num_workers if args.num_workers is not None else (0 if tiny else 4)
    return factory, scale, work, runner, workers


class Sets:
    """Synthetic clip sets, made when first asked for (each takes a second or two)."""

    def __init__(self, factory, work: Path, scale: Scale):
        self.factory, self.work, self.scale = factory, work, scale
        self._sets = {}

    def get(self, duration, n: int):
        from common.bench.synthetic import synthetic_set

        key = (duration, n)
        if key not in self._sets:
            name = f"set-{duration[0]:g}-{duration[1]:g}s" if isinstance(duration, tuple) else f"set-{duration:g}s"
            t = time.monotonic()
            self._sets[key] = synthetic_set(self.work / name, n, duration, count_tokens=self.factory.count_tokens)
            s = self._sets[key]
            print(f"[bench] {n} synthetic clips of {s.label} ({s.total_s / 60:.0f} min, {s.mean_tokens:.0f} tokens "
                  f"per clip) in {time.monotonic() - t:.1f} s", flush=True)
        return self._sets[key]


# what a --configs item may add after '+': a --speedups name, --grad_ckpt, or --compile_backend cudagraphs
OPTIONS = SPEEDUPS + ("ckpt", "cudagraphs")


def option_settings(options: tuple[str, ...]) -> dict:
    """BenchConfig fields for a --configs item's '+' options."""
    return {"speedups": tuple(o for o in options if o in SPEEDUPS), "grad_ckpt": "ckpt" in options,
            **({"compile_backend": "cudagraphs", "compile": True} if "cudagraphs" in options else {})}


def parse_configs(spec: str | None, scale: Scale) -> tuple[list[tuple[str, int, int, tuple[str, ...]]], bool, bool]:
    """(mode, bs, accum, options) items, whether to search the largest batch, whether to add the bucketed row."""

    known = modes()
    if not spec:
        return [(m, bs, 1, ()) for bs in scale.sizes for m in known], True, True
    items, largest, bucketed, problems = [], False, False, []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "largest":
            largest = True
            continue
        if item == "bucketed":
            bucketed = True
            continue
        head, *options = item.split("+")
        mode, _, size = head.partition(":")
        bs, _, accum = size.partition("x")
        unknown = [o for o in options if o not in OPTIONS]
        if mode not in known:
            problems.append(f"{item!r}: unknown mode {mode!r} (known: {', '.join(known)}, largest, bucketed)")
        elif size and not (bs.isdigit() and int(bs) > 0 and (not accum or accum.isdigit() and int(accum) > 0)):
            problems.append(f"{item!r}: after ':' give a positive batch size, optionally x a positive number of "
                            f"accumulated micro-batches (e.g. linear:8x4)")
        elif accum and mode in FORWARD_MODES:
            problems.append(f"{item!r}: a forward pass accumulates nothing; give {mode}:BS")
        elif unknown:
            problems.append(f"{item!r}: unknown option {', '.join(unknown)} after '+' (known: {', '.join(OPTIONS)}; "
                            f"e.g. linear:32+sdpa+qkv)")
        else:
            accum_n, opts = (int(accum) if accum else 1), tuple(options)
            items += [(mode, int(bs), accum_n, opts)] if bs else [(mode, b, 1, opts) for b in scale.sizes]
    if problems:
        raise UserError("--configs:\n" + "\n".join(f"  - {p}" for p in problems))
    # by batch size, and in the order given within one size (a run cut short by its deadline keeps the first)
    return sorted(items, key=lambda t: t[1]), largest, bucketed


def bench_table(runner, sets: Sets, scale: Scale, workers: int, configs: str | None, add, *,
                compiled: bool = False, cuda_graphs: bool = True) -> list[str]:
    """The bench table: every mode at each size, the largest linear batch under the budget, one bucketed row.
    `compiled`: the training rows as `--compile [--no-cuda_graphs]` trains (forward rows stay eager)."""
    from common.bench.search import largest_batch

    def config(mode: str, bs: int = 8, **kw) -> BenchConfig:
        train = mode not in FORWARD_MODES
        return scale.row(mode, bs, workers, compile=kw.pop("compile", compiled) and train, cuda_graphs=cuda_graphs,
                         **kw)

    items, largest, bucketed = parse_configs(configs, scale)
    data = sets.get(scale.clip_s, scale.n_clips)
    for mode, bs, accum, options in items:
        add(runner.run(config(mode, bs, accum=accum, **option_settings(options)), data))
    notes = []
    if largest:
        rows, best = largest_batch(
            lambda bs: add(runner.run(config(registry.DEFAULT, bs, vram_budget_gb=scale.budget_gb, tag="search"),
                                      data)),
            scale.search_start, scale.search_step, peak_limit_gb=scale.peak_limit_gb, max_bs=scale.search_max)
        if best is not None:
            limit = f"peak <= {scale.peak_limit_gb:g} GB under a {scale.budget_gb:g} GB cap" if scale.budget_gb else \
                "no memory cap on this device"
            notes.append(f"Largest linear batch at {data.label}: bs {best['bs']} ({limit}): "
                         f"{best['audio_s_per_s']} audio s/s, peak {best['peak_gb']} GB.")
            add(runner.run(config(FORWARD, best["bs"]), data))
        else:
            notes.append(f"No linear batch from bs {scale.search_start} fit (see the search rows).")
    if bucketed:
        mixed = sets.get(scale.mixed, scale.mixed_clips)
        add(runner.run(config(registry.DEFAULT, batch_duration=scale.batch_duration, vram_budget_gb=scale.budget_gb,
                              tag="bucketed"), mixed, warmup=scale.bucketed_warmup, steps=scale.bucketed_steps))
    return notes


def envelope12(runner, sets: Sets, scale: Scale, workers: int, add) -> list[str]:
    """The tune-batch ladder under an 11 GB cap (a 12 GB card), linear backend, for each clip length."""
    from common.bench.search import ladder

    notes = []
    for clip in scale.env12_clips:
        data = sets.get(clip, 64)
        rows, best = ladder(lambda bs, accum: add(runner.run(
            scale.row(registry.DEFAULT, bs, workers, accum=accum, vram_budget_gb=scale.env12_budget_gb,
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
    from common.bench.search import largest_batch

    data = sets.get(scale.env48_clip_s, 128)
    notes = []
    for mode in one_per_method():
        def cfg(bs: int, tag: str = "") -> BenchConfig:
            return scale.row(mode, bs, workers, vram_budget_gb=scale.env48_budget_gb, compile=compiled, tag=tag)

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
    data = sets.get(scale.clip_s, scale.n_clips)
    bs = scale.sizes[-1]
    default, full = registry.DEFAULT, registry.FULL
    others = [(n, {"compile": True}) for n in registry.names() if n != default]
    for mode, kw in ((default, {}), (default, {"compile": True, "cuda_graphs": False}), (default, {"compile": True}),
                     (FORWARD, {}), (full, {}), (full, {"compile": True}), *others,
                     (FORWARD, {"base_dtype": "fp32"}), (default, {"base_dtype": "fp32"})):
        add(runner.run(scale.row(mode, bs, workers, **kw), data))
    return []


def gpu_suite(args) -> int:
    from common.bench.tables import Report

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise UserError(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if "win12" in sections and len(sections) > 1:
        raise UserError("--sections win12 blocks triton for the whole process, as on Windows: run it on its own")
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
        "ddp": f"The training CLI on one and on several GPUs (DDP), bs {scale.sizes[-1]} per GPU{compiled}",
        "firststep": f"First training step{compiled}: cold and warm compile cache (new processes)",
        "win12": f"12 GB on the Windows path (triton blocked, {scale.env12_budget_gb:g} GB cap): CUDA graphs without "
                 f"Inductor, --grad_ckpt",
        "eval": "just eval against NeMo's transcribe(), same files and model",
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
        elif name in ("ddp", "firststep", "win12", "eval"):
            from common.bench.runs import process_section

            section.notes += process_section(name, args, factory, sets, scale, work, runner, workers, add)
        else:
            section.notes += envelope48(runner, sets, scale, workers, add, compiled=name == "env48c", found=found)
        section.notes.append(f"Section time: {time.monotonic() - t:.0f} s.")
        paths = report.write()
        print(f"[suite] {name} done in {time.monotonic() - t:.0f} s ({time.monotonic() - args.t_start:.0f} s total)",
              flush=True)
    print(Path(paths["md"]).read_text(encoding="utf-8"), flush=True)
    return 0
