"""Which trained state to export: every validation pass during training is a candidate, scored on the adapted set
and guarded by the regression set.

A pass qualifies when its regression-set WER rose at most `--regression_threshold` (relative) above the base
model's (the reference, measured once before training and kept across resumes); without a regression set every
pass qualifies. The best candidate is the qualifying pass with the lowest validation WER, ties broken by loss.
When no pass qualifies, the best is the one whose regression WER rose least, and the run says so everywhere
(`regression_ok: false`). The best pass's adapters are saved at that pass as `best.ckpt` (adapters and progress,
no optimizer), whatever --save_every is. With --early_stop_patience N, training stops after N passes in a row
that did not improve the score.
"""
from __future__ import annotations

import math
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from common.fmt import relative_change
from common.training.passes import evaluate, pass_result, scalars


class Selection(Callback):
    def __init__(self, best_path: Path | None, *, threshold: float, patience: int = 0):
        self.best_path = Path(best_path) if best_path is not None else None
        self.threshold = threshold
        self.patience = patience
        self.reference: float | None = None  # the base model's regression-set WER
        self.candidates: list[dict] = []  # one per pass: step, val, regression (scalars), rise, ok
        self.best: dict | None = None
        self.stale = 0  # passes in a row without a better score
        self.stopped_early = False
        self.latest: dict | None = None  # the latest pass's full results (with transcripts), this process only
        self.best_full: dict | None = None

    # ---- scoring ---------------------------------------------------------------------------------------------
    @staticmethod
    def key(c: dict) -> tuple:
        """Lower is better: qualifying passes by WER then loss; the others after them, least forgetting first."""
        val = c["val"]
        wer = val.get("val_wer") if isinstance(val.get("val_wer"), float) and math.isfinite(val["val_wer"]) else math.inf
        loss = val.get("val_loss", math.inf)
        if c["ok"]:
            return 0, wer, loss
        return 1, c["rise"] if c["rise"] is not None else math.inf, wer, loss

    def candidate(self, step: int, result: dict[str, dict]) -> dict:
        reg = scalars(result.get("regression")) or None
        rise = relative_change(self.reference, reg.get("val_wer")) if reg else None
        ok = reg is None or self.reference is None or (rise is not None and rise <= self.threshold)
        return {"step": step, "val": scalars(result.get("val")), "regression": reg, "rise": rise, "ok": ok}

    def consider(self, trainer, module) -> dict:
        """Score the pass just run (at the trainer's global step); keep it if it is the best so far."""
        result = pass_result(module)
        cand = self.candidate(trainer.global_step, result)
        self.candidates = [c for c in self.candidates if c["step"] != cand["step"]] + [cand]
        self.latest = {"step": cand["step"], **result}
        if self.best is None or self.key(cand) < self.key(self.best):
            self.best, self.best_full, self.stale = cand, self.latest, 0
            if self.best_path is not None:
                trainer.save_checkpoint(self.best_path, weights_only=True)
        else:
            self.stale += 1
            if self.patience and self.stale >= self.patience and trainer.state.fn == "fit":
                self.stopped_early = True
                trainer.should_stop = True
                print(f"[select] early stop: {self.stale} validation passes without a better score (best: step "
                      f"{self.best['step']}, WER {self.best['val'].get('val_wer', float('nan')):.4f})", flush=True)
        return cand

    def on_validation_end(self, trainer, pl_module) -> None:
        # the passes during training; the final one (after fit) is considered by the run's select phase
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.consider(trainer, pl_module)

    def summary(self, *, mode: str, chosen: int) -> dict:
        """How the exported pass was chosen, for summary.json and the report."""
        picked = next((c for c in self.candidates if c["step"] == chosen), None)
        return {"mode": mode, "selected_step": chosen, "candidates": self.candidates, "reference_wer": self.reference,
                "threshold": self.threshold, "regression_ok": self.regression_ok if mode == "best" else (
                    None if picked is None or picked["regression"] is None or self.reference is None
                    else bool(picked["ok"])),
                "stopped_early": self.stopped_early, "why": self.why(mode, picked)}

    def why(self, mode: str, picked: dict | None) -> str:
        if picked is None:
            return "no validation pass was scored"
        wer = picked["val"].get("val_wer", float("nan"))
        passes = len(self.candidates)
        if mode == "last":
            return f"--select last: the final state (step {picked['step']}, validation WER {wer:.4f})"
        guard = ""
        if picked["regression"] is not None and self.reference is not None:
            rise = picked["rise"]
            rise_text = "n/a" if rise is None else f"{100 * rise:+.1f}%"
            if picked["ok"]:
                guard = (f"; its regression-set WER moved {rise_text} from the base model's "
                         f"{self.reference:.4f}, within the {100 * self.threshold:.1f}% threshold")
            else:
                guard = (f"; NO pass kept the regression-set WER within {100 * self.threshold:.1f}% of the base "
                         f"model's {self.reference:.4f}: this one rose least ({rise_text})")
        return (f"the lowest validation WER ({wer:.4f}, ties broken by loss) among {passes} validation "
                f"pass{'es' if passes != 1 else ''}" + guard)

    @property
    def regression_ok(self) -> bool | None:
        """Whether the chosen pass kept the regression set within the threshold (None without a regression set)."""
        if self.best is None or self.best["regression"] is None or self.reference is None:
            return None
        return bool(self.best["ok"])

    # ---- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"reference": self.reference, "candidates": self.candidates, "best": self.best, "stale": self.stale,
                "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict) -> None:
        if self.reference is None:
            self.reference = state.get("reference")
        self.candidates = list(state.get("candidates") or [])
        self.best = state.get("best")
        self.stale = int(state.get("stale", 0))
        self.stopped_early = bool(state.get("stopped_early", False))


def choose(trainer, module, selection: Selection, held_out: dict, metrics, *, mode: str) -> dict:
    """The exported pass's step and full results, with its weights in place in `module`.

    The final state is a candidate too: unless the last pass during training scored it already, it is scored now
    ("after"). With `mode` "best" and an earlier pass chosen, that pass's adapters are loaded from best.ckpt and
    scored again ("selected"), so that what the report calls `after` is measured on the very weights exported.
    """
    step = trainer.global_step
    if selection.latest is None or selection.latest["step"] != step:
        evaluate(trainer, module, held_out, metrics, "after")
        selection.consider(trainer, module)
    if mode == "last" or selection.best is None or selection.best["step"] == step:
        return selection.latest
    load_weights(module, selection.best_path)
    if selection.best_full is not None and selection.best_full["step"] == selection.best["step"]:
        return selection.best_full
    result = evaluate(trainer, module, held_out, metrics, "selected")
    return {"step": selection.best["step"], **result}


def load_weights(module, path: Path) -> None:
    """Put a checkpoint's trained weights (adapters, or every weight in full fine-tuning) into `module`."""
    from common.checkpoint_files import read_checkpoint

    state = read_checkpoint(path)["state_dict"]
    expected = set(module.trainable_names())
    if set(state) != expected:
        raise RuntimeError(f"{path} does not hold this run's trained weights ({len(set(state) ^ expected)} keys "
                           f"differ, e.g. {sorted(set(state) ^ expected)[:3]})")
    module.load_state_dict(state, strict=False)
    print(f"[select] loaded the selected pass's weights from {path}", flush=True)
