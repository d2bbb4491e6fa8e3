"""A small synthetic Russian speech set for the embedded demo, built offline with espeak-ng.

The set is split into two slices so that the demo can show LoRA adaptation end to end:

* ``base``: male espeak voices at ordinary speed, clean audio. A tiny model is first trained on it; its
  validation manifest later serves as the regression set ("did adaptation break what the model knew?").
* ``adapt``: female voices, faster speech, white noise. The LoRA adapter is trained on this slice.

Sentences are split once into train and validation texts, so no validation text is ever heard in training
(in either slice). Everything is deterministic given `DemoSpec`, and the result is cached under the output
folder: a stamp (`demo.json`) records the spec, and a matching stamp means nothing is synthesized again.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from common.atomic import atomic_path, write_text
from common.embedded.sentences import ENGLISH_SENTENCES, generate_sentences
from common.errors import UserError

# Bump when the synthesis or layout changes in a way that makes old caches wrong.
FORMAT_VERSION = 2

ESPEAK = "espeak-ng"
STAMP_NAME = "demo.json"
CORPUS_NAME = "corpus.txt"
MANIFEST_NAMES = ("base_train", "base_val", "adapt_train", "adapt_val")
PEAK = 0.9  # peak level after normalisation; leaves headroom so 16-bit PCM never clips

# ---------------------------------------------------------------------------------------------------------
# Spec and slices
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoSpec:
    """What to build. Any change to a field invalidates the cache."""

    # Thousands of distinct texts: with a few hundred, a small decoder learns the sentences by heart and
    # outputs one of them whatever it hears; with this many it has to listen.
    n_sentences: int = 2600
    seed: int = 1234
    val_sentences: int = 100  # held out from training in both slices
    adapt_train_sentences: int | None = 800  # train texts the adapt slice reads (None: all of them)
    sample_rate: int = 16000
    base_voices: tuple[str, ...] = ("m1", "m3", "m7")
    base_wpm: tuple[int, int] = (150, 175)
    base_train_copies: int = 1  # base voices per train text: more copies, more clips of the same texts
    base_snr_db: float | None = None
    adapt_voices: tuple[str, ...] = ("f2", "f4")
    adapt_wpm: tuple[int, int] = (200, 220)
    adapt_snr_db: float | None = 15.0

    def __post_init__(self) -> None:
        if self.n_sentences < 2:
            raise ValueError("n_sentences must be at least 2 (one train and one val text)")
        if not 1 <= self.val_sentences < self.n_sentences:
            raise ValueError("val_sentences must lie between 1 and n_sentences - 1")
        if self.adapt_train_sentences is not None and self.adapt_train_sentences < 1:
            raise ValueError("adapt_train_sentences must be at least 1 (or None for all train texts)")
        if not self.base_voices or not self.adapt_voices:
            raise ValueError("base_voices and adapt_voices must not be empty")
        if set(self.base_voices) & set(self.adapt_voices):
            raise ValueError("base_voices and adapt_voices must be disjoint")
        if not 1 <= self.base_train_copies <= len(self.base_voices):
            raise ValueError("base_train_copies must lie between 1 and len(base_voices)")
        for name in ("base_wpm", "adapt_wpm"):
            lo, hi = getattr(self, name)
            if not 80 <= lo <= hi <= 450:
                raise ValueError(f"{name} must be (low, high) words per minute within 80..450")

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON values (tuples become lists), the form stored in the stamp."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class Utterance:
    uid: str
    slice: str  # "base" or "adapt"
    split: str  # "train" or "val"
    text: str
    voice: str
    wpm: int
    snr_db: float | None

    @property
    def manifest(self) -> str:
        return f"{self.slice}_{self.split}"


@dataclass(frozen=True)
class DemoSet:
    """Where a built demo set lies, plus its stats (clips and hours per manifest)."""

    root: Path
    base_train: Path
    base_val: Path
    adapt_train: Path
    adapt_val: Path
    corpus: Path
    stats: dict


def split_texts(spec: DemoSpec) -> tuple[list[str], list[str]]:
    """Train and val texts: one split shared by both slices, so val texts are never heard in training."""
    sentences = generate_sentences(spec.n_sentences, spec.seed)
    return sentences[spec.val_sentences:], sentences[:spec.val_sentences]


def tokenizer_corpus(spec: DemoSpec = DemoSpec()) -> list[str]:
    """Text to train the tokenizer on: every Russian sentence of the spec, then the English ones."""
    return generate_sentences(spec.n_sentences, spec.seed) + list(ENGLISH_SENTENCES)


def _seed_for(spec: DemoSpec, uid: str) -> int:
    # hashlib, not hash(): str hashes are salted per process and would break determinism.
    return int.from_bytes(hashlib.sha256(f"{spec.seed}:{uid}".encode()).digest()[:8], "little")


def _wpm_for(spec: DemoSpec, uid: str, wpm_range: tuple[int, int]) -> int:
    return random.Random(_seed_for(spec, uid)).randint(*wpm_range)


def plan_utterances(spec: DemoSpec) -> list[Utterance]:
    """Every clip to synthesize, with its voice, speed and noise level."""
    train, val = split_texts(spec)
    out: list[Utterance] = []

    def add(slice_: str, split: str, i: int, text: str, voice: str) -> None:
        uid = f"{slice_}_{split}_{i:04d}_{voice}"
        wpm_range = spec.base_wpm if slice_ == "base" else spec.adapt_wpm
        snr = spec.base_snr_db if slice_ == "base" else spec.adapt_snr_db
        out.append(Utterance(uid, slice_, split, text, voice, _wpm_for(spec, uid, wpm_range), snr))

    bv, av = spec.base_voices, spec.adapt_voices
    # Rotating voice assignment: each voice gets an even share of texts, and neighbouring copies differ.
    for i, text in enumerate(train):
        for k in range(spec.base_train_copies):
            add("base", "train", i, text, bv[(i + k) % len(bv)])
    for i, text in enumerate(val):
        add("base", "val", i, text, bv[i % len(bv)])
    for i, text in enumerate(train[: spec.adapt_train_sentences]):
        add("adapt", "train", i, text, av[i % len(av)])
    for i, text in enumerate(val):
        add("adapt", "val", i, text, av[i % len(av)])
    return out


# ---------------------------------------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------------------------------------
_INSTALL_HINT = (
    "Install it: on Debian/Ubuntu run `apt-get install espeak-ng`; on Windows install the espeak-ng MSI from "
    "https://github.com/espeak-ng/espeak-ng/releases and make sure espeak-ng is on PATH."
)


def find_espeak() -> str:
    """Path of the espeak-ng executable, or a `UserError` saying how to install it."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise UserError(f"The demo data set is synthesized with espeak-ng, which is not on PATH. {_INSTALL_HINT}")
    return path


def available_variants(espeak: str) -> set[str]:
    """Voice variant names espeak-ng knows (the `!v/<name>` file column of `--voices=variant`)."""
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=False).stdout
    return {m.group(1) for m in re.finditer(r"!v/(\S+(?: \S+)*)", listing)}


def check_variants(espeak: str, spec: DemoSpec) -> None:
    # espeak-ng silently falls back to the default voice on an unknown variant, which would quietly make
    # the base and adapt slices sound alike, so unknown names are refused up front.
    known = available_variants(espeak)
    unknown = [v for v in (*spec.base_voices, *spec.adapt_voices) if v not in known]
    if unknown:
        raise UserError(
            f"espeak-ng has no voice variant named {', '.join(unknown)}. "
            f"Pick names listed by `espeak-ng --voices=variant` (the part after `!v/`, e.g. m1, f2)."
        )


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at `snr_db` relative to the mean power of the whole clip."""
    power = float(np.mean(audio**2))
    if power <= 0.0:
        return audio
    noise = rng.standard_normal(audio.shape) * math.sqrt(power / 10 ** (snr_db / 10))
    return audio + noise


def peak_normalise(audio: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio if top <= 0.0 else audio * (peak / top)


def synthesize(espeak: str, utt: Utterance, spec: DemoSpec, out_path: Path, tmp_dir: Path) -> float:
    """Render one clip to `out_path` (written atomically) and return its duration in seconds."""
    raw = tmp_dir / f"{utt.uid}.wav"
    cmd = [espeak, "-v", f"ru+{utt.voice}", "-s", str(utt.wpm), "-w", str(raw), utt.text]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not raw.exists():
        raise UserError(
            f"espeak-ng failed on {utt.uid} (exit {proc.returncode}): {proc.stderr.strip() or 'no output file'}. "
            f"Check that the Russian voice works: espeak-ng -v ru+{utt.voice} \"Привет\""
        )
    audio, sr = sf.read(raw, dtype="float64", always_2d=True)
    raw.unlink()
    audio = audio.mean(axis=1)
    if sr != spec.sample_rate:
        g = math.gcd(spec.sample_rate, sr)
        audio = resample_poly(audio, spec.sample_rate // g, sr // g)
    if utt.snr_db is not None:
        audio = add_noise(audio, utt.snr_db, np.random.default_rng(_seed_for(spec, utt.uid)))
    audio = peak_normalise(audio)
    with atomic_path(out_path) as tmp:
        # The temp name ends in ".tmp", so the container format must be named explicitly.
        sf.write(tmp, audio, spec.sample_rate, subtype="PCM_16", format="WAV")
    return round(len(audio) / spec.sample_rate, 3)


def _default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


def synthesize_all(
    espeak: str, utts: Sequence[Utterance], spec: DemoSpec, root: Path, workers: int | None = None
) -> dict[str, float]:
    """Render every clip in parallel (espeak-ng runs as a subprocess, so threads suffice); uid -> seconds."""
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="espeak_") as tmp, concurrent.futures.ThreadPoolExecutor(
        max_workers=workers or _default_workers()
    ) as pool:
        futures = {
            pool.submit(synthesize, espeak, u, spec, wav_path(root, u), Path(tmp)): u.uid for u in utts
        }
        with tqdm(total=len(futures), desc="espeak-ng", unit="clip", disable=None) as bar:
            for fut in concurrent.futures.as_completed(futures):
                durations[futures[fut]] = fut.result()
                bar.update(1)
    return durations


# ---------------------------------------------------------------------------------------------------------
# Building and caching
# ---------------------------------------------------------------------------------------------------------
def wav_path(root: Path, utt: Utterance) -> Path:
    return (root / "wav" / utt.slice / f"{utt.uid}.wav").resolve()


def _paths(root: Path, stats: dict) -> DemoSet:
    return DemoSet(
        root=root,
        base_train=root / "base_train.jsonl",
        base_val=root / "base_val.jsonl",
        adapt_train=root / "adapt_train.jsonl",
        adapt_val=root / "adapt_val.jsonl",
        corpus=root / CORPUS_NAME,
        stats=stats,
    )


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _cached(root: Path, spec: DemoSpec) -> DemoSet | None:
    stamp = _read_stamp(root)
    if not stamp or stamp.get("version") != FORMAT_VERSION or stamp.get("spec") != spec.to_json():
        return None
    demo = _paths(root, stamp.get("stats", {}))
    files = (demo.base_train, demo.base_val, demo.adapt_train, demo.adapt_val, demo.corpus)
    return demo if all(p.exists() for p in files) else None


def _manifest_line(root: Path, utt: Utterance, duration: float) -> str:
    entry = {
        "audio_filepath": str(wav_path(root, utt)),
        "duration": duration,
        "text": utt.text,
        "source_lang": "ru",
        "target_lang": "ru",
        "pnc": "yes",
    }
    return json.dumps(entry, ensure_ascii=False)


def _stats(utts: Sequence[Utterance], durations: dict[str, float]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for name in MANIFEST_NAMES:
        d = [durations[u.uid] for u in utts if u.manifest == name]
        total = sum(d)
        stats[name] = {
            "clips": len(d),
            "seconds": round(total, 1),
            "hours": round(total / 3600, 4),
            "min_s": min(d, default=0.0),
            "mean_s": round(total / len(d), 3) if d else 0.0,
            "max_s": max(d, default=0.0),
        }
    return stats


def _prune_stale_wavs(root: Path, keep: set[Path]) -> None:
    # A rebuild with another spec leaves clips nobody references; remove only our own *.wav files.
    for slice_ in ("base", "adapt"):
        folder = root / "wav" / slice_
        if folder.is_dir():
            for f in folder.glob("*.wav"):
                if f.resolve() not in keep:
                    f.unlink()


def build_demo_set(
    root: Path, spec: DemoSpec = DemoSpec(), *, force: bool = False, workers: int | None = None
) -> DemoSet:
    """Build (or reuse, when the stamp matches `spec`) the demo set under `root`."""
    root = Path(root).resolve()
    if not force and (cached := _cached(root, spec)) is not None:
        return cached
    espeak = find_espeak()
    check_variants(espeak, spec)
    # The stamp goes first and comes back last: a build that dies midway can never look complete.
    (root / STAMP_NAME).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    utts = plan_utterances(spec)
    durations = synthesize_all(espeak, utts, spec, root, workers)
    for name in MANIFEST_NAMES:
        lines = [_manifest_line(root, u, durations[u.uid]) for u in utts if u.manifest == name]
        write_text(root / f"{name}.jsonl", "".join(line + "\n" for line in lines))
    write_text(root / CORPUS_NAME, "".join(s + "\n" for s in tokenizer_corpus(spec)))
    _prune_stale_wavs(root, {wav_path(root, u) for u in utts})

    stats: dict[str, Any] = {"manifests": _stats(utts, durations)}
    stats["total_clips"] = len(utts)
    stats["total_hours"] = round(sum(durations.values()) / 3600, 4)
    stats["build_seconds"] = round(time.monotonic() - start, 1)
    stamp = {"version": FORMAT_VERSION, "spec": spec.to_json(), "stats": stats}
    write_text(root / STAMP_NAME, json.dumps(stamp, ensure_ascii=False, indent=2) + "\n")
    return _paths(root, stats)

