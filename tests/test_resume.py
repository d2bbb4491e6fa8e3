"""Resume: an interrupted run continued with --resume auto equals the straight run to the bit (weights and every
step's loss), and a run resumed any number of times trains each step exactly once.

The runs are real CLI processes on the tiny model (fp32, lora_dropout 0, but the model's own dropout and
SpecAugment on, so the RNG restore matters). 10 clips in batches of 4, 4, 2 with --accum 2: an epoch is two
optimizer steps, so every part crosses epoch boundaries, and an epoch's last optimizer step takes a single
batch (Lightning steps at the epoch end), which only comes out right if the resumed sampler is in the right
place. Both parts use the same --max_steps (the cosine schedule depends on it); the first part is cut with
--stop_after_steps, which stops exactly as Ctrl+C does.

The sequence after that is the one a user meets: resume a finished run again (it says so and trains nothing),
then an emptied last.ckpt and a larger --max_steps (it continues from step-8.ckpt, not from the older
interrupt.ckpt, and trains steps 9 and 10 only). A finished run whose export went missing writes it without
training, and a run that early stopping ended stays finished whatever --max_steps says.

Measured (November 2026, CPU): weights and losses identical to the bit. With one piece of the machinery switched
off the resumed run drifts: no RNG restore 6.4e-4, no sampler skip 6.0e-4 (max |diff| of adapter weights after
10 steps).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.train_cli import checkpoint_step, run, run_parallel as _parallel, tiny_args, train_records

MAX_STEPS, STOP = 8, 3


def _adapters(exp_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(exp_dir / "adapters.safetensors"))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(fast_tiny_path, demo, tmp_path_factory):
    """straight: 8 steps. run: stopped after 3 (interrupt.ckpt), then --resume auto to 8 ("resumed"), then the same
    again ("again": finished), then with last.ckpt emptied and --max_steps 10 ("extended"). Snapshots of the run
    folder are taken between the stages."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "cuts"
    d = {"straight": root / "straight", "run": root / "run"}

    def args(name, **kw):
        kw = {"max_steps": MAX_STEPS, "no_eval_before": True, **kw}
        return tiny_args(fast_tiny_path, demo, d[name], data_dir, **kw)

    outs = dict(zip(("straight", "part1"), _parallel(args("straight", export_nemo=""),
                                                     args("run", stop_after_steps=STOP))))
    outs["resumed"] = run(args("run", resume="auto"))
    snap = {"adapters": _adapters(d["run"]), "records": train_records(d["run"]),
            "files": {n: _sha(d["run"] / n) for n in ("metrics.jsonl", "adapters.safetensors", "out.nemo",
                                                       "report.md", "run.json")}}
    outs["again"] = run(args("run", resume="auto"))
    snap["files_again"] = {n: _sha(d["run"] / n) for n in snap["files"]}
    (d["run"] / "out.nemo").unlink()
    outs["reexport"] = run(args("run", resume="auto"))
    snap["reexport_records"], snap["reexport_adapters"] = train_records(d["run"]), _adapters(d["run"])
    (d["run"] / "checkpoints" / "last.ckpt").write_bytes(b"")
    outs["extended"] = run(args("run", resume="auto", max_steps=MAX_STEPS + 2))
    # what early stopping records: such a run is finished whatever --max_steps says now
    last = d["run"] / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["canary_lora"]["stopped_early"] = True
    torch.save(ckpt, last)
    snap["files_extended"] = _sha(d["run"] / "metrics.jsonl")
    outs["stopped"] = run(args("run", resume="auto", max_steps=MAX_STEPS + 10))
    return d, outs, snap


def test_first_part_stops_like_an_interrupt(runs):
    d, outs, _ = runs
    code, out = outs["part1"]
    assert code == 130, out
    assert f"--stop_after_steps {STOP}: stopping as if Ctrl+C was pressed" in out


def test_resume_equals_straight_run_exactly(runs):
    d, outs, snap = runs
    for name in ("straight", "resumed"):
        assert outs[name][0] == 0, outs[name][1]
    out = outs["resumed"][1]
    interrupt = d["run"] / "checkpoints" / "interrupt.ckpt"
    assert f"[resume] continuing from {interrupt} (step {STOP})" in out
    straight, resumed = _adapters(d["straight"]), snap["adapters"]
    assert straight.keys() == resumed.keys()
    differ = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differ, f"{len(differ)} adapter tensors differ from the straight run, e.g. {differ[:2]}"

    ref = {r["step"]: r for r in train_records(d["straight"])}
    got = snap["records"]
    assert [r["step"] for r in got] == list(range(1, MAX_STEPS + 1)), "a step was trained twice or skipped"
    for r in got:
        assert (r["loss"], r["lr"], r["epoch"]) == (ref[r["step"]]["loss"], ref[r["step"]]["lr"],
                                                    ref[r["step"]]["epoch"]), r["step"]
    assert len({r["epoch"] for r in got if r["step"] > STOP}) >= 3, "the resumed part should cross epoch boundaries"


def test_checkpoints_load_as_weights_only(runs):
    """Everything Lightning and the module put in a checkpoint is tensors and plain data: no global to allow."""
    d, _, _ = runs
    ckpts = sorted((d["straight"] / "checkpoints").glob("*.ckpt")) + sorted((d["run"] / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 4
    for path in ckpts:
        if path.stat().st_size == 0:
            continue  # the emptied last.ckpt
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [], path
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["canary_lora"]["rng"]["numpy"]["keys"].dtype == torch.int64


def test_a_finished_run_resumed_again_trains_nothing_and_changes_nothing(runs):
    d, outs, snap = runs
    code, out = outs["again"]
    assert code == 0, out
    assert (f"[resume] the run in {d['run']} is finished: {d['run'] / 'checkpoints' / 'last.ckpt'} is at step "
            f"{MAX_STEPS} and --max_steps is {MAX_STEPS}, so there is nothing to train.") in out
    assert "Its outputs are in place" in out and "Restoring states" not in out and "Traceback" not in out
    assert snap["files_again"] == snap["files"]


def test_a_finished_run_without_its_export_writes_it_without_training(runs):
    d, outs, snap = runs
    code, out = outs["reexport"]
    assert code == 0, out
    assert f"Missing {d['run'] / 'out.nemo'}: loading the model to write it from that checkpoint" in out
    assert "[export] restore check: OK" in out and "Traceback" not in out
    assert [r["step"] for r in snap["reexport_records"]] == list(range(1, MAX_STEPS + 1))
    adapters = snap["reexport_adapters"]  # the same weights as before the export went missing
    assert adapters.keys() == snap["adapters"].keys()
    assert all(torch.equal(adapters[k], snap["adapters"][k]) for k in adapters)


def test_a_run_ended_by_early_stopping_is_finished_whatever_max_steps_says(runs):
    d, outs, snap = runs
    code, out = outs["stopped"]
    assert code == 0, out
    assert f"is at step {MAX_STEPS + 2} and early stopping ended it there, so there is nothing to train" in out
    assert _sha(d["run"] / "metrics.jsonl") == snap["files_extended"]


def test_an_emptied_last_ckpt_and_a_larger_max_steps_continue_from_the_newest_step(runs):
    d, outs, _ = runs
    code, out = outs["extended"]
    assert code == 0, out
    ckpts = d["run"] / "checkpoints"
    assert f"[resume] skipping checkpoint {ckpts / 'last.ckpt'}: the file is empty" in out
    assert f"[resume] continuing from {ckpts / f'step-{MAX_STEPS}.ckpt'} (step {MAX_STEPS})" in out
    assert "Traceback" not in out
    assert [r["step"] for r in train_records(d["run"])] == list(range(1, MAX_STEPS + 3))
    assert checkpoint_step(ckpts / "last.ckpt") == MAX_STEPS + 2
    afters = [r for r in map(json.loads, (d["run"] / "metrics.jsonl").read_text().splitlines())
              if r.get("tag") == "after"]
    assert [r["step"] for r in afters] == [MAX_STEPS + 2], "the earlier final evaluation stays superseded"


@pytest.mark.slow
def test_resume_from_a_periodic_checkpoint_in_a_new_folder(runs, fast_tiny_path, demo, tmp_path):
    """straight's step-4.ckpt: a periodic save made on the last batch of an epoch (before Lightning counts that
    batch or ends the epoch), at a validation step. Lightning would rewrite step-4.ckpt after the first
    micro-batch (mid-accumulation) without StepCheckpoint."""
    d, _, _ = runs
    exp = tmp_path / "from_periodic"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, d["straight"].parent / "cuts", max_steps=MAX_STEPS,
                              no_eval_before=True, export_nemo="", resume=d["straight"] / "checkpoints" / "step-4.ckpt"))
    assert code == 0, out
    straight, resumed = _adapters(d["straight"]), _adapters(exp)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    ref = {r["step"]: r for r in train_records(d["straight"])}
    got = train_records(exp)
    assert [r["step"] for r in got] == list(range(5, MAX_STEPS + 1))
    assert all(r["loss"] == ref[r["step"]]["loss"] for r in got)
    assert sorted(p.name for p in (exp / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt", f"step-{MAX_STEPS}.ckpt"]


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


def _ckpt(path: Path, step: int, **record) -> Path:
    torch.save({"global_step": step, "state_dict": {}, "canary_lora": dict(record)}, path)
    return path


def test_resume_auto_picks_the_highest_step_of_every_name(tmp_path, capsys):
    from common.checkpoint_files import find_resume, newest_resume_point

    assert find_resume("auto", tmp_path) is None
    _ckpt(tmp_path / "last.ckpt", 8)
    _ckpt(tmp_path / "interrupt.ckpt", 11)
    assert find_resume("auto", tmp_path) == tmp_path / "interrupt.ckpt"
    _ckpt(tmp_path / "last-v1.ckpt", 12)  # Lightning's versioned names count too
    _ckpt(tmp_path / "step-13-v1.ckpt", 13)
    assert find_resume("auto", tmp_path) == tmp_path / "step-13-v1.ckpt"
    _ckpt(tmp_path / "best.ckpt", 99)  # the selected adapters for the export: never a state to train on from
    (tmp_path / "step-14.ckpt").write_bytes(b"")  # empty, and one cut short: skipped, with a warning each
    (tmp_path / "step-15.ckpt").write_bytes((tmp_path / "last.ckpt").read_bytes()[:200])
    point = newest_resume_point(tmp_path)
    assert (point.path, point.step, point.stopped_early) == (tmp_path / "step-13-v1.ckpt", 13, False)
    out = capsys.readouterr().out
    assert f"[resume] skipping checkpoint {tmp_path / 'step-14.ckpt'}: the file is empty" in out
    assert f"[resume] skipping checkpoint {tmp_path / 'step-15.ckpt'}: not a checkpoint this tool can read" in out
    _ckpt(tmp_path / "last.ckpt", 20, stopped_early=True)
    assert newest_resume_point(tmp_path).stopped_early


def test_resume_path_that_is_missing_or_foreign(tmp_path):
    from common.checkpoint_files import find_resume
    from common.errors import UserError

    with pytest.raises(UserError, match="checkpoint not found"):
        find_resume(str(tmp_path / "nope.ckpt"), tmp_path)
    torch.save({"global_step": 3, "state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="not a checkpoint written by this tool"):
        find_resume(str(tmp_path / "other.ckpt"), tmp_path)


def test_keep_last_keeps_the_newest_step_files_and_the_other_names(tmp_path):
    from common.checkpoint_files import prune_step_checkpoints

    for name in ("step-2.ckpt", "step-10.ckpt", "step-4.ckpt", "step-8.ckpt", "step-8-v1.ckpt", "last.ckpt",
                 "best.ckpt", "interrupt.ckpt"):
        (tmp_path / name).write_bytes(b"x")
    removed = prune_step_checkpoints(tmp_path, 3)
    assert sorted(p.name for p in removed) == ["step-2.ckpt", "step-4.ckpt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "interrupt.ckpt", "last.ckpt",
                                                           "step-10.ckpt", "step-8-v1.ckpt", "step-8.ckpt"]
    prune_step_checkpoints(tmp_path, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "interrupt.ckpt", "last.ckpt"]


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    import json

    from common.training.guard import keep_metrics_until

    path = tmp_path / "metrics.jsonl"
    records = ([{"kind": "val", "step": 0, "tag": "before"}] + [{"kind": "train", "step": s} for s in range(1, 7)]
               + [{"kind": "val", "step": 4, "tag": "during"}, {"kind": "val", "step": 6, "tag": "after"}])
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "train", "st')  # a kill mid-line
    assert keep_metrics_until(path, 6) == (8, 2)  # the final evaluation at step 6 is redone by the resumed run
    assert keep_metrics_until(path, 4) == (6, 2)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in kept] == [("val", 0), ("train", 1), ("train", 2), ("train", 3),
                                                      ("train", 4), ("val", 4)]
    assert keep_metrics_until(path, -1) == (0, 6)
