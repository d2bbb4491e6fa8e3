"""Evaluate a Canary `.nemo` on a manifest, optionally against a baseline: WER/CER overall and per language.

`just eval --nemo X --manifest M [--baseline Y]` runs `main`. The order is the training run's: the manifest and
both checkpoints are checked first (no NeMo import), then each model is loaded in turn, transcribes the
manifest in batches with its own decoding (greedy unless `--beam N`), and is freed before the next one loads.

Scores are corpus-level (see `common.metrics`) and computed under both normalizations; `--normalization` picks
the one that leads the report and orders the per-utterance list. `eval.json` holds every transcript, so any
figure can be recomputed independently; `eval.md` is the readable version. Both are written atomically.

The scoring and rendering helpers are shared with the training run report (`common.report`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from common.atomic import write_text
from common.errors import UserError
from common.manifest import fmt_duration
from common.metrics import NORMALIZATIONS, ErrorRate, utterance_errors

DEFAULT_OUT = "exp/eval"
DEFAULT_NORMALIZATION = "normalized"
SHOWN_UTTERANCES = 20  # rows of the per-utterance table in eval.md; eval.json keeps them all
NORMALIZATION_NOTES = {
    "raw": "raw: whitespace collapsed only; case and punctuation count as errors",
    "normalized": "normalized: lowercase, ё→е, hyphens read as spaces, punctuation removed",
}


# ------------------------------------------------------------------------------------------------------
# Scoring (pure Python, shared with the run report)
# ------------------------------------------------------------------------------------------------------


def _rate_dict(er: ErrorRate) -> dict[str, Any]:
    return {"rate": er.rate, "errors": er.errors, "ref_len": er.ref_len, "sub": er.sub, "ins": er.ins,
            "dele": er.dele}


def score(rows: Sequence[dict], mode: str = DEFAULT_NORMALIZATION, hyp_key: str = "hyp") -> dict[str, Any]:
    """Corpus WER and CER of `rows` (dicts with `ref`, `hyp_key` and `lang`), overall and per language."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; expected one of {', '.join(NORMALIZATIONS)}")
    total_w, total_c = ErrorRate(), ErrorRate()
    langs: dict[str, list] = {}
    for row in rows:
        w = utterance_errors(row["ref"], row[hyp_key], mode, "word")
        c = utterance_errors(row["ref"], row[hyp_key], mode, "char")
        total_w, total_c = total_w + w, total_c + c
        acc = langs.setdefault(row.get("lang") or "?", [ErrorRate(), ErrorRate(), 0])
        acc[0], acc[1], acc[2] = acc[0] + w, acc[1] + c, acc[2] + 1
    return {
        "normalization": mode, "utterances": len(rows),
        "wer": total_w.rate if rows else None, "cer": total_c.rate if rows else None,
        "wer_detail": _rate_dict(total_w), "cer_detail": _rate_dict(total_c),
        "per_language": {lang: {"utterances": n, "wer": w.rate, "cer": c.rate} for lang, (w, c, n) in langs.items()},
    }


def score_both(rows: Sequence[dict], hyp_key: str = "hyp") -> dict[str, dict]:
    """`score` under every normalization, keyed by its name."""
    return {mode: score(rows, mode, hyp_key) for mode in NORMALIZATIONS}


def differences(rows: Sequence[dict], mode: str = DEFAULT_NORMALIZATION) -> list[dict]:
    """Per-utterance word errors of `hyp` against `baseline_hyp`, worst first (most added errors on top).

    `delta` = model errors - baseline errors: positive means the evaluated model is worse on that utterance.
    """
    out = []
    for row in rows:
        model = utterance_errors(row["ref"], row["hyp"], mode, "word").errors
        base = utterance_errors(row["ref"], row["baseline_hyp"], mode, "word").errors
        out.append({"id": row["id"], "delta": model - base, "errors": model, "baseline_errors": base,
                    "ref": row["ref"], "hyp": row["hyp"], "baseline_hyp": row["baseline_hyp"]})
    # stable sort: equal deltas keep manifest order
    return sorted(out, key=lambda d: -d["delta"])


def relative_change(before: float | None, after: float | None) -> float | None:
    """(after - before) / before; +inf when a zero error rate became non-zero, None when either is missing."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)):
        return None
    if before == 0:
        return 0.0 if after == 0 else math.inf
    return (after - before) / before


def regression_check(before: float | None, after: float | None, threshold: float) -> dict[str, Any]:
    """Flag a relative WER rise on the regression set above `threshold` (0.05 = 5 %)."""
    rel = relative_change(before, after)
    flagged = rel is not None and rel > threshold
    if rel is None:
        message = "regression check not run: WER before or after is missing"
    else:
        verb = "rose" if rel > 0 else "fell" if rel < 0 else "did not change"
        how = "" if rel == 0 else f" by {fmt_rel(abs(rel), signed=False)} relative"
        if flagged and rel > 0:
            verdict = f"above the {fmt_rel(threshold)} threshold"
        elif flagged:  # a negative threshold asks for an improvement
            verdict = f"short of the {fmt_rel(threshold)} change the threshold demands"
        elif rel > 0:
            verdict = f"within the {fmt_rel(threshold)} threshold"
        else:
            verdict = f"threshold {fmt_rel(threshold)}"
        message = f"WER on the regression set {verb}{how} ({fmt_pct(before)} -> {fmt_pct(after)}), {verdict}"
    return {"before_wer": before, "after_wer": after, "relative_change": rel, "threshold": threshold,
            "flagged": flagged, "message": message}


def validation_details(val_outputs: Iterable[dict]) -> dict[str, Any]:
    """CER, raw-normalization figures, per-language figures and the transcripts of a validation pass.

    `val_outputs` is `CanaryFinetune.val_outputs` (per batch: refs, hyps, langs, ids).
    """
    rows = [{"id": i, "lang": lang, "ref": r, "hyp": h}
            for o in val_outputs for i, lang, r, h in zip(o["ids"], o["langs"], o["refs"], o["hyps"])]
    scores = score_both(rows)
    norm, raw = scores["normalized"], scores["raw"]
    return {"val_cer": norm["cer"], "val_wer_raw": raw["wer"], "val_cer_raw": raw["cer"],
            "per_language": norm["per_language"], "rows": rows}


# ------------------------------------------------------------------------------------------------------
# Formatting (shared with the run report)
# ------------------------------------------------------------------------------------------------------


def fmt_pct(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def fmt_rel(value: float | None, signed: bool = True) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"


def fmt_change(before: float | None, after: float | None) -> str:
    """`-12.30 pts (-45.0%)` for rates; `n/a` when either side is missing."""
    if before is None or after is None:
        return "n/a"
    return f"{100 * (after - before):+.2f} pts ({fmt_rel(relative_change(before, after))})"


def cell(text: Any, limit: int = 90) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, long text shortened."""
    s = " ".join(str(text).split())
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("|", "\\|") or "∅"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# ------------------------------------------------------------------------------------------------------
# Transcription (NeMo)
# ------------------------------------------------------------------------------------------------------


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


def transcribe(model, loader, total: int, desc: str) -> list[dict]:
    """Decode every batch of `loader` with the model's decoding; one dict per utterance, in loader order."""
    import torch
    from tqdm import tqdm

    from common.module import greedy_transcripts

    device = next(model.parameters()).device
    model.eval()
    rows: list[dict] = []
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="utt", file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in loader:
            if device.type != "cpu":
                batch = _to_device(batch, device)
            hyps = greedy_transcripts(model, batch)
            for cut, hyp in zip(batch.cuts, hyps):
                custom = cut.custom or {}
                rows.append({"id": cut.id, "duration": round(cut.duration, 3),
                             "lang": custom.get("target_lang", ""), "source_lang": custom.get("source_lang", ""),
                             "ref": " ".join(s.text for s in cut.supervisions), "hyp": hyp})
            bar.update(len(batch.cuts))
    return rows


def _to_device(batch, device):
    import dataclasses

    import torch

    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})


def _audio_paths(cuts_path: Path) -> dict[str, str]:
    """Cut id -> audio file, in manifest order (batches carry audio already loaded, not the path)."""
    from lhotse import CutSet

    out = {}
    for cut in CutSet.from_file(cuts_path):
        try:
            out[cut.id] = str(cut.recording.sources[0].source)
        except (AttributeError, IndexError):
            out[cut.id] = ""
    return out


def _evaluate_model(nemo: Path, info, manifest, args, desc: str) -> dict[str, Any]:
    """Load one checkpoint, transcribe the manifest, free the model; returns its transcripts and timing."""
    import gc

    import torch

    from common import data, model_io

    t0 = time.time()
    model = model_io.restore(nemo, map_location="cuda" if torch.cuda.is_available() else "cpu", info=info)
    load_s = time.time() - t0
    label = set_decoding(model, args.beam)
    cuts, _ = data.build_cuts(manifest, Path(args.data_dir), info.prompt_format)
    loader = data.make_loader(cuts, model.tokenizer, model.prompt,
                              data.LoaderSettings(batch_size=args.bs, num_workers=args.num_workers), train=False)
    t1 = time.time()
    rows = transcribe(model, loader, total=len(manifest.entries), desc=desc)
    decode_s = time.time() - t1
    order = _audio_paths(cuts)
    rank = {cut_id: i for i, cut_id in enumerate(order)}
    rows.sort(key=lambda r: rank.get(r["id"], len(rank)))
    for row in rows:
        row["audio_filepath"] = order.get(row["id"], "")
    del model, loader
    gc.collect()
    return {"nemo": str(nemo.resolve()), "decoding": label, "load_s": round(load_s, 2),
            "decode_s": round(decode_s, 2), "rows": rows}


# ------------------------------------------------------------------------------------------------------
# The eval command
# ------------------------------------------------------------------------------------------------------


def build_parser(prog: str = "eval.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Transcribe a manifest with a Canary .nemo and report WER/CER overall and per language; "
                    "with --baseline, compare two models utterance by utterance.")
    p.add_argument("--nemo", required=True, help="the Canary .nemo to evaluate (e.g. a merged LoRA export)")
    p.add_argument("--manifest", required=True, help="NeMo JSONL manifest with reference transcripts")
    p.add_argument("--baseline", default=None,
                   help="a second .nemo (e.g. the base model before fine-tuning) shown side by side")
    p.add_argument("--normalization", default=DEFAULT_NORMALIZATION, choices=NORMALIZATIONS,
                   help="text normalization of the headline figures (both are always in eval.json); "
                        + "; ".join(NORMALIZATION_NOTES.values()))
    p.add_argument("--beam", type=int, default=None,
                   help="beam search of this width; unset: the model's own decoding (greedy for Canary)")
    p.add_argument("--bs", type=int, default=8, help="utterances per batch")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for eval.md and eval.json")
    p.add_argument("--max_duration", type=float, default=40.0, help="skip clips longer than this many seconds")
    p.add_argument("--skip_bad", action="store_true", help="skip missing/unreadable audio instead of stopping")
    p.add_argument("--data_dir", default="data", help="where cut caches (*.jsonl.gz) are kept and reused")
    p.add_argument("--num_workers", type=int, default=0, help="data loader workers (0 on Windows)")
    return p


def _validate_args(args: argparse.Namespace) -> None:
    problems = []
    if args.beam is not None and args.beam < 1:
        problems.append(f"--beam must be >= 1, got {args.beam}")
    if args.bs < 1:
        problems.append(f"--bs must be >= 1, got {args.bs}")
    if args.num_workers < 0:
        problems.append(f"--num_workers must be >= 0, got {args.num_workers}")
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))


def preflight(args: argparse.Namespace):
    """Manifest, checkpoints, languages and output folder, all checked before NeMo is imported."""
    from common.manifest import check_writable_dir, load_manifest
    from common.preflight import check_languages, inspect_nemo

    manifest = load_manifest(args.manifest, max_duration=args.max_duration, skip_bad=args.skip_bad)
    langs = {e.source_lang for e in manifest.entries} | {e.target_lang for e in manifest.entries}
    infos = {"model": inspect_nemo(args.nemo)}
    if args.baseline:
        infos["baseline"] = inspect_nemo(args.baseline)
    for info in infos.values():
        check_languages(info, {str(manifest.path): langs})
    check_writable_dir(Path(args.out), "--out")
    return manifest, infos


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `eval.json` holds; writes eval.md and eval.json into `args.out`."""
    _validate_args(args)
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
            row[f"wer_{mode}"] = _rate_dict(utterance_errors(row["ref"], row["hyp"], mode, "word"))
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


def render_eval_md(result: dict[str, Any]) -> str:
    mode = result["normalization"]
    other = next(m for m in NORMALIZATIONS if m != mode)
    models = result["models"]
    roles = list(models)
    name = {role: Path(models[role]["nemo"]).name for role in roles}
    label = {"model": f"model `{name['model']}`", "baseline": f"baseline `{name.get('baseline', '')}`"}
    s = {role: models[role]["scores"] for role in roles}

    lines = [f"# Evaluation: `{name['model']}` on `{Path(result['manifest']).name}`", ""]
    lines.append(f"{result['utterances']} utterances, {fmt_duration(result['audio_s'])} of audio; "
                 f"decoding: {models['model']['decoding']}; normalization: **{mode}** "
                 f"({NORMALIZATION_NOTES[mode].split(': ', 1)[1]}); {result['created']}.")
    lines.append("")
    header = ["", f"WER ({mode})", f"CER ({mode})", "S / I / D", f"WER ({other})", f"CER ({other})",
              "audio s/s"]
    body = []
    for role in roles:
        d = s[role][mode]["wer_detail"]
        speed = models[role]["audio_s_per_s"]
        body.append([label[role], f"**{fmt_pct(s[role][mode]['wer'])}**", fmt_pct(s[role][mode]["cer"]),
                     f"{d['sub']} / {d['ins']} / {d['dele']} of {d['ref_len']} words",
                     fmt_pct(s[role][other]["wer"]), fmt_pct(s[role][other]["cer"]),
                     f"{speed:.1f}" if speed else "n/a"])
    if "baseline" in s:
        b, m = s["baseline"], s["model"]
        body.append(["change (model - baseline)", fmt_change(b[mode]["wer"], m[mode]["wer"]),
                     fmt_change(b[mode]["cer"], m[mode]["cer"]), "", fmt_change(b[other]["wer"], m[other]["wer"]),
                     fmt_change(b[other]["cer"], m[other]["cer"]), ""])
    lines += table(header, body)

    lines += ["", f"## Per language ({mode})", ""]
    langs = list(s["model"][mode]["per_language"])
    header = ["language", "utterances"] + [f"WER {r}" for r in roles] + [f"CER {r}" for r in roles]
    body = []
    for lang in langs:
        per = {r: s[r][mode]["per_language"].get(lang, {}) for r in roles}
        body.append([lang, per["model"].get("utterances", 0)] + [fmt_pct(per[r].get("wer")) for r in roles]
                    + [fmt_pct(per[r].get("cer")) for r in roles])
    lines += table(header, body)

    if result.get("differences") is not None:
        diffs = result["differences"]
        worse = sum(d["delta"] > 0 for d in diffs)
        better = sum(d["delta"] < 0 for d in diffs)
        lines += ["", "## Per-utterance differences, worst first", "",
                  f"Word errors ({mode}) of the model minus the baseline's: {worse} utterances got worse, "
                  f"{better} got better, {len(diffs) - worse - better} are unchanged. Changed utterances, "
                  f"up to {SHOWN_UTTERANCES} (all in eval.json):", ""]
        changed = [d for d in diffs if d["delta"] != 0][:SHOWN_UTTERANCES]
        lines += table(["Δ errors", "reference", "model", "baseline"],
                       [[f"{d['delta']:+d}", cell(d["ref"]), cell(d["hyp"]), cell(d["baseline_hyp"])]
                        for d in changed]) if changed else ["No utterance changed."]
    else:
        worst = sorted(result["rows"], key=lambda r: -r[f"wer_{mode}"]["errors"])[:SHOWN_UTTERANCES]
        worst = [r for r in worst if r[f"wer_{mode}"]["errors"] > 0]
        lines += ["", "## Worst utterances", "",
                  f"Most word errors ({mode}), up to {SHOWN_UTTERANCES} (all in eval.json):", ""]
        lines += table(["errors", "reference", "hypothesis"],
                       [[f"{r[f'wer_{mode}']['errors']}/{r[f'wer_{mode}']['ref_len']}", cell(r["ref"]),
                         cell(r["hyp"])] for r in worst]) if worst else ["Every utterance is transcribed exactly."]
    lines += ["", "## Models", ""]
    for role in roles:
        m = models[role]
        lines.append(f"- {role}: `{m['nemo']}`; decoding {m['decoding']}; loaded in {m['load_s']:.1f} s, "
                     f"transcribed in {m['decode_s']:.1f} s")
    lines.append(f"- manifest: `{result['manifest']}`")
    lines.append("")
    return "\n".join(lines)


def print_summary(result: dict[str, Any], out: Path) -> None:
    mode = result["normalization"]
    for role, m in result["models"].items():
        sc = m["scores"]
        print(f"[eval] {role:8s} WER {fmt_pct(sc[mode]['wer'])}  CER {fmt_pct(sc[mode]['cer'])}  ({mode}; "
              f"raw WER {fmt_pct(sc['raw']['wer'])}, normalized WER {fmt_pct(sc['normalized']['wer'])})", flush=True)
    if "baseline" in result["models"]:
        b, m = (result["models"][r]["scores"][mode]["wer"] for r in ("baseline", "model"))
        print(f"[eval] change: WER {fmt_change(b, m)}", flush=True)
    print(f"[eval] wrote {out / 'eval.md'} and {out / 'eval.json'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run_eval(args)
    print_summary(result, Path(args.out))
    return 0
