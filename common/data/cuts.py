"""Manifests -> Lhotse CutSets, cached on disk by content.

A validated manifest (see `common.data.manifest`) is turned into a CutSet once and written to
`<data_dir>/<manifest stem>-<key>.jsonl.gz`, where the key hashes the manifest's bytes and the settings
that shape the cuts. Later runs reuse it while the manifest is unchanged; editing the manifest makes a new
key and so a rebuild. Prompt fields (source_lang, target_lang, pnc, ...) go into `cut.custom`, the text
and language into the supervision: what NeMo's canary/canary2 prompt formatters read.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.atomic import atomic_path
from common.data.entries import ManifestReport

SAMPLE_RATE = 16000
_CACHE_FORMAT = 1  # bump when the cut layout changes so old caches are not reused


def cache_key(report: ManifestReport, prompt_format: str) -> str:
    h = hashlib.sha256()
    h.update(Path(report.path).read_bytes())
    # what the cuts depend on besides the manifest bytes: which lines survived validation and the format
    h.update(json.dumps({"format": _CACHE_FORMAT, "prompt": prompt_format,
                         "lines": [e.line for e in report.entries]}).encode())
    return h.hexdigest()[:16]


def _cut_for(entry, idx_prefix: str, prompt_format: str):
    from lhotse import Recording, SupervisionSegment

    rec = Recording.from_file(entry.audio_filepath, recording_id=f"{idx_prefix}-{entry.line:07d}")
    cut = rec.to_cut()
    offset = entry.extra.get("offset")
    if offset:  # a segment of a longer recording
        cut = cut.truncate(offset=float(offset), duration=entry.duration)
    custom = {"source_lang": entry.source_lang, "target_lang": entry.target_lang, "pnc": entry.pnc}
    for key, value in entry.extra.items():
        if key not in ("audio_filepath", "duration", "text", "offset", "lang") and value is not None:
            custom[key] = value
    fill_task(custom, prompt_format)
    supervision = SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0, duration=cut.duration,
                                     channel=0, text=entry.text, language=entry.target_lang)
    if rec.num_channels > 1:
        cut = _downmix(cut, custom, supervision)
    else:
        cut.custom = custom
        cut.supervisions = [supervision]
    if rec.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)  # lazy: the cache stores the instruction, audio is resampled on load
    return cut


def fill_task(custom: dict, prompt_format: str) -> None:
    if prompt_format == "canary":
        # canary-1b's format needs a task on every example; the manifest may say `taskname` or `task`.
        custom.setdefault("task", custom.pop("taskname", None) or "asr")


def _downmix(cut, custom: dict, supervision):
    """Multi-channel -> mono as the mean of the channels, lazily: a mix of each channel at 1/n volume.

    Lhotse's `to_mono(mono_downmix=True)` decodes the audio into memory, which a cut cache cannot store. A
    MixedCut takes its supervisions and `custom` fields from its first track.
    """
    from lhotse.cut import MixedCut, MixTrack

    channels = list(cut.channel)
    tracks = []
    for i, channel in enumerate(channels):
        track = cut.with_channels(channel).perturb_volume(1.0 / len(channels), affix_id=False)
        if i == 0:
            track.custom = custom
            track.supervisions = [supervision]
        tracks.append(MixTrack(cut=track))
    return MixedCut(id=cut.id, tracks=tracks)


def build_cuts(report: ManifestReport, data_dir: Path, prompt_format: str) -> tuple[Path, bool]:
    """Return the cached CutSet path for a manifest and whether it was (re)built now."""
    from lhotse import CutSet

    key = cache_key(report, prompt_format)
    stem = Path(report.path).name.removesuffix(".jsonl").removesuffix(".json")
    out = Path(data_dir) / f"{stem}-{key}.jsonl.gz"
    if out.exists():
        return out, False
    cuts = CutSet.from_cuts(_cut_for(e, stem, prompt_format) for e in report.entries)
    with atomic_path(out, suffix=".jsonl.gz") as tmp:
        cuts.to_file(tmp)
    return out, True

