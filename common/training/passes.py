"""Validation passes outside the training loop (before training, the final state, the selected state): loss, WER
and CER with the transcripts for every validation set, recorded in metrics.jsonl and printed, each pass followed
by a `[MEM:val_end]` line."""
from __future__ import annotations

from common.quality.scoring import validation_details
from common.telemetry import report_memory

RECORD_KIND = {"val": "val", "regression": "regression"}  # metrics.jsonl's `kind` per validation set


def pass_result(module) -> dict[str, dict]:
    """The last validation pass of `module`, per set: its scalars plus CER, per-language figures and rows."""
    return {name: dict(module.last_val[name]) | validation_details(module.val_outputs.get(name, []))
            for name in module.last_val}


def scalars(result: dict | None) -> dict:
    return {k: v for k, v in (result or {}).items() if not isinstance(v, (list, dict))}


def evaluate(trainer, module, loaders: dict, metrics, tag: str) -> dict[str, dict]:
    """One pass over each set in `loaders` ({"val": ..., "regression": ...}, in that order): its scalars plus CER,
    per-language figures and the transcripts (`rows`), per set."""
    sets, module.set_names = module.set_names, tuple(loaders)
    try:
        trainer.validate(module, dataloaders=list(loaders.values()), verbose=False)
    finally:
        module.set_names = sets  # the sets training validates on, whatever this pass scored
    result = pass_result(module)
    for name, res in result.items():
        record(metrics, name, trainer.global_step, tag, res)
    report_memory("val_end")
    return result


def record(metrics, name: str, step: int, tag: str, result: dict) -> None:
    """A pass's figures for one set: a metrics.jsonl record and a console line."""
    kind = RECORD_KIND.get(name, name)
    metrics.write(kind, step=step, tag=tag, **scalars(result))
    cer = result.get("val_cer")
    print(f"[{kind}:{tag}] loss={result['val_loss']:.4f}  wer={result['val_wer']:.4f}  "
          f"cer={cer if cer is not None else float('nan'):.4f}  ({result['utterances']} utterances)", flush=True)
