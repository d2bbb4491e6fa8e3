"""Validation passes outside the training loop (before training, and after it): loss, WER and CER with the
transcripts, recorded in metrics.jsonl and printed, each followed by a `[MEM:val_end]` line."""
from __future__ import annotations

from common.quality.scoring import validation_details
from common.telemetry import report_memory


def evaluate(trainer, module, val_dl, metrics, tag: str, kind: str = "val") -> dict:
    """One validation pass: loss and WER, plus CER, per-language figures and the transcripts (`rows`).

    `kind` names the metrics.jsonl record: "regression" passes are kept apart from the validation curve.
    """
    trainer.validate(module, dataloaders=val_dl, verbose=False)
    result = dict(module.last_val) | validation_details(module.val_outputs)
    metrics.write(kind, step=trainer.global_step, tag=tag,
                  **{k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    print(f"[{kind}:{tag}] loss={result['val_loss']:.4f}  wer={result['val_wer']:.4f}  "
          f"cer={result['val_cer'] or float('nan'):.4f}  ({result['utterances']} utterances)", flush=True)
    report_memory("val_end")
    return result
