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
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from common.errors import UserError, collect

CORE_KEYS = ("audio_filepath", "duration", "text", "source_lang", "target_lang", "pnc")
PROMPT_KEYS = ("source_lang", "target_lang", "pnc")
DEFAULTS: Mapping[str, str] = MappingProxyType({"source_lang": "ru", "target_lang": "ru", "pnc": "yes"})
MANIFEST_HINT = "pass the JSONL manifest with --train/--val"
EXAMPLE_LINE = (
    '{"audio_filepath": "clips/a.wav", "duration": 3.2, "text": "привет", '
    '"source_lang": "ru", "target_lang": "ru", "pnc": "yes"}'
)
MAX_LISTED = 20  # problems listed in one error; the rest are counted
SNIPPET_CHARS = 80
DURATION_TOLERANCE_S = 0.5
PROBE_THREADS = 16  # header reads are I/O bound (often network storage), so more threads than cores help
TAIL_FRAMES = 2048  # decoded at the end of each file: a cut-off download or copy fails here, not mid-training

_PNC = {"yes": "yes", "true": "yes", "<|pnc|>": "yes", "no": "no", "false": "no", "<|nopnc|>": "no"}
# Keys people use instead of the NeMo names; only used to make the "missing key" message point at the fix.
_ALIASES = {
    "audio_filepath": ("audio_path", "audio", "path", "filepath", "file", "wav", "audio_file"),
    "text": ("transcript", "transcription", "sentence", "answer", "label", "normalized_text"),
}


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line, with paths resolved and prompt fields filled in."""

    line: int
    audio_filepath: str
    duration: float
    text: str
    source_lang: str
    target_lang: str
    pnc: str
    sample_rate: int
    channels: int
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_manifest(self) -> dict[str, Any]:
        """The line as NeMo should read it: resolved path, checked duration, filled prompt fields, extras kept."""
        core = {
            "audio_filepath": self.audio_filepath,
            "duration": self.duration,
            "text": self.text,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "pnc": self.pnc,
        }
        return {**core, **self.extra}


@dataclass
class ManifestReport:
    """What `load_manifest` kept, dropped and skipped, plus notes worth showing the user."""

    path: Path
    entries: list[ManifestEntry]
    dropped_too_long: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_duration(self) -> float:
        return sum(e.duration for e in self.entries)

    def summary(self) -> str:
        """One line, e.g. `train.jsonl: 118 clips, 0.42 h; 2 dropped as too long; 1 skipped`."""
        parts = [f"{self.path.name}: {_plural(len(self.entries), 'clip')}, {fmt_duration(self.total_duration)}"]
        if self.dropped_too_long:
            parts.append(f"{len(self.dropped_too_long)} dropped as too long")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return "; ".join(parts)


@dataclass(frozen=True)
class _Row:
    """A line that parsed cleanly; its audio is not checked yet."""

    line: int
    audio_filepath: str  # resolved
    duration: float | None
    offset: float | None  # set when the line names a segment of a longer file
    text: str
    source_lang: str
    target_lang: str
    pnc: str
    extra: dict[str, Any]


@dataclass(frozen=True)
class _Audio:
    sample_rate: int
    channels: int
    duration: float


_NOT_FOUND = "not found"


# --------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------


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
    if max_duration is not None and (_as_number(max_duration) is None or max_duration <= 0):
        raise UserError(f"--max_duration must be a positive number of seconds, got {_show(max_duration)}")
    if target_sample_rate <= 0:
        raise ValueError(f"target_sample_rate must be positive, got {target_sample_rate}")
    fills = _check_defaults(defaults)

    lines = _read_lines(manifest)
    rows = _parse_all(manifest, lines, fills)
    probes = _probe_all([r.audio_filepath for r in rows])
    report = ManifestReport(path=manifest, entries=[])
    _apply_audio(report, rows, probes, skip_bad=skip_bad, max_duration=max_duration)
    if not report.entries:
        raise UserError(_nothing_left(report, len(lines), max_duration))
    report.notes[:0] = _format_notes(report.entries, target_sample_rate)
    return report


def check_file_exists(path: str | os.PathLike, what: str, hint: str) -> None:
    """Raise `UserError` unless `path` is a readable file; `hint` says what to pass instead."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{what} {_disp(p)} not found; {hint}")
    if p.is_dir():
        raise UserError(f"{what} {_disp(p)} is a directory, not a file; {hint}")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise UserError(
            f"{what} {_disp(p)} is not readable ({_reason(e)}); fix its permissions or {hint}"
        ) from None


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Create `path` if needed and prove it is writable by creating and removing a temporary file."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {_disp(p)} exists and is not a directory; pass a directory path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create {what} {_disp(p)} ({_reason(e)}); choose a location you can write to"
        ) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UserError(
            f"{what} {_disp(p)} is not writable ({_reason(e)}); fix its permissions or choose another directory"
        ) from None


# --------------------------------------------------------------------------------------------------------
# Pass 1: read and parse lines
# --------------------------------------------------------------------------------------------------------


def _check_defaults(defaults: Mapping[str, str]) -> dict[str, str]:
    """Validate the fallback prompt fields once, so a bad default is one error instead of one per line."""
    fills: dict[str, str] = {}
    for key in PROMPT_KEYS:
        if key not in defaults or defaults[key] is None:
            continue
        value = defaults[key]
        norm = _norm_pnc(value) if key == "pnc" else _norm_lang(value)
        if norm is None:
            raise UserError(f"default {key} {_show(value)} is invalid; {_field_rule(key)}")
        fills[key] = norm
    return fills


def _read_lines(manifest: Path) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; lines are split as bytes so that U+2028 in text is safe."""
    check_file_exists(manifest, "manifest", MANIFEST_HINT)
    try:
        data = manifest.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read manifest {_disp(manifest)} ({_reason(e)}); {MANIFEST_HINT}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # PowerShell's `>` writes UTF-16; every line would otherwise fail as "not valid JSON".
        raise UserError(f"manifest {_disp(manifest)} is UTF-16 encoded; re-save it as UTF-8 JSONL")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = [(n, raw) for n, raw in enumerate(data.splitlines(), start=1) if raw.strip()]
    if not lines:
        raise UserError(
            f"manifest {_disp(manifest)} is empty (no non-blank lines); "
            f"it needs one JSON object per line, e.g. {EXAMPLE_LINE}"
        )
    return lines


def _parse_all(manifest: Path, lines: list[tuple[int, bytes]], fills: dict[str, str]) -> list[_Row]:
    """Parse every line; raise once listing every problem in the file."""
    base = manifest.parent
    rows: list[_Row] = []
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
            f"{_lines_label(ns)}: no \"{key}\" and no default for it; add \"{key}\" to each line or set a default"
        )
    header = (
        f"manifest {_disp(manifest)}: {_plural(len(problems), 'problem')} on "
        f"{_plural(len(bad_lines), 'line')} (of {len(lines)}); fix them and run again. "
        f"Each line must be one JSON object such as {EXAMPLE_LINE}"
    )
    collect(_capped(problems), header)
    return rows


def _parse_line(
    n: int,
    raw: bytes,
    base: Path,
    fills: dict[str, str],
    problems: list[str],
    unfilled: dict[str, list[int]],
) -> _Row | None:
    """One line to a `_Row`, appending `line N: ...` problems instead of raising."""
    obj = _decode(n, raw, problems)
    if obj is None:
        return None
    audio = _check_audio_field(n, obj, problems)
    text = _check_text(n, obj, audio, problems)
    duration = _check_number(n, obj, "duration", problems, allow_zero=False)
    offset = _check_number(n, obj, "offset", problems, allow_zero=True)
    prompt: dict[str, str] = {}
    for key in PROMPT_KEYS:
        value = obj.get(key)
        if value is None:
            if key in fills:
                prompt[key] = fills[key]
            else:
                unfilled.setdefault(key, []).append(n)
            continue
        norm = _norm_pnc(value) if key == "pnc" else _norm_lang(value)
        if norm is None:
            problems.append(f"line {n}: {key} {_show(value)} is invalid; {_field_rule(key)}")
        else:
            prompt[key] = norm
    if problems or audio is None or text is None or len(prompt) < len(PROMPT_KEYS):
        return None
    return _Row(
        line=n,
        audio_filepath=_resolve(audio, base),
        duration=duration,
        offset=offset,
        text=text,
        extra={k: v for k, v in obj.items() if k not in CORE_KEYS},
        **prompt,
    )


def _decode(n: int, raw: bytes, problems: list[str]) -> dict[str, Any] | None:
    """Bytes to a JSON object, or None with a problem naming the line and a snippet of it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"line {n}: not valid UTF-8 (bad byte at {e.start}): {_show(raw)}; re-save as UTF-8")
        return None
    try:
        obj = json.loads(text)
    except RecursionError:
        problems.append(f"line {n}: JSON nested too deeply: {_snippet(text)}")
        return None
    except ValueError as e:  # JSONDecodeError, and int strings over Python's digit limit
        reason = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        problems.append(f"line {n}: not valid JSON ({_truncate(reason)}): {_snippet(text)}")
        return None
    if not isinstance(obj, dict):
        problems.append(f"line {n}: expected a JSON object {{...}}, got {_kind(obj)}: {_snippet(text)}")
        return None
    return obj


def _check_audio_field(n: int, obj: dict[str, Any], problems: list[str]) -> str | None:
    if "audio_filepath" not in obj:
        problems.append(f"line {n}: missing \"audio_filepath\"{_alias_hint(obj, 'audio_filepath')}")
        return None
    audio = obj["audio_filepath"]
    if not isinstance(audio, str) or not audio.strip():
        problems.append(f"line {n}: audio_filepath must be a non-empty string path, got {_show(audio)}")
        return None
    if "\x00" in audio:
        problems.append(f"line {n}: audio_filepath contains a NUL character: {_show(audio)}")
        return None
    return audio


def _check_text(n: int, obj: dict[str, Any], audio: str | None, problems: list[str]) -> str | None:
    if "text" not in obj:
        problems.append(f"line {n}: missing \"text\"{_alias_hint(obj, 'text')}")
        return None
    text = obj["text"]
    if not isinstance(text, str):
        problems.append(f"line {n}: text must be a string, got {_kind(text)} {_show(text)}")
        return None
    if not text.strip():
        what = _show(audio) if audio is not None else "this line"
        problems.append(f"line {n}: empty text for {what}; remove the line or fill in the transcript")
        return None
    if not _valid_unicode(text):
        problems.append(f"line {n}: text contains an unpaired surrogate escape (\\ud8xx): {_show(text)}")
        return None
    return text


def _check_number(
    n: int, obj: dict[str, Any], key: str, problems: list[str], *, allow_zero: bool
) -> float | None:
    """An optional seconds field: None when absent or null, else a finite positive (or >= 0) number."""
    value = obj.get(key)
    if value is None:
        return None
    number = _as_number(value)
    if number is None or number < 0 or (number == 0 and not allow_zero):
        rule = "a finite number >= 0" if allow_zero else "a positive finite number"
        problems.append(f"line {n}: {key} must be {rule} of seconds, got {_show(value)}")
        return None
    return number


def _alias_hint(obj: dict[str, Any], key: str) -> str:
    found = [a for a in _ALIASES[key] if a in obj]
    if found:
        return f"; rename \"{found[0]}\" to \"{key}\""
    keys = ", ".join(_truncate(str(k), 20) for k in list(obj)[:8]) or "none"
    return f"; add it (keys on this line: {_disp(keys)})"


def _norm_pnc(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _PNC.get(value.strip().lower())
    return None


def _norm_lang(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    lang = value.strip()
    if not lang or any(c.isspace() for c in lang) or not _valid_unicode(lang):
        return None
    return lang


def _field_rule(key: str) -> str:
    if key == "pnc":
        return 'use "yes" or "no" (true/false and <|pnc|>/<|nopnc|> are accepted too)'
    return 'use a language code string such as "ru" or "en"'


def _resolve(audio: str, base: Path) -> str:
    """Absolute path; relative ones are taken from the manifest's folder, as NeMo does."""
    p = os.path.expanduser(audio)
    if not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.normpath(p)


# --------------------------------------------------------------------------------------------------------
# Pass 2 and 3: audio headers and durations
# --------------------------------------------------------------------------------------------------------


def _probe_all(paths: list[str]) -> dict[str, _Audio | str]:
    """Header facts per unique path, or the reason it can't be used; threaded since it is I/O bound."""
    try:
        import soundfile
    except (ImportError, OSError) as e:
        raise UserError(
            f"cannot import soundfile ({_reason(e)}); install it with `pip install soundfile` "
            "(it needs the libsndfile library)"
        ) from None
    unique = list(dict.fromkeys(paths))
    if len(unique) <= 4:
        return {p: _probe_one(soundfile, p) for p in unique}
    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(unique))) as pool:
        return dict(zip(unique, pool.map(lambda p: _probe_one(soundfile, p), unique)))


def _probe_one(soundfile: Any, path: str) -> _Audio | str:
    # isfile, not exists: a FIFO or device would block or read forever in soundfile.
    if not os.path.exists(path):
        return _NOT_FOUND
    if not os.path.isfile(path):
        return "not a regular file"
    try:
        info = soundfile.info(path)
    except Exception as e:  # any failure to read the header means the file is unusable; say why
        return _truncate(getattr(e, "error_string", None) or _reason(e))
    if info.samplerate <= 0 or info.channels <= 0:
        return f"invalid header ({info.samplerate} Hz, {info.channels} channels)"
    if info.frames <= 0:
        return "no audio samples (0 frames)"
    try:
        with soundfile.SoundFile(path) as f:
            f.seek(max(0, info.frames - TAIL_FRAMES))
            f.read(TAIL_FRAMES)
    except Exception as e:
        reason = _truncate(getattr(e, "error_string", None) or _reason(e))
        return f"the header is fine but the audio does not decode to its end ({reason}); probably truncated"
    return _Audio(int(info.samplerate), int(info.channels), info.frames / info.samplerate)


def _apply_audio(
    report: ManifestReport,
    rows: list[_Row],
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
        where = f"line {row.line}: {_disp(row.audio_filepath)}"
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
        collect(_capped(bad), _audio_header(report.path, len(rows), len(missing), len(unusable)))
    if bad:
        report.skipped = bad
        report.notes.append(
            f"{_plural(len(bad), 'line')} skipped under --skip_bad ({len(missing)} audio not found, "
            f"{len(unusable)} unreadable), e.g. {bad[0]}"
        )
    if mismatched:
        report.notes.append(
            f"{_plural(len(mismatched), 'clip')} had a manifest duration more than {DURATION_TOLERANCE_S} s off "
            f"the audio header (e.g. {mismatched[0]}); using the header's duration"
        )
    if report.dropped_too_long:
        k = len(report.dropped_too_long)
        report.notes.append(
            f"{k} {'clip' if k == 1 else 'clips'} longer than {max_duration} s dropped "
            f"({_lines_label(report.dropped_too_long)}); raise --max_duration to keep them"
        )


def _settle_duration(row: _Row, available: float, mismatched: list[str]) -> float:
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


def _entry(row: _Row, audio: _Audio, duration: float) -> ManifestEntry:
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
        fix += f" (relative paths are resolved against the manifest's folder {_disp(manifest.parent)})"
    if n_unusable:
        fix += ", convert unreadable files to WAV or FLAC"
    return (
        f"manifest {_disp(manifest)}: {' and '.join(counts)} (of {total}); "
        f"{fix}, or pass --skip_bad to skip these lines and train on the rest."
    )


def _nothing_left(report: ManifestReport, n_lines: int, max_duration: float | None) -> str:
    reasons = []
    if report.dropped_too_long:
        reasons.append(
            f"{len(report.dropped_too_long)} longer than --max_duration {max_duration} s (raise it to keep them)"
        )
    if report.skipped:
        reasons.append(f"{len(report.skipped)} skipped under --skip_bad for missing or unreadable audio")
    why = "; ".join(reasons) or "no line survived the checks"
    return f"manifest {_disp(report.path)}: no usable clips left of {n_lines} lines: {why}."


def _format_notes(entries: list[ManifestEntry], target_sample_rate: int) -> list[str]:
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


# --------------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------------


def _as_number(value: Any) -> float | None:
    """A finite float from a JSON number; bools and strings are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # ints beyond float range
        return None
    return number if math.isfinite(number) else None


def _valid_unicode(s: str) -> bool:
    """False for lone surrogates (from JSON escapes like "\\ud800"), which can't be encoded as UTF-8."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _truncate(s: str, limit: int = SNIPPET_CHARS) -> str:
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _disp(value: Any) -> str:
    """Text safe to print: lone surrogates and control characters escaped."""
    s = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


def _show(value: Any) -> str:
    """A value as JSON (quoted strings show stray whitespace), truncated and safe to print."""
    if isinstance(value, bytes):
        return _disp(_truncate(repr(value)))
    try:
        s = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        s = type(value).__name__
    return _disp(_truncate(s))


def _snippet(line: str) -> str:
    return _disp(_truncate(line.strip()))


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _plural(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def _lines_label(ns: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in ns[:limit])
    more = f" and {len(ns) - limit} more" if len(ns) > limit else ""
    return f"{'line' if len(ns) == 1 else 'lines'} {shown}{more}"


def _capped(items: list[str]) -> list[str]:
    if len(items) <= MAX_LISTED:
        return items
    return items[:MAX_LISTED] + [f"... and {len(items) - MAX_LISTED} more"]


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def fmt_duration(seconds: float) -> str:
    """`12.5 s`, `4.2 min` or `1.30 h`: the unit that keeps the number readable."""
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
