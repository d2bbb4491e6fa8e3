"""Passes 2 and 3 of the manifest check: every audio file's header is probed (threaded, since it is I/O bound),
its end is decoded, and each line's duration is settled against the header."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.entries import ManifestEntry, ManifestReport, Row
from common.messages import capped, disp, lines_label, plural, reason, truncate
from common.errors import UserError, collect

DURATION_TOLERANCE_S = 0.5
PROBE_THREADS = 16  # header reads are I/O bound (often network storage), so more threads than cores help
TAIL_FRAMES = 2048  # decoded at the end of each file: a cut-off download or copy fails here, not mid-training


@dataclass(frozen=True)
class _Audio:
    sample_rate: int
    channels: int
    duration: float


_NOT_FOUND = "not found"


def probe_all(paths: list[str], progress: str | None = None) -> dict[str, _Audio | str]:
    """Header facts per unique path, or the reason it can't be used; threaded since it is I/O bound.

    `progress`: a label for a progress bar on stderr (a corpus of thousands of files takes a while)."""
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise UserError(
            f"cannot import soundfile ({reason(e)}); install it with `pip install soundfile` "
            "(it needs the libsndfile library)"
        ) from None
    unique = list(dict.fromkeys(paths))
    if progress is not None:
        return _probe_with_bar(soundfile, unique, progress)
    if len(unique) <= 4:
        return {p: _probe_one(soundfile, p) for p in unique}
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(unique))) as pool:
        return dict(zip(unique, pool.map(lambda p: _probe_one(soundfile, p), unique)))


def _probe_with_bar(soundfile: Any, unique: list[str], label: str) -> dict[str, _Audio | str]:
    import sys

    from tqdm import tqdm

    with tqdm(total=len(unique), desc=label, unit="file", file=sys.stderr, dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=max(1, min(PROBE_THREADS, len(unique)))) as pool:
        def one(path: str) -> _Audio | str:
            out = _probe_one(soundfile, path)
            bar.update(1)
            return out

        return dict(zip(unique, pool.map(one, unique)))


def _probe_one(soundfile: Any, path: str) -> _Audio | str:
    # isfile, not exists: a FIFO or device would block or read forever in soundfile.
    if not os.path.exists(path):
        return _NOT_FOUND
    if not os.path.isfile(path):
        return "not a regular file"
    try:
        info = soundfile.info(path)
    except Exception as e:  # any failure to read the header means the file is unusable; say why
        return truncate(getattr(e, "error_string", None) or reason(e))
    if info.samplerate <= 0 or info.channels <= 0:
        return f"invalid header ({info.samplerate} Hz, {info.channels} channels)"
    if info.frames <= 0:
        return "no audio samples (0 frames)"
    try:
        with soundfile.SoundFile(path) as f:
            f.seek(max(0, info.frames - TAIL_FRAMES))
            f.read(TAIL_FRAMES)
    except Exception as e:
        why = truncate(getattr(e, "error_string", None) or reason(e))
        return f"the header is fine but the audio does not decode to its end ({why}); probably truncated"
    return _Audio(int(info.samplerate), int(info.channels), info.frames / info.samplerate)


def apply_audio(
    report: ManifestReport,
    rows: list[Row],
    probes: dict[str, _Audio | str],
    *,
    skip_bad: bool,
    max_duration: float | None,
) -> None:
    """Turn rows into entries: skip or report bad audio, settle durations, drop clips that are too long."""
    missing: list[tuple[int, str]] = []  # (line, "line N: path ...") so the two lists merge in line order
    unusable: list[tuple[int, str]] = []
    mismatched: list[str] = []
    for row in rows:
        audio = probes[row.audio_filepath]
        where = f"line {row.line}: {disp(row.audio_filepath)}"
        if isinstance(audio, str):
            if audio == _NOT_FOUND:
                missing.append((row.line, f"{where} (not found)"))
            else:
                unusable.append((row.line, f"{where} (unreadable: {audio})"))
            continue
        available = audio.duration - (row.offset or 0.0)
        if available <= 0:
            reason = f"offset {row.offset:g} s is past its end at {audio.duration:.2f} s"
            unusable.append((row.line, f"{where} ({reason})"))
            continue
        duration = _settle_duration(row, available, mismatched)
        if max_duration is not None and duration > max_duration:
            report.dropped_too_long.append(row.line)
            continue
        report.entries.append(_entry(row, audio, duration))

    bad = [msg for _, msg in sorted(missing + unusable)]
    if bad and not skip_bad:
        collect(capped(bad), _audio_header(report.path, len(rows), len(missing), len(unusable)))
    if bad:
        report.skipped = bad
        report.notes.append(
            f"{plural(len(bad), 'line')} skipped under --skip_bad ({len(missing)} audio not found, "
            f"{len(unusable)} unreadable), e.g. {bad[0]}"
        )
    if mismatched:
        report.notes.append(
            f"{plural(len(mismatched), 'clip')} had a manifest duration more than {DURATION_TOLERANCE_S} s off "
            f"the audio header (e.g. {mismatched[0]}); using the header's duration"
        )
    if report.dropped_too_long:
        k = len(report.dropped_too_long)
        report.notes.append(
            f"{k} {'clip' if k == 1 else 'clips'} longer than {max_duration} s dropped "
            f"({lines_label(report.dropped_too_long)}); raise --max_duration to keep them"
        )


def _settle_duration(row: Row, available: float, mismatched: list[str]) -> float:
    """The manifest's duration unless the header disagrees.

    A line with an `offset` is a segment of a longer file, so only a duration running past the end counts.
    """
    if row.duration is None:
        return available
    off = row.duration - available
    if off > DURATION_TOLERANCE_S or (row.offset is None and -off > DURATION_TOLERANCE_S):
        mismatched.append(f"line {row.line}: {row.duration:g} s in the manifest, {available:.2f} s in the audio")
        return available
    return row.duration


def _entry(row: Row, audio: _Audio, duration: float) -> ManifestEntry:
    return ManifestEntry(
        line=row.line,
        audio_filepath=row.audio_filepath,
        duration=duration,
        text=row.text,
        source_lang=row.source_lang,
        target_lang=row.target_lang,
        pnc=row.pnc,
        sample_rate=audio.sample_rate,
        channels=audio.channels,
        extra=row.extra,
    )


def _audio_header(manifest: Path, total: int, n_missing: int, n_unusable: int) -> str:
    counts = []
    if n_missing:
        counts.append(f"{n_missing} audio {'file' if n_missing == 1 else 'files'} not found")
    if n_unusable:
        counts.append(f"{n_unusable} unreadable or corrupt")
    fix = "fix the paths"
    if n_missing:
        fix += f" (relative paths are resolved against the manifest's folder {disp(manifest.parent)})"
    if n_unusable:
        fix += ", convert unreadable files to WAV or FLAC"
    return (
        f"manifest {disp(manifest)}: {' and '.join(counts)} (of {total}); "
        f"{fix}, or pass --skip_bad to skip these lines and train on the rest."
    )


def nothing_left(report: ManifestReport, n_lines: int, max_duration: float | None) -> str:
    reasons = []
    if report.dropped_too_long:
        reasons.append(
            f"{len(report.dropped_too_long)} longer than --max_duration {max_duration} s (raise it to keep them)"
        )
    if report.skipped:
        reasons.append(f"{len(report.skipped)} skipped under --skip_bad for missing or unreadable audio")
    why = "; ".join(reasons) or "no line survived the checks"
    return f"manifest {disp(report.path)}: no usable clips left of {n_lines} lines: {why}."


def format_notes(entries: list[ManifestEntry], target_sample_rate: int) -> list[str]:
    """Format differences the data pipeline fixes on the fly; worth knowing, not worth failing."""
    notes = []
    rates: dict[int, int] = {}
    for e in entries:
        if e.sample_rate != target_sample_rate:
            rates[e.sample_rate] = rates.get(e.sample_rate, 0) + 1
    if rates:
        parts = [
            f"{k} {'clip is' if k == 1 else 'clips are'} {sr} Hz"
            for sr, k in sorted(rates.items(), key=lambda kv: -kv[1])
        ]
        pronoun = "it" if sum(rates.values()) == 1 else "they"
        notes.append(f"{', '.join(parts)}: {pronoun} will be resampled to {target_sample_rate} Hz")
    multi = [e.channels for e in entries if e.channels > 1]
    if multi:
        kind = "stereo" if max(multi) == 2 else "multi-channel"
        verb, pronoun = ("clip is", "it") if len(multi) == 1 else ("clips are", "they")
        notes.append(f"{len(multi)} {verb} {kind}: {pronoun} will be downmixed to mono")
    return notes

