"""Training sources on real files: every form --train and --mix take is told apart, checked without NeMo, read
through Lhotse's and NeMo's own readers with its prompt fields, and mixed by weight, the same way every time.

The sets are cut from the demo's general speech (tests/source_sets.py): a NeMo manifest, a Lhotse cut manifest,
a NeMo tarred dataset, a Lhotse Shar folder and an input_cfg YAML over the last two.
"""
from __future__ import annotations

import json
import math
import shutil
from itertools import islice
from pathlib import Path

import pytest

from common.config import mix_spec
from common.data.sources import check_training_data
from common.errors import UserError
from tests.source_sets import build_sets


@pytest.fixture(scope="module")
def sets(demo, tmp_path_factory):
    return build_sets(demo, tmp_path_factory.mktemp("sources"))


def _seconds(rows) -> float:
    import soundfile

    return sum(soundfile.info(r["audio_filepath"]).duration for r in rows)


# ---- --mix DATA:WEIGHT ------------------------------------------------------------------------------------------
def test_mix_spec_splits_at_the_last_colon():
    assert mix_spec("general.jsonl:0.3") == ("general.jsonl", 0.3)
    assert mix_spec(r"C:\data\general.jsonl:0.3") == (r"C:\data\general.jsonl", 0.3)
    assert mix_spec("/data/a:b/shar:2") == ("/data/a:b/shar", 2.0)


@pytest.mark.parametrize("spec, expected", [
    ("general.jsonl", ["has no weight", "DATA:WEIGHT", "--mix general.jsonl:0.3"]),
    (r"C:\data\general.jsonl", ["has no weight", "drive letter C:", r"--mix C:\data\general.jsonl:0.3"]),
    ("general.jsonl:heavy", ["weight 'heavy'", "is not a number", "--mix general.jsonl:0.3"]),
    ("general.jsonl:0", ["positive finite number", "got 0"]),
    ("general.jsonl:-1", ["positive finite number"]),
    ("general.jsonl:nan", ["positive finite number"]),
    (":0.3", ["has no weight"]),
])
def test_mix_spec_refuses_with_the_fix(spec, expected):
    with pytest.raises(UserError) as e:
        mix_spec(spec)
    for text in expected:
        assert text in str(e.value), str(e.value)


# ---- checks -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("general", "manifest"), ("cuts", "Lhotse cuts"), ("tarred", "NeMo tarred"),
                                        ("shar", "Lhotse Shar"), ("yaml", "input_cfg YAML")])
def test_each_kind_is_told_apart_and_counted(sets, name, kind):
    data = check_training_data(str(sets[name]))
    source = data.train
    rows = {"yaml": sets["rows"]["tarred"] + sets["rows"]["shar"]}.get(name) or sets["rows"][name]
    assert source.clips == len(rows)
    assert abs(source.seconds - _seconds(rows)) < 0.05 * len(rows)
    assert source.languages == {"ru"}
    assert data.plain == (name == "general") and data.endless == (name == "yaml")
    assert kind in source.summary() or name == "general"
    if name in ("cuts", "shar", "yaml"):  # no prompt fields in those cuts: the defaults, with a note
        assert any("without source_lang/target_lang/pnc" in n and "defaults ru/ru/yes" in n for n in source.notes)


def test_a_tarred_manifest_names_its_dataset_too(sets):
    """The manifest itself (with shard_id) and one of sharded_manifests/ find their tar files; the folder is read
    through its sharded manifests."""
    whole = check_training_data(str(sets["tarred"] / "tarred_audio_manifest.json")).train
    one = check_training_data(str(sets["tarred"] / "sharded_manifests" / "manifest_1.json")).train
    assert whole.kind == one.kind == "nemo_tarred"
    assert whole.clips == len(sets["rows"]["tarred"]) and one.clips == len(sets["rows"]["tarred"][1::2])
    assert one.reader["tars"] == [str(sets["tarred"] / "audio_1.tar")]
    folder = check_training_data(str(sets["tarred"])).train  # read shard by shard, as NeMo prefers
    assert folder.reader["manifest"] == [str(sets["tarred"] / "sharded_manifests" / f"manifest_{i}.json")
                                         for i in (0, 1)]


def test_mixing_names_weights_and_expected_shares(sets):
    data = check_training_data(str(sets["general"]), (f"{sets['cuts']}:0.25", f"{sets['shar']}:0.75"))
    assert [s.flag for s in data.sources] == ["--train", "--mix", "--mix"]
    assert [s.weight for s in data.sources] == [1.0, 0.25, 0.75]
    assert data.expected_shares() == [0.5, 0.125, 0.375]
    assert data.mixed and data.endless and not data.plain
    assert "general.jsonl 50%, general_cuts.jsonl.gz 12%, shar 38%" in data.stream_line()


def _fails(train, mix=(), **kw) -> str:
    with pytest.raises(UserError) as e:
        check_training_data(str(train), tuple(mix), **kw)
    return str(e.value)


def test_bad_sources_fail_with_what_to_fix(sets, tmp_path):
    msg = _fails(sets["general"], [f"{tmp_path / 'gone.jsonl'}:0.3"])
    assert "--mix" in msg and "gone.jsonl not found" in msg and "Lhotse Shar folder" in msg
    assert "is a folder, but neither" in _fails(tmp_path)

    tarred = tmp_path / "tarred"
    shutil.copytree(sets["tarred"], tarred)
    lines = (tarred / "tarred_audio_manifest.json").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0]) | {"audio_filepath": "never_packed.wav"}
    (tarred / "tarred_audio_manifest.json").write_text("\n".join(lines + [json.dumps(row)]) + "\n", encoding="utf-8")
    whole = tarred / "tarred_audio_manifest.json"
    msg = _fails(whole)
    assert "tarred_audio_manifest.json line 13: never_packed.wav is not in audio_0.tar" in msg and "--skip_bad" in msg
    kept = check_training_data(str(whole), skip_bad=True).train
    assert kept.clips == 12 and any("1 line skipped under --skip_bad" in n for n in kept.notes)
    (tarred / "audio_1.tar").unlink()
    assert "shard 1:" in _fails(tarred) and "audio_1.tar not found" in _fails(tarred)

    shar = tmp_path / "shar"
    shutil.copytree(sets["shar"], shar)
    for p in shar.glob("recording.*"):
        p.unlink()
    assert "no recording.000000.tar (audio) shards" in _fails(shar)

    cuts = tmp_path / "cuts.jsonl"
    rows = [json.loads(x) for x in __import__("gzip").open(sets["cuts"], "rt", encoding="utf-8")]
    rows[2]["recording"]["sources"][0]["source"] = str(tmp_path / "gone.wav")
    rows[3]["supervisions"] = []
    cuts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    msg = _fails(cuts)
    assert "line 3:" in msg and "gone.wav (not found)" in msg and "line 4: no transcript" in msg


def test_bad_input_cfg_items_are_named(sets, tmp_path):
    def yaml(text: str) -> Path:
        path = tmp_path / "in.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    assert 'item 1: type "tsv" is not one of' in _fails(yaml("- type: tsv\n  weight: 1\n"))
    both = f"- type: lhotse_shar\n  shar_path: {sets['shar']}\n  weight: 1\n- type: lhotse_shar\n  shar_path: {sets['shar']}\n"
    assert "give every item of a list a weight, or none" in _fails(yaml(both))
    assert "weight must be a positive number" in _fails(yaml(f"- type: lhotse_shar\n  shar_path: {sets['shar']}\n"
                                                             f"  weight: -1\n"))
    assert "not a readable YAML file" in _fails(yaml("- [unclosed\n"))


# ---- reading ------------------------------------------------------------------------------------------------------
def _open(source, data_dir: Path, max_duration: float = 40.0):
    from common.data.cuts import build_cuts
    from common.data.streams import open_source

    cache = build_cuts(source.report, data_dir, "canary2")[0] if source.kind == "manifest" else None
    return open_source(source, index=3, prompt_format="canary2", seed=7, max_duration=max_duration, cache=cache)


@pytest.mark.parametrize("name", ["general", "cuts", "tarred", "shar", "yaml"])
def test_each_kind_reads_with_prompt_fields_and_audio(sets, name, tmp_path):
    from common.data.streams import source_of

    source = check_training_data(str(sets[name])).train
    cuts = list(islice(_open(source, tmp_path), 40))
    rows = sets["rows"].get(name) or sets["rows"]["tarred"] + sets["rows"]["shar"]
    texts = {r["text"] for r in rows}
    assert {c.supervisions[0].text for c in cuts} <= texts
    for cut in cuts:
        assert (cut.custom["source_lang"], cut.custom["target_lang"]) == ("ru", "ru")
        assert cut.supervisions[0].language == "ru"  # an aggregate tokenizer picks the answer's language by it
        assert cut.custom["pnc"] in ("yes", "no") and cut.sampling_rate == 16000 and source_of(cut)[0] == 3
    pnc = {c.custom["pnc"] for c in cuts}
    assert pnc == {"general": {"yes"}, "shar": {"yes"}}.get(name, {"yes", "no"}), pnc
    padded = cuts[0].pad(duration=cuts[0].duration + 1.0)  # as the dataset pads a batch to its longest cut
    assert source_of(padded) == (3, cuts[0].duration)
    audio = cuts[0].load_audio()
    assert audio.shape[0] == 1 and abs(audio.shape[1] / 16000 - cuts[0].duration) < 0.01


def test_a_mix_follows_its_weights_and_repeats_itself(sets, tmp_path):
    """Over 4000 cuts each source's share is within 4 standard deviations of its weight's share; a second build
    draws the same cuts in the same order."""
    from common.data.cuts import build_cuts
    from common.data.streams import source_of, training_cuts

    data = check_training_data(str(sets["general"]), (f"{sets['cuts']}:0.25",))
    caches = {0: build_cuts(data.train.report, tmp_path, "canary2")[0]}
    n = 4000

    def draw():
        return list(islice(training_cuts(data, caches, prompt_format="canary2", seed=11, max_duration=40.0), n))

    first = draw()
    share = sum(source_of(c)[0] == 1 for c in first) / n
    expected = 0.25 / 1.25
    assert abs(share - expected) <= 4 * math.sqrt(expected * (1 - expected) / n), share
    assert [c.id for c in draw()] == [c.id for c in first]


def test_an_abandoned_pass_does_not_shift_the_next(sets):
    """The tarred reader seeds pass k's shard order with seed + k: every pass over the stream starts afresh."""
    from lhotse import CutSet

    from common.data.streams import _Rebuilt, training_cuts

    data = check_training_data(str(sets["tarred"]), (f"{sets['shar']}:1",))
    stream = CutSet(_Rebuilt(lambda: training_cuts(data, {}, prompt_format="canary2", seed=5, max_duration=None)))
    straight = [c.id for c in islice(stream, 60)]
    next(iter(stream))  # a pass dropped after one cut
    for _ in islice(stream, 30):  # and one dropped past the tarred set's first full pass
        pass
    assert [c.id for c in islice(stream, 60)] == straight
    assert len(set(straight)) == 24  # both sources, every cut, repeated


def test_too_long_clips_are_dropped_from_a_tarred_set(sets):
    durations = sorted(r["duration"] for r in sets["rows"]["tarred"])
    limit = (durations[5] + durations[6]) / 2
    source = check_training_data(str(sets["tarred"]), max_duration=limit).train
    kept = list(_open(source, Path("/nonexistent"), max_duration=limit))
    rows = durations
    assert 0 < len(kept) == source.clips < len(rows) and all(c.duration <= limit for c in kept)
    assert any("longer than" in n and "--max_duration" in n for n in source.notes)
