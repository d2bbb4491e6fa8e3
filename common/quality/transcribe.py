"""`just transcribe`: a Canary `.nemo` (a merged export or a base model) over audio files, one JSONL row per file.

Everything is checked before NeMo loads: the checkpoint, the inputs, every file's header and end (a corrupt file is
reported and skipped, the rest transcribed). Files longer than the checkpoint's window are cut into windows
(`common.quality.windows`); every window is a Lhotse cut made the way training makes them, batched longest first
(similar lengths share a batch, so little padding is computed, and the largest batch comes first: a batch size
that does not fit fails at once), and decoded with the model's own decoding through `evaluate.transcribe`, the
path `just eval` and validation use. bf16 on a GPU that has it, fp32 elsewhere.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.data.inputs import Input, read_inputs
from common.errors import UserError
from common.flags import flag
from common.messages import disp, plural

TIMESTAMPS_MEMBER = "timestamps_asr_model_config.yaml"


@dataclass(frozen=True)
class TranscribeSettings:
    nemo: str = flag(None, "the Canary .nemo: a merged export or a base model", type=str)
    audio: str = flag(None, "an audio file, a folder (searched recursively) or a JSONL manifest (with text: WER "
                            "and CER are printed too)", type=str)
    out: str | None = flag(None, "JSONL to write, one row per file: audio_filepath, duration, text (default: the "
                                 "texts are printed)", type=str)
    lang: str = flag("ru", "language spoken (source_lang = target_lang), unless a manifest line says otherwise")
    pnc: str = flag("yes", "punctuation and capitals in the text", choices=("yes", "no"))
    bs: int = flag(16, "windows per batch (longest first: the first batch shows whether it fits)")
    timestamps: bool = flag(False, "word timestamps, for checkpoints that carry NeMo's timestamps model "
                                   "(canary-1b-v2 does; the tiny default does not)")
    vs_nemo: bool = flag(False, "also time NeMo's own transcribe() on the same files and print both speeds")
    num_workers: int = 0


@dataclass
class Plan:
    """The windows to decode and what each belongs to."""

    inputs: list[Input]
    durations: dict[int, float] = field(default_factory=dict)  # input index -> seconds transcribed
    windows: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # input index -> (start, end)
    overlapped: dict[int, list[bool]] = field(default_factory=dict)
    skipped: list[tuple[Input, str]] = field(default_factory=list)
    entries: list = field(default_factory=list)  # ManifestEntry per window, line = window number
    owner: list[tuple[int, int]] = field(default_factory=list)  # window number -> (input index, window index)
    overlap_s: float = 0.0  # how far a window reaches back into the previous one where no pause was found


def check(s: TranscribeSettings):
    """The checkpoint, the inputs and the output folder, before NeMo loads."""
    from common.data.fields import norm_lang
    from common.model.archive import check_languages, inspect_nemo
    from common.rundir import check_writable_dir

    problems = [f"--{n} is required" for n in ("nemo", "audio") if not getattr(s, n)]
    if s.bs < 1:
        problems.append(f"--bs must be >= 1, got {s.bs}")
    if norm_lang(s.lang) is None:
        problems.append(f"--lang {s.lang!r} must be a language code such as ru or en")
    if s.out and not s.out.endswith((".jsonl", ".json")):
        problems.append(f"--out must end with .jsonl, got {s.out!r}")
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    info = inspect_nemo(s.nemo)
    inputs = read_inputs(s.audio)
    langs = {s.lang} | {x for i in inputs for x in (i.source_lang, i.target_lang) if x}
    check_languages(info, {"--lang and the inputs": langs})
    if s.timestamps and not any(m.endswith(TIMESTAMPS_MEMBER) for m in info.members):
        raise UserError(f"--timestamps: {info.path.name} carries no timestamps model ({TIMESTAMPS_MEMBER} is not in "
                        f"the archive), so it cannot give word times. canary-1b-v2 carries one, and so do exports "
                        f"made from it; the tiny default and other checkpoints do not. Drop --timestamps.")
    if s.out:
        check_writable_dir(Path(s.out).expanduser().parent, "--out folder")
    return info, inputs


def _mono(path: str, start: float, end: float) -> tuple:
    import soundfile

    with soundfile.SoundFile(path) as f:
        f.seek(int(start * f.samplerate))
        data = f.read(int((end - start) * f.samplerate), dtype="float32", always_2d=True)
        return data.mean(axis=1), f.samplerate


def plan(inputs: list[Input], s: TranscribeSettings, window_s: float) -> Plan:
    """Probe every file, skip the unusable ones, and cut the long ones into windows."""
    from common.data.audio import probe_all
    from common.data.entries import ManifestEntry
    from common.quality.windows import overlap_seconds, plan as plan_windows

    out = Plan(inputs=inputs)
    probes = probe_all([i.audio for i in inputs], progress="reading audio headers")
    for index, inp in enumerate(inputs):
        audio = probes[inp.audio]
        if isinstance(audio, str):
            out.skipped.append((inp, audio))
            continue
        start = inp.offset or 0.0
        end = min(audio.duration, start + inp.duration) if inp.duration else audio.duration
        if end - start <= 0:
            out.skipped.append((inp, f"offset {start:g} s is past its end at {audio.duration:.2f} s"))
            continue
        if end - start <= window_s:
            windows = [(start, end)]
        else:
            samples, rate = _mono(inp.audio, start, end)
            windows = [(start + a, start + b) for a, b in plan_windows(samples, rate, window_s)]
        out.durations[index] = end - start
        out.windows[index] = windows
        out.overlapped[index] = [nxt[0] < cur[1] for cur, nxt in zip(windows, windows[1:])]
        for w, (a, b) in enumerate(windows):
            out.owner.append((index, w))
            out.entries.append(ManifestEntry(
                line=len(out.entries), audio_filepath=inp.audio, duration=b - a, text="",
                source_lang=inp.source_lang or s.lang, target_lang=inp.target_lang or s.lang, pnc=inp.pnc or s.pnc,
                sample_rate=audio.sample_rate, channels=audio.channels, extra={"offset": a} if a else {}))
    out.overlap_s = overlap_seconds(window_s)
    return out


def window_id(number: int) -> str:
    return f"w-{number:07d}"


def window_batches(model, p: Plan, bs: int, num_workers: int = 0):
    """A DataLoader of the windows, longest first, `bs` per batch, batched as training batches them."""
    import torch
    from lhotse import CutSet
    from nemo.collections.asr.data.audio_to_text_lhotse_prompted import PromptedAudioToTextLhotseDataset

    from common.data.cuts import _cut_for  # the cut training would make of the same manifest line

    cuts = []
    for entry in p.entries:
        cut = _cut_for(entry, "w", model.prompt_format)
        if cut.duration > entry.duration + 1e-3:  # a first window (offset 0) of a longer file
            cut = cut.truncate(offset=0.0, duration=entry.duration)
        cut.id = window_id(entry.line)  # a segment's cut gets a random id; the texts are looked up by this one
        cuts.append(cut)
    cuts.sort(key=lambda c: -c.duration)
    batches = [CutSet.from_cuts(cuts[i:i + bs]) for i in range(0, len(cuts), bs)]
    dataset = PromptedAudioToTextLhotseDataset(tokenizer=model.tokenizer, prompt=model.prompt)
    return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None, num_workers=num_workers)


def precision(device):
    """bf16 autocast on a GPU that has bf16, else nothing (fp32)."""
    import contextlib

    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decode(model, p: Plan, bs: int, num_workers: int = 0) -> tuple[dict[str, str], float]:
    """Window cut id -> text, and the seconds decoding took."""
    import torch

    from common.quality.evaluate import transcribe

    device = next(model.parameters()).device
    loader = window_batches(model, p, bs, num_workers)
    t0 = time.perf_counter()
    with precision(device):
        rows = transcribe(model, loader, total=len(p.entries), desc="transcribing")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {r["id"]: r["hyp"] for r in rows}, time.perf_counter() - t0


def texts(p: Plan, hyps: dict[str, str]) -> list[dict]:
    """One row per transcribed input, in input order; inputs whose audio failed to load join the skipped."""
    from common.quality.windows import join

    pieces: dict[int, list[str | None]] = {i: [None] * len(w) for i, w in p.windows.items()}
    for number, (index, w) in enumerate(p.owner):
        pieces[index][w] = hyps.get(window_id(number))
    rows = []
    for index, parts in pieces.items():
        inp = p.inputs[index]
        if any(part is None for part in parts):
            p.skipped.append((inp, "the audio failed to load while decoding"))
            continue
        row = {"audio_filepath": inp.shown, "duration": round(p.durations[index], 3),
               "text": join(parts, p.overlapped[index], p.overlap_s)}
        if len(parts) > 1:
            row["windows"] = len(parts)
        if inp.ref is not None:
            row["ref"] = inp.ref
        rows.append(row)
    return rows


def run_transcribe(s: TranscribeSettings) -> dict:
    """Check, plan, load, decode, join and write; returns the rows and the figures printed."""
    import torch

    from common.model.io import restore
    from common.quality.windows import window_seconds

    info, inputs = check(s)
    window_s = window_seconds(info.config)
    p = plan(inputs, s, window_s)
    for inp, why in p.skipped:
        print(f"[transcribe] skipped {disp(inp.shown)}: {why}", file=sys.stderr, flush=True)
    if not p.entries:
        raise UserError(f"--audio {s.audio}: none of the {plural(len(inputs), 'file')} could be read")
    long = sum(1 for w in p.windows.values() if len(w) > 1)
    print(f"[transcribe] {plural(len(p.windows), 'file')}, {sum(p.durations.values()):.1f} s of audio; window "
          f"{window_s:g} s" + (f" ({long} longer, cut into {len(p.entries)} windows)" if long else ""), flush=True)
    if s.timestamps:
        from common.quality.timestamps import with_timestamps

        rows, seconds = with_timestamps(info, p, s)
    else:
        model = restore(info.path, map_location="cuda" if torch.cuda.is_available() else "cpu", info=info)
        hyps, seconds = decode(model, p, s.bs, s.num_workers)
        rows = texts(p, hyps)
    return finish(s, p, rows, seconds)


def finish(s: TranscribeSettings, p: Plan, rows: list[dict], seconds: float) -> dict:
    from common.atomic import write_text

    audio = sum(r["duration"] for r in rows)
    result = {"rows": rows, "audio_s": audio, "decode_s": seconds, "skipped": [(i.shown, why) for i, why in p.skipped],
              "audio_s_per_s": audio / seconds if seconds > 0 else None}
    if s.out:
        write_text(Path(s.out).expanduser(), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    else:
        for r in rows:
            print(f"{r['audio_filepath']}\t{r['text']}", flush=True)
    speed = f" ({result['audio_s_per_s']:.1f} audio s/s)" if result["audio_s_per_s"] else ""
    where = f" -> {s.out}" if s.out else ""
    print(f"[transcribe] {plural(len(rows), 'file')} transcribed in {seconds:.1f} s{speed}{where}"
          + (f"; {len(p.skipped)} skipped" if p.skipped else ""), flush=True)
    scored = [r for r in rows if "ref" in r]
    if scored:
        from common.quality.scoring import score_both

        scores = score_both([{"ref": r["ref"], "hyp": r["text"], "lang": s.lang} for r in scored])
        result["scores"] = scores
        norm, raw = scores["normalized"], scores["raw"]
        print(f"[transcribe] against the manifest's text ({plural(len(scored), 'file')}): WER {norm['wer']:.4f}  "
              f"CER {norm['cer']:.4f} normalized; WER {raw['wer']:.4f}  CER {raw['cer']:.4f} raw", flush=True)
    return result
