"""Loggers, config files and the console, on real runs of the training CLI: a quiet run logging to wandb offline
with status lines, the same run repeated from its run.json with the same losses, every logger receiving learning
rate, gradient norm and memory, and what --config and --verbose do."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from tests.train_cli import run, tiny_args, train_records

CHATTER = ("OneLogger", "Error getting class at", "GPU available", "[NeMo I", "No exporters were provided")
STEP_KEYS = ("train/lr", "train/grad_norm", "train/mem_gb", "train/peak_gb", "train/audio_s")


def missing_from_wandb(folder: Path, keys, wait_s: float = 30.0) -> list[str]:
    """The keys not (yet) in the offline run's history file under `folder`; wandb's service writes it on its own
    time after `finish()`, so this looks again for a while before answering."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        runs = list(folder.glob("offline-run-*/run-*.wandb"))
        data = runs[0].read_bytes() if len(runs) == 1 else b""
        missing = [k for k in keys if k.encode() not in data]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def short_run(nemo: Path, demo, exp: Path, data: Path, **overrides) -> list[str]:
    settings = dict(max_steps=3, save_every=3, val_every_n_steps=3, max_train_cuts=8, eval_before=None,
                    export_nemo="", mem_report_steps=0)
    settings.update(overrides)
    return tiny_args(nemo, demo, exp, data, **settings) + ["--no_eval_before"]


@pytest.fixture(scope="module")
def wandb_run(fast_tiny_path, demo, tmp_path_factory):
    """One short run with output to a pipe (not a terminal), --log wandb offline and a status line every step."""
    root = tmp_path_factory.mktemp("wandb-run")
    code, out = run(short_run(fast_tiny_path, demo, root / "a", root / "cuts", log="wandb", status_seconds=0.001),
                    WANDB_MODE="offline", WANDB_DIR=str(root / "wandb_dir"))
    assert code == 0, out
    return root, out


def test_quiet_run_with_status_lines_logs_to_wandb_offline(wandb_run):
    root, out = wandb_run
    assert not [c for c in CHATTER if c in out], out
    status = [line for line in out.splitlines() if line.startswith("[status] step")]
    assert len(status) == 3 and all("loss" in s and "audio s/s" in s and "ETA" in s for s in status), out
    runs = list((root / "wandb_dir" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and f"[log] wandb run {runs[0].parent}" in out
    assert missing_from_wandb(root / "wandb_dir" / "wandb", STEP_KEYS + ("train_loss",)) == []


@pytest.mark.slow
def test_run_json_repeats_the_run_with_the_same_losses(wandb_run):
    """run.json given back as --config with a new --exp_dir (and other logging) trains the same steps."""
    root, _ = wandb_run
    again = root / "b"
    code, out = run(["--config", str(root / "a" / "run.json"), "--exp_dir", str(again), "--log", "tb", "--verbose"])
    assert code == 0, out
    first, second = train_records(root / "a"), train_records(again)
    assert [r["loss"] for r in second] == [r["loss"] for r in first] and len(first) == 3
    assert "Error getting class at" in out  # --verbose lets NeMo's chatter through
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(again / "logs")).Reload()
    assert set(STEP_KEYS) <= set(events.Tags()["scalars"])


def test_every_logger_gets_learning_rate_gradient_norm_and_memory(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from common.training.callbacks import to_loggers
    from common.training.trainer import make_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    record = {"loss": 0.5, "lr": 3e-4, "grad_norm": 1.25, "mem_gb": 0.7, "peak_gb": 0.8, "audio_s": 12.5}
    loggers = {kind: make_logger(kind, tmp_path / kind, {"bs": 4, "lr": 3e-4}) for kind in ("csv", "tb", "wandb")}
    for step in (1, 2):
        to_loggers(list(loggers.values()), step, record)
    for logger in loggers.values():
        logger.finalize("success")
    loggers["wandb"].experiment.finish()
    csv = (tmp_path / "csv" / "logs" / "metrics.csv").read_text().splitlines()
    assert set(STEP_KEYS) <= set(csv[0].split(",")) and len(csv) == 3
    assert set(STEP_KEYS) <= set(EventAccumulator(str(tmp_path / "tb" / "logs")).Reload().Tags()["scalars"])
    assert missing_from_wandb(tmp_path / "wandb_dir" / "wandb", STEP_KEYS) == []


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path):
    from common.config import parse_args
    from common.errors import UserError

    good = tmp_path / "run.yaml"
    good.write_text("nemo: base.nemo\ntrain: t.jsonl\nval: v.jsonl\nbs: 4\nlr: 1e-3\ncompile: true\n"
                    "lora_targets: '.*linear_q'\n", encoding="utf-8")
    cfg = parse_args(["--config", str(good), "--bs", "2"])
    assert (cfg.nemo, cfg.bs, cfg.lr, cfg.compile, cfg.targets) == ("base.nemo", 2, 1e-3, True, (".*linear_q",))
    bad = tmp_path / "bad.yaml"
    bad.write_text("bs: four\nbatch: 2\nsched: steep\nlog: wandb\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        parse_args(["--config", str(bad)])
    message = str(info.value)
    assert "bs: expected int" in message and "'batch' is not a flag" in message and "sched: 'steep'" in message
    with pytest.raises(UserError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("bs: [1,\n", encoding="utf-8")
        parse_args(["--config", str(tmp_path / "broken.yaml")])


def test_wandb_without_a_key_is_a_clear_error(tmp_path, monkeypatch):
    from common.config import TrainConfig, check_values

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    problems = check_values(TrainConfig(log="wandb"))
    assert any("WANDB_MODE=offline" in p and "wandb login" in p for p in problems)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not [p for p in check_values(TrainConfig(log="wandb")) if "wandb" in p]


def test_quiet_holds_back_chatter_but_not_errors():
    from common.console import quiet

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    names = ("nemo_logger", "hydra.utils", "lightning.fabric.utilities.seed")
    quiet(verbose=True)  # from a clean state, whatever ran in this process before
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        quiet()
        logging.getLogger("nemo_logger").info("Tokenizer initialized")
        logging.getLogger("nemo_logger").warning("If you intend to do training, call setup_training_data()")
        logging.getLogger("nemo_logger").error("a NeMo error")
        logging.getLogger("hydra.utils").error("Error getting class at nemo.collections.asr.modules.transformer."
                                               "get_nemo_transformer: Located non-class")
        logging.getLogger("hydra.utils").error("Error getting class at my.module.Thing")
        logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 42")
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("deprecated", DeprecationWarning)
        assert seen == ["a NeMo error", "Error getting class at my.module.Thing"] and not caught
        quiet(verbose=True)
        logging.getLogger("nemo_logger").info("shown again")
        logging.getLogger("lightning.fabric.utilities.seed").info("Seed set to 1")
        assert seen[-2:] == ["shown again", "Seed set to 1"]
    finally:
        quiet(verbose=True)
        for name in names:
            logging.getLogger(name).removeHandler(handler)
