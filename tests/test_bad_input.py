"""Bad input through the real CLI: exit code 2, one clear message naming the file, line and value, no traceback.

Everything except the LoRA target check fails in preflight, before NeMo is imported: about a second each.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.train_cli import run

PREFLIGHT_S = 10  # measured ~0.2-1 s; generous for a loaded machine, far below a NeMo import (~15 s)


def wav(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, gain: float = 0.3) -> Path:
    t = np.arange(int(round(seconds * sr))) / sr
    tone = gain * np.sin(2 * np.pi * 220 * t)
    data = tone if channels == 1 else np.stack([tone, 0.5 * tone], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype="PCM_16")
    return path


def manifest(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def line(audio: Path | str, text: str = "привет мир", **extra) -> dict:
    return {"audio_filepath": str(audio), "text": text, "source_lang": "ru", "target_lang": "ru", "pnc": "yes",
            **extra}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_path):
    from tests.conftest import rewrite_nemo

    d = tmp_path_factory.mktemp("bad-input")
    good = wav(d / "good.wav", 1.0)
    f = {"dir": d, "good_wav": good, "good": manifest(d / "good.jsonl", [line(good), line(good, "второй")])}
    (d / "garbage.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    sf.write(d / "whole.flac", 0.1 * np.random.default_rng(0).standard_normal(32000), 16000)
    (d / "truncated.flac").write_bytes((d / "whole.flac").read_bytes()[:6000])
    (d / "model.nemo").write_text("not an archive", encoding="utf-8")
    (d / "a_file").write_text("x", encoding="utf-8")

    def ctc(cfg):
        cfg["target"] = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
        return cfg

    f["ctc_nemo"] = rewrite_nemo(tiny_model_path, d / "ctc.nemo", config=ctc)
    return f


def cli(files, tiny_model_path, **overrides) -> list[str]:
    d = files["dir"]
    settings = {"nemo": tiny_model_path, "train": files["good"], "val": files["good"], "exp_dir": d / "exp",
                "export_nemo": d / "out" / "x.nemo", "data_dir": d / "cuts", "precision": "32", "max_steps": 2}
    settings.update(overrides)
    argv = []
    for k, v in settings.items():
        argv += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return argv


def _case_args(name: str, f: dict) -> tuple[dict, list[str]]:
    d, good = f["dir"], f["good_wav"]
    if name == "missing manifest":
        return {"train": d / "nope.jsonl"}, ["--train", "nope.jsonl", "not found", "NeMo JSONL manifest"]
    if name == "bad JSON line":
        m = manifest(d / "badjson.jsonl", [line(good), '{"audio_filepath": "a.wav", "text": "x"'])
        return {"train": m}, ["badjson.jsonl", "line 2: not valid JSON", '"audio_filepath": "a.wav"']
    if name == "missing audio":
        m = manifest(d / "missing.jsonl", [line(d / "gone1.wav"), line(good), line(d / "gone2.wav"),
                                           line(d / "gone3.wav")])
        return {"train": m}, ["missing.jsonl", "3 audio files not found (of 4)", "line 1:", "gone1.wav",
                              "line 3:", "line 4:", "gone3.wav", "--skip_bad"]
    if name == "corrupt audio":
        m = manifest(d / "corrupt.jsonl", [line(good), line(d / "garbage.wav"), line(d / "truncated.flac")])
        return {"val": m}, ["corrupt.jsonl", "2 unreadable or corrupt", "line 2:", "garbage.wav", "line 3:",
                            "truncated.flac", "does not decode to its end", "--skip_bad"]
    if name == "empty text":
        m = manifest(d / "empty.jsonl", [line(good), line(good, "   ")])
        return {"train": m}, ["empty.jsonl", "line 2: empty text", "good.wav", "fill in the transcript"]
    if name == "all clips too long":
        return {"max_duration": 0.5}, ["good.jsonl", "no usable clips left", "2 longer than --max_duration 0.5 s",
                                       "raise it"]
    if name == "unknown language":
        m = manifest(d / "lang.jsonl", [line(good, source_lang="xx")])
        return {"train": m}, ["Language not supported", "lang.jsonl uses xx", "knows only: en, ru"]
    if name == "nemo missing":
        return {"nemo": d / "gone.nemo"}, ["--nemo", "gone.nemo", "file not found"]
    if name == "nemo not an archive":
        return {"nemo": d / "model.nemo"}, ["--nemo", "model.nemo", "not a .nemo archive"]
    if name == "nemo not Canary":
        return {"nemo": f["ctc_nemo"]}, ["ctc.nemo", "EncDecCTCModel checkpoint, not an EncDecMultiTaskModel"]
    if name == "exp_dir not writable":
        return {"exp_dir": d / "a_file" / "exp"}, ["cannot create --exp_dir", "a_file"]
    if name == "export folder not writable":
        return {"export_nemo": d / "a_file" / "x.nemo"}, ["--export_nemo folder", "a_file"]
    if name == "lr nan":
        return {"lr": "nan"}, ["--lr must be a finite number, got nan"]
    if name == "data_dir is a file":
        return {"data_dir": d / "a_file"}, ["--data_dir", "a_file", "is not a directory"]
    if name == "export_nemo is a folder":
        (d / "folder.nemo").mkdir(exist_ok=True)
        return {"export_nemo": d / "folder.nemo"}, ["--export_nemo", "folder.nemo is a folder", "model.nemo"]
    if name == "garbage resume file":
        return {"resume": d / "model.nemo"}, ["--resume", "model.nemo: not a checkpoint this tool can read"]
    raise KeyError(name)


CASES = ["missing manifest", "bad JSON line", "missing audio", "corrupt audio", "empty text", "all clips too long",
         "unknown language", "nemo missing", "nemo not an archive", "nemo not Canary", "exp_dir not writable",
         "export folder not writable", "lr nan", "data_dir is a file", "export_nemo is a folder",
         "garbage resume file"]


@pytest.mark.parametrize("name", CASES)
def test_bad_input_fails_fast_with_a_clear_message(name, files, tiny_model_path):
    overrides, expected = _case_args(name, files)
    t0 = time.monotonic()
    code, out = run(cli(files, tiny_model_path, **overrides), timeout=120)
    elapsed = time.monotonic() - t0
    assert code == 2, out
    for text in expected:
        assert text in out, f"{text!r} missing from:\n{out}"
    assert "Traceback" not in out and "[NeMo " not in out, out  # stopped before NeMo was imported (no NeMo log line)
    assert elapsed < PREFLIGHT_S, f"preflight took {elapsed:.1f} s"


def test_lora_targets_matching_nothing_after_skip_bad(files, tiny_model_path):
    """--skip_bad skips the missing files (and says so), a too-long clip is dropped with a note; then the target
    patterns match no module: exit 2 before any training, listing real module names."""
    d, good = files["dir"], files["good_wav"]
    long_clip = wav(d / "long.wav", 3.0)
    m = manifest(d / "skip.jsonl", [line(good), line(d / "gone.wav"), line(long_clip), line(good, "ещё")])
    code, out = run(cli(files, tiny_model_path, train=m, max_duration=2.0, skip_bad=True,
                        lora_targets=r"decoder\.linear_qkv", exp_dir=d / "exp-targets"), timeout=600)
    assert code == 2, out
    assert "skip.jsonl: 2 clips" in out and "1 dropped as too long" in out and "1 skipped" in out, out
    assert "gone.wav (not found)" in out
    assert "--lora_targets matched no nn.Linear module (patterns: decoder\\.linear_qkv)" in out
    assert "encoder.layers.0.self_attn.linear_q" in out  # shows names that do exist
    assert "Traceback" not in out
    assert not (d / "exp-targets" / "checkpoints").exists()


def test_oom_message_says_what_to_do():
    from common.training.callbacks import oom_message
    from common.config import TrainConfig

    msg = oom_message(TrainConfig(bs=8, accum=2, max_duration=30.0, precision="fp16", exp_dir="exp/run1"))
    assert msg.startswith("CUDA out of memory with --bs 8 --accum 2")
    assert "max clip 30 s" in msg and "precision fp16" in msg
    assert "--bs 4 --accum 4" in msg and "same effective batch 16" in msg
    assert "--max_duration" in msg and "exp/run1/checkpoints" in msg and "--resume auto" in msg


def test_44k_stereo_is_resampled_and_downmixed_end_to_end(tmp_path, tiny_model):
    """A 44.1 kHz stereo file goes through validation, the cut cache and the loader as 16 kHz mono, and trains."""
    import torch

    from common.data.cuts import build_cuts
    from common.data.loader import LoaderSettings, make_loader
    from common.data.manifest import load_manifest
    from common.model.steps import compute_loss

    mono = wav(tmp_path / "mono16k.wav", 1.5)
    stereo = wav(tmp_path / "stereo44k.wav", 1.5, sr=44100, channels=2)  # right channel = half the left
    m = manifest(tmp_path / "m.jsonl", [line(mono), line(stereo)])
    report = load_manifest(m)
    notes = " ".join(report.notes)
    assert "1 clip is 44100 Hz: it will be resampled to 16000 Hz" in notes
    assert "1 clip is stereo: it will be downmixed to mono" in notes

    cuts, built = build_cuts(report, tmp_path / "cuts", tiny_model.prompt_format)
    assert built
    loader = make_loader(cuts, tiny_model.tokenizer, tiny_model.prompt, LoaderSettings(batch_size=2), train=False)
    batch = next(iter(loader))
    assert batch.audio.dim() == 2 and batch.audio.shape[0] == 2  # (batch, samples): mono
    assert batch.audio_lens.tolist() == [24000, 24000]  # 1.5 s at 16 kHz, both
    a, b = batch.audio[0].double(), batch.audio[1].double()
    # the downmix averages the channels: 0.75 x the tone; resampling keeps its shape
    ratio = float((a @ b) / (a @ a))
    corr = float((a @ b) / (a.norm() * b.norm()))
    assert abs(ratio - 0.75) < 0.02 and corr > 0.999, (ratio, corr)
    downmixed = batch.cuts[1]  # transcript and prompt fields survive the downmix
    assert [s.text for s in downmixed.supervisions] == ["привет мир"]
    assert downmixed.custom["source_lang"] == downmixed.custom["target_lang"] == "ru"

    tiny_model.train()
    loss, tokens = compute_loss(tiny_model, batch)
    loss.backward()
    assert torch.isfinite(loss) and tokens > 0
