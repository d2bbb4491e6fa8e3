"""`parity.md` and `loss.png`: the checks `common.quality.parity` ran, the loss per step and each backend's cost."""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from common.atomic import write_text
from common.quality.parity import Result, method_groups


def _num(value, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                     for k, v in (settings or {}).items())


def write_report(result: Result) -> Path:
    """`parity.md` and `loss.png` in the run directory."""
    import platform

    import torch

    from common.quality.plots import plot_loss_overlay

    s, runs, out = result.settings, result.runs, result.out
    agreeing = [g for g in method_groups() if len(g) > 1]
    overlap = "; ".join(" and ".join(g) for g in agreeing) or "none"
    plot_loss_overlay({b: r.records for b, r in runs.items()}, out / "loss.png",
                      title=f"training loss, {s.steps} steps, seed {s.seed} (should overlap: {overlap})")
    versions = [f"torch {torch.__version__}"]
    for dist in ("nemo_toolkit", "lightning"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:  # a missing package shows in the checks already
            pass
    lines = [
        "# Backend parity: backends of one method must agree, the others stand beside them",
        "",
        f"Result: **{'PASS' if result.ok else 'FAIL'}** ({sum(c.ok for c in result.checks)} of "
        f"{len(result.checks)} checks pass). Run {result.started} on CPU "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), fp32; {', '.join(versions)}.",
        "",
        f"Model: the random tiny Canary (`{result.source}`, fp32); data: the embedded demo set's adapt slice. "
        f"Settings: {s.steps} steps, seed {s.seed}, batch {s.bs}, lr {s.lr:g} constant, every backend at its "
        f"default settings (LoRA r 8, alpha 16) with dropout 0; validation on {s.val_batches} x {s.val_bs} clips "
        f"after training, decoding capped at encoder length + {s.max_generation_delta} tokens (-1: uncapped). "
        f"Groups that must agree: {overlap}. Reproduce: `just parity --steps {s.steps} --seed {s.seed}`.",
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
        "## Every backend side by side",
        "",
        "Backends of another method (for example a bottleneck block after each layer, not a low-rank delta of a "
        "weight) are not expected to equal the others' figures; a backend that cannot merge keeps its adapter "
        "modules in the export, which restores with stock `EncDecMultiTaskModel.restore_from`.",
        "",
        f"| backend | method | settings | adapted modules | trainable params | loss after {s.steps} steps | val loss | "
        "val WER | step time s, median (min) | peak RSS (GB) | export |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, r in runs.items():
        d = result.describe.get(b, {})
        after = r.summary.get("after") or {}
        loss = r.losses[1][-1] if r.losses[1] else None
        trainable = r.run_info.get("trainable_params")
        lines.append(f"| {b} | {d.get('method', 'n/a')} | {_settings_text(d.get('settings'))} | "
                     f"{d.get('adapted_modules', 'n/a')} | {'n/a' if trainable is None else f'{trainable:,}'} | "
                     f"{_num(loss)} | {_num(after.get('val_loss'))} | {_num(after.get('val_wer'))} | "
                     f"{_num(r.step_s, '.3f')} ({_num(r.step_min_s, '.3f')}) | {_num(r.peak_rss_gb, '.2f')} | "
                     f"{d.get('export', 'n/a')} |")
    lines += [
        "",
        "Peak RSS is the whole training process as the OS reports it (NeMo's import alone is about 0.7 GB), one "
        "process per backend. Step times come from a shared CPU and a 1.5M-parameter model: they show overhead, "
        "not what a GPU run of canary-1b-v2 would do. WER after a few steps of a random model is near 1 for every "
        "backend; it shows the pipeline works end to end, not which method is better.",
        "",
    ]
    for r in runs.values():
        if not r.finished:
            lines += [f"### Log tail of the failed `{r.backend}` run", "", "```", r.log_tail(), "```", ""]
    return write_text(out / "parity.md", "\n".join(lines))
