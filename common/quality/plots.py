"""PNG charts of a training run's `metrics.jsonl` (loss, learning rate, memory) and of sweep results.

`metrics.jsonl` holds one JSON object per line, appended while training runs:

* training steps: ``{"kind": "train", "step": 12, "loss": 3.21, "lr": 3e-4, "time_s": 4.2, "mem_gb": 1.23,
  "peak_gb": 1.5}``, where memory is GPU allocated/peak on CUDA and process RSS on CPU;
* validations: ``{"kind": "val", "step": 50, "val_loss": 2.9, "val_wer": 0.41}``.

Any field may be missing or null. Figures are drawn on a bare `matplotlib.figure.Figure` and rendered by the
Agg PNG writer, so no GUI backend or pyplot global state is involved. matplotlib is imported inside the
functions: importing this module stays cheap for commands that never plot.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from common.atomic import atomic_path
from common.errors import UserError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 110
_LOSS_COLOR = "tab:blue"
_VAL_COLOR = "tab:red"
_LR_COLOR = "tab:green"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl, in file order; blank, broken and non-object lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"metrics file not found: {path}; a run writes it in its directory once training starts")
    records = []
    # errors="replace": a crash can cut a multi-byte character in half on the last line.
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: Iterable[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in records of `kind`, sorted by step, with missing or null values left out.

    A run resumed from a checkpoint logs some steps twice; the later record wins, as it belongs to the
    history that continued.
    """
    by_step: dict[float, float] = {}
    for rec in records:
        if rec.get("kind") != kind:
            continue
        step, value = _number(rec.get("step")), _number(rec.get(key))
        if step is not None and value is not None:
            by_step[step] = value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def ema(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected so that the first points are not pulled towards zero."""
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i))
    return out


def _new_figure(title: str, size: tuple[float, float] = (9.0, 5.0)) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    if title:
        ax.set_title(title)
    return fig, ax


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=16, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, out_png: str | os.PathLike) -> Path:
    # The temporary name ends in .tmp, so the format must be given explicitly.
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return Path(out_png)


def plot_loss_lr(records: Sequence[dict[str, Any]], out_png: str | os.PathLike, title: str = "") -> Path:
    """Training loss (raw and smoothed) and validation loss over step, learning rate on a right-hand axis."""
    steps, loss = series(records, "train", "loss")
    val_steps, val_loss = series(records, "val", "val_loss")
    lr_steps, lr = series(records, "train", "lr")
    fig, ax = _new_figure(title)
    if not (loss or val_loss or lr):
        _no_data(ax)
        return _save(fig, out_png)

    handles = []
    if loss:
        # The raw line is kept faint: it shows the noise level, the smoothed line shows the trend.
        handles += ax.plot(steps, loss, color=_LOSS_COLOR, alpha=0.3, linewidth=0.8, label="train loss")
        handles += ax.plot(steps, ema(loss), color=_LOSS_COLOR, linewidth=1.8, label="train loss (EMA)")
    if val_loss:
        handles += ax.plot(val_steps, val_loss, color=_VAL_COLOR, marker="o", linestyle="--", linewidth=1,
                           label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if lr:
        ax_lr = ax.twinx()
        handles += ax_lr.plot(lr_steps, lr, color=_LR_COLOR, linewidth=1.2, label="learning rate")
        ax_lr.set_ylabel("learning rate", color=_LR_COLOR)
        ax_lr.tick_params(axis="y", colors=_LR_COLOR)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax_lr.set_ylim(bottom=0)
        # Keep the loss lines and legend above the learning-rate curve: a twin axis draws on top by default.
        ax.set_zorder(ax_lr.get_zorder() + 1)
        ax.patch.set_visible(False)
    # One legend for both axes; otherwise the learning-rate entry would be missing or overlap.
    ax.legend(handles=handles, loc="upper right")
    return _save(fig, out_png)


def plot_memory(
    records: Sequence[dict[str, Any]],
    out_png: str | os.PathLike,
    title: str = "",
    budget_gb: float | None = None,
) -> Path:
    """Current and peak memory (GB) over step, with an optional dashed line at the budget."""
    mem_steps, mem = series(records, "train", "mem_gb")
    peak_steps, peak = series(records, "train", "peak_gb")
    fig, ax = _new_figure(title)
    if not (mem or peak):
        _no_data(ax)
        return _save(fig, out_png)

    if mem:
        ax.plot(mem_steps, mem, color="tab:blue", linewidth=1.5, label="memory (current)")
    if peak:
        ax.plot(peak_steps, peak, color="tab:orange", linewidth=1.5, label="memory (peak)")
    top = max(mem + peak)
    if budget_gb is not None:
        ax.axhline(budget_gb, color="tab:red", linestyle="--", linewidth=1.2, label=f"budget {budget_gb:g} GB")
        top = max(top, budget_gb)
    # Start at zero so the headroom left under the budget is read at its true proportion.
    ax.set_ylim(0, top * 1.08 if top > 0 else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("memory (GB)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out_png)


def plot_wer(
    records: Sequence[dict[str, Any]],
    out_png: str | os.PathLike,
    title: str = "",
    selected_step: int | None = None,
    reference: float | None = None,
    threshold: float | None = None,
) -> Path:
    """Validation WER over steps for the adapted set and the regression set, from the passes before, during and
    after training; the exported step is marked, and so is the highest regression WER selection allows."""
    fig, ax = _new_figure(title)
    drawn = False
    for kind, label, color in (("val", "adapted set (validation)", _VAL_COLOR),
                               ("regression", "regression set", "tab:purple")):
        points = sorted({int(r["step"]): v for r in records if r.get("kind") == kind
                         and r.get("tag") in ("before", "during", "after")
                         and (v := _number(r.get("val_wer"))) is not None}.items())
        if not points:
            continue
        drawn = True
        ax.plot([p[0] for p in points], [p[1] for p in points], color=color, marker="o", linewidth=1.5, label=label)
    if not drawn:
        _no_data(ax)
        return _save(fig, out_png)
    if reference is not None and threshold is not None:
        ax.axhline(reference * (1 + threshold), color="tab:purple", linestyle=":", linewidth=1.2,
                   label=f"regression limit (+{100 * threshold:.0f}% over the base model)")
    if selected_step is not None:
        ax.axvline(selected_step, color="black", linestyle="--", linewidth=1.2, label=f"exported: step {selected_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("WER (normalized)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, out_png)


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float | None],
    out_png: str | os.PathLike,
    ylabel: str,
    title: str = "",
) -> Path:
    """Bar chart with the value written above each bar; a None or non-finite value is shown as "n/a"."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values; they must pair up one to one")
    fig, ax = _new_figure(title, size=(max(6.0, 0.8 * len(labels) + 2), 5.0))
    if not labels:
        _no_data(ax)
        return _save(fig, out_png)

    numbers = [_number(v) for v in values]
    positions = range(len(labels))
    bars = ax.bar(positions, [v if v is not None else 0.0 for v in numbers], color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.4g}" if v is not None else "n/a" for v in numbers], padding=2)
    ax.set_xticks(list(positions), [str(label) for label in labels])
    # Sweep labels are often long ("r16_a32_lr3e-4"); tilt them rather than let them overlap.
    if max(len(str(label)) for label in labels) > 8:
        ax.tick_params(axis="x", labelrotation=30)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.12)  # headroom for the value labels
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out_png)


# Line styles that keep curves visible when they lie exactly on top of each other (parity runs).
_OVERLAY_STYLES = (("tab:blue", "-", "o", 7), ("tab:orange", "--", "x", 9), ("tab:green", ":", "s", 5),
                   ("tab:red", "-.", "^", 6), ("tab:purple", "-", "d", 6))


def plot_loss_overlay(
    runs: dict[str, Sequence[dict[str, Any]]],
    out_png: str | os.PathLike,
    title: str = "",
) -> Path:
    """Training loss over step for several runs on one chart, one labelled curve per run.

    Each run gets its own colour, dash pattern and marker, so two runs with identical losses still show as two
    curves drawn over each other rather than one.
    """
    fig, ax = _new_figure(title)
    curves = {label: series(records, "train", "loss") for label, records in runs.items()}
    curves = {label: c for label, c in curves.items() if c[0]}
    if not curves:
        _no_data(ax)
        return _save(fig, out_png)
    for i, (label, (steps, loss)) in enumerate(curves.items()):
        color, dash, marker, size = _OVERLAY_STYLES[i % len(_OVERLAY_STYLES)]
        ax.plot(steps, loss, color=color, linestyle=dash, marker=marker, markersize=size, linewidth=1.5,
                markerfacecolor="none" if marker != "x" else color, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # optimizer steps: no 2.5
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return _save(fig, out_png)
