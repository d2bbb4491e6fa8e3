"""Compare the adapter backends on the same model, data and seed: numerics, training, export, and cost.

Backends registered with the same method compute the same function (`linear` and `peft` are both LoRA), so they
must agree to float precision: the same outputs for the same adapter weights, the same loss at every step for the
same seed, the same merged weights and the same exported model. Backends of another method are set side by side
(trainable parameters, loss, WER, step time, memory), not checked for equality.

Each training run is the real command line in its own process (the caller passes the command, e.g.
`python -m recipes.finetune_canary`), forced onto the CPU in fp32, so its peak memory is its own and a crash in
one run is reported, not fatal. `common.quality.parity_report` writes parity.md.
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
from typing import Sequence

from backends import registry
from common.config import TrainConfig, validate
from common.flags import to_argv

TOL_LOGPROBS = 1e-6  # same adapter weights, one forward pass, fp32 CPU
TOL_LOSS = 1e-5  # per training step
TOL_WEIGHTS = 1e-5  # trained adapters and merged weights
TOL_EXPORT = 1e-5  # restored exports, log-probs on a fixed batch


@dataclass(frozen=True)
class Settings:
    """Parity's own choices; every other training flag is `TrainConfig`'s (see `training_config`)."""

    steps: int = 5
    seed: int = 0
    bs: int = 4
    lr: float = 2e-3
    val_bs: int = 8
    val_batches: int = 1
    # A random model never emits end-of-text, and Canary's decoding runs to 512 tokens unless capped: about a
    # minute per validation batch on 2 CPU cores, under a second with the cap. -1 keeps the model's own setting.
    max_generation_delta: int = 50


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
        from common.quality.plots import series

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


def method_groups() -> list[list[str]]:
    """Registered backends grouped by method, in name order: each group must agree within itself."""
    groups: dict[str, list[str]] = {}
    for name in registry.names():
        groups.setdefault(registry.registration(name).method, []).append(name)
    return list(groups.values())


# ---- training runs --------------------------------------------------------------------------------------------
def training_config(settings: Settings, backend: str, root: Path, data, nemo: Path, data_dir: Path) -> TrainConfig:
    """One parity run: fp32, no dropout, constant LR, validation only after training."""
    s = settings
    return validate(TrainConfig(
        nemo=str(nemo), train=str(data.adapt_train), val=str(data.adapt_val), backend=backend, precision="32",
        lora_dropout=0.0, seed=s.seed, bs=s.bs, accum=1, max_steps=s.steps, lr=s.lr, warmup_steps=0,
        sched="constant", val_every_n_steps=s.steps + 1, save_every=s.steps, val_bs=s.val_bs,
        limit_val_batches=s.val_batches, eval_before=False, mem_report_steps=0, log="none", exp_dir=str(root),
        export_nemo=str(root / "export.nemo"), data_dir=str(data_dir)))


def _wait_with_peak_rss(proc: subprocess.Popen) -> float | None:
    """Wait for `proc`; return its own peak resident set size in GB where the OS reports it (POSIX wait4)."""
    if not hasattr(os, "wait4"):
        proc.wait()
        return None
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return usage.ru_maxrss * scale / 1024**3


def run_training(settings: Settings, backend: str, out: Path, data, nemo: Path, command: Sequence[str]) -> Run:
    """Train `backend` through the real command line (`command` + flags) in a child process on the CPU."""
    from common.quality.plots import read_metrics

    root = out / backend
    if root.exists():  # metrics.jsonl is append-only: a previous parity run must not mix into this one
        shutil.rmtree(root)
    root.mkdir(parents=True)
    argv = to_argv(training_config(settings, backend, root, data, nemo, out / "data"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "NEMO_LOG_LEVEL": "WARNING", "CANARY_LORA_PROGRESS": "0"}
    print(f"[parity] training {backend} for {settings.steps} steps (log: {root / 'train.log'})", flush=True)
    t0 = time.time()
    with open(root / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([*command, *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
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
    from common.model.archive import inspect_nemo
    from common.model.io import freeze, restore

    model = restore(path, info=inspect_nemo(path))
    freeze(model)
    return model


def parity_base(random_nemo: Path, out: Path, max_generation_delta: int) -> Path:
    """The random tiny model with greedy/beam decoding capped at encoder length + `max_generation_delta` tokens
    (same weights); the model itself when the cap is negative."""
    from omegaconf import open_dict

    from common.model.io import save_nemo

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
    from common.data.loader import LoaderSettings, manifest_loader
    from common.model.steps import fixed_batch as first_items

    return first_items(manifest_loader(manifest, model, LoaderSettings(batch_size=4), data_dir=data_dir).loader,
                       max_items=4)


def numeric_checks(nemo: Path, batch, group: list[str], seed: int = 1234) -> list[Check]:
    """The same random adapter weights (B non-zero) in every backend of `group`: log-probs must be equal."""
    import torch

    from common.model.steps import log_probs

    spec = registry.AdapterSpec(r=8, alpha=16.0)
    outs = {}
    base = log_probs(_restore(nemo), batch)
    state = None
    for name in group:
        model = _restore(nemo)
        backend = registry.get(name)
        backend.apply(model, spec)
        if state is None:  # one random state, loaded into each through each backend's own API
            gen = torch.Generator().manual_seed(seed)
            state = {k: torch.randn(v.shape, generator=gen) * 0.05
                     for k, v in sorted(backend.adapter_state_dict(model).items())}
        backend.load_adapter_state_dict(model, state)
        outs[name] = log_probs(model, batch)
    first, others = group[0], group[1:]
    effect = float((outs[first] - base).abs().max())
    checks = [Check(f"1. Numeric: same adapter weights (random, B non-zero) in {first} and {other}, log-probs on a "
                    f"fixed batch", diff <= TOL_LOGPROBS, diff, TOL_LOGPROBS,
                    f"{len(state)} adapter tensors; they move the log-probs by up to {effect:.3g} from the base")
              for other in others for diff in [float((outs[first] - outs[other]).abs().max())]]
    checks.append(Check(f"1b. Numeric: the random adapters really change {first}'s output (else check 1 proves "
                        f"nothing)", effect > 1e-3, effect, None, "must be > 1e-3"))
    return checks


def training_checks(runs: dict[str, Run], group: list[str]) -> list[Check]:
    """Same seed and data: the same loss at every step, the same trained adapters."""
    from common.checkpoint_files import load_adapters

    first = runs[group[0]]
    checks = []
    for other in (runs[name] for name in group[1:]):
        pair = f"{first.backend} vs {other.backend}"
        (s1, l1), (s2, l2) = first.losses, other.losses
        if s1 and s1 == s2:
            diff = max(abs(a - b) for a, b in zip(l1, l2))
            checks.append(Check(f"2a. Training: loss at every step ({len(s1)} steps), {pair}", diff <= TOL_LOSS,
                                diff, TOL_LOSS))
        else:
            checks.append(Check(f"2a. Training: loss at every step, {pair}", False, None, TOL_LOSS,
                                f"step lists differ: {s1} vs {s2}"))
        files = [r.root / "adapters.safetensors" for r in (first, other)]
        if all(f.exists() for f in files):
            (a, _), (b, _) = load_adapters(files[0]), load_adapters(files[1])
            same = a.keys() == b.keys()
            diff = max(float((a[k] - b[k]).abs().max()) for k in a) if same else None
            checks.append(Check(f"2b. Training: trained adapters (adapters.safetensors, same key layout), {pair}",
                                same and diff <= TOL_WEIGHTS, diff, TOL_WEIGHTS, f"{len(a)} tensors"))
        else:
            checks.append(Check(f"2b. Training: trained adapters, {pair}", False, None, TOL_WEIGHTS,
                                "adapters.safetensors missing"))
    return checks


def export_checks(runs: dict[str, Run], group: list[str], batch) -> list[Check]:
    """Restore the merged exports with stock `restore_from`: equal weights and equal outputs."""
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from common.model.steps import log_probs

    paths = [runs[b].export for b in group]
    if not all(p is not None and p.exists() for p in paths):
        return [Check(f"2c/3. Export: merged .nemo of {', '.join(group)}", False, None, TOL_EXPORT,
                      "an export is missing")]
    first = EncDecMultiTaskModel.restore_from(str(paths[0]), map_location="cpu")
    checks = []
    for name, path in zip(group[1:], paths[1:]):
        other = EncDecMultiTaskModel.restore_from(str(path), map_location="cpu")
        sa, sb = first.state_dict(), other.state_dict()
        same_keys = sa.keys() == sb.keys()
        wdiff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa) if same_keys else None
        odiff = float((log_probs(first, batch) - log_probs(other, batch)).abs().max())
        pair = f"{group[0]} vs {name}"
        checks += [
            Check(f"2c. Training: merged weights (restored exports, every tensor), {pair}",
                  same_keys and wdiff <= TOL_WEIGHTS, wdiff, TOL_WEIGHTS, f"{len(sa)} tensors, same keys: {same_keys}"),
            Check(f"3. Export: merged .nemo restore (stock restore_from) with equal outputs, {pair}",
                  odiff <= TOL_EXPORT, odiff, TOL_EXPORT, "teacher-forced log-probs on a fixed batch"),
        ]
    return checks


def kept_adapter_check(run: Run) -> Check:
    """A backend that cannot merge: its export keeps the adapters and restores with the base keys covered."""
    keys = run.summary.get("export_check", {})
    return Check(f"4. {run.backend}: the export keeps the adapters and restores with base keys covered",
                 run.finished and bool(keys.get("ok")) and bool(keys.get("keys_cover_base")),
                 keys.get("restore_max_abs_diff"), keys.get("tolerance"),
                 "restored vs trained log-probs; another method, not compared with the others numerically")


def describe_backends(nemo: Path) -> dict[str, dict]:
    out = {}
    for name in registry.names():
        model, backend = _restore(nemo), registry.get(name)
        backend.apply(model, registry.AdapterSpec())
        out[name] = backend.describe(model)
    return out


def compare(embedded, settings: Settings, out: Path, command: Sequence[str]) -> Result:
    """Train every backend, then run every check; never raises for a failed check (it is reported)."""
    started = time.strftime("%Y-%m-%d %H:%M")
    out.mkdir(parents=True, exist_ok=True)
    nemo = parity_base(embedded.random_nemo, out, settings.max_generation_delta)
    runs = {b: run_training(settings, b, out, embedded.data, nemo, command) for b in registry.names()}
    print("[parity] comparing", flush=True)
    batch = fixed_batch(_restore(nemo), embedded.data.adapt_val, out / "data")
    describe = describe_backends(nemo)
    checks = []
    for group in method_groups():
        if len(group) > 1:
            checks += numeric_checks(nemo, batch, group) + training_checks(runs, group)
        if all(describe[b]["mergeable"] for b in group):
            checks += [Check(f"Run `{b}` finished and its export passed its own restore check",
                             runs[b].finished and bool(runs[b].summary.get("export_check", {}).get("ok")), None,
                             None, f"exit {runs[b].returncode}, status {runs[b].summary.get('status', 'none')}")
                       for b in group]
            if len(group) > 1:
                checks += export_checks(runs, group, batch)
        else:
            checks += [kept_adapter_check(runs[b]) for b in group]
    return Result(settings=settings, out=out, checks=checks, runs=runs, describe=describe, started=started,
                  source=embedded.random_nemo.name)
