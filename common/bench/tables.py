"""Bench results as tables: markdown, CSV and JSON, each headed by the device, versions, date and command."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from common.atomic import write_text
from common.bench.measure import add_forward_ratios
from common.telemetry import GB


def environment(argv: Sequence[str] | None = None) -> dict:
    """Device, versions, date and command line for table headers."""
    import platform

    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.get_device_name(0)} ({props.total_memory / GB:.1f} GB)"
        peak = "CUDA max_memory_allocated since the fit started"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        device = f"CPU ({cores} cores{', ' + platform.machine() if platform.machine() else ''})"
        peak = "largest process RSS at a step boundary"
    args = list(sys.argv if argv is None else argv)
    return {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python " + " ".join(shlex.quote(a) for a in args), "peak_memory": peak}


# (key, header, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("label", "config", "{}"), ("set", "clips", "{}"), ("eff_bs", "eff. batch", "{}"),
    ("status", "status", "{}"), ("median_step_s", "step s", "{:.3f}"),
    ("first_step_s", "first step s", "{:.2f}"), ("audio_s_per_s", "audio s/s", "{:.1f}"),
    ("peak_gb", "peak GB", "{:.2f}"), ("trainable_params", "trainable", "{:,}"),
    ("step_over_fwd", "step/fwd", "{:.2f}"), ("vs_peer", "ours/peer", "{:.2f}"), ("last_loss", "last loss", "{:.3f}"),
)


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = COLUMNS) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k), f).replace("|", "/") for k, _, f in columns) + " |")
    notes = [f"- {r['label']} ({r['set']}): {r['status']}: {r['message']}" for r in rows
             if r.get("status") not in ("ok", None) and r.get("message")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _header(title: str, env: dict) -> str:
    return (f"# {title}\n\n"
            f"- device: {env['device']}; torch {env['torch']}" + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
            + f"\n- date: {env['date']}\n- command: `{env['command']}`\n- peak memory: {env['peak_memory']}\n")


def csv_text(rows: Sequence[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in keys})
    return buf.getvalue()


def write_table(rows: Sequence[dict], out_dir: str | os.PathLike, name: str, *, title: str | None = None,
                notes: Sequence[str] = (), columns: Sequence[tuple[str, str, str]] = COLUMNS,
                formats: Sequence[str] = ("md", "csv", "json"), env: dict | None = None) -> dict[str, Path]:
    """Write `<name>.md`, `.csv` and `.json` into `out_dir` (each atomically) with a header naming the device."""
    env = env or environment()
    out = Path(out_dir)
    written: dict[str, Path] = {}
    if "md" in formats:
        body = _header(title or name, env) + "\n" + markdown_table(rows, columns)
        if notes:
            body += "\n" + "\n".join(notes) + "\n"
        written["md"] = write_text(out / f"{name}.md", body)
    if "csv" in formats:
        written["csv"] = write_text(out / f"{name}.csv", csv_text(rows))
    if "json" in formats:
        written["json"] = write_text(out / f"{name}.json", json.dumps(
            {"title": title or name, "environment": env, "notes": list(notes), "rows": list(rows)},
            indent=1, ensure_ascii=False))
    return written


@dataclass
class Section:
    title: str
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Report:
    """Several tables in ONE markdown and ONE JSON file, rewritten after every row so a killed run keeps them."""

    def __init__(self, out_dir: str | os.PathLike, name: str, title: str):
        self.out_dir, self.name, self.title = Path(out_dir), name, title
        self.env = environment()
        self.sections: list[Section] = []
        self.t0 = time.monotonic()

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def add(self, section: Section, row: dict) -> None:
        section.rows.append(row)
        self.write()

    def write(self) -> dict[str, Path]:
        add_forward_ratios([r for s in self.sections for r in s.rows])
        elapsed = f"- elapsed: {time.monotonic() - self.t0:.0f} s\n"
        md = [_header(self.title, self.env) + elapsed]
        for s in self.sections:
            md.append(f"\n## {s.title}\n\n" + markdown_table(s.rows) + "".join(f"\n{n}\n" for n in s.notes))
        doc = {"title": self.title, "environment": self.env, "elapsed_s": round(time.monotonic() - self.t0, 1),
               "sections": [{"title": s.title, "notes": s.notes, "rows": s.rows} for s in self.sections]}
        return {"md": write_text(self.out_dir / f"{self.name}.md", "".join(md)),
                "json": write_text(self.out_dir / f"{self.name}.json", json.dumps(doc, indent=1, ensure_ascii=False))}

