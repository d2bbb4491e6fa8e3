"""Tests for the synthetic demo speech set: real espeak-ng, real files, small specs to stay fast."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from common.embedded import speech as demo_data
from common.embedded.sentences import ENGLISH_SENTENCES, generate_sentences
from common.embedded.speech import DemoSet, DemoSpec, build_demo_set, split_texts, tokenizer_corpus
from common.errors import UserError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

SMALL = DemoSpec(n_sentences=20, val_sentences=4, adapt_train_sentences=12)
FIELDS = {"audio_filepath", "duration", "text", "source_lang", "target_lang", "pnc"}


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def voice_of(entry: dict) -> str:
    return Path(entry["audio_filepath"]).stem.rsplit("_", 1)[1]


def quietest_window_power(audio: np.ndarray, window: int = 160) -> float:
    """Mean power of the quietest 10 ms window (160 samples at 16 kHz)."""
    n = len(audio) // window
    frames = audio[: n * window].reshape(n, window)
    return float((frames**2).mean(axis=1).min())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSet:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return build_demo_set(tmp_path_factory.mktemp("demo"), SMALL)


# --- sentences -------------------------------------------------------------------------------------------
def test_sentences_are_clean_unique_and_deterministic() -> None:
    sentences = generate_sentences(400, seed=7)
    assert len(sentences) == 400
    assert len(set(sentences)) == 400
    assert sentences == generate_sentences(400, seed=7)
    assert sentences != generate_sentences(400, seed=8)
    for s in sentences:
        assert not re.search(r"[A-Za-z0-9]", s), s
        assert re.fullmatch(r"[А-ЯЁ][а-яё ]+[.?]", s), s
        assert 3 <= len(s.split()) <= 7, s
    assert any(s.endswith("?") for s in sentences)
    vocabulary = {w.strip(".?").lower() for s in sentences for w in s.split()}
    assert len(vocabulary) >= 150


def test_split_is_disjoint_and_corpus_has_both_languages() -> None:
    train, val = split_texts(DemoSpec())
    assert (len(train), len(val)) == (2500, 100)
    assert not set(train) & set(val)
    corpus = tokenizer_corpus(SMALL)
    assert corpus[:20] == generate_sentences(20, SMALL.seed)
    assert corpus[20:] == list(ENGLISH_SENTENCES)
    assert len(ENGLISH_SENTENCES) >= 50


def test_spec_rejects_overlapping_voices() -> None:
    with pytest.raises(ValueError):
        DemoSpec(base_voices=("m1", "f2"), adapt_voices=("f2",))


# --- built set -------------------------------------------------------------------------------------------
@needs_espeak
def test_manifests_and_wavs(demo: DemoSet) -> None:
    counts = {}
    for name in demo_data.MANIFEST_NAMES:
        entries = read_manifest(getattr(demo, name))
        counts[name] = len(entries)
        assert demo.stats["manifests"][name]["clips"] == len(entries)
        for e in entries:
            assert set(e) == FIELDS
            assert (e["source_lang"], e["target_lang"], e["pnc"]) == ("ru", "ru", "yes")
            path = Path(e["audio_filepath"])
            assert path.is_absolute() and path.parent == demo.root / "wav" / name.split("_")[0]
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert abs(info.frames / info.samplerate - e["duration"]) < 1e-3
            assert 0.5 < e["duration"] < 6.0
    # 16 train texts (one base voice each, 12 of them read by the adapt voices too) and 4 val texts.
    assert counts == {"base_train": 16, "base_val": 4, "adapt_train": 12, "adapt_val": 4}
    corpus = demo.corpus.read_text(encoding="utf-8").splitlines()
    assert corpus == tokenizer_corpus(SMALL)
    stamp = json.loads((demo.root / "demo.json").read_text(encoding="utf-8"))
    assert stamp["spec"] == SMALL.to_json()


@needs_espeak
def test_train_and_val_texts_are_disjoint(demo: DemoSet) -> None:
    texts = {name: [e["text"] for e in read_manifest(getattr(demo, name))] for name in demo_data.MANIFEST_NAMES}
    train = set(texts["base_train"]) | set(texts["adapt_train"])
    val = set(texts["base_val"]) | set(texts["adapt_val"])
    assert not train & val
    # The adapt slice reads a subset of the base texts; only voice, speed and noise differ.
    assert set(texts["adapt_train"]) < set(texts["base_train"])
    assert texts["base_val"] == texts["adapt_val"]


@needs_espeak
def test_voices_are_disjoint_and_rotated(demo: DemoSet) -> None:
    base = [e for name in ("base_train", "base_val") for e in read_manifest(getattr(demo, name))]
    adapt = [e for name in ("adapt_train", "adapt_val") for e in read_manifest(getattr(demo, name))]
    base_voices = {voice_of(e) for e in base}
    adapt_voices = {voice_of(e) for e in adapt}
    assert base_voices == set(SMALL.base_voices)
    assert adapt_voices == set(SMALL.adapt_voices)
    assert not base_voices & adapt_voices
    # Each base train text is read once, and the voices take turns (each reads a third of the texts).
    voices = [voice_of(e) for e in read_manifest(demo.base_train)]
    texts = [e["text"] for e in read_manifest(demo.base_train)]
    assert len(set(texts)) == len(texts)
    assert voices[:3] == list(SMALL.base_voices)
    counts = [voices.count(v) for v in SMALL.base_voices]
    assert max(counts) - min(counts) <= 1


@needs_espeak
def test_adapt_speech_is_faster(demo: DemoSet) -> None:
    # Same val texts in both slices, so durations compare like for like (200-220 vs 150-175 wpm).
    base = sum(e["duration"] for e in read_manifest(demo.base_val))
    adapt = sum(e["duration"] for e in read_manifest(demo.adapt_val))
    assert adapt < 0.9 * base


@needs_espeak
def test_noise_only_in_adapt_clips(demo: DemoSet) -> None:
    for name, noisy in (("base_val", False), ("base_train", False), ("adapt_val", True), ("adapt_train", True)):
        for e in read_manifest(getattr(demo, name))[:4]:
            audio, _ = sf.read(e["audio_filepath"], dtype="float64")
            assert np.max(np.abs(audio)) <= demo_data.PEAK + 1e-3  # normalised, no clipping
            floor = quietest_window_power(audio)
            if not noisy:
                assert floor < 1e-8, e  # espeak pauses stay (near) digital silence
                continue
            # The quietest window holds noise alone, so whole-clip power over it is roughly the SNR
            # (15 dB, plus a little because the minimum over many windows sits below the mean).
            ratio_db = 10 * np.log10(np.mean(audio**2) / floor)
            assert 12.0 < ratio_db < 21.0, (e, ratio_db)


# --- caching ---------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@needs_espeak
def test_cache_reuses_and_spec_change_rebuilds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DemoSpec(n_sentences=10, val_sentences=2)
    first = build_demo_set(tmp_path, spec)
    before = snapshot(tmp_path)

    def no_synthesis(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached build synthesized audio")

    with monkeypatch.context() as m:
        m.setattr(demo_data, "synthesize_all", no_synthesis)
        again = build_demo_set(tmp_path, spec)
    assert again == first
    assert snapshot(tmp_path) == before

    changed = DemoSpec(n_sentences=8, val_sentences=2, adapt_snr_db=20.0)
    rebuilt = build_demo_set(tmp_path, changed)
    after = snapshot(tmp_path)
    stamp = json.loads((tmp_path / "demo.json").read_text(encoding="utf-8"))
    assert stamp["spec"] == changed.to_json()
    assert rebuilt.stats["manifests"]["adapt_train"]["clips"] == 6
    for path in (rebuilt.base_train, rebuilt.adapt_val, rebuilt.corpus):
        assert after[path] != before[path]
    # Every remaining clip was rewritten, and clips of the old spec are gone.
    wavs = {p for p in after if p.suffix == ".wav"}
    referenced = {
        Path(e["audio_filepath"]) for name in demo_data.MANIFEST_NAMES for e in read_manifest(getattr(rebuilt, name))
    }
    assert wavs == referenced
    assert all(after[p] != before.get(p) for p in wavs)
    # No temp files left behind by the atomic writes.
    assert not [p for p in after if p.name.endswith(".tmp")]


@needs_espeak
def test_force_rebuilds(tmp_path: Path) -> None:
    spec = DemoSpec(n_sentences=4, val_sentences=1)
    build_demo_set(tmp_path, spec)
    before = snapshot(tmp_path)
    build_demo_set(tmp_path, spec, force=True)
    after = snapshot(tmp_path)
    assert after.keys() == before.keys()
    assert all(after[p] != before[p] for p in after)


# --- errors and command line -----------------------------------------------------------------------------
def test_missing_espeak_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="apt-get install espeak-ng") as err:
        build_demo_set(tmp_path / "out", DemoSpec(n_sentences=4, val_sentences=1))
    assert "PATH" in str(err.value) and "MSI" in str(err.value)


@needs_espeak
def test_unknown_variant_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nosuchvoice"):
        build_demo_set(tmp_path, DemoSpec(n_sentences=4, val_sentences=1, adapt_voices=("nosuchvoice",)))


@needs_espeak
def test_stats_count_every_clip(tmp_path: Path) -> None:
    stats = build_demo_set(tmp_path, DemoSpec(n_sentences=5, val_sentences=1)).stats
    assert stats["manifests"]["base_val"]["clips"] == 1
    assert stats["total_clips"] == 4 + 1 + 4 + 1
