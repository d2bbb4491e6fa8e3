"""Scores from transcripts: corpus WER and CER overall and per language under both normalizations, per-utterance
differences against a baseline, and the regression verdict. Pure Python, shared by the run report, `just eval`
and the validation passes."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from common.fmt import fmt_pct, fmt_rel, relative_change
from common.quality.metrics import NORMALIZATIONS, ErrorRate, utterance_errors

DEFAULT_NORMALIZATION = "normalized"


NORMALIZATION_NOTES = {
    "raw": "raw: whitespace collapsed only; case and punctuation count as errors",
    "normalized": "normalized: lowercase, ё→е, hyphens read as spaces, punctuation removed",
}



def rate_dict(er: ErrorRate) -> dict[str, Any]:
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
        "wer_detail": rate_dict(total_w), "cer_detail": rate_dict(total_c),
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

