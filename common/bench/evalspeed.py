"""`just eval`'s speed against NeMo's own `model.transcribe()` on the same files (`--sections eval`).

Both decode the same `.nemo` (the bench's model, its greedy decoding capped a few tokens past the encoder
length, since a random model never ends a transcript) on one synthetic set of mixed lengths, at the same batch
size. `just eval` batches clips of similar length, longest first, in bf16 on a GPU; `transcribe()` runs as NeMo
ships it. Audio seconds per second count decoding only, not loading the model; `transcribe()`'s own data
preparation (a temporary manifest, its loader) is part of what it does, so it counts. Ours runs first, so
anything the process warms up helps NeMo's figure, not ours.
"""
from __future__ import annotations

import time
from pathlib import Path


def _row(label: str, data, bs: int, precision: str, audio_s: float, seconds: float, message: str = "") -> dict:
    return {"label": label, "set": data.label, "mode": "eval", "bs": bs, "accum": 1, "eff_bs": bs,
            "precision": precision, "status": "ok", "median_step_s": None, "first_step_s": None,
            "audio_s_per_s": round(audio_s / seconds, 1) if seconds > 0 else None, "peak_gb": None,
            "trainable_params": None, "step_over_fwd": None, "vs_peer": None, "last_loss": None,
            "wall_s": round(seconds, 2), "message": message}


def _text(hyp) -> str:
    import re

    text = hyp.text if hasattr(hyp, "text") else str(hyp)
    return " ".join(re.sub(r"<\|[^|]*\|>", " ", text).split())


def nemo_transcribe(nemo: Path, paths: list[str], bs: int, lang: str = "ru") -> tuple[list[str], float, int]:
    """NeMo's `transcribe()` on `paths`: transcripts, seconds spent in it, peak GPU memory (bytes; 0 on a CPU)."""
    import torch

    from common.model.io import restore

    cuda = torch.cuda.is_available()
    model = restore(nemo, map_location="cuda" if cuda else "cpu")
    model.eval()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    hyps = model.transcribe(audio=paths, batch_size=bs, source_lang=lang, target_lang=lang, pnc="yes",
                            verbose=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    if isinstance(hyps, tuple):  # some versions return (best, all)
        hyps = hyps[0]
    return [_text(h) for h in hyps], seconds, peak


def eval_speed(factory, sets, scale, work: Path, add, *, precision: str | None = None) -> list[str]:
    import json

    from common.bench.measure import _free
    from common.bench.factories import cli_nemo
    from common.quality.evaluate import EvalSettings, eval_batch_size, run_eval
    from common.telemetry import GB

    nemo = cli_nemo(factory, work)
    _free(False)
    data = sets.get(scale.eval_clips, scale.eval_n)
    bs = eval_batch_size(None)
    ours = run_eval(EvalSettings(nemo=str(nemo), manifest=str(data.manifest), out=str(work / "eval-out"),
                                 data_dir=str(work / "cuts"), precision=precision))
    model = ours["models"]["model"]
    audio = ours["audio_s"]
    add(_row(f"just eval ({model['dtype']}, longest first, bs {model['batch_size']})", data, model["batch_size"],
             model["dtype"], audio, model["decode_s"]))
    _free(False)
    lines = [json.loads(x) for x in data.manifest.read_text(encoding="utf-8").splitlines()]
    theirs, seconds, peak = nemo_transcribe(nemo, [x["audio_filepath"] for x in lines], bs)
    ref = {r["audio_filepath"]: r["hyp"] for r in ours["rows"]}
    same = sum(ref.get(x["audio_filepath"]) == h for x, h in zip(lines, theirs))
    add(_row(f"NeMo transcribe() (bs {bs})", data, bs, "fp32", audio, seconds,
             f"peak {peak / GB:.2f} GB" if peak else ""))
    _free(False)
    ratio = (audio / model["decode_s"]) / (audio / seconds) if model["decode_s"] > 0 and seconds > 0 else float("nan")
    return [f"{len(lines)} clips of {data.label} ({audio / 60:.1f} min): just eval {audio / model['decode_s']:.0f} "
            f"audio s/s against transcribe()'s {audio / seconds:.0f}: {ratio:.2f}x. Transcripts identical for "
            f"{same} of {len(lines)} clips (a random model's, {model['dtype']} against fp32)."]
