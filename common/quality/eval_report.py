"""`eval.md` and the console summary of `just eval`: headline scores, per language, per-utterance differences."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.fmt import cell, fmt_change, fmt_duration, fmt_pct, table
from common.quality.metrics import NORMALIZATIONS
from common.quality.scoring import NORMALIZATION_NOTES

SHOWN_UTTERANCES = 20  # rows of the per-utterance table in eval.md; eval.json keeps them all



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

