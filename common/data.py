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
    custom = {"source_lang": entry.source_lang, "target_lang": entry.target_lang, "pnc": entry.pnc}
    for key, value in entry.extra.items():
        if key not in ("audio_filepath", "duration", "text", "offset", "lang") and value is not None:
            custom[key] = value
    if prompt_format == "canary":
        # canary-1b's format needs a task on every example; the manifest may say `taskname` or `task`.
        custom.setdefault("task", custom.pop("taskname", None) or "asr")
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


class ResumableSampler:
    """A Lhotse sampler that can skip the batches a resumed run already consumed in the epoch it stopped in.

    Lightning fetches one batch ahead and workers prefetch more, so the inner sampler's own position runs
    ahead of training. The number of batches the optimizer really saw is exact, and a sampler with the same
    seed and epoch yields the same batches, so resume re-draws and discards that many (cuts only, no audio).

    The skip belongs to one epoch, not to one `iter()`: Lightning may create the loader's iterator more than
    once before the first batch, and every iterator of that epoch must start at the same place.
    """

    def __init__(self, inner):
        self.inner = inner
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already consumed in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(self.epoch)

    def resume_at(self, epoch: int, batches: int) -> None:
        """Start at `epoch`, skipping its first `batches` batches (every later epoch starts at its beginning)."""
        self._resume = (int(epoch), max(0, int(batches)))
        self.set_epoch(epoch)

    @property
    def skip(self) -> int:
        """Batches the next iterator of the current epoch skips."""
        return self._resume[1] if self._resume and self._resume[0] == self.epoch else 0

    def __iter__(self) -> Iterator:
        it = iter(self.inner)
        for _ in range(self.skip):
            if next(it, None) is None:
                break
        return it

    def state_dict(self) -> dict:
        return self.inner.state_dict()


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl+C reaches the whole process group: workers leave it to the main process, which stops cleanly. A worker
    # forked while the main process's handler was installed would otherwise run that handler too (a second
    # message, or an exception inside the worker during a validation pass).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Pinnable:
    """One batch, as the DataLoader's pin-memory step can pin it (NeMo's batch dataclass has no pin_memory()).

    From pageable memory, the host-to-device copy of a bs 32 x 15 s batch took 5.1 ms of GPU time in each 166 ms
    step (torch.profiler, H100), with the stream waiting on it; from pinned memory it is a fast asynchronous copy.
    """

    __slots__ = ("batch",)

    def __init__(self, batch):
        self.batch = batch

    def pin_memory(self, device=None):
        import dataclasses

        import torch

        b = self.batch
        return dataclasses.replace(b, **{f.name: getattr(b, f.name).pin_memory() for f in dataclasses.fields(b)
                                         if isinstance(getattr(b, f.name), torch.Tensor)})


class _PinnableBatches:
    """The dataset, its batches wrapped for pinning (the DataLoader unwraps them: `_Pinnable.pin_memory`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, cuts):
        return _Pinnable(self.dataset[cuts])


@dataclass(frozen=True)
class LoaderSettings:
    batch_size: int = 2
    batch_duration: float | None = None  # seconds of audio per batch; enables duration bucketing
    num_buckets: int = 10
    num_workers: int = 0
    seed: int = 42
    world_size: int = 1
    rank: int = 0
    drop_last: bool = False  # drop a short last batch (benchmarks: a new shape would recompile a compiled model)
    pin_memory: bool = False  # batches in pinned host memory, for fast asynchronous copies to a CUDA device


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
                                          num_buckets=settings.num_buckets, shuffle=True, drop_last=settings.drop_last,
                                          **common)
    else:
        sampler = DynamicCutSampler(cuts, max_cuts=settings.batch_size, shuffle=train,
                                    drop_last=train and settings.drop_last, **common)
    sampler = ResumableSampler(sampler)
    dataset = PromptedAudioToTextLhotseDataset(tokenizer=tokenizer, prompt=prompt)
    # A private generator: creating an iterator draws a seed from it, and drawing from the global RNG instead
    # would make validation passes and epoch starts shift the training RNG (dropout, SpecAugment), so a resumed
    # run could not repeat the straight run exactly.
    generator = torch.Generator().manual_seed(settings.seed)
    pin = settings.pin_memory and torch.cuda.is_available()  # without CUDA the DataLoader would skip the unwrap
    return torch.utils.data.DataLoader(_PinnableBatches(dataset) if pin else dataset, sampler=sampler,
                                       batch_size=None, pin_memory=pin, num_workers=settings.num_workers,
                                       persistent_workers=settings.num_workers > 0, generator=generator,
                                       worker_init_fn=_ignore_sigint if settings.num_workers > 0 else None)


def total_duration(cuts_path: Path) -> float:
    from lhotse import CutSet

    return float(sum(c.duration for c in CutSet.from_file(cuts_path)))
