"""Resume: N steps + resume + the rest equals the straight run (weights and every step's loss).

The runs are real CLI processes on the tiny model (fp32, lora_dropout 0, but the model's own dropout and
SpecAugment on, so the RNG restore matters). 10 clips in batches of 4, 4, 2 with --accum 2: an epoch is two
optimizer steps, so every part crosses epoch boundaries, and an epoch's last optimizer step takes a single
batch (Lightning steps at the epoch end), which only comes out right if the resumed sampler is in the right
place. Both parts use the same --max_steps (the cosine schedule depends on it); the first part is cut with
--stop_after_steps, which stops exactly as Ctrl+C does.

Measured (November 2026, CPU): weights and losses identical to the bit (max |diff| 0.0). With one piece of the
machinery switched off the resumed run drifts: no RNG restore 6.4e-4, no sampler skip 6.0e-4 (max |diff| of
adapter weights after 10 steps).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.train_cli import checkpoint_step, run_parallel as _parallel, tiny_args, train_records

TOL = 1e-5


def _adapters(exp_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(exp_dir / "adapters.safetensors"))


@pytest.fixture(scope="module")
def runs(fast_tiny_path, demo, tmp_path_factory):
    """straight: 10 steps. part1: stopped after 5. resumed: part1's folder + --resume auto (interrupt.ckpt, step 5).
    from_periodic: a new folder resuming from part1's step-4.ckpt, a periodic save made on the last batch of an
    epoch (before Lightning counts that batch or ends the epoch), at a validation step."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "cuts"
    d = {name: root / name for name in ("straight", "part1", "resumed", "from_periodic")}

    def args(name, **kw):
        return tiny_args(fast_tiny_path, demo, d[name], data_dir, export_nemo="", no_eval_before=True, **kw)

    # build the cut cache once, so the parallel runs do not race to write it
    first = _parallel(args("straight"), args("part1", stop_after_steps=5))
    shutil.copytree(d["part1"], d["resumed"])
    second = _parallel(args("resumed", resume="auto"),
                       args("from_periodic", resume=d["part1"] / "checkpoints" / "step-4.ckpt"))
    codes = dict(zip(("straight", "part1", "resumed", "from_periodic"), first + second))
    return d, codes


@pytest.mark.slow
def test_first_part_stops_like_an_interrupt(runs):
    d, codes = runs
    code, out = codes["part1"]
    assert code == 130, out
    assert "--stop_after_steps 5: stopping as if Ctrl+C was pressed" in out
    ckpts = d["part1"] / "checkpoints"
    assert checkpoint_step(ckpts / "interrupt.ckpt") == 5
    assert checkpoint_step(ckpts / "step-4.ckpt") == 4
    assert [r["step"] for r in train_records(d["part1"])] == [1, 2, 3, 4, 5]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resumed", "from_periodic"])
def test_resume_equals_straight_run(runs, name):
    d, codes = runs
    for run_name in ("straight", name):
        assert codes[run_name][0] == 0, codes[run_name][1]
    out = codes[name][1]
    assert "Restored all states from the checkpoint" in out, out
    straight, resumed = _adapters(d["straight"]), _adapters(d[name])
    assert straight.keys() == resumed.keys()
    diff = max(float((straight[k] - resumed[k]).abs().max()) for k in straight)
    assert diff <= TOL, f"adapter weights differ from the straight run by {diff:.3e}"

    ref = {r["step"]: r for r in train_records(d["straight"])}
    start = 5 if name == "resumed" else 4
    got = [r for r in train_records(d[name]) if name == "from_periodic" or r["step"] > start]
    assert [r["step"] for r in got] == list(range(start + 1, 11)), "the resumed run redid or skipped a step"
    for r in got:
        assert abs(r["loss"] - ref[r["step"]]["loss"]) <= TOL, (r["step"], r["loss"], ref[r["step"]]["loss"])
        assert abs(r["lr"] - ref[r["step"]]["lr"]) <= 1e-12
        assert r["epoch"] == ref[r["step"]]["epoch"]
    assert len({r["epoch"] for r in got}) >= 3, "the resumed part should cross epoch boundaries"


@pytest.mark.slow
def test_resume_does_not_resave_the_step_it_started_from(runs):
    """Lightning would rewrite step-4.ckpt after the first micro-batch (mid-accumulation) without StepCheckpoint."""
    d, _ = runs
    names = sorted(p.name for p in (d["from_periodic"] / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step-10.ckpt", "step-8.ckpt"]
    assert checkpoint_step(d["from_periodic"] / "checkpoints" / "last.ckpt") == 10


# ---- the pieces, without training -----------------------------------------------------------------------------
class _FakeLhotseSampler:
    """Yields (epoch, index) pairs: enough to see which batches a ResumableSampler hands out."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([(self.epoch, i) for i in range(self.n)])


def test_sampler_skip_belongs_to_the_epoch_not_to_one_iterator():
    from common.data.loader import ResumableSampler

    s = ResumableSampler(_FakeLhotseSampler(3))
    s.resume_at(epoch=2, batches=2)
    # Lightning may build the iterator twice before the first batch: both start after the consumed batches
    assert list(iter(s)) == [(2, 2)]
    assert list(iter(s)) == [(2, 2)]
    s.set_epoch(3)
    assert list(iter(s)) == [(3, 0), (3, 1), (3, 2)]
    s2 = ResumableSampler(_FakeLhotseSampler(2))
    s2.resume_at(epoch=0, batches=5)  # more than the epoch has (saved at its very end): an empty epoch, no error
    assert list(iter(s2)) == []


def test_midepoch_checkpoint_counts_the_saving_batch_as_done():
    from common.training.checkpoints import fix_midepoch_progress, resume_position

    bp = {"total": {"ready": 9, "started": 9, "processed": 9, "completed": 8},
          "current": {"ready": 3, "started": 3, "processed": 3, "completed": 2}}
    ckpt = {"epoch": 4, "loops": {"fit_loop": {"epoch_loop.batch_progress": bp}}}
    fix_midepoch_progress(ckpt)
    assert bp["total"]["completed"] == 9 and bp["current"]["completed"] == 3
    assert resume_position(ckpt) == (4, 3)


def test_find_resume_picks_the_newest_step(tmp_path):
    from common.checkpoint_files import find_resume
    from common.errors import UserError

    assert find_resume("auto", tmp_path) is None
    torch.save({"global_step": 8}, tmp_path / "last.ckpt")
    torch.save({"global_step": 11}, tmp_path / "interrupt.ckpt")
    assert find_resume("auto", tmp_path) == tmp_path / "interrupt.ckpt"
    torch.save({"global_step": 12}, tmp_path / "last.ckpt")
    assert find_resume("auto", tmp_path) == tmp_path / "last.ckpt"
    (tmp_path / "interrupt.ckpt").write_bytes(b"truncated")  # unreadable: never chosen
    assert find_resume("auto", tmp_path) == tmp_path / "last.ckpt"
    with pytest.raises(UserError, match="checkpoint not found"):
        find_resume(str(tmp_path / "nope.ckpt"), tmp_path)
