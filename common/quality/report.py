"""The run report, written at the end of every training run into its directory.

* `report.md`: did fine-tuning help (validation WER/CER/loss before and after), did it cost anything (the
  regression set, flagged above `--regression_threshold`), the loss/learning-rate and memory plots, speed,
  the adapted modules, the export and its verification, example transcripts and the settings;
* `summary.json`: the same figures for scripts;
* `transcripts.json`: every validation (and regression) transcript before and after, for a closer look;
* `loss.png`, `memory.png`.

Everything is written atomically. The one-line verdicts (report path, regression WARNING) are printed last, so
they are the final lines of the run's output.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from backends.registry import FULL
from common.atomic import write_text
from common.fmt import cell, fmt_change, fmt_duration, fmt_pct, fmt_rel, table
from common.quality.metrics import utterance_errors
from common.quality.scoring import regression_check

SHOWN_EXAMPLES = 10  # validation utterances whose transcript changed most


def _num(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _scalars(result: dict) -> dict:
    return {k: v for k, v in (result or {}).items() if not isinstance(v, (list, dict))}


def _group_modules(names: list[str]) -> list[str]:
    """`encoder.layers.N.self_attn.{linear_q, linear_k}`: 2 layers` lines: module names with layer numbers folded."""
    counts: dict[str, int] = {}
    for name in names:
        key = re.sub(r"\.\d+(?=\.|$)", ".N", name)
        counts[key] = counts.get(key, 0) + 1
    parents: dict[tuple[str, int], list[str]] = {}
    for key, n in counts.items():
        parent, _, leaf = key.rpartition(".")
        parents.setdefault((parent, n), []).append(leaf)
    lines = []
    for (parent, n), leaves in parents.items():
        leaf = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        path = f"{parent}.{leaf}" if parent else leaf
        lines.append(f"`{path}`" + (f" × {n}" if n > 1 else ""))
    return lines


def _compare_table(before: dict, after: dict) -> list[str]:
    rows = [
        ["WER (normalized)", f"{fmt_pct(before.get('val_wer'))}", f"**{fmt_pct(after.get('val_wer'))}**",
         fmt_change(before.get("val_wer"), after.get("val_wer"))],
        ["CER (normalized)", fmt_pct(before.get("val_cer")), fmt_pct(after.get("val_cer")),
         fmt_change(before.get("val_cer"), after.get("val_cer"))],
        ["WER (raw: case and punctuation count)", fmt_pct(before.get("val_wer_raw")),
         fmt_pct(after.get("val_wer_raw")), fmt_change(before.get("val_wer_raw"), after.get("val_wer_raw"))],
        ["loss (teacher-forced, per token)", _num(before.get("val_loss")), _num(after.get("val_loss")),
         "n/a" if before.get("val_loss") is None or after.get("val_loss") is None
         else f"{after['val_loss'] - before['val_loss']:+.4f}"],
    ]
    lines = table(["", "before", "after", "change"], rows)
    langs = list((after.get("per_language") or before.get("per_language") or {}))
    if len(langs) > 1:
        lines += ["", "Per language (normalized WER):", ""]
        lines += table(["language", "utterances", "before", "after", "change"], [
            [lang, (after.get("per_language") or before.get("per_language"))[lang]["utterances"],
             fmt_pct((before.get("per_language") or {}).get(lang, {}).get("wer")),
             fmt_pct((after.get("per_language") or {}).get(lang, {}).get("wer")),
             fmt_change((before.get("per_language") or {}).get(lang, {}).get("wer"),
                        (after.get("per_language") or {}).get(lang, {}).get("wer"))] for lang in langs])
    return lines


def _paired(before: dict, after: dict) -> list[dict]:
    """Utterances present in both passes: id, lang, ref, before/after transcripts and word errors."""
    prev = {r["id"]: r for r in (before or {}).get("rows", [])}
    out = []
    for r in (after or {}).get("rows", []):
        if r["id"] not in prev:
            continue
        b = utterance_errors(r["ref"], prev[r["id"]]["hyp"]).errors
        a = utterance_errors(r["ref"], r["hyp"]).errors
        out.append({"id": r["id"], "lang": r.get("lang", ""), "ref": r["ref"], "before": prev[r["id"]]["hyp"],
                    "after": r["hyp"], "errors_before": b, "errors_after": a, "delta": a - b})
    return out


def _examples(pairs: list[dict]) -> list[str]:
    if not pairs:
        return []
    worse = sum(p["delta"] > 0 for p in pairs)
    better = sum(p["delta"] < 0 for p in pairs)
    changed = sorted((p for p in pairs if p["delta"] != 0), key=lambda p: p["delta"])
    if len(changed) > SHOWN_EXAMPLES:  # the biggest gains and the biggest losses
        half = SHOWN_EXAMPLES // 2
        changed = changed[:half] + changed[-half:]
    lines = ["## Example transcripts (validation)", "",
             f"Word errors per utterance (normalized): {better} got better, {worse} got worse, "
             f"{len(pairs) - better - worse} unchanged. All transcripts: `transcripts.json`.", ""]
    if not changed:
        return lines + ["No transcript's error count changed.", ""]
    lines += table(["errors before → after", "reference", "before", "after"],
                   [[f"{p['errors_before']} → {p['errors_after']}", cell(p["ref"], 70), cell(p["before"], 70),
                     cell(p["after"], 70)] for p in changed])
    return lines + [""]


def _settings(cfg) -> list[str]:
    from common.config import TrainConfig  # defaults, to show what a run changed

    current, default = cfg.to_dict(), TrainConfig().to_dict()
    changed = [(k, v, default.get(k)) for k, v in current.items() if k != "backend_options" and v != default.get(k)]
    changed += [(k, v, "backend default") for k, v in (cfg.backend_options or {}).items()]
    lines = ["## Settings", ""]
    if changed:
        lines += table(["flag", "value", "default"], [[f"`--{k}`", f"`{v}`", f"`{d}`"] for k, v, d in changed])
    lines += ["", "<details><summary>every setting</summary>", "", "```json",
              json.dumps(current, indent=2, ensure_ascii=False, default=str), "```", "", "</details>", ""]
    return lines


def _export_lines(summary: dict) -> list[str]:
    export, check = summary.get("export"), summary.get("export_check") or {}
    if not export:
        return ["- export: none (no `--export_nemo`, or the run stopped before it)"]
    if not check:
        return [f"- export: `{export}` (not verified)"]
    verdict = "**verified**" if check.get("ok") else "**VERIFICATION FAILED**"
    keys = ("state-dict keys equal the base model's" if check.get("keys_equal_base")
            else "state-dict keys cover the base model's" if check.get("keys_cover_base")
            else "state-dict keys differ from the base model's")
    line = (f"- export: `{export}`: {verdict}: restored with stock `restore_from`, outputs match the trained "
            f"model (max |diff| {check.get('restore_max_abs_diff', float('nan')):.1e}, merge "
            f"{check.get('merge_max_abs_diff', float('nan')):.1e}, tolerance {check.get('tolerance', 0):g}); {keys}")
    if check.get("lora_keys_left"):
        line += f"; adapter keys left: {', '.join(check['lora_keys_left'])}"
    if check.get("adapters_kept"):
        line += ("; the export keeps the adapter modules, enabled (NeMo adapters cannot be merged into the weights; "
                 "restore_from rebuilds them)")
    lines = [line]
    if summary.get("kept_from_source"):
        lines.append(f"- kept from the source archive: {', '.join(summary['kept_from_source'])}")
    return lines


def _memory_line(records: list[dict]) -> str:
    import torch

    peaks = [r["peak_gb"] for r in records if r.get("kind") == "train" and isinstance(r.get("peak_gb"), (int, float))]
    if not peaks:
        return "n/a"
    what = "peak GPU memory allocated" if torch.cuda.is_available() else "process RSS, CPU run"
    return f"{max(peaks):.2f} GB ({what})"


def build_summary(cfg, result, meta: dict, total: int, stats: dict) -> dict[str, Any]:
    """The figures of a finished (or stopped) run, as `summary.json` holds them."""
    reg = None
    selection = getattr(result, "selection", None) or {}
    if cfg.regression_manifest:
        rb, ra = result.regression_before, result.regression_after
        if not rb and selection.get("reference_wer") is not None:  # a resumed run: the reference it kept
            rb = {"val_wer": selection["reference_wer"]}
        reg = {"manifest": cfg.regression_manifest, "before": _scalars(rb), "after": _scalars(ra),
               "before_per_language": (rb or {}).get("per_language"),
               "after_per_language": (ra or {}).get("per_language"),
               "check": regression_check((rb or {}).get("val_wer"), (ra or {}).get("val_wer"),
                                         cfg.regression_threshold)}
    train_s, audio = stats.get("train_wall_s"), stats.get("audio_processed_s")
    return {
        "status": result.status, "global_step": result.global_step, "max_steps": cfg.max_steps,
        "val_manifest": cfg.val, "before": _scalars(result.before), "after": _scalars(result.after),
        "before_per_language": (result.before or {}).get("per_language"),
        "after_per_language": (result.after or {}).get("per_language"),
        "regression": reg,
        # `after` describes the exported model: the pass selected below
        "selected_step": getattr(result, "selected_step", None),
        "regression_ok": selection.get("regression_ok"),
        "selection": {k: v for k, v in selection.items() if k != "selected_step"} or None,
        "export": str(result.export) if result.export else None, "export_check": result.export_check,
        "kept_from_source": result.kept_members,
        "backend": meta["backend"], "adapter_spec": meta.get("spec"), "adapted_modules": len(result.adapted),
        "trainable_params": result.trainable_params, "total_params": total,
        "precision": stats.get("precision"),
        "wall_s": round(result.wall_s, 1), "train_wall_s": round(train_s, 3) if train_s else None,
        "train_set_audio_s": stats.get("train_set_s"), "audio_processed_s": round(audio, 1) if audio else None,
        "audio_s_per_s": round(audio / train_s, 2) if audio and train_s else None,
        "mix": stats.get("mix"),
    }


def render(summary: dict, cfg, meta: dict, result, records: list[dict]) -> str:
    before, after = result.before or {}, result.after or {}
    reg = summary.get("regression")
    root = Path(result.exp_dir)
    lines = [f"# Run report: `{root}`", ""]
    status = summary["status"]
    status_note = {"finished": "", "interrupted": " (interrupted: no 'after' validation)",
                   "nonfinite": " (the loss became non-finite: nothing was exported)"}.get(status, "")
    lines += [f"**{status}**{status_note} at step {summary['global_step']} of {summary['max_steps']}; "
              f"wall time {fmt_duration(summary['wall_s'])}; backend {summary['backend']}.", ""]

    # verdicts first: what a reader opens the report for
    if before.get("val_wer") is not None and after.get("val_wer") is not None:
        lines.append(f"- Validation WER {fmt_pct(before['val_wer'])} → **{fmt_pct(after['val_wer'])}**: "
                     f"{fmt_change(before['val_wer'], after['val_wer'])}.")
    if reg:
        lines.append(f"- {_regression_verdict(reg['check'])}")
    selection = summary.get("selection") or {}
    if summary.get("selected_step") is not None:
        lines.append(f"- Exported the state at step {summary['selected_step']}: {selection.get('why', '')}."
                     + (" **WARNING: no pass met the regression threshold.**" if summary.get("regression_ok") is False
                        else ""))
    if summary.get("export"):
        ok = (summary.get("export_check") or {}).get("ok")
        lines.append(f"- Export `{summary['export']}`: {'verified' if ok else '**NOT verified**'}.")
    lines.append("")

    n = after.get("utterances") or before.get("utterances")
    lines += ["## Did fine-tuning help?", "",
              f"Validation set `{Path(cfg.val).name}` ({n} utterances), greedy decoding, before and after training:",
              ""]
    lines += _compare_table(before, after) + [""]

    if reg:
        rb, ra = result.regression_before or {}, result.regression_after or {}
        lines += ["## Did it cost anything? (regression set)", "",
                  f"Held-out set `{Path(reg['manifest']).name}` ({ra.get('utterances') or rb.get('utterances')} "
                  f"utterances) that the adapter never trains on:", ""]
        lines += _compare_table(rb, ra) + [""]
        check = reg["check"]
        advice = ""
        if check["flagged"] and (check["relative_change"] or 0) > 0:
            advice = (" Fine-tuning made the model worse on what it already knew: mix some general data into "
                      "training (--mix general.jsonl:0.3), or try a lower --lr, fewer --max_steps or a lower "
                      "--lora_r.")
        lines += [("> **WARNING**: " if check["flagged"] else "**OK**: ") + check["message"] + "." + advice, ""]

    lines += _selection_lines(summary)
    lines += ["## Training", "", "![loss and learning rate](loss.png)", "", "![memory over steps](memory.png)", ""]
    audio, train_s, speed = summary.get("audio_processed_s"), summary.get("train_wall_s"), summary.get("audio_s_per_s")
    lines += table(["", ""], [
        ["optimizer steps", f"{summary['global_step']} (batch {cfg.bs} × accumulation {cfg.accum}"
                            + (f", {cfg.batch_duration:g} s of audio per batch" if cfg.batch_duration else "") + ")"],
        ["training speed", f"**{speed:.1f} audio s/s**: {fmt_duration(audio)} of audio in {fmt_duration(train_s)} "
                           f"of training (incl. periodic validation)" if speed else "n/a"],
        ["training set", f"`{Path(cfg.train).name}`, {fmt_duration(summary['train_set_audio_s'])} of audio"
                         if summary.get("train_set_audio_s") else f"`{Path(cfg.train).name}`"],
        ["wall time", f"{fmt_duration(summary['wall_s'])} in all (load, validation, training, export)"],
        ["peak memory", _memory_line(records)],
        ["precision", f"{summary.get('precision') or 'n/a'}"],
        ["learning rate", f"{cfg.lr:g}, {cfg.sched} after {cfg.warmup_steps} warm-up steps"],
    ])
    lines.append("")
    lines += _mix_lines(summary.get("mix"))

    spec = meta.get("spec") or {}
    total, trainable = summary["total_params"], summary["trainable_params"]
    lines += ["## Model and adapters", "", f"- base: `{meta['base_nemo']}` (sha256 {meta['base_sha256'][:16]}…)"]
    if meta["backend"] == FULL:
        lines.append("- full fine-tuning: every weight trains")
    else:
        described = meta.get("describe") or {}
        lines.append(f"- backend `{meta['backend']}`: {described.get('method', 'adapters')}; "
                     f"{_settings_text(described.get('settings'))}, dropout {spec.get('dropout', 0):g}")
    lines.append(f"- trainable parameters: **{trainable:,}** of {total:,} ({100 * trainable / max(1, total):.3f}%)")
    lines.append(f"- modules adapted: {summary['adapted_modules']}")
    lines += [f"  - {g}" for g in _group_modules(result.adapted)]
    lines += _export_lines(summary) + [""]

    lines += _examples(_paired(before, after))
    lines += _settings(cfg)
    return "\n".join(lines)


def _mix_lines(mix: dict | None) -> list[str]:
    """The --train/--mix sources: the share each was meant to have (its weight) and the share it had."""
    from common.data.sources import KINDS

    if not mix:
        return []
    lines = ["### Data mixing", "",
             f"Training drew {mix['cuts']} cuts ({fmt_duration(mix['seconds'])} of audio) from these sources, each "
             f"repeated and sampled by its weight (a relative probability per cut):", ""]
    lines += table(["source", "kind", "weight", "expected share of cuts", "share of cuts", "share of audio"],
                   [[f"`{r['name']}`", KINDS.get(r["kind"], r["kind"]), f"{r['weight']:g}", fmt_pct(r["expected_share"], 1),
                     f"{fmt_pct(r['cut_share'], 1)} ({r['cuts']})", fmt_pct(r["second_share"], 1)]
                    for r in mix["sources"]])
    return lines + [""]


def _settings_text(settings: dict | None) -> str:
    """`rank 8, scaling 2`: what shaped the adapters, as the backend's describe() names it."""
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                     for k, v in (settings or {}).items()) or "no settings reported"


def _selection_lines(summary: dict) -> list[str]:
    """Which validation pass was exported, why, and every pass that was a candidate."""
    selection = summary.get("selection") or {}
    candidates = selection.get("candidates") or []
    if not candidates:
        return []
    lines = ["## Which state was exported", "", "![WER over steps](wer.png)", "",
             f"`--select {selection.get('mode')}`: step {summary.get('selected_step')}, {selection.get('why', '')}."]
    if selection.get("stopped_early"):
        lines.append(" Training stopped early: --early_stop_patience passes in a row did not improve the score.")
    lines.append("")
    reference = selection.get("reference_wer")
    header = ["step", "validation WER", "validation loss"]
    if reference is not None:
        header += ["regression WER", f"vs base ({fmt_pct(reference)})", "within threshold"]
    rows = []
    for c in candidates:
        row = [f"**{c['step']}**" if c["step"] == summary.get("selected_step") else c["step"],
               fmt_pct(c["val"].get("val_wer")), _num(c["val"].get("val_loss"))]
        if reference is not None:
            reg = c.get("regression") or {}
            row += [fmt_pct(reg.get("val_wer")), fmt_rel(c.get("rise")), "yes" if c.get("ok") else "**no**"]
        rows.append(row)
    return lines + table(header, rows) + [""]


def _regression_verdict(check: dict) -> str:
    if check["relative_change"] is None:
        return "Regression set: not compared (" + check["message"] + ")."
    if check["flagged"]:
        return f"**WARNING: regression.** {check['message']}."
    return f"Regression set: OK, {check['message']}."


def write_report(paths: dict[str, Path], cfg, result, meta: dict, total: int, stats: dict) -> dict[str, Any]:
    """Write report.md, summary.json, transcripts.json and the plots; print the verdict lines. Returns the summary."""
    import torch

    from common.quality.plots import plot_loss_lr, plot_memory, plot_wer, read_metrics

    root = paths["root"]
    records = read_metrics(paths["metrics"]) if paths["metrics"].exists() else []
    title = ("full fine-tuning" if meta["backend"] == FULL
             else f"{meta['backend']}, {_settings_text((meta.get('describe') or {}).get('settings'))}")
    plot_loss_lr(records, root / "loss.png", title=f"{title}, lr {cfg.lr:g}")
    memory_title = "GPU memory over steps" if torch.cuda.is_available() else "process memory (RSS) over steps, CPU run"
    plot_memory(records, root / "memory.png", title=memory_title, budget_gb=cfg.vram_budget_gb)
    summary = build_summary(cfg, result, meta, total, stats)
    selection = summary.get("selection") or {}
    plot_wer(records, root / "wer.png", title="WER over steps", selected_step=summary.get("selected_step"),
             reference=selection.get("reference_wer"), threshold=cfg.regression_threshold)
    write_text(root / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    transcripts = {"val": _paired(result.before, result.after) or (result.after or result.before or {}).get("rows", [])}
    if cfg.regression_manifest:
        transcripts["regression"] = (_paired(result.regression_before, result.regression_after)
                                     or (result.regression_after or result.regression_before or {}).get("rows", []))
    write_text(root / "transcripts.json", json.dumps(transcripts, indent=2, ensure_ascii=False))
    write_text(paths["report"], render(summary, cfg, meta, result, records))

    print(f"[report] {paths['report']}", flush=True)
    if summary.get("selected_step") is not None:
        print(f"[select] exported step {summary['selected_step']}: {selection.get('why', '')}", flush=True)
    reg = summary.get("regression")
    if reg and reg["check"]["flagged"]:
        print(f"[WARNING] regression: {reg['check']['message']} (--regression_threshold "
              f"{fmt_rel(reg['check']['threshold'])}). See {paths['report']}.", flush=True)
    if summary.get("regression_ok") is False:
        print(f"[WARNING] no validation pass kept the regression set within --regression_threshold "
              f"{fmt_rel(cfg.regression_threshold)}: mix general data into training (--mix), lower --lr, or train "
              f"fewer steps. See {paths['report']}.", flush=True)
    return summary
