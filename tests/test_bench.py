"""The measuring harness (`common/bench.py`) and its recipes: `just bench`, `just tune-batch`, `just sweep`.

The recipe tests run the real command lines on the tiny default on the CPU, as subprocesses, and check the tables
they write. They set OMP_NUM_THREADS=1: on a small shared machine, two OpenMP threads per process spin against
each other and make a tiny training step up to 100x slower.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_recipe(script: str, *args: str, timeout: int = 300) -> str:
    done = subprocess.run([sys.executable, f"recipes/{script}", *args], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{out[-4000:]}"
    return out


def positive(value) -> bool:
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


# ---- the harness, without a model ---------------------------------------------------------------------------
def test_synthetic_set_fixed_length(tmp_path):
    from common.bench.synthetic import synthetic_set
    from common.data.manifest import load_manifest

    s = synthetic_set(tmp_path / "fixed", 4, 3.0, seed=1)
    assert s.label == "3s" and s.durations == (3.0,) * 4
    lines = [json.loads(x) for x in s.manifest.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert {line["source_lang"], line["target_lang"]} == {"ru"} and line["pnc"] == "yes"
        assert any("а" <= ch <= "я" for ch in line["text"].lower())  # Russian transcript
        with wave.open(line["audio_filepath"]) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 48000)
    # about 5.5 tokens per second by the rough counter: a word more at most
    assert 16 <= s.mean_tokens <= 21
    report = load_manifest(s.manifest)
    assert len(report.entries) == 4 and abs(report.total_duration - 12.0) < 1e-6


def test_synthetic_set_mixed_lengths_and_regeneration(tmp_path):
    from common.bench.synthetic import synthetic_set

    s = synthetic_set(tmp_path / "mixed", 12, (1.0, 5.0), seed=2)
    assert s.label == "1-5s" and all(1.0 <= d <= 5.0 for d in s.durations) and len(set(s.durations)) > 1
    smaller = synthetic_set(tmp_path / "mixed", 3, (1.0, 5.0), seed=2)
    assert len(list((tmp_path / "mixed" / "wav").glob("*.wav"))) == 3 == len(smaller.durations)


def _row(bs, accum=1, status="ok", rate=1.0, peak=1.0, mode="linear", step=1.0, set_="15s"):
    return {"label": f"{mode} bs{bs}", "set": set_, "mode": mode, "bs": bs, "accum": accum, "eff_bs": bs * accum,
            "precision": "32-true", "status": status, "audio_s_per_s": rate, "peak_gb": peak,
            "median_step_s": step, "step_over_fwd": None, "message": "" if status == "ok" else "boom"}


def test_ladder_stops_at_first_failure_and_when_flat():
    from common.bench.search import ladder

    rates = {2: 10.0, 3: 14.0, 4: 16.0, 6: 16.1, 8: 30.0}
    rows, best = ladder(lambda bs, accum: _row(bs, accum, rate=rates[bs]))
    assert [r["bs"] for r in rows] == [2, 3, 4, 6]  # 6/3 gains under 2 %: stop
    assert best["bs"] == 6  # still the fastest that ran
    rows, best = ladder(lambda bs, accum: _row(bs, accum, status="oom" if bs >= 4 else "ok", rate=bs))
    assert [r["bs"] for r in rows] == [2, 3, 4] and best["bs"] == 3
    rows, best = ladder(lambda bs, accum: _row(bs, accum, status="oom"))
    assert len(rows) == 1 and best is None


def test_largest_batch_steps_up_then_down():
    from common.bench.search import largest_batch

    up, best = largest_batch(lambda bs: _row(bs, peak=bs / 1.2), 40, 8, peak_limit_gb=46.0)
    assert [r["bs"] for r in up] == [40, 48, 56] and best["bs"] == 48  # 56 peaks at 46.7 GB
    down, best = largest_batch(lambda bs: _row(bs, status="ok" if bs <= 24 else "oom"), 40, 8, peak_limit_gb=None)
    assert [r["bs"] for r in down] == [40, 32, 24] and best["bs"] == 24
    capped, best = largest_batch(lambda bs: _row(bs), 8, 8, peak_limit_gb=None, max_bs=16)
    assert [r["bs"] for r in capped] == [8, 16] and best["bs"] == 16


def test_forward_ratio_and_tables(tmp_path):
    from common.bench.measure import add_forward_ratios
    from common.bench.tables import Report, write_table

    rows = [_row(8, step=0.3), _row(8, mode="forward", step=0.1), _row(8, accum=2, step=0.8),
            _row(32, step=0.4), _row(8, step=0.3, set_="20s")]
    add_forward_ratios(rows)
    assert [r["step_over_fwd"] for r in rows] == [3.0, None, 4.0, None, None]
    paths = write_table(rows, tmp_path, "t", title="T", notes=["a note"])
    md = paths["md"].read_text(encoding="utf-8")
    assert md.startswith("# T\n") and "- device: " in md and "- command: " in md and "a note" in md
    assert len(list(csv.DictReader(paths["csv"].open(encoding="utf-8")))) == 5
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["rows"][0]["bs"] == 8
    report = Report(tmp_path / "r", "suite", "Suite")
    first, second = report.section("one"), report.section("two")
    report.add(first, _row(4))
    report.add(second, _row(4, status="oom"))
    doc = json.loads((tmp_path / "r" / "suite.json").read_text(encoding="utf-8"))
    assert [len(s["rows"]) for s in doc["sections"]] == [1, 1]
    text = (tmp_path / "r" / "suite.md").read_text(encoding="utf-8")
    assert "## one" in text and "## two" in text and "oom: boom" in text
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["suite.json", "suite.md"]


def test_justfile_has_the_recipes():
    just = shutil.which("just") or str(Path(sys.executable).parent / "just")
    if not Path(just).exists():
        pytest.skip("just is not installed")
    for recipe, script in (("bench", "recipes/bench.py"), ("tune-batch", "recipes/tune_batch.py"),
                           ("sweep", "recipes/sweep.py")):
        shown = subprocess.run([just, "--show", recipe], cwd=REPO, capture_output=True, text=True, check=True)
        assert script in shown.stdout


# ---- the recipes on the tiny default --------------------------------------------------------------------------
def test_bench_tiny(tmp_path):
    out = tmp_path / "bench"
    run_recipe("bench.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "work"))
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "bench.json", "bench.md"]
    rows = json.loads((out / "bench.json").read_text(encoding="utf-8"))["rows"]
    assert {"linear", "full", "forward", "peer", "peer-forward"} <= {r["mode"] for r in rows}
    assert any(r["batch_duration"] for r in rows) and any("search" in r["label"] for r in rows)
    for r in rows:
        assert r["status"] == "ok", r
        for key in ("median_step_s", "first_step_s", "audio_s_per_s", "peak_gb"):
            assert positive(r[key]), (key, r)
        assert r["trainable_params"] == 0 if "forward" in r["mode"] else positive(r["trainable_params"])
    assert all(positive(r["step_over_fwd"]) for r in rows if r["mode"] in ("linear", "peer") and r["bs"] in (2, 4))
    # the same-run ratio against transformers + PEFT, for every training and forward row of ours at those sizes
    assert all(positive(r["vs_peer"]) for r in rows if r["mode"] in ("linear", "forward") and r["bs"] in (2, 4))
    table = list(csv.DictReader((out / "bench.csv").open(encoding="utf-8")))
    assert len(table) == len(rows) and all(positive(r["audio_s_per_s"]) for r in table)
    md = (out / "bench.md").read_text(encoding="utf-8")
    assert "CPU (" in md and "| linear bs2 |" in md and "| peer bs2 |" in md and "ours/peer" in md


def test_bench_accumulates_micro_batches_and_names_bad_configs(tmp_path):
    run_recipe("bench.py", "--tiny", "--configs", "linear:2x2", "--out", str(tmp_path / "b"), "--work",
               str(tmp_path / "work"))
    (row,) = json.loads((tmp_path / "b" / "bench.json").read_text(encoding="utf-8"))["rows"]
    assert row["status"] == "ok" and (row["bs"], row["accum"], row["eff_bs"]) == (2, 2, 4), row
    assert row["clips_per_step"] == 4 and positive(row["audio_s_per_s"]), row
    bad = subprocess.run([sys.executable, "recipes/bench.py", "--tiny", "--configs", "forward:2x2,linear:2x0,lora",
                          "--out", str(tmp_path / "bad"), "--work", str(tmp_path / "work")],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    for problem in ("'forward:2x2': a forward pass accumulates nothing", "'linear:2x0': after ':' give a positive",
                    "'lora': unknown mode 'lora'"):
        assert problem in bad.stdout + bad.stderr, problem
    bad = subprocess.run([sys.executable, "recipes/bench.py", "--tiny", "--configs", "linear:2+flash",
                          "--out", str(tmp_path / "bad"), "--work", str(tmp_path / "work")],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    for problem in ("'linear:2+flash': unknown option flash after '+' (known: sdpa, qkv, nosync, ckpt, cudagraphs",):
        assert problem in bad.stdout + bad.stderr, problem


@pytest.mark.slow
def test_bench_compiled_trains_like_eager(tmp_path):
    """Real Inductor on the CPU, batches rounded to whole seconds and 16 tokens: the same seed and batches give
    about the same loss as the eager step (dropout draws differ between the two, so not bit for bit)."""
    rows = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        run_recipe("bench.py", "--tiny", "--configs", "linear:2", *flag, "--out", str(out), "--work",
                   str(tmp_path / "work"), timeout=600)
        (row,) = json.loads((out / "bench.json").read_text(encoding="utf-8"))["rows"]
        assert row["status"] == "ok" and row["compile"] == bool(flag) and row["cuda_graphs"] is False, row
        rows[bool(flag)] = row
    eager, compiled = rows[False]["last_loss"], rows[True]["last_loss"]
    assert positive(eager) and abs(compiled - eager) <= 0.05 * eager, (eager, compiled)


def test_bench_profile_writes_host_times_per_action_and_a_kernel_summary(tmp_path):
    run_recipe("bench.py", "--tiny", "--configs", "linear:2,forward:2", "--profile", str(tmp_path / "prof"),
               "--out", str(tmp_path / "bench"), "--work", str(tmp_path / "work"))
    files = sorted(p.name for p in (tmp_path / "prof").iterdir())
    # training configurations only: the forward rows run no Trainer
    assert files == ["fit-linear_bs2.txt", "kernels-linear_bs2.txt"]
    report = (tmp_path / "prof" / files[0]).read_text(encoding="utf-8")
    for action in ("run_training_batch", "optimizer_step", "backward", "training_step"):
        assert action in report, action
    kernels = (tmp_path / "prof" / files[1]).read_text(encoding="utf-8").splitlines()
    assert kernels[0].startswith("# linear bs2: host time per operator (self), per optimizer step"), kernels[0]
    total = float(kernels[2].split()[1])
    kinds = {line.split()[0]: float(line.split()[1]) for line in kernels[5:kernels.index("", 5)]}
    assert total > 0 and "matmul" in kinds and "convolution" in kinds, kinds  # the tiny model's own layers
    assert abs(sum(kinds.values()) - total) <= 0.01 * total + 0.05, (kinds, total)


def test_kernel_kinds_follow_the_library_names():
    from common.bench.profile import kernel_kind

    assert kernel_kind("nvjet_sm90_tst_128x192_64x5_2x1_v_bz_coopB_NNN") == "matmul"
    assert kernel_kind("cutlass_80_tensorop_bf16_s16816gemm_bf16_256x128_64x3_nt_align2") == "matmul, unaligned"
    assert kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kernel_kind("triton_poi_fused__unsafe_view_add_mul_native_dropout_silu_view_3") == "fused (Triton)"
    assert kernel_kind("triton_red_fused__unsafe_view_add_convolution_mul_native_dropout_view_21") == "fused (Triton)"
    assert kernel_kind("Memcpy HtoD (Pinned -> Device)") == "copy/memset"
    assert kernel_kind("aten::mm") == "matmul" and kernel_kind("aten::layer_norm") == "other"


def test_tune_batch_tiny(tmp_path):
    out = tmp_path / "tune"
    text = run_recipe("tune_batch.py", "--tiny", "--clip_s", "4", "--out", str(out),
                      "--work", str(tmp_path / "work"))
    assert "Recommended: --bs" in text
    rows = list(csv.DictReader((out / "tune_batch.csv").open(encoding="utf-8")))
    assert [(r["bs"], r["accum"]) for r in rows[:2]] == [("2", "8"), ("3", "6")]
    for r in rows:
        assert r["status"] == "ok" and int(r["eff_bs"]) == int(r["bs"]) * int(r["accum"])
        assert all(positive(r[k]) for k in ("median_step_s", "audio_s_per_s", "peak_gb"))
    md = (out / "tune_batch.md").read_text(encoding="utf-8")
    assert "**Recommended: --bs" in md and "| effective batch |" in md


def _check_sweep(out: Path, n_runs: int) -> list[dict]:
    assert {"sweep.md", "sweep.csv", "sweep.png"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "sweep.csv").open(encoding="utf-8")))
    assert len(rows) == n_runs and [int(r["rank"]) for r in rows] == list(range(1, n_runs + 1))
    losses = [float(r["val_loss"]) for r in rows]
    assert losses == sorted(losses)
    for r in rows:
        assert r["status"] == "finished" and r["stable"] == "True"
        assert all(positive(r[k]) for k in ("val_loss", "median_step_s", "peak_gb", "trainable_params",
                                              "max_grad_norm"))
        records = [json.loads(x) for x in (out / "runs" / r["label"] / "metrics.jsonl").read_text().splitlines()]
        norms = [x["grad_norm"] for x in records if x["kind"] == "train"]
        assert norms and all(positive(n) for n in norms)  # MetricsCallback records the gradient norm
    assert "Best trade-off: **" in (out / "sweep.md").read_text(encoding="utf-8")
    return rows


@pytest.mark.slow  # a whole CLI scenario: the slow suite (just test-all)
def test_sweep_tiny_two_runs(tmp_path):
    out = tmp_path / "sweep"
    run_recipe("sweep.py", "--lora_r", "8", "--lora_alpha", "16", "32", "--lora_dropout", "0.0",
               "--max_steps", "8", "--out", str(out))
    rows = _check_sweep(out, 2)
    assert {r["label"] for r in rows} == {"r8_a16_d0", "r8_a32_d0"}


@pytest.mark.slow
def test_sweep_default_grid(tmp_path):
    out = tmp_path / "sweep"
    run_recipe("sweep.py", "--max_steps", "12", "--out", str(out), timeout=600)
    rows = _check_sweep(out, 8)
    assert {int(r["lora_r"]) for r in rows} == {8, 16}


@pytest.mark.slow  # a whole CLI scenario: the slow suite (just test-all)
def test_gpu_suite_structure_on_tiny(tmp_path):
    out = tmp_path / "suite"
    run_recipe("bench.py", "--gpu-suite", "--tiny", "--sections", "bench,env12,env48", "--configs",
               "linear:2,forward:2,largest", "--out", str(out), "--work", str(tmp_path / "work"), timeout=600)
    assert sorted(p.name for p in out.iterdir()) == ["gpu_suite.json", "gpu_suite.md"]
    doc = json.loads((out / "gpu_suite.json").read_text(encoding="utf-8"))
    assert [len(s["rows"]) > 0 for s in doc["sections"]] == [True, True, True]
    rows = [r for s in doc["sections"] for r in s["rows"]]
    assert all(r["status"] == "ok" and positive(r["audio_s_per_s"]) for r in rows)
    text = (out / "gpu_suite.md").read_text(encoding="utf-8")
    assert "recommended --bs" in text and "largest bs" in text


def test_bench_config_names_every_bad_field():
    from common.bench.measure import BenchConfig
    from common.errors import UserError

    with pytest.raises(UserError) as err:
        BenchConfig("forward", 0, compile=True, base_dtype="fp16")
    text = str(err.value)
    assert "--bs must be > 0, got 0" in text  # checked where every training command line is checked
    assert "--base_dtype 'fp16' is not one of auto, fp32, bf16" in text
    assert "compile applies to training steps only" in text
    assert BenchConfig("linear", 8, compile=True, base_dtype="fp32").label == "linear bs8 compile fp32-base"


def test_configs_take_speedups_checkpointing_and_the_graphs_backend_per_row():
    from common.bench.suite import TINY, option_settings, parse_configs

    spec = "linear:4+sdpa+qkv,linear:4,peer:4,forward:2+sdpa,linear:2+ckpt+cudagraphs"
    items, largest, bucketed = parse_configs(spec, TINY)
    assert not largest and not bucketed
    # by batch size, in the order given within one size
    assert items == [("forward", 2, 1, ("sdpa",)), ("linear", 2, 1, ("ckpt", "cudagraphs")),
                     ("linear", 4, 1, ("sdpa", "qkv")), ("linear", 4, 1, ()), ("peer", 4, 1, ())]
    assert option_settings(("ckpt", "cudagraphs")) == {"speedups": (), "grad_ckpt": True,
                                                       "compile_backend": "cudagraphs", "compile": True}
    from common.bench.config import BenchConfig

    cfg = BenchConfig("linear", 8, **option_settings(("sdpa", "nosync", "ckpt", "cudagraphs")))
    assert cfg.label == "linear bs8 compile cudagraphs-backend +sdpa +nosync +ckpt"
    train = cfg.train_config(max_steps=1)
    assert (train.speedups, train.grad_ckpt, train.compile_backend) == ("sdpa,nosync", True, "cudagraphs")
