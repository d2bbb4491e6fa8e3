"""How figures read in every report and console line: durations, rates, relative changes, Markdown tables."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def fmt_duration(seconds: float) -> str:
    """`12.5 s`, `4.2 min` or `1.30 h`: the unit that keeps the number readable."""
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def relative_change(before: float | None, after: float | None) -> float | None:
    """(after - before) / before; +inf when a zero error rate became non-zero, None when either is missing."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return (after - before) / before


def fmt_pct(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def fmt_rel(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def fmt_change(before: float | None, after: float | None) -> str:
    """`-12.30 pts (-45.0%)` for rates; `n/a` when either side is missing."""
    if before is None or after is None:
        return "n/a"
    return f"{100 * (after - before):+.2f} pts ({fmt_rel(relative_change(before, after))})"


def cell(text: Any, limit: int = 90) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, long text shortened."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|") or "∅"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt_bytes(n: float | None) -> str:
    """`512 B`, `3.4 MB`, `11.2 GB`: decimal units, as disks are sold and `df -H` shows them."""
    if n is None:
        return "n/a"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
