"""Small real training sources in every form --train and --mix take, cut from the demo's general (base) speech.

- `general.jsonl`: a NeMo JSONL manifest;
- `general_cuts.jsonl.gz`: a Lhotse cut manifest without prompt fields (the defaults apply), but its first cut says
  pnc "no" in `cut.custom`;
- `tarred/`: a NeMo tarred dataset as convert_to_tarred_audio_dataset.py lays it out (audio_0.tar, audio_1.tar,
  tarred_audio_manifest.json with shard_id, and sharded_manifests/), the second shard's lines with pnc "no";
- `shar/`: a Lhotse Shar folder written by `CutSet.to_shar`, without prompt fields;
- `mix.yaml`: an input_cfg with the tarred set (NeMo's brace range for its tars) and the Shar folder, weighted.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

SLICES = {"general": (0, 16), "cuts": (16, 32), "tarred": (32, 44), "shar": (44, 56)}
INPUT_CFG = """\
- type: nemo_tarred
  manifest_filepath: tarred/tarred_audio_manifest.json
  tarred_audio_filepaths: tarred/audio__OP_0..1_CL_.tar
  weight: 0.6
- type: lhotse_shar
  shar_path: shar
  weight: 0.4
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _cuts(rows: list[dict]):
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for row in rows:
        cut = Recording.from_file(row["audio_filepath"]).to_cut()
        cut.supervisions = [SupervisionSegment(id=cut.id, recording_id=cut.recording_id, start=0.0,
                                               duration=cut.duration, text=row["text"])]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def write_tarred(folder: Path, rows: list[dict], shards: int = 2) -> Path:
    """NeMo's tarred layout: row i goes to shard i % shards; the manifest names each file as its tar member."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for sid in range(shards):
        mine = []
        with tarfile.open(folder / f"audio_{sid}.tar", "w") as tar:
            for row in rows[sid::shards]:
                name = Path(row["audio_filepath"]).name
                tar.add(row["audio_filepath"], arcname=name)
                mine.append({**row, "audio_filepath": name, "shard_id": sid, "pnc": "no" if sid else row["pnc"]})
        _jsonl(folder / "sharded_manifests" / f"manifest_{sid}.json", mine)
        lines += mine
    return _jsonl(folder / "tarred_audio_manifest.json", lines)


def build_sets(demo, root: Path) -> dict[str, Path]:
    rows = [json.loads(line) for line in Path(demo.base_train).read_text(encoding="utf-8").splitlines()]
    part = {name: rows[a:b] for name, (a, b) in SLICES.items()}
    root.mkdir(parents=True, exist_ok=True)
    sets = {"general": _jsonl(root / "general.jsonl", part["general"])}
    cuts = _cuts(part["cuts"])
    first = next(iter(cuts))
    first.custom = {"pnc": "no"}
    sets["cuts"] = root / "general_cuts.jsonl.gz"
    cuts.to_file(sets["cuts"])
    write_tarred(root / "tarred", part["tarred"])
    sets["tarred"] = root / "tarred"
    (root / "shar").mkdir()
    _cuts(part["shar"]).to_shar(root / "shar", fields={"recording": "flac"}, shard_size=5)
    sets["shar"] = root / "shar"
    sets["yaml"] = root / "mix.yaml"
    sets["yaml"].write_text(INPUT_CFG, encoding="utf-8")
    sets["rows"] = part
    return sets
