"""Tests for common.data.manifest: one test per validation rule, skip_bad, notes, imports, and a fuzz property."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common.errors import UserError
from common.data.entries import ManifestEntry, ManifestReport
from common.data.manifest import DEFAULTS, check_file_exists, load_manifest
from common.rundir import check_writable_dir

REPO = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def wav(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1) -> Path:
    """Write a quiet sine so the file is real PCM audio of a known length."""
    n = int(round(seconds * sr))
    tone = 0.1 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)
    data = tone if channels == 1 else np.repeat(tone[:, None], channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="PCM_16")
    return path


def write_manifest(path: Path, lines: list[Any]) -> Path:
    """dicts become JSON lines, strings are written verbatim (for malformed lines)."""
    text = "\n".join(ln if isinstance(ln, str) else json.dumps(ln, ensure_ascii=False) for ln in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def error_of(fn: Callable[[], Any]) -> str:
    with pytest.raises(UserError) as info:
        fn()
    return str(info.value)


def entry(audio: str | Path, text: str = "привет мир", **extra: Any) -> dict[str, Any]:
    return {"audio_filepath": str(audio), "text": text, **extra}


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return wav(tmp_path / "clip.wav", 1.0)


# ---------------------------------------------------------------------------------------------------------
# The manifest file itself
# ---------------------------------------------------------------------------------------------------------


def test_valid_manifest_loads(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "train.jsonl", [
        entry(clip, duration=1.0, source_lang="en", target_lang="de", pnc="no"),
        entry(clip, "второй"),
    ])
    report = load_manifest(m)
    assert isinstance(report, ManifestReport)
    assert report.path == m
    first, second = report.entries
    assert first == ManifestEntry(
        line=1, audio_filepath=str(clip), duration=1.0, text="привет мир", source_lang="en",
        target_lang="de", pnc="no", sample_rate=16000, channels=1, extra={},
    )
    assert second.line == 2 and second.text == "второй"
    assert report.dropped_too_long == [] and report.skipped == [] and report.notes == []


def test_missing_manifest(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    msg = error_of(lambda: load_manifest(path))
    assert str(path) in msg and "not found" in msg and "--train/--val" in msg


def test_manifest_is_directory(tmp_path: Path) -> None:
    msg = error_of(lambda: load_manifest(tmp_path))
    assert str(tmp_path) in msg and "directory" in msg and "--train/--val" in msg


@pytest.mark.skipif(IS_ROOT, reason="root can read files whatever their mode")
def test_unreadable_manifest(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip)])
    m.chmod(0)
    try:
        msg = error_of(lambda: load_manifest(m))
    finally:
        m.chmod(0o644)
    assert str(m) in msg and "not readable" in msg


def test_unreadable_manifest_simulated(tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same path as above, reachable when tests run as root."""
    import common.data.manifest as manifest_module

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    m = write_manifest(tmp_path / "m.jsonl", [entry(clip)])
    monkeypatch.setattr(manifest_module, "open", denied, raising=False)
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "not readable (Permission denied)" in msg and "--train/--val" in msg


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n   "])
def test_empty_manifest(tmp_path: Path, content: str) -> None:
    m = tmp_path / "empty.jsonl"
    m.write_text(content)
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "empty" in msg


def test_blank_lines_ignored_and_numbering_kept(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", ["", entry(clip), "   ", "", entry(clip, "b")])
    report = load_manifest(m)
    assert [e.line for e in report.entries] == [2, 5]


def test_bom_and_crlf(tmp_path: Path, clip: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_bytes(b"\xef\xbb\xbf" + (json.dumps(entry(clip)) + "\r\n").encode() * 2)
    assert [e.line for e in load_manifest(m).entries] == [1, 2]


def test_utf16_manifest(tmp_path: Path, clip: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_bytes(json.dumps(entry(clip)).encode("utf-16"))
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "UTF-16" in msg and "UTF-8" in msg


def test_line_separator_inside_text_is_not_a_line_break(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip, "один\u2028два\x85три")])
    assert load_manifest(m).entries[0].text == "один\u2028два\x85три"


# ---------------------------------------------------------------------------------------------------------
# Line-level problems
# ---------------------------------------------------------------------------------------------------------


def test_invalid_json_line(tmp_path: Path, clip: Path) -> None:
    bad = '{"audio_filepath": "clip.wav", "text": "a" "duration": 1}'
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), bad])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "line 2" in msg and "not valid JSON" in msg
    assert '"audio_filepath": "clip.wav"' in msg  # snippet of the line


@pytest.mark.parametrize("line, kind", [("[1, 2]", "array"), ('"clip.wav"', "string"), ("42", "number"),
                                        ("null", "null"), ("true", "boolean")])
def test_json_but_not_object(tmp_path: Path, line: str, kind: str) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [line])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "line 1" in msg and kind in msg and line in msg


def test_not_utf8_line(tmp_path: Path, clip: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_bytes(json.dumps(entry(clip)).encode() + b'\n{"text": "\xff\xfe"}\n')
    msg = error_of(lambda: load_manifest(m))
    assert "line 2" in msg and "UTF-8" in msg


def test_long_line_snippet_is_truncated(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", ["x" * 5000])
    msg = error_of(lambda: load_manifest(m))
    assert "line 1" in msg and "x" * 70 in msg and "x" * 100 not in msg


def test_all_line_problems_collected_and_capped(tmp_path: Path, clip: Path) -> None:
    lines = [entry(clip)] + ["not json"] * 30 + [entry(clip)]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    msg = error_of(lambda: load_manifest(m))
    assert "30 problems on 30 lines (of 32)" in msg
    assert "line 2:" in msg and "line 21:" in msg and "line 22:" not in msg
    assert "... and 10 more" in msg


@pytest.mark.parametrize("missing", ["audio_filepath", "text"])
def test_missing_required_key(tmp_path: Path, clip: Path, missing: str) -> None:
    line = entry(clip)
    del line[missing]
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), line])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and f'line 2: missing "{missing}"' in msg


def test_missing_key_suggests_rename(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": str(clip), "transcript": "a"}])
    msg = error_of(lambda: load_manifest(m))
    assert 'line 1: missing "text"; rename "transcript" to "text"' in msg


@pytest.mark.parametrize("field, value, shown", [
    ("text", 123, "123"),
    ("text", ["a"], '["a"]'),
    ("audio_filepath", 7, "7"),
    ("audio_filepath", "", '""'),
    ("duration", "3.5", '"3.5"'),
    ("duration", -1, "-1"),
    ("duration", 0, "0"),
    ("duration", True, "true"),
    ("duration", 1e999, "Infinity"),
    ("duration", 10**400, "1000000"),
    ("offset", -2, "-2"),
    ("source_lang", 5, "5"),
    ("target_lang", "", '""'),
    ("source_lang", "r u", '"r u"'),
    ("pnc", "maybe", '"maybe"'),
    ("pnc", 1, "1"),
])
def test_wrong_types(tmp_path: Path, clip: Path, field: str, value: Any, shown: str) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), {**entry(clip), field: value}])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and f"line 2: {field}" in msg and shown in msg, msg


def test_nan_duration(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [f'{{"audio_filepath": "{clip}", "text": "a", "duration": NaN}}'])
    msg = error_of(lambda: load_manifest(m))
    assert "line 1: duration" in msg and "NaN" in msg


def test_long_value_truncated(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [{**entry(clip), "pnc": "y" * 500}])
    msg = error_of(lambda: load_manifest(m))
    assert "line 1: pnc" in msg and "y" * 70 in msg and "y" * 100 not in msg


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_text(tmp_path: Path, clip: Path, text: str) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry("clips/empty.wav", text)])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg
    assert 'line 2: empty text for "clips/empty.wav"; remove the line or fill in the transcript' in msg


def test_lone_surrogate_text_rejected_and_message_printable(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", ['{"audio_filepath": "%s", "text": "a\\ud800b"}' % clip])
    msg = error_of(lambda: load_manifest(m))
    assert "line 1: text" in msg
    msg.encode("utf-8")  # printing the error must never fail


def test_line_problems_reported_before_audio_is_checked(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry("missing.wav"), "oops"])
    msg = error_of(lambda: load_manifest(m))
    assert "line 2" in msg and "not valid JSON" in msg and "missing.wav" not in msg


# ---------------------------------------------------------------------------------------------------------
# Audio files
# ---------------------------------------------------------------------------------------------------------


def test_missing_audio_all_listed(tmp_path: Path, clip: Path) -> None:
    lines = [entry(clip)] * 5 + [entry(tmp_path / f"gone{i}.wav") for i in range(3)] + [entry(clip)]
    m = write_manifest(tmp_path / "m.jsonl", lines)
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "3 audio files not found (of 9)" in msg and "--skip_bad" in msg
    for i, line in enumerate([6, 7, 8]):
        assert f"line {line}: {tmp_path / f'gone{i}.wav'}" in msg


def test_many_missing_audio_counted(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(f"gone{i}.wav") for i in range(50)])
    msg = error_of(lambda: load_manifest(m))
    assert "50 audio files not found (of 50)" in msg and "... and 30 more" in msg
    assert str(tmp_path) in msg  # the folder relative paths were resolved against


def test_missing_audio_skip_bad(tmp_path: Path, clip: Path) -> None:
    gone = tmp_path / "gone.wav"
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(gone), entry(clip)])
    report = load_manifest(m, skip_bad=True)
    assert [e.line for e in report.entries] == [1, 3]
    assert report.skipped == [f"line 2: {gone} (not found)"]
    assert any("--skip_bad" in n and "1 line skipped" in n for n in report.notes)
    assert "1 skipped" in report.summary()


@pytest.mark.parametrize("content", [b"", b"RIFF" + b"\x00" * 40, b"not audio at all" * 20])
def test_corrupt_audio(tmp_path: Path, clip: Path, content: bytes) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(bad)])
    msg = error_of(lambda: load_manifest(m))
    assert str(m) in msg and "1 unreadable or corrupt (of 2)" in msg and "--skip_bad" in msg
    assert f"line 2: {bad} (unreadable" in msg
    report = load_manifest(m, skip_bad=True)
    assert [e.line for e in report.entries] == [1]
    assert report.skipped[0].startswith(f"line 2: {bad} (unreadable")


def test_zero_frame_audio(tmp_path: Path, clip: Path) -> None:
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 16000)
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(empty)])
    msg = error_of(lambda: load_manifest(m))
    assert f"line 2: {empty}" in msg and "0 frames" in msg


def test_audio_path_is_directory(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "sub").mkdir()
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry("sub")])
    msg = error_of(lambda: load_manifest(m))
    assert f"line 2: {tmp_path / 'sub'}" in msg and "not a regular file" in msg


def test_missing_and_corrupt_together(tmp_path: Path, clip: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"junk")
    m = write_manifest(tmp_path / "m.jsonl", [entry("bad.wav"), entry(clip), entry("gone.wav")])
    msg = error_of(lambda: load_manifest(m))
    assert "1 audio file not found and 1 unreadable or corrupt (of 3)" in msg
    assert msg.index("line 1:") < msg.index("line 3:")


def test_relative_paths_resolved_against_manifest_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    wav(data / "clips" / "a.wav")
    wav(tmp_path / "b.wav")
    write_manifest(data / "m.jsonl", [entry("clips/a.wav"), entry("./clips/a.wav"), entry("../b.wav")])
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    report = load_manifest(Path("data/m.jsonl"))
    paths = [e.audio_filepath for e in report.entries]
    assert paths == [str(data / "clips" / "a.wav")] * 2 + [str(tmp_path / "b.wav")]
    assert all(os.path.isabs(p) for p in paths)
    assert report.path == data / "m.jsonl"


def test_shared_audio_with_offsets(tmp_path: Path) -> None:
    long = wav(tmp_path / "long.wav", 3.0)
    m = write_manifest(tmp_path / "m.jsonl", [
        entry(long, offset=0.0, duration=1.0),
        entry(long, offset=1.0, duration=1.0),
        entry(long, offset=2.5),                # duration missing: the rest of the file
        entry(long, offset=2.0, duration=5.0),  # overshoots the end: clipped with a note
    ])
    report = load_manifest(m)
    assert [round(e.duration, 3) for e in report.entries] == [1.0, 1.0, 0.5, 1.0]
    assert report.entries[1].extra == {"offset": 1.0}
    assert any("line 4" in n and "header" in n for n in report.notes)


def test_offset_past_end(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(clip, offset=5.0, duration=1.0)])
    msg = error_of(lambda: load_manifest(m))
    assert f"line 2: {clip}" in msg and "offset 5 s" in msg


# ---------------------------------------------------------------------------------------------------------
# Format notes, durations, defaults, extras
# ---------------------------------------------------------------------------------------------------------


def test_sample_rate_and_stereo_notes(tmp_path: Path, clip: Path) -> None:
    hi = [wav(tmp_path / f"hi{i}.wav", 0.5, sr=44100) for i in range(2)]
    stereo = wav(tmp_path / "st.wav", 0.5, sr=16000, channels=2)
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(hi[0]), entry(hi[1]), entry(stereo)])
    report = load_manifest(m)
    assert [(e.sample_rate, e.channels) for e in report.entries] == [(16000, 1), (44100, 1), (44100, 1), (16000, 2)]
    assert "2 clips are 44100 Hz: they will be resampled to 16000 Hz" in report.notes
    assert "1 clip is stereo: it will be downmixed to mono" in report.notes
    report = load_manifest(m, target_sample_rate=44100)
    assert "2 clips are 16000 Hz: they will be resampled to 44100 Hz" in report.notes


def test_duration_measured_when_missing(tmp_path: Path) -> None:
    a = wav(tmp_path / "a.wav", 2.25)
    report = load_manifest(write_manifest(tmp_path / "m.jsonl", [entry(a), entry(a, duration=None)]))
    assert [e.duration for e in report.entries] == [2.25, 2.25]
    assert report.notes == []


def test_duration_mismatch_uses_header(tmp_path: Path) -> None:
    a = wav(tmp_path / "a.wav", 2.0)
    m = write_manifest(tmp_path / "m.jsonl", [entry(a, duration=2.3), entry(a, duration=7.0), entry(a, duration=1.0)])
    report = load_manifest(m)
    assert [e.duration for e in report.entries] == [2.3, 2.0, 2.0]  # within 0.5 s the manifest wins
    (note,) = report.notes
    assert note.startswith("2 clips had a manifest duration more than 0.5 s off") and "line 2" in note


def test_too_long_dropped(tmp_path: Path, clip: Path) -> None:
    long = wav(tmp_path / "long.wav", 3.0)
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(long), entry(clip), entry(long)])
    report = load_manifest(m, max_duration=2.5)
    assert [e.line for e in report.entries] == [1, 3]
    assert report.dropped_too_long == [2, 4]
    assert "2 clips longer than 2.5 s dropped (lines 2, 4); raise --max_duration to keep them" in report.notes
    assert "2 dropped as too long" in report.summary()
    assert len(load_manifest(m, max_duration=None).entries) == 4
    assert len(load_manifest(m, max_duration=math.inf).entries) == 4


def test_too_long_judged_on_header_duration(tmp_path: Path) -> None:
    a = wav(tmp_path / "a.wav", 3.0)
    short = wav(tmp_path / "short.wav", 1.0)
    m = write_manifest(tmp_path / "m.jsonl", [entry(a, duration=1.0), entry(a), entry(short, duration=1.0)])
    assert load_manifest(m, max_duration=2.0).dropped_too_long == [1, 2]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "40"])
def test_bad_max_duration(tmp_path: Path, clip: Path, bad: Any) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip)])
    assert "--max_duration" in error_of(lambda: load_manifest(m, max_duration=bad))


def test_nothing_left_all_too_long(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(clip)])
    msg = error_of(lambda: load_manifest(m, max_duration=0.5))
    assert str(m) in msg and "no usable clips" in msg and "2 longer than --max_duration 0.5 s" in msg


def test_nothing_left_all_skipped(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry("gone.wav")])
    msg = error_of(lambda: load_manifest(m, skip_bad=True))
    assert str(m) in msg and "no usable clips" in msg and "--skip_bad" in msg


def test_defaults_filled(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip), entry(clip, source_lang=None, target_lang="en")])
    first, second = load_manifest(m).entries
    assert (first.source_lang, first.target_lang, first.pnc) == ("ru", "ru", "yes")
    assert (second.source_lang, second.target_lang, second.pnc) == ("ru", "en", "yes")
    custom = load_manifest(m, defaults={"source_lang": "de", "target_lang": "de", "pnc": "false"}).entries
    assert (custom[0].source_lang, custom[0].pnc) == ("de", "no")
    assert DEFAULTS == {"source_lang": "ru", "target_lang": "ru", "pnc": "yes"}


def test_no_default_for_missing_field(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip, target_lang="ru", pnc="yes")] * 2)
    msg = error_of(lambda: load_manifest(m, defaults={}))
    assert 'lines 1, 2: no "source_lang" and no default' in msg


def test_bad_default(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip)])
    msg = error_of(lambda: load_manifest(m, defaults={**DEFAULTS, "pnc": "sometimes"}))
    assert "default pnc" in msg and '"sometimes"' in msg


@pytest.mark.parametrize("value, expected", [
    ("yes", "yes"), ("no", "no"), ("True", "yes"), ("false", "no"), ("<|pnc|>", "yes"), ("<|nopnc|>", "no"),
    (True, "yes"), (False, "no"), (" YES ", "yes"),
])
def test_pnc_normalised(tmp_path: Path, clip: Path, value: Any, expected: str) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip, pnc=value)])
    assert load_manifest(m).entries[0].pnc == expected


def test_extra_keys_preserved(tmp_path: Path, clip: Path) -> None:
    extras = {"taskname": "asr", "task": "s2t_translation", "itn": "no", "timestamp": "no", "diarize": "no",
              "emotion": "<|emo:undefined|>", "decodercontext": "", "speaker": {"id": 3}}
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip, duration=1.0, **extras)])
    (e,) = load_manifest(m).entries
    assert e.extra == extras
    line = e.to_manifest()
    assert line["audio_filepath"] == str(clip) and line["pnc"] == "yes" and line["taskname"] == "asr"
    assert json.loads(json.dumps(line)) == line


def test_summary(tmp_path: Path) -> None:
    a = wav(tmp_path / "a.wav", 1.5)
    report = load_manifest(write_manifest(tmp_path / "train.jsonl", [entry(a)] * 4))
    assert report.summary() == "train.jsonl: 4 clips, 6.0 s"
    assert report.total_duration == 6.0


def test_many_files_fast(tmp_path: Path) -> None:
    files = [wav(tmp_path / "w" / f"{i}.wav", 0.05) for i in range(400)]
    m = write_manifest(tmp_path / "m.jsonl", [entry(f, duration=0.05) for f in files])
    start = time.perf_counter()
    report = load_manifest(m)
    elapsed = time.perf_counter() - start
    assert len(report.entries) == 400
    assert elapsed < 5.0, f"{elapsed:.2f} s for 400 headers"


# ---------------------------------------------------------------------------------------------------------
# Helpers for other paths, and import weight
# ---------------------------------------------------------------------------------------------------------


def test_check_writable_dir_creates(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    check_writable_dir(target, "--exp_dir")
    assert target.is_dir() and list(target.iterdir()) == []


def test_check_writable_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    msg = error_of(lambda: check_writable_dir(tmp_path / "file" / "sub", "--exp_dir"))
    assert str(tmp_path / "file" / "sub") in msg and "--exp_dir" in msg
    msg = error_of(lambda: check_writable_dir(tmp_path / "file", "--exp_dir"))
    assert str(tmp_path / "file") in msg and "not a directory" in msg


@pytest.mark.skipif(IS_ROOT, reason="root can write whatever the mode")
def test_check_writable_dir_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        msg = error_of(lambda: check_writable_dir(ro, "--exp_dir"))
    finally:
        ro.chmod(0o700)
    assert str(ro) in msg and "not writable" in msg


def test_check_writable_dir_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a read-only directory, which root could write to anyway."""
    import common.rundir as rundir_module

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir_module.tempfile, "mkstemp", denied)
    msg = error_of(lambda: check_writable_dir(tmp_path / "exp", "--exp_dir"))
    assert f"--exp_dir {tmp_path / 'exp'} is not writable (Permission denied)" in msg


def test_check_file_exists(tmp_path: Path) -> None:
    f = tmp_path / "model.nemo"
    f.write_bytes(b"x")
    check_file_exists(f, "--export_nemo", "pass a .nemo file")
    msg = error_of(lambda: check_file_exists(tmp_path / "no.nemo", "--export_nemo", "pass a .nemo file"))
    assert str(tmp_path / "no.nemo") in msg and "--export_nemo" in msg and "pass a .nemo file" in msg
    msg = error_of(lambda: check_file_exists(tmp_path, "--export_nemo", "pass a .nemo file"))
    assert "is a directory" in msg


HEAVY = "{'torch', 'nemo', 'lightning', 'pytorch_lightning', 'lhotse'}"


def test_import_is_light() -> None:
    code = f"import common.data.manifest, sys; assert not any(m.split('.')[0] in {HEAVY} for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_loading_is_light(tmp_path: Path, clip: Path) -> None:
    m = write_manifest(tmp_path / "m.jsonl", [entry(clip)])
    code = (
        "import sys; from common.data.manifest import load_manifest; "
        f"assert len(load_manifest({str(m)!r}).entries) == 1; "
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY}); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


# ---------------------------------------------------------------------------------------------------------
# Property: any input gives a report or a UserError, never another exception
# ---------------------------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.floats(min_value=0.01, max_value=60),
    st.sampled_from([
        "yes", "no", "TRUE", "<|pnc|>", "ru", "en", "", " ", "\ud800", "a\x00b", "@DIR@/real.wav", "real.wav",
        "./stereo.wav", "broken.wav", "empty.wav", "missing.wav", "../real.wav", "/nonexistent/x.wav", ".", "~",
    ]),
)
KEYS = st.one_of(st.sampled_from(["audio_filepath", "duration", "text", "source_lang", "target_lang", "pnc",
                                  "offset", "taskname", "transcript"]), st.text(max_size=8))
AUDIO_OK = ["real.wav", "@DIR@/real.wav", "stereo.wav", "./real.wav"]
AUDIO_BAD = ["broken.wav", "empty.wav", "missing.wav", ".", "~", "/nonexistent/x.wav"]


def _valid(audio: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed lines; the audio may still be missing or broken, durations may be off or too long."""
    return st.fixed_dictionaries(
        {"audio_filepath": audio, "text": st.text(min_size=1, max_size=20).filter(str.strip)},
        optional={"duration": st.floats(min_value=0.01, max_value=3), "offset": st.floats(min_value=0, max_value=1),
                  "source_lang": st.sampled_from(["ru", "en"]), "target_lang": st.sampled_from(["ru", "en"]),
                  "pnc": st.sampled_from(["yes", "no", True, "<|nopnc|>"]), "taskname": st.just("asr")},
    )


VALID = _valid(st.sampled_from(AUDIO_OK))
WELL_FORMED = _valid(st.sampled_from(AUDIO_OK * 4 + AUDIO_BAD))


def _dump(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate written raw is invalid UTF-8, which is one more case to survive
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


ANY_LINE = st.one_of(
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.binary(max_size=30),
    st.builds(_dump, JSON_VALUES, st.booleans()),
    st.builds(_dump, st.dictionaries(KEYS, FIELD_VALUES, max_size=7), st.booleans()),
    st.builds(_dump, VALID, st.booleans()),
    st.just(b""),
)
# Half the manifests are well formed, so the audio, duration and skip_bad paths get exercised too.
LINES = st.one_of(
    st.lists(ANY_LINE, max_size=12),
    st.lists(st.one_of(st.builds(_dump, WELL_FORMED, st.booleans()), st.just(b"")), min_size=1, max_size=12),
)


def _outcome(msg: str) -> str:
    for key in ("problem", "not found", "unreadable", "no usable clips", "empty", "UTF-16"):
        if key in msg:
            return key
    return msg[:40]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=LINES,
    max_duration=st.one_of(st.none(), st.floats(min_value=0.05, max_value=0.6), st.floats(min_value=1, max_value=100)),
    skip_bad=st.booleans(),
    defaults=st.sampled_from([DEFAULTS, DEFAULTS, DEFAULTS, {}, {"source_lang": "en"}]),
)
def test_any_input_gives_report_or_user_error(
    lines: list[bytes], max_duration: float | None, skip_bad: bool, defaults: dict[str, str]
) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        wav(folder / "real.wav", 0.5)
        wav(folder / "stereo.wav", 0.25, sr=8000, channels=2)
        (folder / "broken.wav").write_bytes(b"RIFF\x00\x00")
        sf.write(folder / "empty.wav", np.zeros(0), 16000)
        m = folder / "m.jsonl"
        m.write_bytes(b"\n".join(ln.replace(b"@DIR@", d.encode()) for ln in lines))
        try:
            report = load_manifest(m, max_duration=max_duration, skip_bad=skip_bad, defaults=defaults)
        except UserError as e:
            msg = str(e)
            event(f"UserError: {_outcome(msg)}")
            assert msg and str(m) in msg
            msg.encode("utf-8")  # the CLI prints it; it must be encodable
            return
        event(f"report (skipped={bool(report.skipped)}, dropped={bool(report.dropped_too_long)})")
        assert report.entries
        assert [e.line for e in report.entries] == sorted({e.line for e in report.entries})
        for e in report.entries:
            assert os.path.isabs(e.audio_filepath) and os.path.isfile(e.audio_filepath)
            assert 0 < e.duration and (max_duration is None or e.duration <= max_duration)
            assert e.pnc in ("yes", "no") and e.text.strip()
        report.summary().encode("utf-8")
