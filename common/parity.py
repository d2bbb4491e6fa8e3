"""Compare the adapter backends on the same model, data and seed: numerics, training, export, and cost.

LoRA in `linear` (hand-rolled) and `peft` (Hugging Face PEFT) is the same function, so the two must agree to
float precision: the same outputs for the same A/B weights, the same loss at every step for the same seed, the
same merged weights and the same exported model. NeMo adapters are another method; they are set side by side
(trainable parameters, loss, WER, step time, memory), not checked for equality.

Each training run is the real command line (`recipes/finetune_canary.py`, i.e. `common.train.run`) in its own
process, forced onto the CPU in fp32, so its peak memory is its own and a crash in one run is reported, not fatal.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LORA_BACKENDS = ("linear", "peft")
ALL_BACKENDS = ("linear", "peft", "nemo")

TOL_LOGPROBS = 1e-6  # same A/B, one forward pass, fp32 CPU
TOL_LOSS = 1e-5  # per training step
TOL_WEIGHTS = 1e-5  # trained adapters and merged weights
TOL_EXPORT = 1e-5  # restored exports, log-probs on a fixed batch


@dataclass(frozen=True)
class Settings:
    steps: int = 5
    seed: int = 0
    bs: int = 4
    lr: float = 2e-3
    r: int = 8
    alpha: float = 16.0
    adapter_dim: int = 32
    val_bs: int = 8
    val_batches: int = 1
    # A random model never emits end-of-text, and Canary's decoding runs to 512 tokens unless capped: about a
    # minute per validation batch on 2 CPU cores, under a second with the cap. -1 keeps the model's own setting.
    max_generation_delta: int = 50

    def __post_init__(self) -> None:
        from common.errors import collect

        problems = [f"--{k} must be > 0, got {getattr(self, k)}"
                    for k in ("steps", "bs", "lr", "r", "alpha", "adapter_dim", "val_bs", "val_batches")
                    if getattr(self, k) <= 0]
        collect(problems, "Invalid parity settings:")


@dataclass
class Check:
    name: str
    ok: bool
    measured: float | None
    tolerance: float | None
    detail: str = ""


@dataclass
class Run:
    """One training run's figures, read from what it wrote (metrics.jsonl, run.json, summary.json)."""

    backend: str
    root: Path
    returncode: int
    wall_s: float
    peak_rss_gb: float | None
    records: list[dict] = field(default_factory=list)
    run_info: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.returncode == 0 and self.summary.get("status") == "finished"

    @property
    def losses(self) -> tuple[list[float], list[float]]:
        from common.plots import series

        return series(self.records, "train", "loss")

    @property
    def step_s(self) -> float | None:
        """Median seconds per optimizer step, from the step records' timestamps (the first step is left out:
        it carries one-off costs)."""
        gaps = self._gaps()
        return statistics.median(gaps) if gaps else None

    @property
    def step_min_s(self) -> float | None:
        """The fastest step: on a shared machine the least disturbed figure."""
        gaps = self._gaps()
        return min(gaps) if gaps else None

    def _gaps(self) -> list[float]:
        times = [r["time_s"] for r in self.records if r.get("kind") == "train" and "time_s" in r]
        return [b - a for a, b in zip(times, times[1:])]

    @property
    def export(self) -> Path | None:
        path = self.summary.get("export")
        return Path(path) if path else None

    def log_tail(self, lines: int = 25) -> str:
        log = self.root / "train.log"
        if not log.exists():
            return ""
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Result:
    settings: Settings
    out: Path
    checks: list[Check]
    runs: dict[str, Run]
    describe: dict[str, dict]
    started: str
    source: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


# ---- training runs --------------------------------------------------------------------------------------------
def training_argv(settings: Settings, backend: str, root: Path, data, nemo: Path, data_dir: Path) -> list[str]:
    """The command line of one parity run: fp32, no dropout, constant LR, validation only after training."""
    s = settings
    return [
        "--nemo", str(nemo), "--train", str(data.adapt_train), "--val", str(data.adapt_val),
        "--backend", backend, "--precision", "32", "--lora_dropout", "0", "--lora_r", str(s.r),
        "--lora_alpha", str(s.alpha), "--adapter_dim", str(s.adapter_dim), "--seed", str(s.seed),
        "--bs", str(s.bs), "--accum", "1", "--max_steps", str(s.steps), "--lr", str(s.lr), "--warmup_steps", "0",
        "--sched", "constant", "--val_every_n_steps", str(s.steps + 1), "--save_every", str(s.steps),
        "--val_bs", str(s.val_bs), "--limit_val_batches", str(s.val_batches), "--no_eval_before",
        "--mem_report_steps", "0", "--log", "none", "--exp_dir", str(root), "--export_nemo", str(root / "export.nemo"),
        "--data_dir", str(data_dir),
    ]


def _wait_with_peak_rss(proc: subprocess.Popen) -> float | None:
    """Wait for `proc`; return its own peak resident set size in GB where the OS reports it (POSIX wait4)."""
    if not hasattr(os, "wait4"):
        proc.wait()
        return None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 1024**3


def run_training(settings: Settings, backend: str, out: Path, data, nemo: Path) -> Run:
    """Train `backend` through the real command line in a child process on the CPU; collect what it wrote."""
    from common.plots import read_metrics

    root = out / backend
    if root.exists():  # metrics.jsonl is append-only: a previous parity run must not mix into this one
        shutil.rmtree(root)
    root.mkdir(parents=True)
    argv = training_argv(settings, backend, root, data, nemo, out / "data")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NEMO_LOG_LEVEL": "WARNING", "CANARY_LORA_PROGRESS": "0"}
    print(f"[parity] training {backend} for {settings.steps} steps (log: {root / 'train.log'})", flush=True)
    t0 = time.time()
    with open(root / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "recipes" / "finetune_canary.py"), *argv], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = _wait_with_peak_rss(proc)
    run = Run(backend=backend, root=root, returncode=proc.returncode, wall_s=time.time() - t0, peak_rss_gb=peak)
    if (root / "metrics.jsonl").exists():
        run.records = read_metrics(root / "metrics.jsonl")
    for attr, name in (("run_info", "run.json"), ("summary", "summary.json")):
        if (root / name).exists():
            setattr(run, attr, json.loads((root / name).read_text(encoding="utf-8")))
    if run.peak_rss_gb is None:  # no wait4 (Windows): the largest RSS the run logged at a step end
        run.peak_rss_gb = max((r.get("peak_gb") or 0.0 for r in run.records if r.get("kind") == "train"),
                              default=None)
    print(f"[parity]   {backend}: exit {run.returncode}, {run.wall_s:.0f} s", flush=True)
    return run


# ---- checks -------------------------------------------------------------------------------------------------------
def _restore(path: Path):
    from common.model_io import freeze, restore
    from common.preflight import inspect_nemo

    model = restore(path, info=inspect_nemo(path))
    freeze(model)
    return model


def parity_base(random_nemo: Path, out: Path, max_generation_delta: int) -> Path:
    """The random tiny model with greedy/beam decoding capped at encoder length + `max_generation_delta` tokens
    (same weights); the model itself when the cap is negative."""
    from omegaconf import open_dict

    from common.model_io import save_nemo

    if max_generation_delta < 0:
        return random_nemo
    model = _restore(random_nemo)
    with open_dict(model.cfg.decoding):
        for strategy in ("greedy", "beam"):
            if strategy in model.cfg.decoding:
                model.cfg.decoding[strategy].max_generation_delta = max_generation_delta
    save_nemo(model, out / "base.nemo")
    return out / "base.nemo"


def fixed_batch(model, manifest: Path, data_dir: Path):
    from common.data import LoaderSettings, build_cuts, make_loader
    from common.export import fixed_batch as first_items
    from common.manifest import load_manifest

    cuts, _ = build_cuts(load_manifest(manifest), data_dir, model.prompt_format)
    return first_items(make_loader(cuts, model.tokenizer, model.prompt, LoaderSettings(batch_size=4), train=False),
                       max_items=4)


def numeric_check(nemo: Path, batch, settings: Settings, seed: int = 1234) -> list[Check]:
    """The same random A/B (B non-zero) in `linear` and `peft`: log-probs must be equal on a fixed batch."""
    import torch

    from backends import registry
    from common.export import log_probs

    spec = registry.AdapterSpec(r=settings.r, alpha=settings.alpha)
    outs = {}
    base = log_probs(_restore(nemo), batch)
    state = None
    for name in LORA_BACKENDS:
        model = _restore(nemo)
        backend = registry.get(name)
        backend.apply(model, spec)
        if state is None:  # one random state, loaded into both through each backend's own API
            gen = torch.Generator().manual_seed(seed)
            state = {k: torch.randn(v.shape, generator=gen) * 0.05
                     for k, v in sorted(backend.adapter_state_dict(model).items())}
        backend.load_adapter_state_dict(model, state)
        outs[name] = log_probs(model, batch)
    effect = float((outs["linear"] - base).abs().max())
    diff = float((outs["linear"] - outs["peft"]).abs().max())
    return [
        Check("1. Numeric: same LoRA A/B (random, B non-zero) in linear and peft, log-probs on a fixed batch",
              diff <= TOL_LOGPROBS, diff, TOL_LOGPROBS,
              f"{len(state)} adapter tensors; the adapters move the log-probs by up to {effect:.3g} from the base"),
        Check("1b. Numeric: the random adapters really change the output (else check 1 proves nothing)",
              effect > 1e-3, effect, None, "must be > 1e-3"),
    ]


def training_checks(runs: dict[str, Run]) -> list[Check]:
    """Same seed and data: the same loss at every step, the same trained adapters, the same merged weights."""
    from common.checkpoints import load_adapters

    lin, pft = runs["linear"], runs["peft"]
    checks = [Check(f"Run `{r.backend}` finished and its export passed its own restore check",
                    r.finished and bool(r.summary.get("export_check", {}).get("ok")), None, None,
                    f"exit {r.returncode}, status {r.summary.get('status', 'none')}") for r in runs.values()]
    (s1, l1), (s2, l2) = lin.losses, pft.losses
    if s1 and s1 == s2:
        diff = max(abs(a - b) for a, b in zip(l1, l2))
        checks.append(Check(f"2a. Training: loss at every step ({len(s1)} steps), linear vs peft",
                            diff <= TOL_LOSS, diff, TOL_LOSS))
    else:
        checks.append(Check("2a. Training: loss at every step, linear vs peft", False, None, TOL_LOSS,
                            f"step lists differ: {s1} vs {s2}"))
    files = [r.root / "adapters.safetensors" for r in (lin, pft)]
    if all(f.exists() for f in files):
        (a, _), (b, _) = load_adapters(files[0]), load_adapters(files[1])
        same = a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a) if same else None
        checks.append(Check("2b. Training: trained adapters (adapters.safetensors, same key layout)",
                            same and diff <= TOL_WEIGHTS, diff, TOL_WEIGHTS, f"{len(a)} tensors"))
    else:
        checks.append(Check("2b. Training: trained adapters", False, None, TOL_WEIGHTS, "adapters.safetensors missing"))
    return checks


def export_checks(runs: dict[str, Run], batch) -> list[Check]:
    """Restore both merged exports with stock `restore_from`: equal weights and equal outputs."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from common.export import log_probs

    paths = [runs[b].export for b in LORA_BACKENDS]
    if not all(p is not None and p.exists() for p in paths):
        return [Check("2c/3. Export: merged .nemo of linear and peft", False, None, TOL_EXPORT, "an export is missing")]
    a, b = (EncDecMultiTaskModel.restore_from(str(p), map_location="cpu") for p in paths)
    sa, sb = a.state_dict(), b.state_dict()
    same_keys = sa.keys() == sb.keys()
    wdiff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa) if same_keys else None
    odiff = float((log_probs(a, batch) - log_probs(b, batch)).abs().max())
    return [
        Check("2c. Training: merged weights (restored exports, every tensor)", same_keys and wdiff <= TOL_WEIGHTS,
              wdiff, TOL_WEIGHTS, f"{len(sa)} tensors, same keys: {same_keys}"),
        Check("3. Export: merged .nemo of linear and peft restore (stock restore_from) with equal outputs",
              odiff <= TOL_EXPORT, odiff, TOL_EXPORT, "teacher-forced log-probs on a fixed batch"),
    ]


def describe_backends(nemo: Path, settings: Settings) -> dict[str, dict]:
    from backends import registry

    spec = registry.AdapterSpec(r=settings.r, alpha=settings.alpha, adapter_dim=settings.adapter_dim)
    out = {}
    for name in ALL_BACKENDS:
        model, backend = _restore(nemo), registry.get(name)
        backend.apply(model, spec)
        out[name] = backend.describe(model)
    return out


def compare(embedded, settings: Settings, out: Path) -> Result:
    """Train every backend, then run every check; never raises for a failed check (it is reported)."""
    started = time.strftime("%Y-%m-%d %H:%M")
    out.mkdir(parents=True, exist_ok=True)
    nemo = parity_base(embedded.random_nemo, out, settings.max_generation_delta)
    runs = {b: run_training(settings, b, out, embedded.data, nemo) for b in ALL_BACKENDS}
    print("[parity] comparing", flush=True)
    batch = fixed_batch(_restore(nemo), embedded.data.adapt_val, out / "data")
    checks = numeric_check(nemo, batch, settings) + training_checks(runs) + export_checks(runs, batch)
    nemo_run = runs["nemo"]
    keys = nemo_run.summary.get("export_check", {})
    checks.append(Check("4. NeMo adapters: the export keeps them and restores with base keys covered",
                        nemo_run.finished and bool(keys.get("ok")) and bool(keys.get("keys_cover_base")),
                        keys.get("restore_max_abs_diff"), keys.get("tolerance"),
                        "restored vs trained log-probs; not comparable to LoRA numerically"))
    return Result(settings=settings, out=out, checks=checks, runs=runs, describe=describe_backends(nemo, settings),
                  started=started, source=embedded.random_nemo.name)


# ---- report -------------------------------------------------------------------------------------------------------
def _num(value, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def write_report(result: Result) -> Path:
    """`parity.md` and `loss.png` in the run directory."""
    import platform

    import torch

    from common.atomic import write_text
    from common.plots import plot_loss_overlay

    s, runs, out = result.settings, result.runs, result.out
    plot_loss_overlay({b: r.records for b, r in runs.items()}, out / "loss.png",
                      title=f"training loss, {s.steps} steps, seed {s.seed} (linear and peft should overlap)")
    versions = [f"torch {torch.__version__}"]
    for pkg in ("peft", "nemo"):
        try:
            versions.append(f"{pkg} {__import__(pkg).__version__}")
        except Exception:  # a missing package shows in the checks already
            pass
    lines = [
        "# Backend parity: LoRA in `linear` vs `peft`, NeMo adapters alongside",
        "",
        f"Result: **{'PASS' if result.ok else 'FAIL'}** ({sum(c.ok for c in result.checks)} of "
        f"{len(result.checks)} checks pass). Run {result.started} on CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), fp32; {', '.join(versions)}.",
        "",
        f"Model: the random tiny Canary (`{result.source}`, fp32); data: the embedded demo set's adapt slice. "
        f"Settings: {s.steps} steps, seed {s.seed}, batch {s.bs}, lr {s.lr:g} constant, LoRA r={s.r} "
        f"alpha={s.alpha:g} dropout 0, NeMo adapter dim {s.adapter_dim}; validation on {s.val_batches} x {s.val_bs} "
        f"clips after training, decoding capped at encoder length + {s.max_generation_delta} tokens (-1: uncapped). "
        f"Reproduce: `just parity --steps {s.steps} --seed {s.seed}`.",
        "",
        "## Checks",
        "",
        "| check | result | measured max abs diff | tolerance | detail |",
        "|---|---|---|---|---|",
    ]
    for c in result.checks:
        lines.append(f"| {c.name} | {'PASS' if c.ok else '**FAIL**'} | {_num(c.measured, '.2e')} | "
                     f"{_num(c.tolerance, 'g')} | {c.detail} |")
    lines += ["", "## Loss per step", "", "| step | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    steps = sorted({st for r in runs.values() for st in r.losses[0]})
    by_run = {b: dict(zip(*r.losses)) for b, r in runs.items()}
    for st in steps:
        lines.append(f"| {int(st)} | " + " | ".join(_num(by_run[b].get(st), ".6f") for b in runs) + " |")
    lines += ["", "![training loss per backend](loss.png)", ""]
    lines += [
        "## NeMo adapters beside LoRA",
        "",
        "NeMo's `LinearAdapter` is a different method (a bottleneck block after each layer, not a low-rank delta of "
        "a weight), so its figures are not expected to equal LoRA's. `--lora_targets`, `--lora_r` and `--lora_alpha` "
        "do not apply to it, and its export keeps the adapter modules (they cannot be merged into the weights); the "
        "`.nemo` restores with stock `EncDecMultiTaskModel.restore_from` with the adapters enabled.",
        "",
        f"| backend | method | adapted modules | trainable params | loss after {s.steps} steps | val loss | val WER | "
        "step time s, median (min) | peak RSS (GB) | export |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, r in runs.items():
        d = result.describe.get(b, {})
        method = (f"LoRA r={d.get('rank')} ({'hand-rolled' if b == 'linear' else 'Hugging Face PEFT'})"
                  if b in LORA_BACKENDS else f"NeMo LinearAdapter dim {d.get('adapter_dim')}")
        after = r.summary.get("after") or {}
        loss = r.losses[1][-1] if r.losses[1] else None
        trainable = r.run_info.get("trainable_params")
        export = "merged into the weights" if b in LORA_BACKENDS else "keeps the adapters"
        lines.append(f"| {b} | {method} | {d.get('adapted_modules', 'n/a')} | "
                     f"{'n/a' if trainable is None else f'{trainable:,}'} | {_num(loss)} | "
                     f"{_num(after.get('val_loss'))} | {_num(after.get('val_wer'))} | {_num(r.step_s, '.3f')} "
                     f"({_num(r.step_min_s, '.3f')}) | {_num(r.peak_rss_gb, '.2f')} | {export} |")
    lines += [
        "",
        "Peak RSS is the whole training process as the OS reports it (NeMo's import alone is about 0.7 GB), one "
        "process per backend. Step times come from a shared CPU and a 1.5M-parameter model: they show overhead, "
        "not what a GPU run of canary-1b-v2 would do. WER after a few steps of a random model is near 1 for every "
        "backend; it shows the pipeline works end to end, not which method is better.",
        "",
    ]
    failed = [r for r in runs.values() if not r.finished]
    for r in failed:
        lines += [f"### Log tail of the failed `{r.backend}` run", "", "```", r.log_tail(), "```", ""]
    return write_text(out / "parity.md", "\n".join(lines))
