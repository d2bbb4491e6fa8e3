"""Never clobber, through the real CLI: the same command run twice leaves the first run's files byte-identical,
an export of another run is refused, and --overwrite replaces an earlier run cleanly (no stale metrics line, no
stale checkpoint, no temporary file a killed run left). Only the --keep_last newest step checkpoints stay.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.train_cli import run, tiny_args, train_records


def _state(*folders: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folders`: its sha256 and modification time."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first(fast_tiny_path, demo, tmp_path_factory):
    """A finished 3-step run, a checkpoint every step, the 2 newest kept; its export in a folder of its own."""
    root = tmp_path_factory.mktemp("clobber")

    def argv(exp: Path, **kw) -> list[str]:
        kw = {"max_steps": 3, "accum": 1, "save_every": 1, "keep_last": 2, "val_every_n_steps": 100,
              "no_eval_before": True, "export_nemo": root / "models" / "out.nemo", **kw}
        return tiny_args(fast_tiny_path, demo, exp, root / "cuts", **kw)

    code, out = run(argv(root / "exp"))
    assert code == 0, out
    return root, argv


def test_keep_last_keeps_the_newest_step_checkpoints(first):
    root, _ = first
    assert sorted(p.name for p in (root / "exp" / "checkpoints").iterdir()) == [
        "best.ckpt", "last.ckpt", "step-2.ckpt", "step-3.ckpt"]  # best.ckpt: the selected pass, always kept


def test_the_same_command_twice_leaves_the_first_run_byte_identical(first):
    root, argv = first
    before = _state(root / "exp", root / "models")
    assert {Path(p).name for p in before} >= {"out.nemo", "adapters.safetensors", "metrics.jsonl", "run.json"}
    code, out = run(argv(root / "exp"), timeout=300)
    assert code == 2, out
    assert f"--exp_dir {root / 'exp'} already holds a run (checkpoints/ (4 .ckpt), run.json, metrics.jsonl" in out
    assert "--resume auto" in out and "--overwrite" in out and "nothing was changed" in out
    assert "Traceback" not in out
    assert _state(root / "exp", root / "models") == before


def test_an_existing_export_of_another_run_is_refused(first):
    root, argv = first
    before = _state(root / "models")
    code, out = run(argv(root / "exp2"), timeout=300)
    assert code == 2, out
    assert f"--export_nemo {root / 'models' / 'out.nemo'}: {root / 'models' / 'out.nemo'} already exists" in out
    assert "pass --overwrite to replace it" in out and "Traceback" not in out
    assert _state(root / "models") == before
    assert not (root / "exp2" / "run.json").exists()
    code, out = run(argv(root / "exp2", resume="auto"), timeout=300)  # resuming does not make it this run's own
    assert code == 2 and "already exists" in out, out


def test_overwrite_replaces_the_earlier_run_cleanly(first):
    root, argv = first
    exp, models = root / "exp", root / "models"
    old_export = (models / "out.nemo").read_bytes()
    # what a killed run leaves: temporary files of this run (swept), and files that are not this run's (kept)
    planted = {exp / "checkpoints" / ".last.ckpt.ab12cd_9.tmp.ckpt": False, exp / ".run.json.zz99yy88.tmp": False,
               models / ".out.nemo.k3j4h5g6.tmp.nemo": False, models / "out-interrupt.nemo": False,
               models / ".other.nemo.k3j4h5g6.tmp.nemo": True, exp / ".notes.tmp": True, exp / "mine.txt": True}
    for path in planted:
        path.write_bytes(b"x")
    code, out = run(argv(exp, max_steps=2, save_every=2, overwrite=True))
    assert code == 0, out
    assert "[run] --overwrite: removed " in out and "Traceback" not in out
    assert [r["step"] for r in train_records(exp)] == [1, 2]
    assert sorted(p.name for p in (exp / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "step-2.ckpt"]
    for path, stays in planted.items():
        assert path.exists() == stays, path
    assert (models / "out.nemo").read_bytes() != old_export
    from common.checkpoint_files import load_adapters

    assert load_adapters(exp / "adapters.safetensors")[1]["step"] == "2"


# ---- the decisions, on checkpoint files alone ------------------------------------------------------------------
def _ckpt(path: Path, step: int) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}, "canary_lora": {}}, path)
    return path


def test_going_back_to_an_older_checkpoint_needs_overwrite(tmp_path):
    from common.config import TrainConfig
    from common.errors import UserError
    from common.rundir import exp_paths
    from common.training import guard

    paths = exp_paths(tmp_path / "exp")
    for step in (2, 4, 6):
        _ckpt(paths["checkpoints"] / f"step-{step}.ckpt", step)
    _ckpt(paths["checkpoints"] / "last.ckpt", 6)
    cfg = TrainConfig(exp_dir=str(paths["root"]), export_nemo="", max_steps=10,
                      resume=str(paths["checkpoints"] / "step-2.ckpt"))
    with pytest.raises(UserError, match=r"is at step 2, but .* holds newer checkpoints \(last.ckpt, step-4.ckpt, "
                                        r"step-6.ckpt\): continue from them with --resume auto, or pass --overwrite"):
        guard.plan(cfg, paths, None)
    cfg.overwrite = True
    plan = guard.plan(cfg, paths, None)
    assert sorted(p.name for p in plan.clear) == ["last.ckpt", "step-4.ckpt", "step-6.ckpt"]
    assert (plan.resume.step, plan.keep_metrics_to, plan.done) == (2, 2, False)


def test_resume_auto_with_nothing_to_resume_starts_over_and_says_so(tmp_path, capsys):
    from common.config import TrainConfig
    from common.rundir import exp_paths
    from common.training import guard

    paths = exp_paths(tmp_path / "exp")
    (paths["checkpoints"]).mkdir(parents=True)
    (paths["checkpoints"] / "last.ckpt").write_bytes(b"")
    paths["metrics"].write_text('{"kind": "train", "step": 1}\n')  # a run killed before its first checkpoint
    cfg = TrainConfig(exp_dir=str(paths["root"]), export_nemo="", resume="auto")
    plan = guard.plan(cfg, paths, None)
    out = capsys.readouterr().out
    assert "[resume] skipping checkpoint" in out and "the file is empty" in out
    assert f"[resume] --resume auto: no checkpoint to continue from in {paths['checkpoints']}: starting from step 0" in out
    assert plan.resume is None and plan.keep_metrics_to == -1
    guard.apply(plan, cfg, paths)
    assert paths["metrics"].read_text() == ""  # its steps are trained again: none may appear twice
