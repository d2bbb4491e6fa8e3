"""Where a corpus comes from, before it is a manifest: a folder of recordings with `<stem>.txt` transcripts beside
them, a Common Voice-style TSV, or Lhotse manifests (cuts, or recordings + supervisions as Lhotse's recipes write
them). Each reader returns `Item`s (one per utterance, audio not yet probed) and what it skipped, with the reason.

Only the standard library is imported here (Lhotse lazily, for its own manifests): no torch, no NeMo.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.messages import disp, reason

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
# column names people use, first match wins (Common Voice: path, sentence, client_id)
PATH_COLUMNS = ("path", "audio_filepath", "audio", "file", "filename", "wav")
TEXT_COLUMNS = ("sentence", "text", "transcript", "transcription", "normalized_text")
SPEAKER_COLUMNS = ("client_id", "speaker", "speaker_id", "spk")


@dataclass(frozen=True)
class Item:
    """One utterance: its audio file, transcript and, where the source says, speaker and segment."""

    audio: str  # absolute path
    text: str
    origin: str  # where it came from, for messages: a relative path or "file.tsv line 12"
    speaker: str | None = None
    offset: float | None = None  # a segment of a longer recording (Lhotse)
    duration: float | None = None  # the segment's length; None: the whole file


@dataclass
class Found:
    items: list[Item] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> the origins it applies to

    def skip(self, why: str, origin: str) -> None:
        self.skipped.setdefault(why, []).append(origin)


def clean_text(text: str) -> str:
    """A transcript on one line: a BOM dropped, line breaks and runs of spaces collapsed."""
    return " ".join(text.lstrip("\ufeff").split())


# ---- a folder of recordings ------------------------------------------------------------------------------------
def from_audio_dir(root: str | os.PathLike) -> Found:
    """Every audio file under `root` (recursively, sorted), its transcript read from `<stem>.txt` beside it."""
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"--audio_dir {disp(base)} is not a folder; pass the folder that holds your recordings "
                        f"(wav/flac/mp3/ogg, each with a <name>.txt transcript beside it)")
    found = Found()
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"--audio_dir {disp(base)} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}), "
                        f"subfolders included")
    for audio in files:
        origin = audio.relative_to(base).as_posix()
        sidecar = audio.with_suffix(".txt")
        if not sidecar.is_file():
            found.skip(f"no transcript ({audio.stem}.txt beside the audio)", origin)
            continue
        try:
            text = clean_text(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            found.skip(f"transcript not readable as UTF-8 text ({reason(e)})", origin)
            continue
        if not text:
            found.skip("empty transcript", origin)
            continue
        found.items.append(Item(audio=str(audio.resolve()), text=text, origin=origin))
    return found


# ---- a TSV (Common Voice's validated.tsv and the like) --------------------------------------------------------
def _column(header: list[str], given: str | None, candidates: tuple[str, ...], flag: str, what: str,
            required: bool = True) -> str | None:
    if given:
        if given not in header:
            raise UserError(f"{flag} {given!r} is not a column of the TSV; its columns: {', '.join(header)}")
        return given
    hit = next((c for c in candidates if c in header), None)
    if hit is None and required:
        raise UserError(f"the TSV has no {what} column (looked for {', '.join(candidates)}); its columns: "
                        f"{', '.join(header)}. Name it with {flag}")
    return hit


def from_tsv(path: str | os.PathLike, audio_root: str | os.PathLike | None = None, *, path_column: str | None = None,
             text_column: str | None = None, speaker_column: str | None = None) -> Found:
    """Rows of a tab-separated file with a header: audio path, transcript and (if present) speaker columns.

    Relative audio paths are taken from `audio_root`; without it, from `<tsv folder>/clips` when that folder exists
    (Common Voice's layout), else from the TSV's own folder. Quotes are not special: Common Voice sentences hold
    quotation marks that a CSV reader would take for field quoting.
    """
    tsv = Path(path).expanduser()
    if not tsv.is_file():
        raise UserError(f"--tsv {disp(tsv)} not found; pass the TSV file (e.g. Common Voice's validated.tsv)")
    if audio_root is not None:
        root = Path(audio_root).expanduser()
        if not root.is_dir():
            raise UserError(f"--audio_root {disp(root)} is not a folder; pass the folder the TSV's paths are relative "
                            f"to (for Common Voice: the clips folder)")
    else:
        root = tsv.parent / "clips" if (tsv.parent / "clips").is_dir() else tsv.parent
    with open(tsv, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if not header:
            raise UserError(f"--tsv {disp(tsv)} is empty; it needs a header line and one row per clip")
        cols = {"path": _column(header, path_column, PATH_COLUMNS, "--path_column", "audio path"),
                "text": _column(header, text_column, TEXT_COLUMNS, "--text_column", "transcript"),
                "speaker": _column(header, speaker_column, SPEAKER_COLUMNS, "--speaker_column", "speaker",
                                   required=False)}
        index = {k: header.index(v) for k, v in cols.items() if v is not None}
        found = Found()
        for n, row in enumerate(rows, start=2):
            origin = f"{tsv.name} line {n}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(index.values()):
                found.skip(f"fewer columns than the header's {len(header)}", origin)
                continue
            rel, text = row[index["path"]].strip(), clean_text(row[index["text"]])
            if not rel:
                found.skip("empty audio path", origin)
                continue
            if not text:
                found.skip("empty transcript", origin)
                continue
            audio = Path(os.path.expanduser(rel))
            audio = audio if audio.is_absolute() else root / audio
            speaker = row[index["speaker"]].strip() or None if "speaker" in index else None
            found.items.append(Item(audio=os.path.normpath(os.path.abspath(audio)), text=text, origin=origin,
                                    speaker=speaker))
    return found


# ---- Lhotse manifests ---------------------------------------------------------------------------------------------
def from_lhotse(paths: list[str] | tuple[str, ...]) -> Found:
    """One item per supervision of Lhotse manifests: CutSets, or a RecordingSet with its SupervisionSet (what
    `lhotse prepare <corpus>` writes). Read lazily; recordings must be plain audio files."""
    from lhotse import CutSet, RecordingSet, SupervisionSet, load_manifest_lazy

    loaded: dict[str, list] = {"cuts": [], "recordings": [], "supervisions": []}
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise UserError(f"--cuts {disp(path)} not found; pass Lhotse manifests (*.jsonl.gz)")
        try:
            manifest = load_manifest_lazy(path)
        except Exception as e:  # Lhotse names the manifest types it knows; say which file it could not read
            raise UserError(f"--cuts {disp(path)} is not a Lhotse manifest Lhotse can read ({reason(e)})") from None
        kind = ("cuts" if isinstance(manifest, CutSet) else "recordings" if isinstance(manifest, RecordingSet)
                else "supervisions" if isinstance(manifest, SupervisionSet) else None)
        if kind is None:
            raise UserError(f"--cuts {disp(path)} is a {type(manifest).__name__}; pass CutSets, or recordings "
                            f"with their supervisions")
        loaded[kind].append(manifest)
    if bool(loaded["recordings"]) != bool(loaded["supervisions"]):
        have, lack = ("recordings", "supervisions") if loaded["recordings"] else ("supervisions", "recordings")
        raise UserError(f"--cuts got {have} manifests without their {lack}; pass both files that `lhotse prepare` "
                        f"wrote (e.g. golos_recordings_test.jsonl.gz and golos_supervisions_test.jsonl.gz)")
    cutsets = list(loaded["cuts"])
    if loaded["recordings"]:
        recordings = RecordingSet.from_recordings(r for rs in loaded["recordings"] for r in rs)
        supervisions = SupervisionSet.from_segments(s for ss in loaded["supervisions"] for s in ss)
        cutsets.append(CutSet.from_manifests(recordings=recordings, supervisions=supervisions))
    found = Found()
    for cuts in cutsets:
        for cut in cuts:
            _items_of_cut(cut, found)
    return found


def _items_of_cut(cut, found: Found) -> None:
    origin = f"cut {cut.id}"
    recording = getattr(cut, "recording", None)
    sources = getattr(recording, "sources", None) or []
    if len(sources) != 1 or sources[0].type != "file":
        found.skip("not a single audio file (in-memory, URL, Shar or multi-source recording)", origin)
        return
    audio = os.path.normpath(os.path.abspath(os.path.expanduser(sources[0].source)))
    if not cut.supervisions:
        found.skip("no supervision (no transcript)", origin)
        return
    for sup in cut.supervisions:
        text = clean_text(sup.text or "")
        if not text:
            found.skip("empty transcript", f"{origin} ({sup.id})")
            continue
        start = max(0.0, float(cut.start) + float(sup.start))
        duration = min(float(sup.duration), float(cut.start) + float(cut.duration) - start)
        found.items.append(Item(audio=audio, text=text, origin=f"{origin} ({sup.id})", speaker=sup.speaker,
                                offset=start or None, duration=round(duration, 6)))
