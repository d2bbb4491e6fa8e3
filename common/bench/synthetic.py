"""Synthetic speech-shaped data for the bench: noise with speech's long-term spectrum and syllable rhythm, with
Russian transcripts of a realistic length, generated with numpy in a second (a GPU machine needs no espeak)."""
from __future__ import annotations

import json
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from common.atomic import atomic_path, write_text

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class SyntheticSet:
    root: Path
    manifest: Path
    label: str  # "15s" or "2-30s": names the set in tables
    durations: tuple[float, ...]
    mean_tokens: float

    @property
    def total_s(self) -> float:
        return float(sum(self.durations))

    @property
    def mean_s(self) -> float:
        return self.total_s / max(1, len(self.durations))


def approx_tokens(text: str) -> int:
    """Rough token count when no tokenizer is at hand (about 3 characters per piece for Russian)."""
    return max(1, round(len(text) / 3.0))


def token_counter(tokenizer, lang: str = "ru") -> Callable[[str], int]:
    """Count tokens as `tokenizer` (unified or aggregate Canary tokenizer) would for `lang`."""
    if hasattr(tokenizer, "tokenizers_dict"):  # aggregate: one SentencePiece model per language
        return lambda text: len(tokenizer.text_to_ids(text, lang))
    return lambda text: len(tokenizer.text_to_tokens(text))


def speech_like_noise(n_samples: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Noise with speech's long-term spectrum, modulated at syllable rate with short pauses (float32, peak 0.3)."""
    spectrum = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.fft.rfftfreq(n_samples, 1.0 / sample_rate)
    # rises to a plateau around 150-500 Hz, then falls about 6 dB per octave, like the long-term speech spectrum
    shape = (f / 150.0) ** 2 / (1.0 + (f / 150.0) ** 2) / (1.0 + f / 500.0)
    y = np.fft.irfft(spectrum * shape, n_samples)
    t = np.arange(n_samples) / sample_rate
    rate = rng.uniform(3.5, 5.5)  # syllables per second
    envelope = np.sin(np.pi * rate * t + rng.uniform(0, np.pi)) ** 2
    # pauses between words: about one 0.25-s frame in seven is silent, edges smoothed over 25 ms
    frame = int(0.25 * sample_rate)
    gate = (rng.random(n_samples // frame + 1) > 0.15).astype(np.float64).repeat(frame)[:n_samples]
    width = int(0.025 * sample_rate)
    c = np.cumsum(np.concatenate([np.zeros(width), gate]))
    gate = (c[width:] - c[:-width]) / width
    y *= envelope * gate
    peak = float(np.abs(y).max()) or 1.0
    return (0.3 * y / peak).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    pcm = np.clip(audio * 32767.0, -32768, 32767).astype("<i2")
    with atomic_path(path, suffix=".wav") as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def synthetic_set(root: str | os.PathLike, n: int, duration_s: float | tuple[float, float], *, seed: int = 0,
                  tokens_per_second: float = 5.5, count_tokens: Callable[[str], int] | None = None,
                  lang: str = "ru") -> SyntheticSet:
    """Write `n` 16 kHz mono WAVs and a canary2 JSONL manifest under `root` (regenerated every call).

    `duration_s` is one length for every clip, or `(min, max)` for a mixed-length set (uniform). Each transcript
    concatenates Russian demo sentences until it reaches about `tokens_per_second` tokens per second of audio
    (about 80 tokens for 15 s, as in real read speech), counted by `count_tokens` (pass the model tokenizer's).
    """
    from common.embedded.sentences import generate_sentences

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    mixed = isinstance(duration_s, (tuple, list))
    lo, hi = (float(duration_s[0]), float(duration_s[1])) if mixed else (float(duration_s), float(duration_s))
    if not 0 < lo <= hi:
        raise ValueError(f"clip durations must be positive with min <= max, got {duration_s}")
    count = count_tokens or approx_tokens
    root = Path(root).resolve()
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    for old in wav_dir.glob("*.wav"):  # a previous set with more clips must not leave strays behind
        old.unlink()
    rng = np.random.default_rng(seed)
    pool = generate_sentences(400, seed)
    lines, durations, tokens = [], [], []
    for i in range(n):
        dur = round(float(rng.uniform(lo, hi)) if mixed else lo, 3)
        samples = int(round(dur * SAMPLE_RATE))
        path = wav_dir / f"clip{i:05d}.wav"
        _write_wav(path, speech_like_noise(samples, rng), SAMPLE_RATE)
        target = max(1, round(tokens_per_second * dur))
        text, n_tok = "", 0
        while n_tok < target:
            text = f"{text} {pool[int(rng.integers(len(pool)))]}".strip()
            n_tok = count(text)
        # a whole sentence overshoots by up to ~15 tokens: drop words while the target is still reached
        words = text.split()
        while len(words) > 1 and count(" ".join(words[:-1])) >= target:
            words.pop()
        text = " ".join(words)
        n_tok = count(text)
        durations.append(samples / SAMPLE_RATE)
        tokens.append(n_tok)
        lines.append(json.dumps({"audio_filepath": str(path), "duration": samples / SAMPLE_RATE, "text": text,
                                 "source_lang": lang, "target_lang": lang, "pnc": "yes"}, ensure_ascii=False))
    manifest = write_text(root / "manifest.jsonl", "".join(line + "\n" for line in lines))
    label = f"{lo:g}-{hi:g}s" if mixed else f"{lo:g}s"
    return SyntheticSet(root=root, manifest=manifest, label=label, durations=tuple(durations),
                        mean_tokens=float(np.mean(tokens)))

