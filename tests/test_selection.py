"""Results you can trust: scoring in eval mode, the exported pass chosen on the adapted set and guarded by the
regression set, early stopping, and what the run directory says about it."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.train_cli import run, tiny_args


def eval_mode_loss(model, loader, batches: int) -> float:
    """The token-weighted loss of the first `batches` batches, the whole model in eval mode: computed here, not
    by the code under test."""
    from common.model.steps import compute_loss

    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == batches:
                break
            loss, n = compute_loss(model, batch)
            loss_sum, tokens = loss_sum + float(loss) * int(n), tokens + int(n)
    return loss_sum / tokens


def test_validation_loss_is_computed_in_eval_mode_on_every_batch(fast_tiny_path, demo, tmp_path):
    """NeMo's decoding switches the decoder back to train mode; the logged loss of a pass over several batches
    must still equal a fresh eval-mode computation with the same weights (the tiny model has dropout 0.1)."""
    import lightning.pytorch as pl

    from common.training.module import CanaryFinetune, OptimSettings
    from tests.conftest import restore_tiny
    from tests.helpers import val_loader

    model = restore_tiny(fast_tiny_path)
    dropouts = [m.p for m in model.transf_decoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and max(dropouts) > 0  # otherwise the mode would not matter
    loader = val_loader(model, demo.adapt_val, bs=4, data_dir=tmp_path)
    module = CanaryFinetune(model, None, OptimSettings())
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=4)
    trainer.validate(module, dataloaders=loader, verbose=False)
    logged = module.last_val["val"]["val_loss"]

    assert module.last_val["val"]["utterances"] == 16
    assert logged == pytest.approx(eval_mode_loss(model, loader, 4), rel=1e-6)
    assert not any(m.training for m in model.modules())  # the pass left the model as it found it


def test_the_eval_mode_guard_restores_each_modules_own_mode(tiny_model):
    from common.model.steps import eval_mode

    tiny_model.train()
    tiny_model.encoder.eval()
    with eval_mode(tiny_model):
        assert not any(m.training for m in tiny_model.modules())
        tiny_model.transf_decoder.train()  # as NeMo's decoding does
    assert tiny_model.training and tiny_model.transf_decoder.training
    assert not any(m.training for m in tiny_model.encoder.modules())


def _candidates(exp_dir):
    summary = json.loads((exp_dir / "summary.json").read_text(encoding="utf-8"))
    return summary, summary["selection"]["candidates"]


def test_the_best_pass_is_exported_and_guarded_by_the_regression_set(fast_tiny_path, demo, tmp_path):
    """Every pass during training (the final one included, the 'before' pass not) is a candidate; the exported
    model is the best qualifying one, its adapters are adapters.safetensors, and `after` describes it."""
    from common.checkpoint_files import load_adapters, read_checkpoint
    from tests.conftest import restore_tiny
    from tests.helpers import val_loader

    exp = tmp_path / "run"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "data", max_steps=6, val_every_n_steps=2,
                              save_every=6, regression_manifest=demo.base_val, limit_val_batches=2, log="csv",
                              lr=0.01, warmup_steps=0))
    assert code == 0, out[-3000:]
    summary, candidates = _candidates(exp)
    steps = [c["step"] for c in candidates]  # with accumulation, epoch ends shift a pass by a step (Lightning)
    assert len(steps) == 3 and steps == sorted(steps) and steps[-1] == 6
    reference = summary["selection"]["reference_wer"]
    assert reference == summary["regression"]["before"]["val_wer"]
    for c in candidates:
        rise = (c["regression"]["val_wer"] - reference) / reference if reference else None
        assert c["ok"] == (rise is not None and rise <= 0.05)
    qualifying = [c for c in candidates if c["ok"]] or candidates
    best = min(qualifying, key=lambda c: (c["val"]["val_wer"], c["val"]["val_loss"])) if any(
        c["ok"] for c in candidates) else min(candidates, key=lambda c: c["rise"])
    assert summary["selected_step"] == best["step"]
    assert summary["after"]["val_wer"] == pytest.approx(best["val"]["val_wer"])
    assert summary["regression"]["after"]["val_wer"] == pytest.approx(best["regression"]["val_wer"])
    # best.ckpt holds that pass's adapters, and adapters.safetensors the exported ones: the same
    best_ckpt = read_checkpoint(exp / "checkpoints" / "best.ckpt")
    assert best_ckpt["global_step"] == best["step"] and "optimizer_states" not in best_ckpt
    adapters, meta = load_adapters(exp / "adapters.safetensors")
    assert meta["step"] == str(best["step"])
    assert all(torch.equal(adapters[k.removeprefix("model.")], v) for k, v in best_ckpt["state_dict"].items())
    # the exported model's own eval-mode loss on the validation batches the run scored is the reported one
    exported = restore_tiny(exp / "out.nemo")
    loader = val_loader(exported, demo.adapt_val, bs=2, data_dir=tmp_path / "data")
    assert summary["after"]["val_loss"] == pytest.approx(eval_mode_loss(exported, loader, 2), rel=1e-4)
    # the regression set is its own series in the Lightning logger, never under val_*
    with open(exp / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        columns = next(csv.reader(f))
    assert {"reg_wer", "reg_loss", "val_wer", "val_loss"} <= set(columns)
    report = (exp / "report.md").read_text(encoding="utf-8")
    assert f"Exported the state at step {best['step']}" in report and "![WER over steps](wer.png)" in report
    assert (exp / "wer.png").stat().st_size > 5000
    assert f"[select] exported step {best['step']}" in out


def test_no_qualifying_pass_is_said_everywhere(fast_tiny_path, demo, tmp_path):
    """A threshold no pass can meet (-100%: the regression WER must fall to zero): regression_ok is false in
    summary.json, report.md and the console; the reference is measured even under --no_eval_before; --select last
    exports the final state."""
    exp = tmp_path / "run"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "data", max_steps=4, val_every_n_steps=2,
                              save_every=4, regression_manifest=demo.base_val, regression_threshold=-1.0,
                              no_eval_before=True, select="last"))
    assert code == 0, out[-3000:]
    summary, candidates = _candidates(exp)
    assert summary["regression_ok"] is False and summary["selected_step"] == 4
    assert summary["selection"]["reference_wer"] is not None and summary["before"] == {}
    assert not (exp / "checkpoints" / "best.ckpt").exists()
    assert "[WARNING] no validation pass kept the regression set" in out
    assert "**WARNING: no pass met the regression threshold.**" in (exp / "report.md").read_text(encoding="utf-8")


def test_early_stopping_exports_the_best_pass_and_marks_the_run_finished(fast_tiny_path, demo, tmp_path):
    """With a learning rate too small to change anything, the second pass is no better than the first: patience 1
    stops there, well before step 10, and the export is the first pass's state."""
    from common.checkpoint_files import read_checkpoint

    exp = tmp_path / "run"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "data", max_steps=10, val_every_n_steps=2,
                              save_every=10, lr=1e-12, warmup_steps=0, early_stop_patience=1))
    assert code == 0, out[-3000:]
    summary, candidates = _candidates(exp)
    first, second = [c["step"] for c in candidates]
    assert summary["global_step"] == second < 10
    assert summary["selected_step"] == first and summary["selection"]["stopped_early"] is True
    assert "[select] early stop: 1 validation passes without a better score" in out
    assert read_checkpoint(exp / "checkpoints" / "last.ckpt")["canary_lora"]["stopped_early"] is True
