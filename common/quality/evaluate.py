"""Evaluate a Canary `.nemo` on a manifest, optionally against a baseline: WER/CER overall and per language.

`just eval --nemo X --manifest M [--baseline Y]` runs `run_eval`. The order is the training run's: the manifest and
both checkpoints are checked first (no NeMo import), then each model is loaded in turn, transcribes the
manifest in batches with its own decoding (greedy unless `--beam N`), and is freed before the next one loads.

Scores are corpus-level (see `common.quality.metrics`) and computed under both normalizations; `--normalization` picks
the one that leads the report and orders the per-utterance list. `eval.json` holds every transcript, so any
figure can be recomputed independently; `eval.md` is the readable version. Both are written atomically.

The scoring helpers (`common.quality.scoring`) are shared with the training run report.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import write_text
from common.errors import UserError
from common.flags import flag
from common.quality.eval_report import render_eval_md
from common.quality.metrics import NORMALIZATIONS, utterance_errors
from common.quality.scoring import DEFAULT_NORMALIZATION, NORMALIZATION_NOTES, differences, rate_dict, score_both

DEFAULT_OUT = "exp/eval"


@dataclass(frozen=True)
class EvalSettings:
    """What `just eval` was asked for: its own flags, plus the data flags it shares with training (TrainConfig's
    max_duration, skip_bad, data_dir and num_workers, added to its command line from there)."""

    nemo: str = flag(None, "the Canary .nemo to evaluate (e.g. a merged LoRA export)", type=str)
    manifest: str = flag(None, "NeMo JSONL manifest with reference transcripts", type=str)
    baseline: str | None = flag(None, "a second .nemo (e.g. the base model before fine-tuning) shown side by side",
                                type=str)
    normalization: str = flag(DEFAULT_NORMALIZATION, "text normalization of the headline figures (both are always "
                              "in eval.json); " + "; ".join(NORMALIZATION_NOTES.values()), choices=NORMALIZATIONS)
    beam: int | None = flag(None, "beam search of this width; unset: the model's own decoding (greedy for Canary)",
                            type=int)
    bs: int | None = flag(None, "utterances per batch (default: 32 on a GPU, 8 on the CPU); batches are formed "
                                "from clips of similar length, longest first", type=int)
    out: str = flag(DEFAULT_OUT, "folder for eval.md and eval.json")
    max_duration: float = 40.0
    skip_bad: bool = False
    data_dir: str = "data"
    num_workers: int = 0
    precision: str | None = None  # TrainConfig's --precision; None: bf16 on a GPU that has it, else 32

    def __post_init__(self) -> None:
        problems = [f"--{name} is required" for name in ("nemo", "manifest") if not getattr(self, name)]
        if self.beam is not None and self.beam < 1:
            problems.append(f"--beam must be >= 1, got {self.beam}")
        if self.bs is not None and self.bs < 1:
            problems.append(f"--bs must be >= 1, got {self.bs}")
        if self.num_workers < 0:
            problems.append(f"--num_workers must be >= 0, got {self.num_workers}")
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"--normalization {self.normalization!r} is not one of {', '.join(NORMALIZATIONS)}")
        if problems:
            raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))


def decoding_label(model) -> str:
    dec = model.cfg.get("decoding") or {}
    strategy = str(dec.get("strategy", "beam"))
    if strategy == "beam":
        size = int((dec.get("beam") or {}).get("beam_size", 1))
        return "greedy (beam 1)" if size == 1 else f"beam search, beam {size}"
    return strategy


def set_decoding(model, beam: int | None) -> str:
    """Keep the model's own decoding, or switch to beam search of width `beam`; return a label for reports."""
    if beam is not None:
        from omegaconf import OmegaConf, open_dict

        dec = OmegaConf.create(OmegaConf.to_container(model.cfg.decoding, resolve=True))
        with open_dict(dec):
            dec.strategy = "beam"
            dec.beam.beam_size = int(beam)
        model.change_decoding_strategy(dec)
    return decoding_label(model)


def eval_batch_size(bs: int | None) -> int:
    import torch

    return bs if bs is not None else 32 if torch.cuda.is_available() else 8


def eval_dtype(precision: str | None):
    """The dtype `just eval` decodes in: bf16 where the GPU has it (unless --precision 32), else fp32 (fp16 when
    asked for). On a CPU, fp32 unless asked: bf16 is slower there."""
    import torch

    if precision is None:
        cuda = torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "16": torch.float16}.get(precision, torch.float32)


def prepare_for_decoding(model, dtype) -> None:
    """Eval mode, frozen, and in bf16/fp16 the Linear and convolution weights held in that dtype (the ops that
    autocast computes in it anyway; norms, embeddings and the tied head stay fp32)."""
    import torch

    from common.model.io import cast_frozen_base, freeze

    model.eval()
    if dtype != torch.float32:
        freeze(model)
        cast_frozen_base(model, dtype)


def transcribe(model, loader, total: int, desc: str, dtype=None) -> list[dict]:
    """Decode every batch of `loader` with the model's decoding; one dict per utterance, in loader order.
    `dtype` bf16 or fp16: under autocast on the model's device (see `prepare_for_decoding`)."""
    import contextlib

    import torch
    from tqdm import tqdm

    from common.model.steps import greedy_transcripts, to_device

    device = next(model.parameters()).device
    model.eval()
    rows: list[dict] = []
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype in (torch.bfloat16, torch.float16)
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast, tqdm(total=total, desc=desc, unit="utt", file=sys.stderr,
                                                dynamic_ncols=True) as bar:
        for batch in loader:
            hyps = greedy_transcripts(model, to_device(batch, device))
            # the batch's cuts are padded to its longest clip: each clip's own duration comes from the cut set
            for cut, hyp in zip(batch.cuts, hyps):
                custom = cut.custom or {}
                rows.append({"id": cut.id,
                             "lang": custom.get("target_lang", ""), "source_lang": custom.get("source_lang", ""),
                             "ref": " ".join(s.text for s in cut.supervisions), "hyp": hyp})
            bar.update(len(batch.cuts))
    return rows


def _cut_facts(cuts_path: Path) -> dict[str, tuple[str, float]]:
    """Cut id -> (audio file, duration in seconds), in manifest order. Batches carry audio already loaded, not the
    path, and their cuts are padded to the batch's longest clip, so neither can be read from a batch."""
    from lhotse import CutSet

    out = {}
    for cut in CutSet.from_file(cuts_path):
        try:
            path = str(cut.recording.sources[0].source)
        except (AttributeError, IndexError):
            path = ""
        out[cut.id] = (path, float(cut.duration))
    return out


def _evaluate_model(nemo: Path, info, manifest, args, desc: str) -> dict[str, Any]:
    """Load one checkpoint, transcribe the manifest, free the model; returns its transcripts and timing."""
    import gc

    import torch

    from common.data.loader import LoaderSettings, manifest_loader
    from common.model.io import restore

    t0 = time.time()
    model = restore(nemo, map_location="cuda" if torch.cuda.is_available() else "cpu", info=info)
    load_s = time.time() - t0
    label = set_decoding(model, args.beam)
    dtype = eval_dtype(args.precision)
    prepare_for_decoding(model, dtype)
    # longest clips first, batched with clips of similar length: little padding, and any out-of-memory at once
    settings = LoaderSettings(batch_size=eval_batch_size(args.bs), num_workers=args.num_workers,
                              sort_by_duration=True, pin_memory=torch.cuda.is_available())
    data = manifest_loader(manifest, model, settings, data_dir=args.data_dir)
    t1 = time.time()
    rows = transcribe(model, data.loader, total=data.clips, desc=desc, dtype=dtype)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    decode_s = time.time() - t1
    facts = _cut_facts(data.cuts_path)
    rank = {cut_id: i for i, cut_id in enumerate(facts)}
    rows.sort(key=lambda r: rank.get(r["id"], len(rank)))
    for row in rows:
        path, duration = facts.get(row["id"], ("", 0.0))
        row["audio_filepath"], row["duration"] = path, round(duration, 3)
    del model, data
    gc.collect()
    return {"nemo": str(nemo.resolve()), "decoding": label, "load_s": round(load_s, 2),
            "decode_s": round(decode_s, 2), "dtype": str(dtype).replace("torch.", ""),
            "batch_size": settings.batch_size, "rows": rows}


def preflight(args: EvalSettings):
    """Manifest, checkpoints, languages and output folder, all checked before NeMo is imported."""
    from common.data.manifest import load_manifest
    from common.model.archive import check_languages, inspect_nemo
    from common.rundir import check_writable_dir

    manifest = load_manifest(args.manifest, max_duration=args.max_duration, skip_bad=args.skip_bad)
    langs = {e.source_lang for e in manifest.entries} | {e.target_lang for e in manifest.entries}
    infos = {"model": inspect_nemo(args.nemo)}
    if args.baseline:
        infos["baseline"] = inspect_nemo(args.baseline)
    for info in infos.values():
        check_languages(info, {str(manifest.path): langs})
    check_writable_dir(Path(args.out), "--out")
    return manifest, infos


def run_eval(args: EvalSettings) -> dict[str, Any]:
    """Everything `eval.json` holds; writes eval.md and eval.json into `args.out`."""
    manifest, infos = preflight(args)
    print(f"[data] {manifest.summary()}", flush=True)
    for note in manifest.notes:
        print(f"[data]   {note}", flush=True)

    models: dict[str, dict] = {}
    for role, info in infos.items():
        print(f"[eval] {role}: {info.path}", flush=True)
        models[role] = _evaluate_model(info.path, info, manifest, args, desc=role)

    rows = models["model"].pop("rows")
    if "baseline" in models:
        base_rows = {r["id"]: r["hyp"] for r in models["baseline"].pop("rows")}
        for row in rows:
            row["baseline_hyp"] = base_rows.get(row["id"], "")
    audio_s = sum(r["duration"] for r in rows)
    for role, m in models.items():
        m["scores"] = score_both(rows, "hyp" if role == "model" else "baseline_hyp")
        m["audio_s_per_s"] = audio_s / m["decode_s"] if m["decode_s"] > 0 else None
    for row in rows:  # per-utterance errors under both normalizations, for reading and re-checking
        for mode in NORMALIZATIONS:
            row[f"wer_{mode}"] = rate_dict(utterance_errors(row["ref"], row["hyp"], mode, "word"))
    result = {
        "manifest": str(manifest.path), "utterances": len(rows), "audio_s": round(audio_s, 2),
        "normalization": args.normalization, "normalizations": dict(NORMALIZATION_NOTES),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "models": models,
        "differences": differences(rows, args.normalization) if "baseline" in models else None,
        "rows": rows,
    }
    out = Path(args.out)
    write_text(out / "eval.json", json.dumps(result, indent=2, ensure_ascii=False))
    write_text(out / "eval.md", render_eval_md(result))
    return result

