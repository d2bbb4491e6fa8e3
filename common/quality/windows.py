"""Long audio in windows the model can take, and their texts joined back into one.

A Canary attends over the whole clip at once and was trained on clips up to a maximum length (40 s for
canary-1b-v2, its `train_ds.max_duration`); longer audio is cut into windows of at most that length.

Where a window is cut matters more than how the texts are joined: a word cut in two is misheard on both sides.
So each window ends in the middle of the quietest 200 ms stretch in its second half when that stretch is a
pause (25 dB below the speech around it); the next window starts there, with no overlap, and the texts are simply concatenated. Only
where the second half holds no pause (music, crosstalk, noise) does the window end at its full length, the next
one start `overlap` seconds earlier, and the two texts get joined on the longest run of words they share in the
overlap: the first window's words up to that run, the second's from it on (NeMo's long-form transcription joins
its chunks the same way, on tokens). The words mangled at a cut edge lie outside the shared run on both sides
and are dropped.
"""
from __future__ import annotations

import string
from difflib import SequenceMatcher

import numpy as np

DEFAULT_WINDOW_S = 40.0  # canary-1b-v2's training maximum, and what NeMo's own long-form transcription uses
FRAME_S = 0.02
PAUSE_S = 0.2  # a pause is at least this long
PAUSE_DB = 25.0  # and this far below the speech level of its window
WORDS_PER_S = 4.0  # a generous speech rate: how many words an overlap can hold


def window_seconds(config: dict) -> float:
    """The longest clip the checkpoint was trained on: `train_ds.max_duration`, else 40 s."""
    for section in ("train_ds", "validation_ds"):
        value = (config.get(section) or {}).get("max_duration")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 3600:
            return float(value)
    return DEFAULT_WINDOW_S


def overlap_seconds(window_s: float) -> float:
    return min(2.0, window_s / 8)


def _levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Loudness per 20 ms frame, smoothed over 200 ms (a pause must last that long), in dB."""
    frame = max(1, int(FRAME_S * sample_rate))
    n = len(samples) // frame
    power = np.square(samples[: n * frame].astype(np.float64)).reshape(n, frame).mean(axis=1)
    width = max(1, int(PAUSE_S / FRAME_S))
    smooth = np.convolve(power, np.ones(width) / width, mode="same") if n >= width else power
    return 10 * np.log10(smooth + 1e-12)


def plan(samples: np.ndarray, sample_rate: int, window_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each window over mono `samples`; one window when the audio fits."""
    total = len(samples) / sample_rate
    if total <= window_s:
        return [(0.0, total)]
    levels = _levels_db(samples, sample_rate)
    overlap = overlap_seconds(window_s)
    windows: list[tuple[float, float]] = []
    start = 0.0
    while total - start > window_s:
        lo, hi = int((start + window_s / 2) / FRAME_S), int((start + window_s) / FRAME_S)
        region = levels[lo:hi]
        speech = np.percentile(levels[int(start / FRAME_S):hi], 90)
        quietest = int(np.argmin(region)) if len(region) else 0
        if len(region) and region[quietest] < speech - PAUSE_DB:
            cut = (lo + _middle(region, quietest) + 0.5) * FRAME_S
            windows.append((start, cut))
            start = cut
        else:
            windows.append((start, start + window_s))
            start = start + window_s - overlap
    windows.append((start, total))
    return windows


def _middle(levels: np.ndarray, quietest: int) -> int:
    """The middle of the pause around the quietest frame (frames within 3 dB of it): a cut there leaves each
    window some silence around its words, as the clips the model was trained on have."""
    floor = levels[quietest] + 3.0
    start = end = quietest
    while start > 0 and levels[start - 1] <= floor:
        start -= 1
    while end < len(levels) - 1 and levels[end + 1] <= floor:
        end += 1
    return (start + end) // 2


def _key(word: str) -> str:
    return word.lower().strip(string.punctuation + "«»„“”—–…")


def join(texts: list[str], overlapped: list[bool], overlap_s: float) -> str:
    """One text from consecutive windows' texts; `overlapped[i]`: window i+1 starts inside window i."""
    words = texts[0].split() if texts else []
    most = max(3, int(overlap_s * WORDS_PER_S) + 2)
    for text, shared in zip(texts[1:], overlapped):
        nxt = text.split()
        if not shared or not words or not nxt:
            words += nxt
            continue
        tail, head = words[-most:], nxt[:most]
        match = SequenceMatcher(None, [_key(w) for w in tail], [_key(w) for w in head],
                                autojunk=False).find_longest_match(0, len(tail), 0, len(head))
        if match.size == 0:
            words += nxt  # nothing in common: the overlap held no whole word on one side
            continue
        words = words[: len(words) - len(tail) + match.a] + nxt[match.b:]
    return " ".join(words)
