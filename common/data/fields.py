"""Pass 1 of the manifest check, one field at a time: each function appends `line N: ...` problems instead of
raising, so a whole file's problems are reported together."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.messages import as_number, disp, kind, show, snippet, truncate, valid_unicode

_PNC = {"yes": "yes", "true": "yes", "<|pnc|>": "yes", "no": "no", "false": "no", "<|nopnc|>": "no"}
# Keys people use instead of the NeMo names; only used to make the "missing key" message point at the fix.
_ALIASES = {
    "audio_filepath": ("audio_path", "audio", "path", "filepath", "file", "wav", "audio_file"),
    "text": ("transcript", "transcription", "sentence", "answer", "label", "normalized_text"),
}


def decode_line(n: int, raw: bytes, problems: list[str]) -> dict[str, Any] | None:
    """Bytes to a JSON object, or None with a problem naming the line and a snippet of it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"line {n}: not valid UTF-8 (bad byte at {e.start}): {show(raw)}; re-save as UTF-8")
        return None
    try:
        obj = json.loads(text)
    except RecursionError:
        problems.append(f"line {n}: JSON nested too deeply: {snippet(text)}")
        return None
    except ValueError as e:  # JSONDecodeError, and int strings over Python's digit limit
        reason = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        problems.append(f"line {n}: not valid JSON ({truncate(reason)}): {snippet(text)}")
        return None
    if not isinstance(obj, dict):
        problems.append(f"line {n}: expected a JSON object {{...}}, got {kind(obj)}: {snippet(text)}")
        return None
    return obj


def check_audio_field(n: int, obj: dict[str, Any], problems: list[str]) -> str | None:
    if "audio_filepath" not in obj:
        problems.append(f"line {n}: missing \"audio_filepath\"{_alias_hint(obj, 'audio_filepath')}")
        return None
    audio = obj["audio_filepath"]
    if not isinstance(audio, str) or not audio.strip():
        problems.append(f"line {n}: audio_filepath must be a non-empty string path, got {show(audio)}")
        return None
    if "\x00" in audio:
        problems.append(f"line {n}: audio_filepath contains a NUL character: {show(audio)}")
        return None
    return audio


def check_text(n: int, obj: dict[str, Any], audio: str | None, problems: list[str]) -> str | None:
    if "text" not in obj:
        problems.append(f"line {n}: missing \"text\"{_alias_hint(obj, 'text')}")
        return None
    text = obj["text"]
    if not isinstance(text, str):
        problems.append(f"line {n}: text must be a string, got {kind(text)} {show(text)}")
        return None
    if not text.strip():
        what = show(audio) if audio is not None else "this line"
        problems.append(f"line {n}: empty text for {what}; remove the line or fill in the transcript")
        return None
    if not valid_unicode(text):
        problems.append(f"line {n}: text contains an unpaired surrogate escape (\\ud8xx): {show(text)}")
        return None
    return text


def check_number(
    n: int, obj: dict[str, Any], key: str, problems: list[str], *, allow_zero: bool
) -> float | None:
    """An optional seconds field: None when absent or null, else a finite positive (or >= 0) number."""
    value = obj.get(key)
    if value is None:
        return None
    number = as_number(value)
    if number is None or number < 0 or (number == 0 and not allow_zero):
        rule = "a finite number >= 0" if allow_zero else "a positive finite number"
        problems.append(f"line {n}: {key} must be {rule} of seconds, got {show(value)}")
        return None
    return number


def _alias_hint(obj: dict[str, Any], key: str) -> str:
    found = [a for a in _ALIASES[key] if a in obj]
    if found:
        return f"; rename \"{found[0]}\" to \"{key}\""
    keys = ", ".join(truncate(str(k), 20) for k in list(obj)[:8]) or "none"
    return f"; add it (keys on this line: {disp(keys)})"


def norm_pnc(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return _PNC.get(value.strip().lower())
    return None


def norm_lang(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    lang = value.strip()
    if not lang or any(c.isspace() for c in lang) or not valid_unicode(lang):
        return None
    return lang


def field_rule(key: str) -> str:
    if key == "pnc":
        return 'use "yes" or "no" (true/false and <|pnc|>/<|nopnc|> are accepted too)'
    return 'use a language code string such as "ru" or "en"'


def resolve_path(audio: str, base: Path) -> str:
    """Absolute path; relative ones are taken from the manifest's folder, as NeMo does."""
    p = os.path.expanduser(audio)
    if not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.normpath(p)

