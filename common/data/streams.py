"""Checked training sources (`common.data.sources`) -> one lazy stream of cuts -> a training DataLoader.

Each source is read by Lhotse's or NeMo's own reader: a plain manifest's cut cache with `CutSet.from_jsonl_lazy`,
a cut manifest the same way (relative paths resolved as NeMo does), a tarred dataset with NeMo's
`LazyNeMoTarredIterator`, a Shar folder and an input_cfg YAML with NeMo's `read_cutset_from_config`. Cuts that
did not come from a checked plain manifest get their prompt fields here, by the rule their check applied
(`source_checks.prompt_fields`), their supervision's language set to target_lang, clips over --max_duration
dropped, and 16 kHz audio. Several sources are repeated without end and sampled by weight with NeMo's `mux`
(`CutSet.mux` over repeated sources: the semantics of NeMo's input_cfg).

Every cut is tagged with its source's index (`SOURCE_KEY` in `cut.custom`), so training can count what each source
contributed.

Determinism and resume. The stream is built anew for every pass over it (`_Rebuilt`): NeMo's tarred reader and
Lhotse's Shar reader count their own passes (pass k shuffles its shards with seed + k), so an iterator that is
dropped early (Lightning may start one and discard it; the bucketing sampler reads the first cuts to place its
bins) would otherwise shift every later pass. Built anew, the n-th cut is the same in every process with the same
seed, and `ResumableSampler` resumes exactly by drawing and discarding the batches already trained on. For a plain
or cut manifest that reads cut metadata only; for tarred and Shar sources it reads their tar files up to that
point again (sequential reads, no decoding), once per resume.

With DDP every rank builds the same stream and keeps every world_size-th batch (Lhotse's samplers): tarred and
Shar files are then read by every rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from common.data.cuts import SAMPLE_RATE
from common.data.source_checks import prompt_fields
from common.data.sources import Source, TrainingData

SOURCE_KEY = "mix_source"


class _Rebuilt:
    """An iterable whose every pass builds its stream anew (see the module's note on determinism)."""

    def __init__(self, build: Callable):
        self.build = build

    def __iter__(self):
        return iter(self.build())


def _mono(cut):
    from lhotse.cut import MixedCut

    return cut._first_non_padding_cut if isinstance(cut, MixedCut) else cut


def fill_prompt(cut, *, prompt_format: str):
    """The prompt fields a checked JSONL line would have had, in `cut.custom`; the answer's language in the
    supervision (an aggregate tokenizer picks its sub-tokenizer by it); 16 kHz audio."""
    from common.data.cuts import fill_task

    inner = _mono(cut)
    custom = dict(inner.custom or {})
    sups = inner.supervisions
    fields, problem = prompt_fields(custom, sups[0].language if sups else None)
    if fields is None:  # the check refused such cuts already
        raise ValueError(f"cut {cut.id}: {problem}")
    custom.update(fields)
    fill_task(custom, prompt_format)
    inner.custom = custom
    for s in sups:
        s.language = fields["target_lang"]
    return cut if cut.sampling_rate == SAMPLE_RATE else cut.resample(SAMPLE_RATE)


def _usable(cut, *, max_duration: float | None, skip: frozenset[str]) -> bool:
    return (max_duration is None or cut.duration <= max_duration) and cut.id not in skip


def tag(cut, *, index: int):
    inner = _mono(cut)
    inner.custom = {**(inner.custom or {}), SOURCE_KEY: index}
    return cut


def source_of(cut) -> tuple[int, float]:
    """(index of the source a cut came from, its seconds of audio), also for a cut the dataset padded to its
    batch's longest (a MixedCut whose first track is the cut itself)."""
    inner = _mono(cut)
    return int((inner.custom or {}).get(SOURCE_KEY, 0)), float(inner.duration)


def _read(source: Source, seed: int):
    """The source's cuts as its own format's reader yields them: once through, an input_cfg without end."""
    from lhotse import CutSet
    from nemo.collections.common.data.lhotse.cutset import read_cutset_from_config, resolve_relative_paths
    from nemo.collections.common.data.lhotse.nemo_adapters import LazyNeMoTarredIterator

    if source.kind == "cuts":
        return CutSet.from_jsonl_lazy(source.path).map(partial(resolve_relative_paths, manifest_path=str(source.path)))
    if source.kind == "nemo_tarred":
        # lists, not NeMo's brace strings: a path's own brackets or parentheses stay as they are
        return CutSet(LazyNeMoTarredIterator(manifest_path=source.reader["manifest"], tar_paths=source.reader["tars"],
                                             shuffle_shards=True, shard_seed=seed,
                                             skip_missing_manifest_entries=True))
    if source.kind == "shar":
        config = {"shar_path": str(source.path), "shard_seed": seed, "force_finite": True}
        return read_cutset_from_config(config)[0]
    # input_cfg: NeMo mixes its items by their weights, without end (a single item is repeated here to match);
    # tarred and other items may mix, since batches are sampled in the main process either way
    config = {"input_cfg": source.reader["input_cfg"], "shard_seed": seed, "force_map_dataset": True,
              "skip_missing_manifest_entries": True}
    return read_cutset_from_config(config)[0].repeat(preserve_id=True)


def open_source(source: Source, *, index: int, prompt_format: str, seed: int, max_duration: float | None,
                cache: Path | None = None, limit: int | None = None):
    """One source as a lazy CutSet of cuts ready for the prompted dataset, tagged with `index`."""
    from lhotse import CutSet

    if source.kind == "manifest":
        cuts = CutSet.from_jsonl_lazy(cache)  # checked, limited and prompt-filled when the cache was built
    else:
        skip = frozenset(source.reader.get("skip_ids", ()))
        cuts = _read(source, seed).filter(partial(_usable, max_duration=max_duration, skip=skip))
        cuts = cuts.map(partial(fill_prompt, prompt_format=prompt_format))
        if limit:
            cuts = cuts.subset(first=limit)
    return cuts.map(partial(tag, index=index))


def training_cuts(data: TrainingData, caches: dict[int, Path], *, prompt_format: str, seed: int,
                  max_duration: float | None, limit: int | None = None):
    """The training stream: the one source as it is, or every source repeated and sampled by weight."""
    from nemo.collections.common.data.lhotse.cutset import mux

    parts = [open_source(s, index=i, prompt_format=prompt_format, seed=seed, max_duration=max_duration,
                         cache=caches.get(i), limit=limit if i == 0 else None) for i, s in enumerate(data.sources)]
    if len(parts) == 1:
        return parts[0]
    return mux(*parts, weights=[s.weight for s in data.sources], seed=seed)


@dataclass(frozen=True)
class StreamData:
    loader: object  # torch.utils.data.DataLoader
    caches: dict[int, Path]  # the cut caches built for plain manifests, by source index


def stream_loader(data: TrainingData, model, settings, *, data_dir: str | Path, max_duration: float | None,
                  limit: int | None = None) -> StreamData:
    """The training DataLoader over `data` for `model` (batching as `data.loader.cuts_loader` does)."""
    import dataclasses

    from lhotse import CutSet

    from common.data.cuts import build_cuts
    from common.data.loader import cuts_loader

    if isinstance(max_duration, float) and max_duration == float("inf"):
        max_duration = None
    caches = {}
    for i, s in enumerate(data.sources):
        if s.kind == "manifest":
            report = dataclasses.replace(s.report, entries=s.report.entries[:limit]) if i == 0 and limit else s.report
            caches[i], built = build_cuts(report, Path(data_dir), model.prompt_format)
            print(f"[data] {s.name} cuts: {caches[i]} ({'built' if built else 'reused'})", flush=True)
    build = partial(training_cuts, data, caches, prompt_format=model.prompt_format, seed=settings.seed,
                    max_duration=max_duration, limit=limit)
    if data.endless:
        distinct = min(limit, data.train.clips) if limit else data.train.clips
        distinct += sum(s.clips for s in data.sources[1:])
        settings = dataclasses.replace(settings, buffer_cuts=min(settings.buffer_cuts or distinct, distinct))
    loader = cuts_loader(CutSet(_Rebuilt(build)), model.tokenizer, model.prompt, settings, train=True)
    return StreamData(loader=loader, caches=caches)
