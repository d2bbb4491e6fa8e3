"""The run report: `report.md` with before/after figures, settings and plots, and `summary.json`."""
from __future__ import annotations

import json
from pathlib import Path

from common.atomic import write_text


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def write_report(paths: dict[str, Path], cfg, summary: dict, meta: dict, adapted: list[str], trainable: int,
                 total: int) -> Path:
    from common.plots import plot_loss_lr, plot_memory, read_metrics

    root = paths["root"]
    records = read_metrics(paths["metrics"]) if paths["metrics"].exists() else []
    plot_loss_lr(records, root / "loss.png", title=f"{meta['backend']} r={cfg.lora_r} alpha={cfg.lora_alpha:g}")
    plot_memory(records, root / "memory.png", title="memory over steps", budget_gb=cfg.vram_budget_gb)
    write_text(root / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    before, after = summary.get("before") or {}, summary.get("after") or {}
    check = summary.get("export_check") or {}
    lines = [
        f"# Run report: {root}",
        "",
        f"Status: **{summary['status']}** at step {summary['global_step']} of {cfg.max_steps}; "
        f"wall time {summary['wall_s']:.0f} s.",
        "",
        "## Validation before and after",
        "",
        "| | loss | WER (normalized) |",
        "|---|---|---|",
        f"| before | {_fmt(before.get('val_loss'))} | {_fmt(before.get('val_wer'))} |",
        f"| after | {_fmt(after.get('val_loss'))} | {_fmt(after.get('val_wer'))} |",
        "",
        "![loss and learning rate](loss.png)",
        "",
        "![memory](memory.png)",
        "",
        "## Model and adapters",
        "",
        f"- base: `{meta['base_nemo']}` (sha256 {meta['base_sha256'][:16]}...)",
        f"- backend: {meta['backend']}; {len(adapted)} modules adapted; {trainable:,} trainable of {total:,} "
        f"parameters",
        f"- export: `{summary.get('export')}`: restore check {'OK' if check.get('ok') else 'FAILED' if check else 'not run'}"
        + (f" (max |diff| {check.get('restore_max_abs_diff', 0):.2e})" if check else ""),
    ]
    if summary.get("kept_from_source"):
        lines.append(f"- kept from the source archive: {', '.join(summary['kept_from_source'])}")
    lines += ["", "## Settings", "", "```json", json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False), "```", ""]
    return write_text(paths["report"], "\n".join(lines))
