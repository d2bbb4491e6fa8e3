"""Tests for common.quality.plots: reading an append-only metrics.jsonl and writing readable PNGs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from common.quality.plots import ema, plot_bars, plot_loss_lr, plot_memory, read_metrics, series

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_records(steps: int = 300) -> list[dict]:
    """A plausible run: decaying noisy loss, warmup + cosine LR, slowly growing memory, periodic validation."""
    records: list[dict] = []
    for step in range(1, steps + 1):
        warmup = min(1.0, step / 30)
        lr = 3e-4 * warmup * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = 0.6 + 2.5 * math.exp(-step / 60) + 0.25 * math.sin(step * 1.7) * math.exp(-step / 200)
        rec = {"kind": "train", "step": step, "loss": round(loss, 4), "lr": lr, "time_s": 0.5 * step,
               "mem_gb": 1.2 + 0.001 * step, "peak_gb": 1.6 + 0.001 * step}
        if step % 37 == 0:
            rec["lr"] = None  # fields can be null on some records
        if step % 41 == 0:
            del rec["mem_gb"]  # ... or missing
        records.append(rec)
        if step % 50 == 0:
            records.append({"kind": "val", "step": step, "val_loss": 0.7 + 2.2 * math.exp(-step / 70),
                            "val_wer": 0.2 + 0.3 * math.exp(-step / 100)})
    return records


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text + tail, encoding="utf-8")


def assert_png(path: Path, min_bytes: int) -> None:
    import matplotlib.image

    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, len(data)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 200 and image.shape[1] > 300
    # Nothing but the final file is left: the temporary name was renamed, not copied.
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# --- read_metrics ----------------------------------------------------------------------------------------
def test_read_metrics_skips_blank_broken_and_truncated_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = fake_records(20)
    body = "".join(json.dumps(r) + "\n" for r in records[:5])
    body += "\n   \n"  # blank lines
    body += "not json at all\n"
    body += "[1, 2, 3]\n"  # valid JSON but not a record
    body += "".join(json.dumps(r) + "\n" for r in records[5:])
    body += '{"kind": "train", "step": 21, "loss": 0.'  # crash mid-line
    path.write_text(body, encoding="utf-8")
    assert read_metrics(path) == records


def test_read_metrics_survives_a_cut_multibyte_character(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    good = {"kind": "val", "step": 5, "val_loss": 1.0, "note": "проверка"}
    cut = (json.dumps(good, ensure_ascii=False) + "\n").encode()[:-8]  # ends inside a Cyrillic letter
    path.write_bytes((json.dumps(good, ensure_ascii=False) + "\n").encode() + cut)
    assert read_metrics(path) == [good]


def test_read_metrics_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="metrics file not found"):
        read_metrics(tmp_path / "nope" / "metrics.jsonl")


def test_series_and_ema() -> None:
    records = [
        {"kind": "train", "step": 2, "loss": 2.0},
        {"kind": "train", "step": 1, "loss": 3.0},
        {"kind": "train", "step": 3, "loss": None},
        {"kind": "train", "step": 4},
        {"kind": "val", "step": 2, "loss": 9.0},
        {"kind": "train", "step": 2, "loss": 1.5},  # resumed run: the later record wins
        {"kind": "train", "step": 5, "loss": float("nan")},
        {"kind": "train", "step": True, "loss": 1.0},  # a bool is not a step
    ]
    assert series(records, "train", "loss") == ([1, 2], [3.0, 1.5])
    assert ema([]) == []
    assert ema([4.0, 4.0, 4.0]) == pytest.approx([4.0, 4.0, 4.0])  # bias-corrected: a constant stays put
    smoothed = ema([0.0, 10.0], weight=0.5)
    assert smoothed[0] == 0.0 and 0.0 < smoothed[1] < 10.0


# --- figures ---------------------------------------------------------------------------------------------
def test_plots_from_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_jsonl(path, fake_records(), tail='{"kind": "train", "st')
    records = read_metrics(path)
    out = tmp_path / "plots"

    loss_png = plot_loss_lr(records, out / "loss_lr.png", title="LoRA r=16, canary-1b-flash, русский")
    assert loss_png == out / "loss_lr.png"
    assert_png(loss_png, min_bytes=30_000)

    mem_png = plot_memory(records, out / "memory.png", title="memory", budget_gb=2.0)
    assert_png(mem_png, min_bytes=20_000)

    bars_png = plot_bars(["r4_lr1e-4", "r8_lr3e-4", "r16_lr3e-4", "r32_lr1e-3"], [0.231, 0.198, 0.187, None],
                         out / "sweep.png", ylabel="val WER", title="sweep")
    assert_png(bars_png, min_bytes=15_000)


def test_plot_overwrites_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    out.write_bytes(b"old")
    plot_loss_lr(fake_records(50), out)
    assert_png(out, min_bytes=20_000)


def test_partial_records(tmp_path: Path) -> None:
    # Only validation records, only LR, memory without peak: each still draws what is there.
    val_only = [{"kind": "val", "step": s, "val_loss": 2.0 / s} for s in (50, 100, 150)]
    assert_png(plot_loss_lr(val_only, tmp_path / "val_only.png"), min_bytes=10_000)
    lr_only = [{"kind": "train", "step": s, "lr": 1e-4 * s} for s in range(10)]
    assert_png(plot_loss_lr(lr_only, tmp_path / "lr_only.png"), min_bytes=10_000)
    mem_only = [{"kind": "train", "step": s, "mem_gb": 1.0 + s / 10} for s in range(10)]
    assert_png(plot_memory(mem_only, tmp_path / "mem_only.png"), min_bytes=10_000)


def test_empty_inputs_say_no_data(tmp_path: Path) -> None:
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("", encoding="utf-8")
    records = read_metrics(empty)
    assert records == []
    no_loss = [{"kind": "train", "step": 1, "time_s": 0.1}]  # records exist, but nothing to draw
    for path in [
        plot_loss_lr(records, tmp_path / "a.png", title="empty"),
        plot_loss_lr(no_loss, tmp_path / "b.png"),
        plot_memory(records, tmp_path / "c.png", budget_gb=80),
        plot_bars([], [], tmp_path / "d.png", ylabel="x"),
    ]:
        assert_png(path, min_bytes=2_000)


def test_plot_bars_length_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 labels but 1 values"):
        plot_bars(["a", "b"], [1.0], tmp_path / "x.png", ylabel="y")
    assert not list(tmp_path.iterdir())


def test_import_is_light() -> None:
    code = "import sys, common.quality.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
