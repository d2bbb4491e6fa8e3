"""What to transcribe: one audio file, a folder of them (searched recursively) or a JSONL manifest whose lines
name audio files (a `text` makes it a reference; `offset` and `duration` a segment; `source_lang`, `target_lang`
and `pnc` the prompt). No NeMo here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.data.fields import norm_lang, norm_pnc, resolve_path
from common.data.corpus import AUDIO_EXTENSIONS
from common.errors import UserError
from common.messages import disp, plural, snippet


@dataclass(frozen=True)
class Input:
    audio: str  # absolute path
    shown: str  # the path as the user gave it (written back in the output)
    ref: str | None = None
    offset: float | None = None
    duration: float | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    pnc: str | None = None


def read_inputs(given: str) -> list[Input]:
    """The inputs named by --audio, in order (a folder's files sorted by path)."""
    path = Path(given).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if not files:
            raise UserError(f"--audio {disp(path)} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}), subfolders "
                            f"included")
        return [Input(audio=str(p.resolve()), shown=str(p)) for p in files]
    if not path.is_file():
        raise UserError(f"--audio {disp(path)} not found; pass an audio file, a folder or a JSONL manifest")
    if path.suffix.lower() in (".jsonl", ".json"):
        return _from_manifest(path)
    return [Input(audio=str(path.resolve()), shown=given)]


def _number(obj: dict, key: str) -> float | None:
    value = obj.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _from_manifest(path: Path) -> list[Input]:
    inputs, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            problems.append(f"line {n}: not valid JSON: {snippet(line)}")
            continue
        audio = obj.get("audio_filepath") if isinstance(obj, dict) else None
        if not isinstance(audio, str) or not audio.strip():
            problems.append(f"line {n}: no \"audio_filepath\": {snippet(line)}")
            continue
        ref = obj.get("text")
        inputs.append(Input(
            audio=resolve_path(audio, path.parent), shown=audio, ref=ref if isinstance(ref, str) else None,
            offset=_number(obj, "offset"), duration=_number(obj, "duration") if "offset" in obj else None,
            source_lang=norm_lang(obj.get("source_lang")), target_lang=norm_lang(obj.get("target_lang")),
            pnc=norm_pnc(obj.get("pnc")) if obj.get("pnc") is not None else None))
    if problems:
        raise UserError(f"--audio {disp(path)}: {plural(len(problems), 'bad line')}:\n" +
                        "\n".join(f"  - {p}" for p in problems[:20]))
    if not inputs:
        raise UserError(f"--audio {disp(path)} names no audio (an empty manifest)")
    return inputs
