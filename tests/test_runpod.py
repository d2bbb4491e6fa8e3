"""The Linux launcher: environment checks, pass-through, aliases, 48 GB defaults; on CPU it says so."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from recipes.runpod_train import A6000_DEFAULTS, resolve_argv

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "recipes" / "runpod_finetune_canary.sh"


def test_aliases_map_to_the_original_flags_and_defaults_fill_in():
    argv = resolve_argv(["--nemo", "m.nemo", "--outdir", "/w/exp", "--export", "/w/out.nemo", "--bs", "12"])
    pairs = dict(zip(argv[::2], argv[1::2]))
    assert pairs["--exp_dir"] == "/w/exp" and pairs["--export_nemo"] == "/w/out.nemo"
    assert pairs["--bs"] == "12"  # the user's value wins over the 48 GB default
    for flag in ("--accum", "--lora_r", "--lora_alpha", "--lora_dropout", "--num_workers", "--mem_report_steps"):
        assert pairs[flag] == A6000_DEFAULTS[flag]
    assert "--outdir" not in pairs and "--export" not in pairs


def test_conflicting_alias_values_are_an_error():
    with pytest.raises(UserError) as e:
        resolve_argv(["--outdir", "a", "--exp_dir", "b"])
    assert "--outdir a" in str(e.value) and "--exp_dir b" in str(e.value)
    assert resolve_argv(["--outdir", "a", "--exp_dir", "a"]).count("--exp_dir") == 1  # same value is fine


def run_launcher(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**__import__("os").environ, "PYTHON": sys.executable})


def test_help_explains_the_48gb_defaults():
    r = run_launcher("--help", timeout=120)
    assert r.returncode == 0, r.stderr
    for text in ("--outdir", "--export", "48 GB default: 8", "alias of --exp_dir", "--tiny"):
        assert text in r.stdout


def test_conflict_fails_fast_with_a_clear_message():
    r = run_launcher("--tiny", "--outdir", "a", "--exp_dir", "b", timeout=300)
    assert r.returncode == 2
    assert "conflict" in r.stderr and "--outdir a" in r.stderr


def test_without_a_gpu_it_says_so_and_trains_the_tiny_default(tmp_path):
    out = tmp_path / "exp"
    export = tmp_path / "tiny-a6000.nemo"
    r = run_launcher("--tiny", "--outdir", str(out), "--export", str(export))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "no CUDA GPU found" in r.stdout
    assert "[launcher] torch" in r.stdout
    assert "--lora_r 16" in r.stdout and "--lora_dropout 0.05" in r.stdout and "--bs 8" in r.stdout
    assert export.exists() and (out / "report.md").exists()
    assert "restore check: OK" in r.stdout


def _compile_run(tmp_path, embedded, name: str):
    from common.config import parse_args
    from common.training.run import run

    return run(parse_args([
        "--nemo", str(embedded.random_nemo), "--train", str(embedded.data.adapt_train),
        "--val", str(embedded.data.adapt_val), "--precision", "32", "--compile", "--bs", "4", "--accum", "1",
        "--max_steps", "2", "--val_every_n_steps", "2", "--save_every", "2", "--warmup_steps", "1",
        "--max_train_cuts", "8", "--limit_val_batches", "1", "--no_eval_before", "--log", "none",
        "--exp_dir", str(tmp_path / name), "--export_nemo", str(tmp_path / f"{name}.nemo"),
        "--data_dir", str(tmp_path / "data")]))


def test_compile_failure_falls_back_to_eager_with_a_warning(tmp_path, embedded, capsys, monkeypatch):
    """A compiler that breaks on first use (a missing C compiler, an unsupported op) must not end the run."""
    import torch

    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("backend compiler failed: no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = _compile_run(tmp_path, embedded, "broken")
    out = capsys.readouterr().out
    assert result.status == "finished" and result.global_step == 2 and result.export_check["ok"]
    assert "[compile] the pre-encoder, 2 encoder and 2 decoder layers compiled" in out
    assert "[compile] torch.compile failed on the encoder (RuntimeError: backend compiler failed" in out
    assert "continuing without it" in out


@pytest.mark.slow
def test_compiled_training_matches_eager_keys_and_exports(tmp_path, embedded, capsys):
    """Real torch.compile (Inductor) on the CPU: trains, validates eagerly, exports with the base's keys."""
    result = _compile_run(tmp_path, embedded, "compiled")
    out = capsys.readouterr().out
    assert result.status == "finished" and result.export_check["ok"] and result.export_check["keys_equal_base"]
    assert "torch.compile failed" not in out
