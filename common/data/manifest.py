"""Validate a NeMo JSONL manifest in about a second, before NeMo (a slow import) is loaded.

`load_manifest` runs in three passes, each reporting every problem it finds at once:

1. parse: every line must be one JSON object with a usable `audio_filepath` and `text`; all bad lines are
   listed together (capped) in one `UserError`;
2. audio headers: every referenced file is probed with `soundfile.info` (threaded), and its last frames are
   decoded, which catches a truncated compressed file (FLAC, OGG, MP3) whose header still looks fine;
   missing or unreadable files are listed together, or skipped under `skip_bad`;
3. durations: the header's duration wins over a manifest value that disagrees, and clips longer than
   `max_duration` are dropped with a note.

Only the standard library is imported here (soundfile lazily): no torch, NeMo, Lightning or Lhotse.
"""
from __future__ import annotations

import codecs
import math
import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from common.data.audio import apply_audio, format_notes, nothing_left, probe_all
from common.data.fields import (check_audio_field, check_number, check_text, decode_line, field_rule, norm_lang,
                                norm_pnc, resolve_path)
from common.messages import as_number, capped, disp, lines_label, plural, reason, show
from common.data.entries import ManifestReport, Row
from common.errors import UserError, collect

CORE_KEYS = ("audio_filepath", "duration", "text", "source_lang", "target_lang", "pnc")
PROMPT_KEYS = ("source_lang", "target_lang", "pnc")
DEFAULTS: Mapping[str, str] = MappingProxyType({"source_lang": "ru", "target_lang": "ru", "pnc": "yes"})
MANIFEST_HINT = "pass the JSONL manifest with --train/--val"
EXAMPLE_LINE = (
    '{"audio_filepath": "clips/a.wav", "duration": 3.2, "text": "привет", '
    '"source_lang": "ru", "target_lang": "ru", "pnc": "yes"}'
)


def load_manifest(
    path: str | os.PathLike,
    *,
    max_duration: float | None = 40.0,
    skip_bad: bool = False,
    defaults: Mapping[str, str] = DEFAULTS,
    target_sample_rate: int = 16000,
) -> ManifestReport:
    """Read and check a manifest; raise one `UserError` per pass listing everything wrong in it.

    `skip_bad` skips lines whose audio is missing or unreadable (format errors in the manifest itself are
    always reported). `max_duration=None` keeps clips of any length. A JSON `null` for `duration`,
    `source_lang`, `target_lang` or `pnc` counts as not given.
    """
    manifest = Path(os.path.abspath(Path(path).expanduser()))
    if isinstance(max_duration, float) and max_duration == math.inf:
        max_duration = None
    if max_duration is not None and (as_number(max_duration) is None or max_duration <= 0):
        raise UserError(f"--max_duration must be a positive number of seconds, got {show(max_duration)}")
    if target_sample_rate <= 0:
        raise ValueError(f"target_sample_rate must be positive, got {target_sample_rate}")
    fills = _check_defaults(defaults)

    lines = _read_lines(manifest)
    rows = _parse_all(manifest, lines, fills)
    probes = probe_all([r.audio_filepath for r in rows])
    report = ManifestReport(path=manifest, entries=[])
    apply_audio(report, rows, probes, skip_bad=skip_bad, max_duration=max_duration)
    if not report.entries:
        raise UserError(nothing_left(report, len(lines), max_duration))
    report.notes[:0] = format_notes(report.entries, target_sample_rate)
    return report


def parse_rows(path: str | os.PathLike, *, defaults: Mapping[str, str] = DEFAULTS) -> list[Row]:
    """Pass 1 alone: every line parsed and its fields checked, no audio touched (a NeMo tarred manifest, whose
    audio lives in tar files). Raises one `UserError` listing every bad line."""
    manifest = Path(os.path.abspath(Path(path).expanduser()))
    return _parse_all(manifest, _read_lines(manifest), _check_defaults(defaults))


def check_file_exists(path: str | os.PathLike, what: str, hint: str) -> None:
    """Raise `UserError` unless `path` is a readable file; `hint` says what to pass instead."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} {disp(p)} not found; {hint}")
    if p.is_dir():
        raise UserError(f"{what} {disp(p)} is a directory, not a file; {hint}")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UserError(
            f"{what} {disp(p)} is not readable ({reason(e)}); fix its permissions or {hint}"
        ) from None


def _check_defaults(defaults: Mapping[str, str]) -> dict[str, str]:
    """Validate the fallback prompt fields once, so a bad default is one error instead of one per line."""
    fills: dict[str, str] = {}
    for key in PROMPT_KEYS:
        if key not in defaults or defaults[key] is None:
            continue
        value = defaults[key]
        norm = norm_pnc(value) if key == "pnc" else norm_lang(value)
        if norm is None:
            raise UserError(f"default {key} {show(value)} is invalid; {field_rule(key)}")
        fills[key] = norm
    return fills


def _read_lines(manifest: Path) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; lines are split as bytes so that U+2028 in text is safe."""
    check_file_exists(manifest, "manifest", MANIFEST_HINT)
    try:
        data = manifest.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read manifest {disp(manifest)} ({reason(e)}); {MANIFEST_HINT}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # PowerShell's `>` writes UTF-16; every line would otherwise fail as "not valid JSON".
        raise UserError(f"manifest {disp(manifest)} is UTF-16 encoded; re-save it as UTF-8 JSONL")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = [(n, raw) for n, raw in enumerate(data.splitlines(), start=1) if raw.strip()]
    if not lines:
        raise UserError(
            f"manifest {disp(manifest)} is empty (no non-blank lines); "
            f"it needs one JSON object per line, e.g. {EXAMPLE_LINE}"
        )
    return lines


def _parse_all(manifest: Path, lines: list[tuple[int, bytes]], fills: dict[str, str]) -> list[Row]:
    """Parse every line; raise once listing every problem in the file."""
    base = manifest.parent
    rows: list[Row] = []
    problems: list[str] = []
    bad_lines: set[int] = set()
    unfilled: dict[str, list[int]] = {}
    for n, raw in lines:
        line_problems: list[str] = []
        row = _parse_line(n, raw, base, fills, line_problems, unfilled)
        if line_problems:
            bad_lines.add(n)
            problems.extend(line_problems)
        elif row is not None:
            rows.append(row)
    for key, ns in unfilled.items():
        bad_lines.update(ns)
        problems.append(
            f"{lines_label(ns)}: no \"{key}\" and no default for it; add \"{key}\" to each line or set a default"
        )
    header = (
        f"manifest {disp(manifest)}: {plural(len(problems), 'problem')} on "
        f"{plural(len(bad_lines), 'line')} (of {len(lines)}); fix them and run again. "
        f"Each line must be one JSON object such as {EXAMPLE_LINE}"
    )
    collect(capped(problems), header)
    return rows


def _parse_line(
    n: int,
    raw: bytes,
    base: Path,
    fills: dict[str, str],
    problems: list[str],
    unfilled: dict[str, list[int]],
) -> Row | None:
    """One line to a `Row`, appending `line N: ...` problems instead of raising."""
    obj = decode_line(n, raw, problems)
    if obj is None:
        return None
    audio = check_audio_field(n, obj, problems)
    text = check_text(n, obj, audio, problems)
    duration = check_number(n, obj, "duration", problems, allow_zero=False)
    offset = check_number(n, obj, "offset", problems, allow_zero=True)
    prompt: dict[str, str] = {}
    for key in PROMPT_KEYS:
        value = obj.get(key)
        if value is None:
            if key in fills:
                prompt[key] = fills[key]
            else:
                unfilled.setdefault(key, []).append(n)
            continue
        norm = norm_pnc(value) if key == "pnc" else norm_lang(value)
        if norm is None:
            problems.append(f"line {n}: {key} {show(value)} is invalid; {field_rule(key)}")
        else:
            prompt[key] = norm
    if problems or audio is None or text is None or len(prompt) < len(PROMPT_KEYS):
        return None
    return Row(
        line=n,
        audio_filepath=resolve_path(audio, base),
        duration=duration,
        offset=offset,
        text=text,
        extra={k: v for k, v in obj.items() if k not in CORE_KEYS},
        **prompt,
    )

