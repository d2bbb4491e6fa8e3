"""The training data: what --train and each --mix name, checked before NeMo loads (no NeMo or Lhotse import here).

A source is one of five kinds, told apart by what its path holds:

- `manifest`: a NeMo JSONL manifest, the plain case: checked line by line with its audio (`common.data.manifest`)
  and turned into a cached cut manifest (`common.data.cuts`);
- `cuts`: a Lhotse cut manifest, `*.jsonl(.gz)` whose lines are cuts;
- `nemo_tarred`: a NeMo tarred audio dataset: the folder NeMo's convert_to_tarred_audio_dataset.py writes
  (tarred_audio_manifest.json, audio_0.tar, ...), or a manifest whose lines carry `shard_id` with its
  `audio_<shard_id>.tar` files beside it (one folder up from `sharded_manifests/`);
- `shar`: a Lhotse Shar folder (cuts.000000.jsonl.gz, recording.000000.tar, ...);
- `input_cfg`: a YAML list in the form of NeMo's `input_cfg` (types nemo, nemo_tarred, lhotse, lhotse_shar and
  group, with weights and tags), read by NeMo itself; each item's files are checked here as a source of its own.

`--train` has weight 1 and each `--mix DATA:WEIGHT` its own: relative sampling probabilities per cut, as in NeMo's
`input_cfg`. How the sources become one stream of cuts is `common.data.streams`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.config import mix_spec
from common.data.entries import ManifestReport
from common.data.manifest import load_manifest
from common.data.source_checks import (TARRED_MANIFEST, Tally, check_cut_manifest, check_shar, check_tarred,
                                       first_object, tarred_layout)
from common.errors import UserError, collect
from common.fmt import fmt_duration
from common.messages import as_number, capped, disp, kind, plural, reason, show

KINDS = {"manifest": "NeMo manifest", "cuts": "Lhotse cuts", "nemo_tarred": "NeMo tarred", "shar": "Lhotse Shar",
         "input_cfg": "input_cfg YAML"}
HINT = ("--train and --mix take a NeMo JSONL manifest, a Lhotse cut manifest (*.jsonl.gz), a NeMo tarred dataset "
        "(its folder or its manifest), a Lhotse Shar folder or an input_cfg YAML")
INPUT_TYPES = ("nemo", "nemo_tarred", "lhotse", "lhotse_shar", "group")
TAR_SHARD = re.compile(r"audio[^/]*_(\d+)[^/]*\.tar")  # how NeMo's tarred reader tells a tar file's shard id


@dataclass(frozen=True)
class Source:
    """One checked --train or --mix source: where it is, its weight, what it holds and how to open it."""

    flag: str  # "--train" or "--mix"
    path: Path
    weight: float
    kind: str
    clips: int
    seconds: float
    languages: frozenset[str]
    notes: tuple[str, ...] = ()
    report: ManifestReport | None = None  # a plain manifest's check: its cut cache is built from it
    reader: Mapping[str, Any] = field(default_factory=dict)  # tar files, cuts to skip, the resolved input_cfg
    name: str = ""  # unique among the sources: the file or folder name

    def summary(self) -> str:
        weight = f", weight {self.weight:g}" if self.flag == "--mix" else ""
        return (f"{self.flag} {self.name} ({KINDS[self.kind]}): {plural(self.clips, 'clip')}, "
                f"{fmt_duration(self.seconds)}{weight}")


@dataclass(frozen=True)
class TrainingData:
    sources: tuple[Source, ...]  # --train first, then each --mix in order

    @property
    def train(self) -> Source:
        return self.sources[0]

    @property
    def plain(self) -> bool:
        """One plain NeMo manifest: read as before mixing existed, through `data.loader.manifest_loader`."""
        return len(self.sources) == 1 and self.train.kind == "manifest"

    @property
    def mixed(self) -> bool:
        return len(self.sources) > 1

    @property
    def endless(self) -> bool:
        """Mixed sources are each repeated without end and sampled by weight, as NeMo's input_cfg does; an input_cfg
        YAML is read as NeMo reads it for training, without end."""
        return self.mixed or self.train.kind == "input_cfg"

    def expected_shares(self) -> list[float]:
        total = sum(s.weight for s in self.sources)
        return [s.weight / total for s in self.sources]

    def languages(self) -> dict[str, set[str]]:
        return {f"{s.flag} {s.path}": set(s.languages) for s in self.sources}

    def stream_line(self) -> str:
        endless = "repeats without end: training runs by --max_steps, with no epochs"
        if not self.mixed:
            return f"{self.train.name} {endless}"
        shares = ", ".join(f"{s.name} {100 * p:.0f}%" for s, p in zip(self.sources, self.expected_shares()))
        return (f"mixing by weight ({' : '.join(f'{s.weight:g}' for s in self.sources)}): {shares} of the cuts "
                f"drawn; each source {endless}")


def check_training_data(train: str, mix: tuple[str, ...] = (), *, max_duration: float | None = 40.0,
                        skip_bad: bool = False) -> TrainingData:
    """Check --train and every --mix source (files, fields, audio where it lies in files) and return them."""
    specs = [("--train", train, 1.0)] + [("--mix", *mix_spec(spec)) for spec in mix]
    sources, names = [], set()
    for flag, path, weight in specs:
        source = check_source(path, weight, flag, max_duration=max_duration, skip_bad=skip_bad)
        name, k = source.path.name or str(source.path), 1
        while name in names:
            k += 1
            name = f"{source.path.name} #{k}"
        names.add(name)
        sources.append(dataclasses.replace(source, name=name))
    return TrainingData(tuple(sources))


def detect_kind(path: Path, flag: str) -> str:
    if not path.exists():
        raise UserError(f"{flag} {disp(path)} not found; {HINT}")
    if path.is_dir():
        if any(path.glob("cuts.*.jsonl*")):
            return "shar"
        if (path / TARRED_MANIFEST).is_file() or any((path / "sharded_manifests").glob("manifest_*.json")):
            return "nemo_tarred"
        raise UserError(f"{flag} {disp(path)} is a folder, but neither a Lhotse Shar folder (cuts.000000.jsonl.gz, "
                        f"recording.000000.tar, ...) nor a NeMo tarred dataset ({TARRED_MANIFEST}, audio_0.tar, "
                        f"...); {HINT}")
    if path.suffix.lower() in (".yaml", ".yml"):
        return "input_cfg"
    first = first_object(path)
    if isinstance(first, dict) and "shard_id" in first:
        return "nemo_tarred"
    if isinstance(first, dict) and ("supervisions" in first or "recording" in first or "tracks" in first):
        return "cuts"
    return "manifest"


def check_source(spec: str, weight: float, flag: str, *, max_duration: float | None, skip_bad: bool) -> Source:
    path = Path(os.path.abspath(Path(spec).expanduser()))
    if isinstance(max_duration, float) and max_duration == float("inf"):
        max_duration = None
    kind_ = detect_kind(path, flag)
    if kind_ == "manifest":
        report = load_manifest(path, max_duration=max_duration, skip_bad=skip_bad)
        return Source(flag, path, weight, kind_, len(report.entries), report.total_duration,
                      frozenset({e.source_lang for e in report.entries} | {e.target_lang for e in report.entries}),
                      tuple(report.notes), report=report)
    where = f"{flag} {disp(path)} ({KINDS[kind_]})"
    if kind_ == "input_cfg":
        tally = Tally()
        reader = {"input_cfg": _items(_load_yaml(path, where), path.parent, where, tally, max_duration, skip_bad)}
    elif kind_ == "cuts":
        tally = _raised(check_cut_manifest(path, max_duration=max_duration, skip_bad=skip_bad), where)
        reader = {"skip_ids": tuple(tally.skip_ids)}
    elif kind_ == "shar":
        tally, reader = _raised(check_shar(path, max_duration=max_duration), where), {}
    else:
        manifests, folder = tarred_layout(path)
        tally = _raised(check_tarred(manifests, folder, max_duration=max_duration, skip_bad=skip_bad), where)
        reader = {"manifest": [str(m) for m in manifests] if len(manifests) > 1 else str(manifests[0]),
                  "tars": [str(p) for p in tally.tars.values()]}
    if not tally.clips:
        dropped = f": {tally.too_long} longer than --max_duration {max_duration:g} s" if tally.too_long else ""
        raise UserError(f"{where}: no usable clips{dropped}; {HINT}")
    return Source(flag, path, weight, kind_, tally.clips, tally.seconds, frozenset(tally.languages),
                  tuple(tally.notes), reader=reader)


def _raised(tally: Tally, where: str) -> Tally:
    collect(capped(tally.problems), f"{where}: problems found; fix them and run again")
    return tally


# ---- input_cfg YAML ---------------------------------------------------------------------------------------------
def _load_yaml(path: Path, where: str) -> Any:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{where}: not a readable YAML file ({reason(e)})") from None
    return data["input_cfg"] if isinstance(data, dict) and "input_cfg" in data else data


def _expand(value: Any, base: Path, at: str, key: str) -> tuple[str, list[Path]]:
    """A path value as NeMo reads it (brace ranges such as audio__OP_0..3_CL_.tar), absolute from the YAML's folder:
    (the string to hand NeMo, the files it names)."""
    import braceexpand

    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{at}: {key} must be a path (one string; NeMo's brace ranges such as _OP_0..3_CL_ work), "
                        f"got {show(value)}")
    absolute = value if os.path.isabs(os.path.expanduser(value)) else str(base / value)
    braced = absolute
    for opening, closing in (("(", ")"), ("[", "]"), ("<", ">"), ("_OP_", "_CL_")):  # as NeMo reads them
        braced = braced.replace(opening, "{").replace(closing, "}")
    return absolute, [Path(p) for p in braceexpand.braceexpand(braced, escape=False)]


def _items(items: Any, base: Path, where: str, acc: Tally, max_duration: float | None, skip_bad: bool) -> list[dict]:
    """Check an input_cfg list (groups recursively) into `acc`; return it with every path made absolute."""
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: expected a non-empty list of input_cfg items (each with a type, a weight and the "
                        f"type's paths), got {kind(items)}")
    weighted = [isinstance(item, dict) and "weight" in item for item in items]
    if any(weighted) and not all(weighted):
        raise UserError(f"{where}: give every item of a list a weight, or none (NeMo's rule)")
    out = []
    for i, item in enumerate(items, start=1):
        at = f"{where} item {i}"
        if not isinstance(item, dict) or item.get("type") not in INPUT_TYPES:
            got = show(item.get("type")) if isinstance(item, dict) else kind(item)
            raise UserError(f"{at}: type {got} is not one of {', '.join(INPUT_TYPES)}")
        if "weight" in item and ((w := as_number(item["weight"])) is None or w <= 0):
            raise UserError(f"{at}: weight must be a positive number, got {show(item['weight'])}")
        item = dict(item)
        if item["type"] == "group":
            item["input_cfg"] = _items(item.get("input_cfg"), base, at, acc, max_duration, skip_bad)
        else:
            tally = _leaf(item, base, at, max_duration, skip_bad)
            acc.clips += tally.clips
            acc.seconds += tally.seconds
            acc.languages |= tally.languages
            acc.notes += [f"item {i}: {note}" for note in tally.notes]
        out.append(item)
    return out


def _leaf(item: dict, base: Path, at: str, max_duration: float | None, skip_bad: bool) -> Tally:
    """One input_cfg item that names data: its paths made absolute in `item`, its files checked. NeMo reads these
    itself, so --skip_bad cannot drop a bad line here."""
    if item["type"] in ("nemo", "nemo_tarred"):
        item["manifest_filepath"], manifests = _expand(item.get("manifest_filepath"), base, at, "manifest_filepath")
        if item.get("tarred_audio_filepaths") is None:
            return _plain_leaf(manifests, at, max_duration)
        item["tarred_audio_filepaths"], tar_files = _expand(item["tarred_audio_filepaths"], base, at,
                                                            "tarred_audio_filepaths")
        tars = {}
        for p in tar_files:
            m = TAR_SHARD.search(str(p))
            if m is None:
                raise UserError(f"{at}: cannot tell the shard of {disp(p)}: NeMo reads it from names like audio_0.tar")
            tars[int(m.group(1))] = p
        return _raised(check_tarred(manifests, tars, max_duration=max_duration, skip_bad=False), at)
    if item.get("shar_path") is not None:
        item["shar_path"], (folder, *_) = _expand(item["shar_path"], base, at, "shar_path")
        return _raised(check_shar(folder, max_duration=max_duration), at)
    item["cuts_path"], (path, *_) = _expand(item.get("cuts_path"), base, at, "cuts_path")
    if not path.is_file():
        raise UserError(f"{at}: cuts_path {disp(path)} not found")
    return _raised(check_cut_manifest(path, max_duration=max_duration, skip_bad=False), at)


def _plain_leaf(manifests: list[Path], at: str, max_duration: float | None) -> Tally:
    tally = Tally()
    for path in manifests:
        report = load_manifest(path, max_duration=max_duration, skip_bad=True)
        if report.skipped:
            collect(capped(report.skipped), f"{at}: {plural(len(report.skipped), 'line')} of {disp(path)} with "
                                            f"missing or unreadable audio; NeMo reads this manifest itself, so "
                                            f"--skip_bad cannot drop them: fix or remove them")
        tally.clips += len(report.entries)
        tally.seconds += report.total_duration
        tally.languages |= {e.source_lang for e in report.entries} | {e.target_lang for e in report.entries}
        tally.notes += report.notes
    return tally
