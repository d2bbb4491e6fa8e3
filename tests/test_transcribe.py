"""`just transcribe` on real audio and real checkpoints: a long clip stitched from sentences the base model knows
is cut into windows and joined with no word lost or doubled; a folder with a corrupt file through a merged export;
window planning and text joining on real signals; the timestamps refusal; the speed comparison with NeMo."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.quality.metrics import normalize
from common.quality.transcribe import TranscribeSettings, run_transcribe
from common.quality.windows import join, overlap_seconds, plan, window_seconds
from tests.conftest import rewrite_nemo

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 4.0


def demo_lines(demo, name: str = "base_val") -> list[dict]:
    return [json.loads(line) for line in Path(getattr(demo, name)).read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def short_window(base_nemo_path, tmp_path_factory) -> Path:
    """The pretrained tiny base, told it was trained on clips of at most 4 s: its window for long audio."""
    def window(cfg: dict) -> dict:
        cfg["train_ds"] = {"max_duration": WINDOW_S}
        return cfg

    return rewrite_nemo(base_nemo_path, tmp_path_factory.mktemp("window") / "base-4s.nemo", config=window)


def test_long_clip_is_joined_without_lost_or_doubled_words(short_window, demo, tmp_path, capsys):
    """Seven known sentences with 0.6 s pauses between them make a 19 s clip; with a 4 s window every cut must
    fall in a pause, so each window holds one sentence, and the clip's text must be the windows' texts, each
    transcribed on its own, one after another: no word lost or doubled where the windows meet."""
    pause = np.zeros(int(0.3 * 16000), dtype="float32")
    rows = [r for r in demo_lines(demo, "base_train") if 1.9 <= r["duration"] <= 2.6][:7]
    parts = [np.concatenate([pause, sf.read(r["audio_filepath"], dtype="float32")[0], pause]) for r in rows]
    audio = np.concatenate(parts)
    sf.write(tmp_path / "long.wav", audio, 16000)
    truth = " ".join(r["text"] for r in rows)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEdata")
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"audio_filepath": "long.wav", "text": truth},
                                                  {"audio_filepath": "corrupt.wav", "text": "x"},
                                                  {"audio_filepath": rows[0]["audio_filepath"], "text": rows[0]["text"]}])
    capsys.readouterr()
    result = run_transcribe(TranscribeSettings(nemo=str(short_window), audio=str(manifest), out=str(tmp_path / "h.jsonl"),
                                               bs=1))
    err = capsys.readouterr()
    written = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["audio_filepath"] for r in written] == ["long.wav", rows[0]["audio_filepath"]]
    assert written[0]["windows"] == 7 and abs(written[0]["duration"] - len(audio) / 16000) < 0.02
    assert "skipped corrupt.wav" in err.err and "WER" in err.out and result["scores"]["normalized"]["wer"] is not None

    joins = np.cumsum([len(p) for p in parts])[:-1] / 16000  # the middle of each 0.6 s pause
    windows = plan(audio, 16000, WINDOW_S)
    assert len(windows) == 7 and all(abs(end - j) < 0.3 for (_, end), j in zip(windows, joins))
    solo = []
    for i, (start, end) in enumerate(windows):
        sf.write(tmp_path / f"window{i}.wav", audio[round(start * 16000): round(end * 16000)], 16000)
        solo.append({"audio_filepath": f"window{i}.wav"})
    alone = run_transcribe(TranscribeSettings(nemo=str(short_window), audio=str(write_jsonl(tmp_path / "w.jsonl", solo)),
                                              bs=1))
    expected = " ".join(r["text"] for r in alone["rows"])
    assert normalize(written[0]["text"], "normalized").split() == normalize(expected, "normalized").split()
    assert len(expected.split()) >= len(rows) * 3


@pytest.mark.slow
def test_folder_with_a_corrupt_file_through_a_merged_export(fast_tiny_path, demo, tmp_path, capsys):
    """A 2-step LoRA run's merged export transcribes a folder (a subfolder, an mp3); the corrupt file is reported
    and skipped, every other file gets one row."""
    from common.config import TrainConfig, validate
    from common.training.run import run

    result = run(validate(TrainConfig(
        nemo=str(fast_tiny_path), train=str(demo.adapt_val), val=str(demo.adapt_val), bs=4, accum=1, max_steps=2,
        precision="32", max_train_cuts=8, limit_val_batches=1, val_bs=2, eval_before=False, log="none",
        mem_report_steps=0, exp_dir=str(tmp_path / "exp"), export_nemo=str(tmp_path / "exp" / "merged.nemo"),
        data_dir=str(tmp_path / "cuts"))))
    assert result.export_check["ok"]
    folder = tmp_path / "audio"
    rows = demo_lines(demo, "adapt_val")[:5]
    for i, row in enumerate(rows):
        data, rate = sf.read(row["audio_filepath"])
        target = folder / ("deep" if i % 2 else "") / f"clip{i}{'.mp3' if i == 4 else '.wav'}"
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, data, rate)
    (folder / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    capsys.readouterr()
    out = run_transcribe(TranscribeSettings(nemo=str(result.export), audio=str(folder), out=str(tmp_path / "h.jsonl"),
                                            bs=2))
    written = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(written) == 5 and all(set(r) == {"audio_filepath", "duration", "text"} for r in written)
    assert {Path(r["audio_filepath"]).name for r in written} == {f"clip{i}{'.mp3' if i == 4 else '.wav'}"
                                                                 for i in range(5)}
    assert [s[0] for s in out["skipped"]] == [str(folder / "broken.flac")]
    assert "skipped" in capsys.readouterr().err


def test_windows_cut_at_pauses_and_overlap_where_there_are_none():
    rate = 16000
    rng = np.random.default_rng(0)
    speech = lambda s: (0.3 * rng.standard_normal(int(s * rate))).astype("float32")  # noqa: E731
    quiet = lambda s: (0.001 * rng.standard_normal(int(s * rate))).astype("float32")  # noqa: E731
    bursts = np.concatenate([speech(1.8), quiet(0.5), speech(2.2), quiet(0.4), speech(1.5), quiet(0.6), speech(2.0)])
    windows = plan(bursts, rate, 4.0)
    assert windows[0][0] == 0.0 and windows[-1][1] == pytest.approx(len(bursts) / rate)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))  # cut at pauses: no overlap
    pauses = [(1.8, 2.3), (4.5, 4.9), (6.4, 7.0)]
    assert all(any(lo <= end <= hi for lo, hi in pauses) for _, end in windows[:-1]) and len(windows) == 4
    steady = speech(10.0)
    windows = plan(steady, rate, 4.0)
    assert all(b[0] == pytest.approx(a[1] - overlap_seconds(4.0)) for a, b in zip(windows, windows[1:]))
    assert all(end - start <= 4.0 + 1e-9 for start, end in windows)
    assert plan(speech(3.0), rate, 4.0) == [(0.0, 3.0)]


def test_texts_join_on_their_shared_words():
    assert join(["мама мыла раму", "папа читал"], [False], 2.0) == "мама мыла раму папа читал"
    # the cut edge garbles a word on each side; the shared run decides
    assert join(["мама мыла раму вечером долго па", "ром вечером долго папа читал"], [True], 2.0) == \
        "мама мыла раму вечером долго папа читал"
    assert join(["один два три", "Три, четыре пять", "пять шесть"], [True, True], 2.0) == \
        "один два Три, четыре пять шесть"
    assert join(["один", "два"], [True], 2.0) == "один два"  # nothing shared: both kept
    assert window_seconds({"train_ds": {"max_duration": 40}}) == 40.0 and window_seconds({}) == 40.0
    assert window_seconds({"train_ds": {"max_duration": 20.5}, "validation_ds": {}}) == 20.5


def test_timestamps_are_refused_clearly_where_the_checkpoint_has_none(tiny_model_path, demo, tmp_path):
    proc = subprocess.run([sys.executable, "recipes/transcribe.py", "--nemo", str(tiny_model_path), "--audio",
                           str(demo.base_val), "--timestamps"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "carries no timestamps model" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_speed_against_nemo_transcribe(base_nemo_path, demo, tmp_path):
    """Both decoders on the same 16 clips: the figures exist and the texts agree (the speed goal is for GPUs)."""
    from common.bench.transcribe_speed import compare_with_nemo

    clips = write_jsonl(tmp_path / "m.jsonl", demo_lines(demo)[:16])
    settings = TranscribeSettings(nemo=str(base_nemo_path), audio=str(clips), bs=8)
    figures = compare_with_nemo(settings, run_transcribe(settings))
    assert figures["files"] == 16 and figures["ours_audio_s_per_s"] > 0 and figures["nemo_audio_s_per_s"] > 0
