"""The GPU suite's sections that run whole processes or a process of their own, on the tiny default on the CPU:
`ddp` (the real training CLI, its rates from metrics.jsonl), `firststep` (the bench twice over one compile
cache), `eval` (`just eval` against NeMo's transcribe()) and `win12` (the Windows path's 12 GB rows)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_bench import ENV, REPO, positive, run_recipe


def suite(tmp_path, *args: str, timeout: int = 1500) -> tuple[list[dict], str, str]:
    out = tmp_path / "suite"
    text = run_recipe("bench.py", "--gpu-suite", "--tiny", "--out", str(out), "--work", str(tmp_path / "work"),
                      *args, timeout=timeout)
    doc = json.loads((out / "gpu_suite.json").read_text(encoding="utf-8"))
    return doc["sections"], (out / "gpu_suite.md").read_text(encoding="utf-8"), text


@pytest.mark.slow  # a whole CLI scenario: the slow suite (just test-all)
def test_ddp_firststep_and_eval_sections(tmp_path):
    sections, md, _ = suite(tmp_path, "--sections", "ddp,firststep,eval", "--deadline_s", "3000")
    ddp, first, evals = (s["rows"] for s in sections)
    # ddp: the CLI on one device (a CPU), plain and with --speedups nosync, rates read from metrics.jsonl
    assert [r["label"] for r in ddp] == ["linear bs4 1 GPU", "linear bs4 +nosync 1 GPU"]
    for r in ddp:
        assert r["status"] == "ok" and r["devices"] == 1, r
        assert all(positive(r[k]) for k in ("audio_s_per_s", "median_step_s", "first_step_s", "last_loss")), r
    logs = tmp_path / "suite" / "logs"
    assert (logs / "ddp-1gpu.log").is_file() and "[lora] backend linear" in (logs / "ddp-1gpu.log").read_text()
    # firststep: two processes over one cache folder, cold then warm
    assert [r["label"] for r in first] == ["linear bs4 cold cache", "linear bs4 warm cache"]
    assert all(r["status"] == "ok" and positive(r["first_step_s"]) and positive(r["process_s"]) for r in first)
    # eval: ours and NeMo's on the same files
    assert [r["label"].split(" (")[0] for r in evals] == ["just eval", "NeMo transcribe()"]
    assert all(r["status"] == "ok" and positive(r["audio_s_per_s"]) for r in evals)
    notes = sections[2]["notes"]
    assert any("Transcripts identical for 8 of 8 clips" in n for n in notes), notes  # fp32 on both sides here
    assert "## The training CLI on one and on several GPUs" in md and "just eval against NeMo's transcribe()" in md


@pytest.mark.slow
def test_first_step_from_a_warm_compile_cache_is_faster(tmp_path):
    """Real Inductor on the CPU: the second process finds the first one's kernels and graphs in the cache."""
    sections, _, _ = suite(tmp_path, "--sections", "firststep", "--compile", "--deadline_s", "3000", timeout=3000)
    cold, warm = sections[0]["rows"]
    assert cold["status"] == warm["status"] == "ok"
    assert warm["first_step_s"] < 0.7 * cold["first_step_s"], (cold["first_step_s"], warm["first_step_s"])
    cache = tmp_path / "work" / "first-step-cache"
    assert any(cache.rglob("*")), "the compile cache folder was filled"


@pytest.mark.slow
def test_windows_12gb_section_blocks_triton_and_runs_graphs_without_inductor(tmp_path):
    sections, _, _ = suite(tmp_path, "--sections", "win12", timeout=3000)
    rows = sections[0]["rows"]
    labels = [r["label"] for r in rows]
    assert labels[:2] == ["linear bs2 win12", "linear bs2 compile cudagraphs-backend win12"]
    assert "linear bs4 +ckpt win12" in labels and "linear bs4 compile cudagraphs-backend +ckpt win12" in labels
    assert all(r["status"] == "ok" and positive(r["audio_s_per_s"]) for r in rows), rows
    assert any("triton blocked in this process" in n for n in sections[0]["notes"])
    bad = subprocess.run([sys.executable, "recipes/bench.py", "--gpu-suite", "--tiny", "--sections", "win12,bench",
                          "--out", str(tmp_path / "bad")], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "run it on its own" in bad.stdout + bad.stderr


def test_steady_rate_reads_per_step_times():
    from common.bench.runs import steady_rate

    records = [{"kind": "train", "step": s, "time_s": 10.0 + 0.5 * s, "audio_s": 30.0, "loss": 9.0 - s * 0.1,
                "peak_gb": 1.0 + s / 100} for s in range(1, 9)] + [{"kind": "val", "step": 8, "time_s": 99.0}]
    rate = steady_rate(records, warm=4)
    assert rate == {"steps": 4, "median_step_s": 0.5, "audio_s_per_s": 60.0, "first_step_s": 10.5,
                    "last_loss": 8.2, "peak_gb": 1.08}
    assert steady_rate(records, warm=8) == {}  # nothing after the warm-up
