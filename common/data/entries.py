"""What a checked manifest is made of: its usable lines (`ManifestEntry`) and what was kept, dropped and noted."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.messages import plural
from common.fmt import fmt_duration


@dataclass(frozen=True)
class ManifestEntry:
    """One usable manifest line, with paths resolved and prompt fields filled in."""

    line: int
    audio_filepath: str
    duration: float
    text: str
    source_lang: str
    target_lang: str
    pnc: str
    sample_rate: int
    channels: int
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_manifest(self) -> dict[str, Any]:
        """The line as NeMo should read it: resolved path, checked duration, filled prompt fields, extras kept."""
        core = {
            "audio_filepath": self.audio_filepath,
            "duration": self.duration,
            "text": self.text,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "pnc": self.pnc,
        }
        return {**core, **self.extra}


@dataclass
class ManifestReport:
    """What `load_manifest` kept, dropped and skipped, plus notes worth showing the user."""

    path: Path
    entries: list[ManifestEntry]
    dropped_too_long: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_duration(self) -> float:
        return sum(e.duration for e in self.entries)

    def summary(self) -> str:
        """One line, e.g. `train.jsonl: 118 clips, 0.42 h; 2 dropped as too long; 1 skipped`."""
        parts = [f"{self.path.name}: {plural(len(self.entries), 'clip')}, {fmt_duration(self.total_duration)}"]
        if self.dropped_too_long:
            parts.append(f"{len(self.dropped_too_long)} dropped as too long")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return "; ".join(parts)


@dataclass(frozen=True)
class Row:
    """A line that parsed cleanly; its audio is not checked yet."""

    line: int
    audio_filepath: str  # resolved
    duration: float | None
    offset: float | None  # set when the line names a segment of a longer file
    text: str
    source_lang: str
    target_lang: str
    pnc: str
    extra: dict[str, Any]
