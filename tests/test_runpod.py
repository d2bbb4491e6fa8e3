"""The Linux launcher: environment checks, pass-through, aliases, 48 GB defaults; on CPU it says so."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import UserError
from common.launch import A6000_DEFAULTS, resolve_argv

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
