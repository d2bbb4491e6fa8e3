"""The checks behind the training sources that are not a plain NeMo manifest (`common.data.sources`): Lhotse cut
manifests, Lhotse Shar folders and NeMo tarred datasets, read as metadata with the standard library only, so bad
input fails in seconds, before NeMo or Lhotse is imported.

Every line of metadata is read. Audio kept in files of its own (a cut manifest's recordings) is probed as a JSONL
manifest's is; the members of each NeMo tar file are listed against its manifest. Audio inside tar files is not
decoded here: NeMo's reader skips a corrupt file with a warning when it meets one.
"""
from __future__ import annotations

import gzip
import os
import re
import tarfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from common.data.audio import probe_all
from common.data.fields import decode_line, field_rule, norm_lang, norm_pnc
from common.data.manifest import DEFAULTS, PROMPT_KEYS, parse_rows
from common.messages import as_number, capped, disp, plural, reason, show

TARRED_MANIFEST = "tarred_audio_manifest.json"  # what NeMo's convert_to_tarred_audio_dataset.py writes
SHAR_CUTS = re.compile(r"^cuts\.(\d+)\.jsonl(\.gz)?$")
SHAR_FIELD = re.compile(r"^(\w+)\.(\d+)\.\w+(\.gz)?$")
SHARD_MANIFEST = re.compile(r"manifest[^/]*_(\d+)[^/]*\.json")  # how NeMo's tarred reader tells a manifest's shard
NEMO_SUB = re.compile(r"^(?P<stem>.+)-sub\d+(?P<ext>\.\w+)?$")  # segments of one tarred file: a-sub1.wav, a-sub2.wav


@dataclass
class Tally:
    """What a check found: the usable clips, their seconds and languages, and what was dropped, noted or wrong."""

    clips: int = 0
    seconds: float = 0.0
    languages: set[str] = field(default_factory=set)
    too_long: int = 0
    filled: int = 0  # cuts whose prompt fields came (partly) from their supervision's language or the defaults
    skip_ids: list[str] = field(default_factory=list)  # cuts whose audio is missing, skipped under --skip_bad
    tars: dict[int, Path] = field(default_factory=dict)  # a tarred dataset's tar file per shard id
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, duration: float, languages: tuple[str, str], max_duration: float | None) -> bool:
        """Count one clip; False when it is too long (dropped)."""
        self.languages.update(languages)
        if max_duration is not None and duration > max_duration:
            self.too_long += 1
            return False
        self.clips += 1
        self.seconds += duration
        return True

    def finish(self, max_duration: float | None) -> Tally:
        if self.too_long:
            self.notes.append(f"{plural(self.too_long, 'clip')} longer than {max_duration:g} s dropped; raise "
                              f"--max_duration to keep them")
        if self.filled:
            defaults = "/".join(DEFAULTS[k] for k in PROMPT_KEYS)
            self.notes.append(f"{plural(self.filled, 'cut')} without source_lang/target_lang/pnc in cut.custom: "
                              f"taken from the supervision's language where set, else the defaults {defaults}, as "
                              f"for a JSONL manifest")
        return self


def prompt_fields(custom: Mapping[str, Any], supervision_lang: Any) -> tuple[dict[str, str] | None, str]:
    """source_lang, target_lang and pnc of a cut: its own custom fields, else its supervision's language, else the
    defaults load_manifest fills in (ru, ru, yes). Returns (fields, "" or "filled"), or (None, the problem)."""
    out: dict[str, str] = {}
    filled = ""
    for key in PROMPT_KEYS:
        value = custom.get(key)
        if value is None:
            filled = "filled"
            value = supervision_lang if key != "pnc" and supervision_lang else DEFAULTS[key]
        norm = norm_pnc(value) if key == "pnc" else norm_lang(value)
        if norm is None:
            return None, f"{key} {show(value)} is invalid; {field_rule(key)}"
        out[key] = norm
    return out, filled


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines (1-based numbers) of a JSONL file, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if raw.strip():
                yield n, raw


def first_object(path: Path) -> Any:
    """The first non-blank line of a (gzipped) JSONL file, parsed, or None when it is not JSON."""
    try:
        for n, raw in _raw_lines(path):
            return decode_line(n, raw, [])
    except (OSError, EOFError):
        return None
    return None


def _mono(cut: dict) -> dict:
    """A MixedCut's first real track carries the supervisions and custom fields, as NeMo's prompt formats read."""
    if cut.get("type") != "MixedCut":
        return cut
    for track in cut.get("tracks") or ():
        inner = track.get("cut") if isinstance(track, dict) else None
        if isinstance(inner, dict) and inner.get("type") != "PaddingCut":
            return inner
    return {}


def _check_cut(obj: Any, where: str, tally: Tally, max_duration: float | None) -> dict | None:
    """One cut's metadata; returns it when usable (not too long), appending problems otherwise."""
    if not isinstance(obj, dict) or "duration" not in obj:
        tally.problems.append(f"{where}: not a Lhotse cut (a JSON object with id, duration, supervisions, recording)")
        return None
    duration = as_number(obj.get("duration"))
    if duration is None or duration <= 0:
        tally.problems.append(f"{where}: duration must be a positive number of seconds, got {show(obj.get('duration'))}")
        return None
    cut = _mono(obj)
    sups = [s for s in cut.get("supervisions") or () if isinstance(s, dict)]
    text = " ".join(s["text"] for s in sups if isinstance(s.get("text"), str)).strip()
    if not text:
        tally.problems.append(f"{where}: no transcript (supervisions[].text) in cut {show(obj.get('id'))}")
        return None
    fields, note = prompt_fields(cut.get("custom") or {}, sups[0].get("language"))
    if fields is None:
        tally.problems.append(f"{where}: {note}")
        return None
    tally.filled += bool(note)
    return obj if tally.count(duration, (fields["source_lang"], fields["target_lang"]), max_duration) else None


def _file_sources(cut: dict, base: Path) -> list[str]:
    """A cut's audio files, relative paths taken as NeMo takes them: as given if that exists, else from `base`."""
    out = []
    for c in [cut] + [t.get("cut") or {} for t in cut.get("tracks") or () if isinstance(t, dict)]:
        for source in (c.get("recording") or {}).get("sources") or ():
            if isinstance(source, dict) and source.get("type") == "file" and isinstance(source.get("source"), str):
                p = os.path.expanduser(source["source"])
                out.append(p if os.path.isabs(p) or os.path.exists(p) else os.path.normpath(base / p))
    return out


def check_cut_manifest(path: Path, *, max_duration: float | None, skip_bad: bool) -> Tally:
    """A Lhotse cut manifest: every cut's fields, and its audio files probed (missing ones skipped under --skip_bad)."""
    tally = Tally()
    files: dict[str, list[tuple[str, str, float]]] = defaultdict(list)  # audio path -> (where, cut id, seconds)
    for n, raw in _raw_lines(path):
        cut = _check_cut(decode_line(n, raw, tally.problems), f"line {n}", tally, max_duration)
        for p in _file_sources(cut or {}, path.parent):
            files[p].append((f"line {n}", str(cut.get("id")), float(cut["duration"])))
    probes = probe_all(list(files))
    bad = [(where, p, probe) for p, uses in files.items() if isinstance(probe := probes[p], str) for where, _, _ in uses]
    if bad and not skip_bad:
        tally.problems += [f"{where}: {disp(p)} ({probe})" for where, p, probe in bad]
        tally.problems.append("fix the paths (relative ones are read from the manifest's folder), or pass "
                              "--skip_bad to skip these cuts and train on the rest")
    elif bad:
        skipped = {cut_id: seconds for p, uses in files.items() if isinstance(probes[p], str)
                   for _, cut_id, seconds in uses}
        tally.skip_ids = sorted(skipped)
        tally.clips -= len(skipped)
        tally.seconds -= sum(skipped.values())
        tally.notes.append(f"{plural(len(skipped), 'cut')} skipped under --skip_bad for missing or unreadable audio, "
                           f"e.g. {bad[0][0]}: {disp(bad[0][1])} ({bad[0][2]})")
    return tally.finish(max_duration)


def check_shar(folder: Path, *, max_duration: float | None) -> Tally:
    """A Lhotse Shar folder: cuts shards and a recording shard for each, every cut's fields."""
    tally = Tally()
    names = sorted(p.name for p in folder.iterdir())
    shards = [n for n in names if SHAR_CUTS.match(n)]
    fields: dict[str, int] = defaultdict(int)
    for n in names:
        if (m := SHAR_FIELD.match(n)) and not SHAR_CUTS.match(n):
            fields[m.group(1)] += 1
    if "recording" not in fields:
        tally.problems.append(f"no recording.000000.tar (audio) shards beside the {plural(len(shards), 'cuts shard')}: "
                              f"write the Shar with the audio, e.g. cuts.to_shar(dir, fields={{'recording': 'flac'}})")
    for name, k in sorted(fields.items()):
        if k != len(shards):
            tally.problems.append(f"field {name!r} has {plural(k, 'shard')} but there are "
                                  f"{plural(len(shards), 'cuts shard')}: the folder is incomplete")
    for shard in shards:
        for n, raw in _raw_lines(folder / shard):
            _check_cut(decode_line(n, raw, tally.problems), f"{shard} line {n}", tally, max_duration)
    return tally.finish(max_duration)


def _shard_of(path: Path) -> int | None:
    m = SHARD_MANIFEST.search(path.name)
    return int(m.group(1)) if m else None


def tarred_layout(path: Path) -> tuple[list[Path], Path]:
    """(manifests, folder of the tar files) of a NeMo tarred dataset named by its folder or by a manifest (one in
    `sharded_manifests/` has its tars one folder up). A folder is read through its sharded manifests when it has
    them: NeMo then holds one shard's lines in memory at a time, not the whole manifest's."""
    if path.is_dir():
        sharded = [p for p in (path / "sharded_manifests").glob("manifest_*.json") if _shard_of(p) is not None]
        return sorted(sharded, key=_shard_of) or [path / TARRED_MANIFEST], path
    return [path], path.parent.parent if path.parent.name == "sharded_manifests" else path.parent


def _tar_members(path: Path) -> set[str] | str:
    try:
        with tarfile.open(path, "r:*") as tar:
            return {m.name for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as e:
        return f"unreadable ({reason(e)})"


def check_tarred(manifests: list[Path], tars: Mapping[int, Path] | Path, *, max_duration: float | None,
                 skip_bad: bool) -> Tally:
    """A NeMo tarred dataset: every manifest line's fields (with shard_id and duration), and each line's audio
    among the members of its shard's tar file (`tars`: shard id -> tar path, or the folder of audio_<id>.tar)."""
    tally = Tally()
    folder = tars if isinstance(tars, Path) else None
    by_shard: dict[int, list[tuple[str, str, float, tuple[str, str]]]] = defaultdict(list)
    for manifest in manifests:
        own = _shard_of(manifest) if len(manifests) > 1 else None  # one manifest per shard: its name says which
        if len(manifests) > 1 and own is None:
            tally.problems.append(f"{disp(manifest)}: cannot tell its shard; NeMo reads it from names like "
                                  f"manifest_0.json")
        elif own is not None:
            by_shard.setdefault(own, [])
        for row in parse_rows(manifest):
            where = f"{manifest.name} line {row.line}"
            sid = row.extra.get("shard_id")
            if isinstance(sid, bool) or not isinstance(sid, int) or sid < 0:
                tally.problems.append(f"{where}: shard_id must be a whole number >= 0, got {show(sid)}")
            elif own is not None and sid != own:
                tally.problems.append(f"{where}: shard_id {sid} in the manifest of shard {own}")
            elif row.duration is None:
                tally.problems.append(f"{where}: no duration (a tarred manifest needs one on every line)")
            else:
                # the parse resolved the path against the manifest's folder; inside a tar it is the member's name
                name = os.path.relpath(row.audio_filepath, manifest.parent).replace(os.sep, "/")
                if m := NEMO_SUB.match(name):
                    name = m.group("stem") + (m.group("ext") or "")
                by_shard[sid].append((where, name, row.duration, (row.source_lang, row.target_lang)))
    tars = {sid: folder / f"audio_{sid}.tar" if folder else tars.get(sid) for sid in by_shard}
    tally.tars = {sid: path for sid, path in sorted(tars.items()) if path is not None}
    missing_tars = sorted(sid for sid in by_shard if not tars.get(sid) or not tars[sid].is_file())
    for sid in missing_tars:
        tally.problems.append(f"shard {sid}: {disp(tars.get(sid) or f'audio_{sid}.tar')} not found")
    listed = sorted(set(by_shard) - set(missing_tars))
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(listed)))) as pool:
        members = dict(zip(listed, pool.map(lambda sid: _tar_members(tars[sid]), listed)))
    not_in_tar, extra = [], 0
    for sid, rows in sorted(by_shard.items()):
        got = members.get(sid)
        if isinstance(got, str):
            tally.problems.append(f"shard {sid}: {disp(tars[sid])} is {got}")
            continue
        if got is None:
            continue
        extra += len(got - {name for _, name, _, _ in rows})
        for where, name, duration, langs in rows:
            if name in got:
                tally.count(duration, langs, max_duration)
            else:
                not_in_tar.append(f"{where}: {disp(name)} is not in {tars[sid].name}")
    if not_in_tar and not skip_bad:
        tally.problems += capped(not_in_tar) + ["fix the manifest or the tar files, or pass --skip_bad to train on "
                                                "the lines whose audio is there"]
    elif not_in_tar:
        tally.notes.append(f"{plural(len(not_in_tar), 'line')} skipped under --skip_bad: no audio in the tar "
                           f"(e.g. {not_in_tar[0]})")
    if extra:
        tally.notes.append(f"{plural(extra, 'file')} in the tar files have no manifest line (a filtered manifest): "
                           f"skipped")
    return tally.finish(max_duration)
