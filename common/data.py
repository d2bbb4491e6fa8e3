"""Manifests -> Lhotse CutSets (cached on disk by content) -> batches for the model.

A validated manifest (see `common.manifest`) is turned into a CutSet once and written to
`<data_dir>/<manifest stem>-<key>.jsonl.gz`, where the key hashes the manifest's bytes and the settings
that shape the cuts. Later runs reuse it while the manifest is unchanged; editing the manifest makes a new
key and so a rebuild. Prompt fields (source_lang, target_lang, pnc, ...) go into `cut.custom`, the text
and language into the supervision: what NeMo's canary/canary2 prompt formatters read.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from common.atomic import atomic_path
from common.manifest import ManifestReport

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
    if rec.num_channels > 1:
        cut = cut.to_mono(mono_downmix=True)  # stereo -> mono by averaging channels
    if rec.sampling_rate != SAMPLE_RATE:
        cut = cut.resample(SAMPLE_RATE)
    custom = {"source_lang": entry.source_lang, "target_lang": entry.target_lang, "pnc": entry.pnc}
    for key, value in entry.extra.items():
        if key not in ("audio_filepath", "duration", "text", "offset", "lang") and value is not None:
            custom[key] = value
    if prompt_format == "canary":
        # canary-1b's format needs a task on every example; the manifest may say `taskname` or `task`.
        custom.setdefault("task", custom.pop("taskname", None) or "asr")
    cut.custom = custom
    cut.supervisions = [SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0,
                                           duration=cut.duration, channel=0, text=entry.text,
                                           language=entry.target_lang)]
    return cut


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


class ResumableSampler:
    """A Lhotse sampler that can skip the batches a resumed run already consumed in the current epoch.

    Lightning fetches one batch ahead and workers prefetch more, so the inner sampler's own position runs
    ahead of training. The number of batches the optimizer really saw is exact, and a sampler with the same
    seed and epoch yields the same batches, so resume re-draws and discards that many (cuts only, no audio).
    """

    def __init__(self, inner):
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        it = iter(self.inner)
        for _ in range(self.skip):
            next(it, None)
        self.skip = 0
        return it

    def state_dict(self) -> dict:
        return self.inner.state_dict()


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int = 2
    batch_duration: float | None = None  # seconds of audio per batch; enables duration bucketing
    num_buckets: int = 10
    num_workers: int = 0
    seed: int = 42
    world_size: int = 1
    rank: int = 0


def make_loader(cuts_path: Path, tokenizer, prompt, settings: LoaderSettings, *, train: bool):
    """A DataLoader over cut batches: shuffled (and optionally bucketed) for training, in order for eval."""
    import torch
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
    from nemo.collections.asr.data.audio_to_text_lhotse_prompted import PromptedAudioToTextLhotseDataset

    cuts = CutSet.from_file(cuts_path).to_eager()
    common = dict(world_size=settings.world_size, rank=settings.rank, seed=settings.seed)
    if train and settings.batch_duration:
        sampler = DynamicBucketingSampler(cuts, max_duration=settings.batch_duration,
                                          num_buckets=settings.num_buckets, shuffle=True, drop_last=False,
                                          **common)
    else:
        sampler = DynamicCutSampler(cuts, max_cuts=settings.batch_size, shuffle=train, drop_last=False, **common)
    sampler = ResumableSampler(sampler)
    dataset = PromptedAudioToTextLhotseDataset(tokenizer=tokenizer, prompt=prompt)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None,
                                       num_workers=settings.num_workers,
                                       persistent_workers=settings.num_workers > 0)


def total_duration(cuts_path: Path) -> float:
    from lhotse import CutSet

    return float(sum(c.duration for c in CutSet.from_file(cuts_path)))
