"""Ctrl+C and kills with real signals on real CLI processes: nothing trained is lost, no file is left broken.

- SIGINT mid-training: the current optimizer step finishes, `interrupt.ckpt` is saved, the model is merged and
  exported to `<stem>-interrupt.nemo`, which passes `export_verify` in a fresh process; a second SIGINT during
  that export is ignored. Exit code 130.
- SIGINT while loading, or during the validation pass before training: exit 130 with a one-line message.
- SIGKILL while a checkpoint or the export is being written (`CANARY_LORA_WRITE_DELAY_S` holds the finished
  temporary file back from its rename): the previous file under the final name is untouched.
"""
from __future__ import annotations

import hashlib
import shutil
import signal
import tarfile
import time
from pathlib import Path

import pytest
import torch

from tests.train_cli import REPO, Proc, checkpoint_step, run, tiny_args, train_records

VERIFY = REPO / "recipes" / "export_verify.py"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_for_file(pattern: str, folder: Path, proc: Proc, timeout: float = 300, also=lambda: True) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.glob(pattern) if also()] if folder.is_dir() else []
        if found:
            return found[0]
        if proc.popen.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"{pattern} never appeared in {folder} (exit {proc.popen.poll()}):\n{proc.output}")


@pytest.mark.slow
def test_sigint_mid_training_saves_and_exports_a_restorable_model(fast_tiny_path, demo, tmp_path):
    exp = tmp_path / "exp"
    # a data loader worker too, and the signal to the whole process group, as Ctrl+C in a terminal sends it
    proc = Proc(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=500, save_every=1000,
                          val_every_n_steps=1000, no_eval_before=True, num_workers=1), group=True)
    proc.wait_for(r"\[MEM:step3\]")
    proc.signal(signal.SIGINT)
    proc.wait_for(r"\[interrupt\] Ctrl\+C: finishing this step")
    proc.wait_for(r"\[interrupt\] checkpoint saved")
    proc.signal(signal.SIGINT)  # a second Ctrl+C while the export is written: reported, ignored
    code = proc.wait()
    out = proc.output
    assert code == 130, out
    assert "Ctrl+C is ignored until they are complete" in out
    assert out.count("[interrupt] Ctrl+C: finishing this step") == 1  # the worker ignores it, the main process acts
    assert "Traceback" not in out

    stopped_at = checkpoint_step(exp / "checkpoints" / "interrupt.ckpt")
    steps = [r["step"] for r in train_records(exp)]
    assert 3 <= stopped_at < 500 and steps == list(range(1, stopped_at + 1)), (stopped_at, steps)
    export = exp / "out-interrupt.nemo"
    assert export.is_file() and not (exp / "out.nemo").exists()
    assert "[export] restore check: OK" in out
    assert not list(exp.rglob(".*.tmp*")), "temporary files left behind"

    # a fresh process restores it and finds it equal to the interrupted training state
    code, vout = run([str(export), "--against", str(exp), "--manifest", str(demo.adapt_val), "--max_utts", "2",
                      "--bs", "2"], script=VERIFY, timeout=600)
    assert code == 0, vout
    assert "interrupt.ckpt" in vout and "outputs equal the training state" in vout and "all 3 checks passed" in vout

    # and the run goes on from there: --resume auto picks interrupt.ckpt and finishes the schedule
    code, out2 = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=stopped_at + 2,
                               save_every=1000, val_every_n_steps=1000, no_eval_before=True, resume="auto",
                               export_nemo=""))
    assert code == 0, out2
    assert f"Restoring states from the checkpoint path at {exp / 'checkpoints' / 'interrupt.ckpt'}" in out2
    assert [r["step"] for r in train_records(exp)][-2:] == [stopped_at + 1, stopped_at + 2]


def test_sigint_while_loading_exits_cleanly(tiny_model_path, demo, tmp_path):
    proc = Proc(tiny_args(tiny_model_path, demo, tmp_path / "exp", tmp_path / "cuts"))
    proc.wait_for(r"^\[model\]")  # preflight done; NeMo and the model are loading now
    proc.signal(signal.SIGINT)
    code = proc.wait(120)
    assert code == 130, proc.output
    assert "[interrupt] stopped by Ctrl+C outside the training loop" in proc.output
    assert "Traceback" not in proc.output
    assert not (tmp_path / "exp" / "checkpoints").exists()


def test_sigint_during_validation_before_training_exits_cleanly(tiny_model_path, demo, tmp_path):
    """The random model decodes to its 512-token limit, so the first validation pass lasts seconds: Ctrl+C lands
    inside Lightning's validate(), which would otherwise exit(1) with its own message."""
    proc = Proc(tiny_args(tiny_model_path, demo, tmp_path / "exp", tmp_path / "cuts"))
    proc.wait_for(r"\[MEM:fit_start\]")
    time.sleep(1.0)
    proc.signal(signal.SIGINT)
    code = proc.wait(300)
    out = proc.output
    assert code == 130, out
    assert "[interrupt] stopped by Ctrl+C outside the training loop" in out
    assert "Traceback" not in out and "Detected KeyboardInterrupt" not in out
    assert not list((tmp_path / "exp").glob("checkpoints/*.ckpt"))


def test_sigkill_while_saving_a_checkpoint_keeps_the_previous_one(fast_tiny_path, demo, tmp_path):
    exp, ckpts = tmp_path / "exp", tmp_path / "exp" / "checkpoints"
    proc = Proc(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=500, save_every=1, accum=1,
                          val_every_n_steps=1000, no_eval_before=True, mem_report_steps=0),
                CANARY_LORA_WRITE_DELAY_S="2")
    # a second last.ckpt is being written (or waits, written, for its rename) under a temporary name
    tmp = _wait_for_file(".last.ckpt.*", ckpts, proc, also=lambda: (ckpts / "last.ckpt").is_file())
    before = _sha(ckpts / "last.ckpt")
    proc.signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert _sha(ckpts / "last.ckpt") == before
    final = [p for p in ckpts.glob("*.ckpt") if not p.name.startswith(".")]
    for path in final:  # every file under a final name is whole
        assert checkpoint_step(path) >= 1, path
    # step-N.ckpt is written before last.ckpt at each save: last.ckpt still holds the save before
    newest = max(checkpoint_step(p) for p in ckpts.glob("step-*.ckpt"))
    assert checkpoint_step(ckpts / "last.ckpt") == newest - 1
    assert tmp.name.startswith(".last.ckpt.")  # the unfinished write only ever had a temporary name


def test_sigkill_while_exporting_keeps_the_previous_export(fast_tiny_path, demo, tmp_path):
    exp = tmp_path / "exp"
    export = exp / "out.nemo"
    export.parent.mkdir(parents=True)
    shutil.copy(fast_tiny_path, export)  # a previous good export at the same path
    before = _sha(export)
    proc = Proc(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=2, accum=1, save_every=1000,
                          val_every_n_steps=1000, no_eval_before=True, mem_report_steps=0, overwrite=True),
                CANARY_LORA_WRITE_DELAY_S="1.5")
    _wait_for_file(".out.nemo.*", exp, proc, timeout=400)
    proc.signal(signal.SIGKILL)  # while the new export is being written
    assert proc.wait(60) == -signal.SIGKILL
    assert _sha(export) == before
    with tarfile.open(export) as tar:
        assert any(n.endswith("model_weights.ckpt") for n in tar.getnames())
    assert torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2


def test_nonfinite_loss_stops_keeps_the_last_good_checkpoint_and_exports_nothing(fast_tiny_path, demo, tmp_path):
    """An absurd learning rate (no clipping) overflows the tiny model in fp32 within a few steps."""
    import re

    exp = tmp_path / "exp"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", lr=1e9, grad_clip=0, warmup_steps=0,
                              max_steps=30, save_every=1, accum=1, val_every_n_steps=1000, no_eval_before=True))
    assert code == 3, out
    m = re.search(r"\[error\] training stopped: the loss became (nan|inf|-inf) at step (\d+)\. The last good "
                  r"checkpoint is kept: (\S+) \(step (\d+)\); nothing was exported\.", out)
    assert m, out
    bad_step, kept_step = int(m.group(2)), int(m.group(4))
    assert Path(m.group(3)) == exp / "checkpoints" / "last.ckpt" and kept_step == bad_step - 1
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == kept_step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert not list(exp.rglob("*.nemo")) and not (exp / "adapters.safetensors").exists()
    assert "Traceback" not in out


def test_a_checkpoint_with_nonfinite_weights_is_never_written(tiny_model):
    from backends import registry
    from common.training.module import CanaryFinetune, OptimSettings
    from common.errors import NonFiniteLoss

    backend = registry.get("linear")
    backend.apply(tiny_model, registry.AdapterSpec())
    module = CanaryFinetune(tiny_model, backend, OptimSettings())
    name, param = backend.trainable_parameters(tiny_model)[0]
    with torch.no_grad():
        param[0, 0] = float("inf")
    with pytest.raises(NonFiniteLoss, match=f"non-finite weights \\(model.{name}\\).*at step 7"):
        module.on_save_checkpoint({"state_dict": module.state_dict(), "global_step": 7})


def test_sigkill_while_writing_the_cut_cache_leaves_no_cache_file(demo, tmp_path):
    """A cache file only ever appears complete: after a kill the next run finds none and rebuilds it."""
    from common.data.cuts import build_cuts
    from common.data.manifest import load_manifest

    script = tmp_path / "build.py"
    script.write_text("import sys\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[3])\n"
                      "from common.data.cuts import build_cuts\nfrom common.data.manifest import load_manifest\n"
                      "build_cuts(load_manifest(sys.argv[1]), Path(sys.argv[2]), 'canary2')\n", encoding="utf-8")
    cuts = tmp_path / "cuts"
    proc = Proc([str(demo.adapt_val), str(cuts), str(REPO)], script=script, CANARY_LORA_WRITE_DELAY_S="30")
    _wait_for_file(".adapt_val-*", cuts, proc, timeout=120)
    proc.signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert not [p for p in cuts.iterdir() if not p.name.startswith(".")]
    path, built = build_cuts(load_manifest(demo.adapt_val), cuts, "canary2")
    assert built and path.name.startswith("adapt_val-")
    from lhotse import CutSet

    clips = len(demo.adapt_val.read_text(encoding="utf-8").splitlines())
    assert len(CutSet.from_file(path)) == clips == 100
