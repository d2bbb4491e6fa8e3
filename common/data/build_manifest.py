"""`just manifest`: a NeMo JSONL manifest from a folder of recordings, a Common Voice-style TSV or Lhotse manifests.

Items come from `common.data.corpus`; every audio file's header is read (threaded, with a progress bar) for its
duration, and its end is decoded (a truncated download fails here, not mid-training); unusable items are skipped
and counted by reason. `--split val=0.05` sets aside a validation set that is the same on every run: groups (a
speaker's clips when the source names speakers, else each audio file) are ordered by a seeded hash and taken
until the share is reached, so no speaker is in both sets. Each file written is then read back with
`load_manifest`, the check training runs, so what this writes is what `just finetune` accepts.

Only the standard library, soundfile and tqdm are imported (Lhotse for Lhotse input): it answers in seconds.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from common.atomic import write_text
from common.data.audio import probe_all
from common.data.fields import norm_lang, norm_pnc
from common.data.corpus import Found, Item, from_audio_dir, from_lhotse, from_tsv
from common.errors import UserError
from common.flags import flag
from common.fmt import fmt_duration
from common.messages import disp, plural

SEGMENT_TOLERANCE_S = 0.05  # a Lhotse segment may end this far past the audio's end (rounding in its manifest)
EXAMPLES = 3  # origins shown per skip reason


@dataclass(frozen=True)
class ManifestSettings:
    audio_dir: str | None = flag(None, "a folder of recordings (wav/flac/mp3/ogg, searched recursively), each with "
                                       "its transcript in <name>.txt beside it", type=str)
    tsv: str | None = flag(None, "a tab-separated file with audio path and sentence columns (Common Voice's "
                                 "validated.tsv)", type=str)
    audio_root: str | None = flag(None, "the folder --tsv's paths are relative to (default: <tsv folder>/clips if "
                                        "it exists, else the TSV's folder)", type=str)
    cuts: tuple = flag((), "Lhotse manifests (*.jsonl.gz): CutSets, or recordings + supervisions as `lhotse "
                           "prepare` writes them (repeat the flag for several files)", metavar="FILE")
    out: str | None = flag(None, "the manifest to write (NeMo JSONL)", type=str)
    lang: str = flag("ru", "source_lang and target_lang of every line (transcription)")
    pnc: str = flag("yes", "pnc of every line: yes (transcripts keep punctuation and case) or no",
                    choices=("yes", "no"))
    split: str | None = flag(None, "set aside held-out sets, e.g. val=0.05 (or val=0.05,test=0.05): written as "
                                   "val.jsonl next to --out, by speaker when the source names speakers", type=str)
    seed: int = flag(0, "seed of the --split assignment (the same seed and data give the same split)")
    path_column: str | None = flag(None, "--tsv column with the audio path (default: path, audio_filepath, ...)",
                                   type=str)
    text_column: str | None = flag(None, "--tsv column with the transcript (default: sentence, text, ...)", type=str)
    speaker_column: str | None = flag(None, "--tsv column with the speaker (default: client_id, speaker, ...)",
                                      type=str)


@dataclass(frozen=True)
class Written:
    path: Path
    clips: int
    seconds: float
    speakers: int


def parse_split(spec: str | None) -> dict[str, float]:
    """`val=0.05,test=0.02` -> {"val": 0.05, "test": 0.02}; one UserError naming what is wrong."""
    if not spec:
        return {}
    out: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name.strip().isidentifier() or not 0.0 < fraction < 1.0:
            raise UserError(f"--split {spec!r}: each part must be NAME=FRACTION with 0 < FRACTION < 1, e.g. val=0.05")
        out[name.strip()] = fraction
    if sum(out.values()) >= 1.0:
        raise UserError(f"--split {spec!r} sets aside everything; the fractions must add up to less than 1")
    return out


def check_settings(s: ManifestSettings) -> dict[str, float]:
    problems = []
    given = [name for name in ("audio_dir", "tsv", "cuts") if getattr(s, name)]
    if len(given) != 1:
        problems.append("give exactly one source: --audio_dir DIR, --tsv FILE or --cuts FILE" +
                        (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    if not s.out:
        problems.append("--out is required (the manifest to write, e.g. data/train.jsonl)")
    elif not s.out.endswith((".jsonl", ".json")):
        problems.append(f"--out must end with .jsonl, got {s.out!r}")
    if norm_lang(s.lang) is None:
        problems.append(f"--lang {s.lang!r} must be a language code such as ru or en")
    if norm_pnc(s.pnc) is None:
        problems.append(f"--pnc must be yes or no, got {s.pnc!r}")
    if s.audio_root and not s.tsv:
        problems.append("--audio_root goes with --tsv")
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    splits = parse_split(s.split)
    clash = [name for name in splits if Path(s.out).stem == name]
    if clash:
        raise UserError(f"--out {s.out} and the --split part {clash[0]!r} would be the same file; name --out "
                        f"otherwise (e.g. train.jsonl)")
    return splits


def collect(s: ManifestSettings) -> Found:
    if s.audio_dir:
        return from_audio_dir(s.audio_dir)
    if s.tsv:
        return from_tsv(s.tsv, s.audio_root, path_column=s.path_column, text_column=s.text_column,
                        speaker_column=s.speaker_column)
    return from_lhotse(s.cuts)


def _mp3_hint(path: str, why: str) -> str:
    if not path.lower().endswith(".mp3"):
        return why
    import soundfile

    version = getattr(soundfile, "__libsndfile_version__", "?")
    return (f"MP3 not readable ({why}); soundfile reads MP3 only with libsndfile >= 1.1.0 (this one: {version}): "
            f"upgrade soundfile, or convert, e.g. ffmpeg -i a.mp3 -ar 16000 a.wav")


def with_durations(found: Found) -> list[tuple[Item, float]]:
    """Each usable item with its duration in seconds, from the audio header; the rest are skipped with a reason."""
    probes = probe_all([item.audio for item in found.items], progress="reading audio headers")
    usable = []
    for item in found.items:
        audio = probes[item.audio]
        if isinstance(audio, str):
            found.skip("audio not found" if audio == "not found" else f"unreadable audio: {_mp3_hint(item.audio, audio)}",
                       item.origin)
            continue
        if item.duration is None:
            usable.append((item, round(audio.duration, 4)))
            continue
        end = (item.offset or 0.0) + item.duration
        if end > audio.duration + SEGMENT_TOLERANCE_S:
            found.skip(f"segment ends past its audio's end ({audio.duration:.2f} s)", item.origin)
            continue
        usable.append((item, round(min(item.duration, audio.duration - (item.offset or 0.0)), 4)))
    return usable


def split_rows(rows: list[tuple[Item, float]], fractions: dict[str, float], seed: int) -> dict[str, list]:
    """{"": the rest, name: its held-out rows}; reproducible, and by speaker when every item names one."""
    if not fractions:
        return {"": rows}
    by_speaker = all(item.speaker for item, _ in rows)
    groups: dict[str, list] = {}
    for row in rows:
        groups.setdefault(row[0].speaker if by_speaker else row[0].audio, []).append(row)
    if len(groups) < len(fractions) + 1:
        unit = "speakers" if by_speaker else "audio files"
        raise UserError(f"--split needs at least {len(fractions) + 1} {unit} to set {len(fractions)} aside and keep "
                        f"some for training; the data has {len(groups)}")
    order = sorted(groups, key=lambda key: hashlib.sha256(f"{seed}\0{key}".encode()).hexdigest())
    out: dict[str, list] = {name: [] for name in fractions}
    position = 0
    for name, fraction in fractions.items():
        target = max(1, round(fraction * len(rows)))
        while len(out[name]) < target and position < len(order) - 1:  # the last group always stays in training
            out[name] += groups[order[position]]
            position += 1
    out[""] = [row for key in order[position:] for row in groups[key]]
    rank = {id(row): i for i, row in enumerate(rows)}
    return {name: sorted(part, key=lambda row: rank[id(row)]) for name, part in out.items()}  # source order kept


def manifest_line(item: Item, duration: float, lang: str, pnc: str) -> dict:
    line = {"audio_filepath": item.audio, "duration": duration, "text": item.text, "source_lang": lang,
            "target_lang": lang, "pnc": pnc}
    if item.offset:
        line["offset"] = round(item.offset, 4)
    if item.speaker:
        line["speaker"] = item.speaker
    return line


def write_manifest(path: Path, rows: list[tuple[Item, float]], lang: str, pnc: str) -> Written:
    from common.data.manifest import load_manifest

    text = "".join(json.dumps(manifest_line(item, d, lang, pnc), ensure_ascii=False) + "\n" for item, d in rows)
    write_text(path, text)
    checked = load_manifest(path, max_duration=None)  # the check training runs; raises if anything is off
    return Written(path=path, clips=len(checked.entries), seconds=checked.total_duration,
                   speakers=len({item.speaker for item, _ in rows if item.speaker}))


def build(s: ManifestSettings) -> tuple[list[Written], Found]:
    """Collect, probe, split and write; returns what was written and what was skipped."""
    fractions = check_settings(s)
    found = collect(s)
    rows = with_durations(found)
    if not rows:
        raise UserError(f"no usable clips: {skip_summary(found) or 'the source is empty'}")
    lang, pnc = norm_lang(s.lang), norm_pnc(s.pnc)
    out = Path(s.out).expanduser()
    written = []
    for name, part in split_rows(rows, fractions, s.seed).items():
        written.append(write_manifest(out if not name else out.with_name(f"{name}.jsonl"), part, lang, pnc))
    return written, found


def skip_summary(found: Found) -> str:
    parts = []
    for why, origins in sorted(found.skipped.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(disp(o) for o in origins[:EXAMPLES]) + (", ..." if len(origins) > EXAMPLES else "")
        parts.append(f"{len(origins)} {why} ({shown})")
    return "; ".join(parts)


def print_totals(written: list[Written], found: Found) -> None:
    total = sum(w.clips for w in written)
    seconds = sum(w.seconds for w in written)
    print(f"[manifest] {plural(total, 'clip')}, {seconds / 3600:.2f} h ({fmt_duration(seconds)})", flush=True)
    for w in written:
        who = f", {plural(w.speakers, 'speaker')}" if w.speakers else ""
        print(f"[manifest]   {disp(w.path)}: {plural(w.clips, 'clip')}, {fmt_duration(w.seconds)}{who}", flush=True)
    skipped = sum(len(v) for v in found.skipped.values())
    if skipped:
        print(f"[manifest] skipped {skipped}: {skip_summary(found)}", flush=True)
    else:
        print("[manifest] skipped none", flush=True)
