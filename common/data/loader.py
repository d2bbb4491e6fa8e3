"""Cuts -> batches for the model: samplers that resume mid-epoch, pinned batches, and one helper that takes a
manifest all the way to a DataLoader (training, evaluation, verification, parity and the bench all use it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


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
        import time

        it = iter(self.inner)
        t0 = time.monotonic()
        for _ in range(self.skip):
            if next(it, None) is None:
                break
        if self.skip:
            print(f"[resume] the training data is back where it stopped: {self.skip} batches drawn again and "
                  f"skipped in {time.monotonic() - t0:.1f} s", flush=True)
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
    # most cuts the sampler's shuffle and bucketing buffers hold (None: Lhotse's 20000 and 10000); an endless mixed
    # stream caps them at its number of distinct cuts, since a buffer that holds every cut twice shuffles no better
    buffer_cuts: int | None = None
    sort_by_duration: bool = False  # evaluation: longest clips first, so each batch pads little


def make_loader(cuts_path: Path, tokenizer, prompt, settings: LoaderSettings, *, train: bool):
    """A DataLoader over the batches of a cut manifest, read lazily."""
    from lhotse import CutSet

    cuts = CutSet.from_jsonl_lazy(cuts_path)
    if settings.sort_by_duration and not train:  # evaluation: the whole set is read to sort it
        cuts = cuts.to_eager().sort_by_duration(ascending=False)
    return cuts_loader(cuts, tokenizer, prompt, settings, train=train)


def cuts_loader(cuts, tokenizer, prompt, settings: LoaderSettings, *, train: bool):
    """A DataLoader over cut batches: shuffled (and optionally bucketed) for training, in order for eval. The
    sampler runs in the main process and hands each batch's cuts to the workers, which load the audio."""
    import torch
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
    from nemo.collections.asr.data.audio_to_text_lhotse_prompted import PromptedAudioToTextLhotseDataset

    common = dict(world_size=settings.world_size, rank=settings.rank, seed=settings.seed)
    cap = settings.buffer_cuts or 10**9
    if train and settings.batch_duration:
        sampler = DynamicBucketingSampler(cuts, max_duration=settings.batch_duration,
                                          num_buckets=settings.num_buckets, shuffle=True, drop_last=settings.drop_last,
                                          buffer_size=min(10000, cap), num_cuts_for_bins_estimate=min(10000, cap),
                                          **common)
    else:
        sampler = DynamicCutSampler(cuts, max_cuts=settings.batch_size, shuffle=train,
                                    drop_last=train and settings.drop_last, shuffle_buffer_size=min(20000, cap),
                                    **common)
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

    return float(sum(c.duration for c in CutSet.from_jsonl_lazy(cuts_path)))



@dataclass(frozen=True)
class ManifestData:
    """A manifest taken all the way to batches: the loader, the cut cache it reads and whether it was built now."""

    loader: object  # torch.utils.data.DataLoader
    cuts_path: Path
    built: bool
    clips: int


def manifest_loader(manifest, model, settings: LoaderSettings = LoaderSettings(), *, data_dir: str | Path,
                    train: bool = False, limit: int | None = None) -> ManifestData:
    """The one way from a manifest to a DataLoader for `model`, used by training, evaluation, verification, parity
    and the bench.

    `manifest` is a path (checked here, clips of any length kept) or the report `load_manifest` returned. The cuts
    are cached under `data_dir` and batched with the model's own tokenizer and prompt format; `limit` keeps the
    first N clips.
    """
    import dataclasses

    from common.data.cuts import build_cuts
    from common.data.entries import ManifestReport
    from common.data.manifest import load_manifest

    report = manifest if isinstance(manifest, ManifestReport) else load_manifest(manifest, max_duration=None)
    if limit:
        report = dataclasses.replace(report, entries=report.entries[:limit])
    cuts_path, built = build_cuts(report, Path(data_dir), model.prompt_format)
    loader = make_loader(cuts_path, model.tokenizer, model.prompt, settings, train=train)
    return ManifestData(loader=loader, cuts_path=cuts_path, built=built, clips=len(report.entries))
