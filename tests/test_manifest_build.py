"""`just manifest` on real files: a folder with sidecar transcripts (wav, flac, mp3, ogg, a subfolder, bad files), a
Common Voice-style TSV split by speaker, Lhotse cuts and recordings + supervisions, the command line, and the
training run's own checks accepting the result."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from common.data.build_manifest import ManifestSettings, build, parse_split
from common.data.manifest import load_manifest
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def demo_rows(demo, n: int, manifest: str = "base_val") -> list[dict]:
    lines = Path(getattr(demo, manifest)).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def copy_as(src: str, dst: Path, fmt: str | None = None) -> Path:
    """The demo clip re-encoded (or copied) to `dst`; the format follows the suffix."""
    data, sr = sf.read(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, data, sr, format=fmt)
    return dst


@pytest.fixture
def folder(tmp_path, demo):
    """12 clips: 8 wav (3 in a subfolder two levels down), a flac, an mp3 and an ogg with their transcripts, plus
    a wav without a transcript, one with an empty transcript and a corrupt one."""
    root = tmp_path / "recordings"
    rows = demo_rows(demo, 14)
    truth = {}
    for i, row in enumerate(rows[:11]):
        suffix = {8: ".flac", 9: ".mp3", 10: ".ogg"}.get(i, ".wav")
        where = root / "speaker_b" / "day1" if i in (1, 4, 7) else root
        path = copy_as(row["audio_filepath"], where / f"clip{i:02d}{suffix}")
        path.with_suffix(".txt").write_text(f"  {row['text']}\n", encoding="utf-8")
        truth[str(path.resolve())] = (row["text"], sf.info(str(path)).duration)
    copy_as(rows[11]["audio_filepath"], root / "untranscribed.wav")
    copy_as(rows[12]["audio_filepath"], root / "blank.wav").with_suffix(".txt").write_text(" \n", encoding="utf-8")
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 20)
    corrupt.with_suffix(".txt").write_text("привет", encoding="utf-8")
    return root, truth


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_audio_dir_gives_exact_texts_and_durations(folder, tmp_path, capsys):
    root, truth = folder
    out = tmp_path / "data" / "train.jsonl"
    written, found = build(ManifestSettings(audio_dir=str(root), out=str(out), lang="ru", pnc="no"))
    lines = lines_of(out)
    assert {line["audio_filepath"] for line in lines} == set(truth)  # one row per transcribed, readable file
    for line in lines:
        text, duration = truth[line["audio_filepath"]]
        assert line["text"] == text
        assert abs(line["duration"] - duration) < 0.02
        assert (line["source_lang"], line["target_lang"], line["pnc"]) == ("ru", "ru", "no")
        assert Path(line["audio_filepath"]).is_file()
    reasons = " | ".join(found.skipped)
    assert "no transcript" in reasons and "empty transcript" in reasons and "unreadable audio" in reasons
    assert sum(len(v) for v in found.skipped.values()) == 3
    assert written[0].clips == len(truth) and load_manifest(out, max_duration=None).entries


def test_split_by_speaker_is_reproducible(tmp_path, demo):
    """A Common Voice layout (clips/ of mp3, validated.tsv with quotes in sentences): the validation set holds
    whole speakers, and the same seed gives the same split."""
    cv = tmp_path / "cv-corpus" / "ru"
    rows = demo_rows(demo, 24)
    header = "client_id\tpath\tsentence_id\tsentence\tup_votes\tdown_votes\tage\tgender\n"
    body = []
    for i, row in enumerate(rows):
        name = f"common_voice_ru_{i}.mp3"
        copy_as(row["audio_filepath"], cv / "clips" / name)
        body.append(f"spk{i % 6}\t{name}\t{i}\t\"{row['text']}\" — сказал он\t2\t0\t\t\n")
    tsv = cv / "validated.tsv"
    tsv.write_text(header + "".join(body), encoding="utf-8")

    def split(seed: int, out: Path) -> tuple[list[dict], list[dict]]:
        build(ManifestSettings(tsv=str(tsv), out=str(out), split="val=0.2", seed=seed))
        return lines_of(out), lines_of(out.with_name("val.jsonl"))

    train, val = split(0, tmp_path / "a" / "train.jsonl")
    assert len(train) + len(val) == 24 and val
    assert not {r["speaker"] for r in train} & {r["speaker"] for r in val}
    assert train[0]["text"].startswith('"') and Path(train[0]["audio_filepath"]).parent.name == "clips"
    assert split(0, tmp_path / "b" / "train.jsonl") == (train, val)
    speakers = {seed: frozenset(r["speaker"] for r in split(seed, tmp_path / f"s{seed}" / "train.jsonl")[1])
                for seed in range(1, 5)}
    assert set(speakers.values()) - {frozenset(r["speaker"] for r in val)}  # the seed matters


def test_lhotse_cuts_and_recipe_manifests(tmp_path, demo):
    """A long recording with two supervisions becomes two lines with offsets; recordings + supervisions files
    (what `lhotse prepare` writes) give the same lines as the CutSet built from them."""
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    import numpy as np

    rows = demo_rows(demo, 2)
    parts = [sf.read(r["audio_filepath"])[0] for r in rows]
    long = tmp_path / "long.flac"
    sf.write(long, np.concatenate([parts[0], np.zeros(8000), parts[1]]), 16000)
    rec = Recording.from_file(long, recording_id="long")
    start2 = len(parts[0]) / 16000 + 0.5
    sups = [SupervisionSegment(id="a", recording_id="long", start=0.0, duration=len(parts[0]) / 16000,
                               text=rows[0]["text"], speaker="s1", language="Russian"),
            SupervisionSegment(id="b", recording_id="long", start=start2, duration=len(parts[1]) / 16000,
                               text=rows[1]["text"], speaker="s2", language="Russian")]
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "x_recordings_test.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(tmp_path / "x_supervisions_test.jsonl.gz")
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([rec]),
                                 supervisions=SupervisionSet.from_segments(sups))
    cuts.to_file(tmp_path / "cuts.jsonl.gz")

    build(ManifestSettings(cuts=(str(tmp_path / "cuts.jsonl.gz"),), out=str(tmp_path / "m1.jsonl")))
    build(ManifestSettings(cuts=(str(tmp_path / "x_recordings_test.jsonl.gz"),
                                 str(tmp_path / "x_supervisions_test.jsonl.gz")), out=str(tmp_path / "m2.jsonl")))
    first, second = lines_of(tmp_path / "m1.jsonl"), lines_of(tmp_path / "m2.jsonl")
    assert first == second and [r["text"] for r in first] == [rows[0]["text"], rows[1]["text"]]
    assert "offset" not in first[0] and abs(first[1]["offset"] - start2) < 1e-3
    assert abs(first[1]["duration"] - len(parts[1]) / 16000) < 0.02
    checked = load_manifest(tmp_path / "m1.jsonl", max_duration=None)
    assert [e.extra.get("offset") for e in checked.entries] == [None, first[1]["offset"]]
    with gzip.open(tmp_path / "x_supervisions_test.jsonl.gz", "rt") as f:
        assert f.readline()
    with pytest.raises(UserError, match="without their recordings"):
        build(ManifestSettings(cuts=(str(tmp_path / "x_supervisions_test.jsonl.gz"),), out=str(tmp_path / "m3.jsonl")))


def test_bad_settings_are_one_clear_error(tmp_path):
    with pytest.raises(UserError) as info:
        build(ManifestSettings(out=str(tmp_path / "m.txt"), lang="r u"))
    message = str(info.value)
    assert "exactly one source" in message and "--out must end with .jsonl" in message and "--lang" in message
    for spec in ("val", "val=1.5", "val=0.6,test=0.5", "2x=0.1"):
        with pytest.raises(UserError, match="--split"):
            parse_split(spec)
    assert parse_split("val=0.05,test=0.1") == {"val": 0.05, "test": 0.1}
    with pytest.raises(UserError, match="no audio files"):
        build(ManifestSettings(audio_dir=str(tmp_path), out=str(tmp_path / "m.jsonl")))


def test_cli_output_is_accepted_by_the_training_checks(folder, tmp_path, tiny_model_path):
    """The command line (no NeMo imported), then the training run's own input checks on what it wrote."""
    root, truth = folder
    out = tmp_path / "m" / "train.jsonl"
    code = ("import sys, runpy; sys.argv = ['manifest.py'] + sys.argv[1:]; "
            "from recipes.manifest import main; from recipes.entry import run_main; code = run_main(main); "
            "heavy = [m for m in ('nemo', 'torch', 'lightning') if m in sys.modules]; "
            "print('heavy:', heavy); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, "--audio_dir", str(root), "--out", str(out),
                           "--split", "val=0.25"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout and "[manifest] 11 clips" in proc.stdout and "skipped 3" in proc.stdout
    from common.config import TrainConfig, validate
    from common.training.run import check

    run = check(validate(TrainConfig(nemo=str(tiny_model_path), train=str(out), val=str(out.with_name("val.jsonl")),
                                     exp_dir=str(tmp_path / "exp"), export_nemo=str(tmp_path / "exp" / "o.nemo"))))
    assert len(run.manifests["train"].entries) + len(run.manifests["val"].entries) == len(truth)
    bad = subprocess.run([sys.executable, "recipes/manifest.py", "--tsv", str(tmp_path / "missing.tsv"), "--out",
                          str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "missing.tsv not found" in bad.stderr and "Traceback" not in bad.stderr


def test_console_command_lists_the_new_recipes():
    """`canary-lora` (here through its module, which the installed script calls) dispatches to the new recipes."""
    listing = subprocess.run([sys.executable, "-m", "recipes.cli", "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0
    assert all(f"  {name} " in listing.stdout for name in ("manifest", "transcribe", "export-hf"))
    sub = subprocess.run([sys.executable, "-m", "recipes.cli", "manifest", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert sub.returncode == 0 and "--audio_dir" in sub.stdout and "--split" in sub.stdout
