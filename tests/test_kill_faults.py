"""SIGKILL at seeded random moments of a real run: no file under its final name is ever cut short, and
`--resume auto` finishes the run with every step trained exactly once.

Each trial picks, from its seed, a moment after some step (a checkpoint is saved at every step) or during the
final validation and export, plus a random delay; `CANARY_LORA_WRITE_DELAY_S` holds each finished temporary file
back from its rename a little, so kills land in the middle of saves too. One trial runs in `just test`, more in
the slow suite.
"""
from __future__ import annotations

import json
import random
import signal
import tarfile
import time
from pathlib import Path

import pytest

from common.atomic import TEMP_NAME
from tests.train_cli import Proc, run, tiny_args, train_records

MAX_STEPS = 5


def assert_whole(exp: Path, export: Path) -> None:
    """Every file under a final name is complete: it parses or loads as what it claims to be."""
    from common.checkpoint_files import load_adapters, read_checkpoint

    for path in sorted(exp.rglob("*")) + sorted(export.parent.glob("*.nemo")):
        if not path.is_file() or TEMP_NAME.match(path.name):
            continue
        if path.suffix == ".ckpt":
            read_checkpoint(path)
        elif path.suffix == ".safetensors":
            load_adapters(path)
        elif path.suffix == ".nemo":
            with tarfile.open(path) as tar:  # reading every member finds a cut-short archive
                names = [m.name for m in tar.getmembers()]
                for m in tar.getmembers():
                    if m.isfile():
                        tar.extractfile(m).read()
            assert any(n.endswith("model_weights.ckpt") for n in names), path
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG") and data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), path
        elif path.name == "metrics.jsonl":
            # append-only: a kill can cut its last line (readers skip it; a resume rewrites the file without it)
            for line in path.read_text(encoding="utf-8").splitlines()[:-1]:
                json.loads(line)


def trial(seed: int, nemo: Path, demo, root: Path) -> None:
    rng = random.Random(seed)
    exp = root / f"trial-{seed}"
    export = exp / "out.nemo"
    argv = tiny_args(nemo, demo, exp, root / "cuts", max_steps=MAX_STEPS, accum=1, save_every=1,
                     val_every_n_steps=2, no_eval_before=True, mem_report_steps=1, export_nemo=export)
    after = rng.choice([f"\\[MEM:step{k}\\]" for k in range(1, MAX_STEPS + 1)] + [r"\[MEM:fit_end\]"])
    delay = rng.uniform(0.0, 3.0)
    proc = Proc(argv, CANARY_LORA_WRITE_DELAY_S="0.3")
    proc.wait_for(after, timeout=600)
    time.sleep(delay)
    proc.signal(signal.SIGKILL)
    code = proc.wait(60)
    moment = f"seed {seed}: killed {delay:.2f} s after {after!r} (exit {code})"
    assert_whole(exp, export)

    code, out = run(argv + ["--resume", "auto"])
    assert code == 0, f"{moment}\n{out}"
    assert "Traceback" not in out, moment
    assert [r["step"] for r in train_records(exp)] == list(range(1, MAX_STEPS + 1)), moment
    assert_whole(exp, export)
    assert export.is_file() and (exp / "adapters.safetensors").is_file(), moment
    assert not [p for p in exp.rglob(".*") if TEMP_NAME.match(p.name)], f"{moment}: temporary files left"


def test_a_kill_at_a_random_moment_then_resume_auto_finishes(fast_tiny_path, demo, tmp_path):
    trial(1, fast_tiny_path, demo, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5, 6])
def test_kills_at_more_random_moments(seed, fast_tiny_path, demo, tmp_path):
    trial(seed, fast_tiny_path, demo, tmp_path)
