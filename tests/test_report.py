"""The run report: a short training run on the random tiny model writes report.md with before/after figures,
both plots, the regression section and its WARNING; the verdict logic on hand-made numbers; and the demo
run, where WER on the adapted slice must drop."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from common.fmt import relative_change
from common.quality.scoring import regression_check

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def head(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dst


# ---- the verdict on hand-made numbers -------------------------------------------------------------------
@pytest.mark.parametrize("before, after, threshold, flagged", [
    (0.20, 0.20, 0.05, False),    # unchanged
    (0.20, 0.209, 0.05, False),   # +4.5 % relative: under 5 %
    (0.20, 0.211, 0.05, True),    # +5.5 % relative: over
    (0.20, 0.15, 0.05, False),    # improved
    (0.20, 0.15, -0.30, True),    # -25 % is not the -30 % a negative threshold demands
    (0.0, 0.0, 0.05, False),      # perfect stays perfect
    (0.0, 0.01, 0.05, True),      # perfect became imperfect: an infinite relative rise
    (None, 0.3, 0.05, False),     # no 'before' (e.g. a resumed run): nothing to compare
])
def test_regression_check(before, after, threshold, flagged) -> None:
    check = regression_check(before, after, threshold)
    assert check["flagged"] is flagged
    if before is not None and before > 0:
        assert check["relative_change"] == pytest.approx((after - before) / before)
    assert ("rose" in check["message"]) == (before is not None and after > before)


def test_relative_change_edges() -> None:
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 0.5) == math.inf
    assert relative_change(0.5, None) is None
    assert relative_change(float("nan"), 0.5) is None


# ---- a real (short) training run ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_run(fast_tiny_path, demo, tmp_path_factory):
    """10 LoRA steps on the random tiny model with a regression set and a threshold every rise exceeds.

    With --regression_threshold -1 (a relative change of -100 %), any WER above zero after training is flagged.
    """
    from common.config import TrainConfig, validate
    from common.training.run import run

    tmp = tmp_path_factory.mktemp("report")
    cfg = validate(TrainConfig(
        nemo=str(fast_tiny_path), train=str(demo.adapt_train), val=str(head(demo.adapt_val, tmp / "val.jsonl", 8)),
        regression_manifest=str(head(demo.base_val, tmp / "reg.jsonl", 8)), regression_threshold=-1.0,
        bs=4, val_bs=4, accum=1, precision="32", max_steps=10, max_train_cuts=16, val_every_n_steps=1000,
        save_every=1000, lr=2e-3, warmup_steps=2, exp_dir=str(tmp / "run"), export_nemo=str(tmp / "merged.nemo"),
        data_dir=str(tmp / "cuts"), mem_report_steps=0, log="none"))
    result = run(cfg)
    return cfg, result, Path(cfg.exp_dir)


def test_report_files_and_plots(short_run) -> None:
    cfg, result, root = short_run
    assert result.status == "finished" and result.global_step == 10
    for name in ("report.md", "summary.json", "transcripts.json", "loss.png", "memory.png"):
        assert (root / name).is_file(), name
    for png in ("loss.png", "memory.png"):
        data = (root / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000  # a drawn chart, not a "no data" placeholder
    report = (root / "report.md").read_text(encoding="utf-8")
    assert "![loss and learning rate](loss.png)" in report and "![memory over steps](memory.png)" in report
    assert not [p for p in root.iterdir() if ".tmp" in p.name]


def test_report_before_after_figures(short_run) -> None:
    cfg, result, root = short_run
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    report = (root / "report.md").read_text(encoding="utf-8")
    for when in ("before", "after"):
        figures = summary[when]
        assert figures["utterances"] == 8
        assert math.isfinite(figures["val_loss"]) and figures["val_wer"] >= 0 and figures["val_cer"] >= 0
        # the run's own figures are what the report prints
        assert f"{100 * figures['val_wer']:.2f}%" in report
        assert f"{figures['val_loss']:.4f}" in report
    # training moved the loss (10 steps at lr 2e-3 on 16 clips)
    assert summary["after"]["val_loss"] != summary["before"]["val_loss"]
    # the transcripts behind the figures: WER recomputed from them equals the reported one
    from common.quality.metrics import wer

    pairs = json.loads((root / "transcripts.json").read_text(encoding="utf-8"))["val"]
    assert len(pairs) == 8
    refs = [p["ref"] for p in pairs]
    assert wer(refs, [p["after"] for p in pairs]).rate == pytest.approx(summary["after"]["val_wer"])
    assert wer(refs, [p["before"] for p in pairs]).rate == pytest.approx(summary["before"]["val_wer"])


def test_report_run_facts(short_run) -> None:
    cfg, result, root = short_run
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    report = (root / "report.md").read_text(encoding="utf-8")
    assert summary["backend"] == "linear" and summary["adapted_modules"] == len(result.adapted) > 0
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert f"{summary['trainable_params']:,}" in report
    # audio s/s = audio seconds the steps processed (metrics.jsonl) / training wall time
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    processed = sum(r["audio_s"] for r in records if r["kind"] == "train")
    assert summary["audio_processed_s"] == pytest.approx(processed, abs=0.2)
    assert summary["audio_s_per_s"] == pytest.approx(processed / summary["train_wall_s"], rel=0.02)
    assert "audio s/s" in report
    assert 0 < summary["train_wall_s"] <= summary["wall_s"]
    # export and its verification
    assert summary["export"] == str(result.export) and result.export.is_file()
    assert summary["export_check"]["ok"] is True
    assert "**verified**" in report
    # settings that differ from the defaults are listed
    assert "`--max_steps`" in report and "`--regression_threshold`" in report


def test_report_regression_section_and_warning(short_run, capsys) -> None:
    cfg, result, root = short_run
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    report = (root / "report.md").read_text(encoding="utf-8")
    reg = summary["regression"]
    assert reg["before"]["utterances"] == 8 and reg["after"]["utterances"] == 8
    # the regression set is a separate pass: its figures are its own, not the validation set's
    assert (reg["before"]["val_loss"], reg["after"]["val_loss"]) != (summary["before"]["val_loss"],
                                                                      summary["after"]["val_loss"])
    check = reg["check"]
    rel = relative_change(reg["before"]["val_wer"], reg["after"]["val_wer"])
    assert check["relative_change"] == pytest.approx(rel)
    assert check["flagged"] is (rel > cfg.regression_threshold)
    assert reg["after"]["val_wer"] > 0, "a random model after 10 steps cannot be perfect"
    assert check["flagged"], "with threshold -1 every WER above zero is flagged"
    assert "## Did it cost anything? (regression set)" in report
    assert "> **WARNING**" in report and "**WARNING: regression.**" in report
    # regression passes are kept apart from the validation curve in metrics.jsonl
    kinds = [json.loads(line)["kind"] for line in (root / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kinds.count("regression") == 2 and kinds.count("val") == 2


def test_warning_line_printed_last(fast_tiny_path, demo, tmp_path, capfd) -> None:
    """The run's output ends with the report path and the WARNING line (the report is written last)."""
    from common.quality.report import write_report
    from common.training.run import RunResult

    from common.config import TrainConfig

    # a report from hand-made results: no training needed to check the printed lines
    cfg = TrainConfig(nemo=str(fast_tiny_path), train=str(demo.adapt_train), val=str(demo.adapt_val),
                      regression_manifest=str(demo.base_val), regression_threshold=0.05)
    rows = [{"id": "a", "lang": "ru", "ref": "мама мыла раму", "hyp": "мама мыла раму"}]
    worse = [{"id": "a", "lang": "ru", "ref": "мама мыла раму", "hyp": "мама мыла"}]
    figures = {"val_loss": 1.0, "val_wer": 0.0, "val_cer": 0.0, "val_wer_raw": 0.0, "utterances": 1, "rows": rows}
    result = RunResult(exp_dir=tmp_path, status="finished", global_step=3, before=figures, after=figures,
                       regression_before={**figures, "val_wer": 0.30}, regression_after={**figures, "val_wer": 0.33,
                                                                                         "rows": worse},
                       adapted=["encoder.layers.0.self_attn.linear_q", "encoder.layers.1.self_attn.linear_q"],
                       trainable_params=10, wall_s=1.0)
    paths = {"root": tmp_path, "metrics": tmp_path / "metrics.jsonl", "report": tmp_path / "report.md"}
    meta = {"backend": "linear", "base_nemo": str(fast_tiny_path), "base_sha256": "0" * 64,
            "spec": {"r": 8, "alpha": 16.0, "dropout": 0.0, "targets": [], "adapter_dim": 32}}
    summary = write_report(paths, cfg, result, meta, 100, {"precision": "32-true"})
    out = capfd.readouterr().out.strip().splitlines()
    assert summary["regression"]["check"]["flagged"]  # 0.30 -> 0.33 is +10 %, over 5 %
    assert out[-1].startswith("[WARNING] regression: WER on the regression set rose by 10.0% relative")
    assert out[-2] == f"[report] {tmp_path / 'report.md'}"
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "`encoder.layers.N.self_attn.linear_q` × 2" in report
    # the same numbers under the threshold: an OK line and no WARNING
    cfg.regression_threshold = 0.15
    write_report(paths, cfg, result, meta, 100, {"precision": "32-true"})
    out = capfd.readouterr().out
    assert "[WARNING]" not in out
    assert "**OK**: WER on the regression set rose by 10.0% relative" in (tmp_path / "report.md").read_text("utf-8")


def test_report_for_a_run_that_stopped(fast_tiny_path, demo, tmp_path, capfd) -> None:
    """A non-finite loss ends the run early: the report still comes out and says what is missing."""
    from common.config import TrainConfig
    from common.quality.report import write_report
    from common.training.run import RunResult

    cfg = TrainConfig(nemo=str(fast_tiny_path), train=str(demo.adapt_train), val=str(demo.adapt_val),
                      regression_manifest=str(demo.base_val))
    figures = {"val_loss": 2.0, "val_wer": 0.5, "val_cer": 0.2, "val_wer_raw": 0.6, "utterances": 3, "rows": []}
    result = RunResult(exp_dir=tmp_path, status="nonfinite", global_step=7, before=figures,
                       regression_before=figures, adapted=["encoder.pre_encode.out"], trainable_params=5, wall_s=2.0)
    paths = {"root": tmp_path, "metrics": tmp_path / "metrics.jsonl", "report": tmp_path / "report.md"}
    meta = {"backend": "full", "base_nemo": str(fast_tiny_path), "base_sha256": "0" * 64, "spec": {}}
    summary = write_report(paths, cfg, result, meta, 5, {})
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "**nonfinite** (the loss became non-finite: nothing was exported) at step 7 of 3000" in report
    assert "| WER (normalized) | 50.00% | **n/a** | n/a |" in report
    assert "Regression set: not compared" in report and "[WARNING]" not in capfd.readouterr().out
    assert "- export: none" in report and "full fine-tuning: every weight trains" in report
    assert summary["audio_s_per_s"] is None and summary["regression"]["check"]["flagged"] is False


# ---- the demo: the pretrained base model adapted to the "adapt" slice ------------------------------------
def test_demo_report_shows_wer_dropping(tmp_path) -> None:
    """`just demo` end to end: about a minute on 2 cores once the pretrained base is cached in .cache/, plus
    about 8 minutes the first time (a fresh CI machine) to pretrain it."""
    from recipes import demo as demo_recipe

    rc = demo_recipe.main(["--exp_dir", str(tmp_path / "demo"), "--export_nemo", str(tmp_path / "demo.nemo")])
    assert rc == 0, "the demo missed its own goals (see its [demo] goals line)"
    root = tmp_path / "demo"
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    before, after = summary["before"]["val_wer"], summary["after"]["val_wer"]
    assert after <= (1 - demo_recipe.ADAPT_GOAL) * before, (before, after)
    assert summary["after"]["val_loss"] < summary["before"]["val_loss"]
    reg = summary["regression"]
    assert reg["after"]["val_wer"] <= (1 + demo_recipe.REGRESSION_LIMIT) * reg["before"]["val_wer"], reg
    assert summary["regression_ok"] is True and summary["export_check"]["ok"]
    assert {s["name"] for s in summary["mix"]["sources"]} == {"adapt_train.jsonl", "base_train.jsonl"}
    report = (root / "report.md").read_text(encoding="utf-8")
    assert re.search(r"Validation WER [\d.]+% → \*\*[\d.]+%\*\*: -", report), "the headline shows a drop"
    assert (root / "loss.png").is_file() and (root / "memory.png").is_file()
