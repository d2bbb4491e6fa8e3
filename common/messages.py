"""How values appear in error messages: shown safely (control characters escaped) and briefly, counts, line lists."""
from __future__ import annotations

import json
import math
from typing import Any

SNIPPET_CHARS = 80
MAX_LISTED = 20  # problems listed in one error; the rest are counted


def as_number(value: Any) -> float | None:
    """A finite float from a JSON number; bools and strings are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # ints beyond float range
        return None
    return number if math.isfinite(number) else None


def valid_unicode(s: str) -> bool:
    """False for lone surrogates (from JSON escapes like "\\ud800"), which can't be encoded as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def truncate(s: str, limit: int = SNIPPET_CHARS) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def disp(value: Any) -> str:
    """Text safe to print: lone surrogates and control characters escaped."""
    s = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def show(value: Any) -> str:
    """A value as JSON (quoted strings show stray whitespace), truncated and safe to print."""
    if isinstance(value, bytes):
        return disp(truncate(repr(value)))
    try:
        s = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        s = type(value).__name__
    return disp(truncate(s))


def snippet(line: str) -> str:
    return disp(truncate(line.strip()))


def kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def plural(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def lines_label(ns: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in ns[:limit])
    more = f" and {len(ns) - limit} more" if len(ns) > limit else ""
    return f"{'line' if len(ns) == 1 else 'lines'} {shown}{more}"


def capped(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return items[:MAX_LISTED] + [f"... and {len(items) - MAX_LISTED} more"]


def reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__

