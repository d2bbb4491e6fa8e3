"""`just export-verify`: a real export passes in a fresh process; a broken or mismatched one fails and says why."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train_cli import REPO, run, tiny_args

VERIFY = REPO / "recipes" / "export_verify.py"


@pytest.fixture(scope="module")
def finished(fast_tiny_path, demo, tmp_path_factory):
    """A finished 4-step LoRA run with its merged export."""
    root = tmp_path_factory.mktemp("verify")
    exp = root / "exp"
    code, out = run(tiny_args(fast_tiny_path, demo, exp, root / "cuts", max_steps=4, accum=1, save_every=2,
                              no_eval_before=True, mem_report_steps=0))
    assert code == 0, out
    return exp


def test_verify_passes_in_a_fresh_process(finished, demo):
    code, out = run([str(finished / "out.nemo"), "--against", str(finished), "--manifest", str(demo.adapt_val),
                     "--max_utts", "4", "--bs", "2"], script=VERIFY, timeout=600)
    assert code == 0, out
    assert "OK   restore: EncDecMultiTaskModel" in out
    assert "OK   no adapter keys left: state-dict keys equal the base model's" in out
    assert "OK   outputs equal the training state" in out and "adapters.safetensors" in out
    assert "WER" in out and "on 4 of 4 clips" in out
    assert "all 3 checks passed" in out


def _recipe():
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_verify", VERIFY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_fails_when_the_export_differs_from_training(finished, demo, tmp_path, capsys):
    """Adapters nudged after export: the export no longer equals them; exit 1 naming the check and the size.
    (The recipe's main in this process: the NeMo import is already paid for.)"""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = finished / "adapters.safetensors"
    with safe_open(str(src), framework="pt") as f:
        weights, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = next(k for k in sorted(weights) if "lora_B" in k)
    weights[key] = weights[key] + 0.05
    save_file(weights, str(tmp_path / "adapters.safetensors"), metadata=meta)
    code = _recipe().main([str(finished / "out.nemo"), "--against", str(tmp_path / "adapters.safetensors"),
                           "--manifest", str(demo.adapt_val), "--max_utts", "2", "--bs", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL outputs equal the training state: max |diff| of log-probs" in out
    assert "FAILED (outputs equal the training state" in out


# ---- in-process: broken archives, the wrong base, defaults ------------------------------------------------
def test_an_export_with_lora_keys_left_fails(finished, demo, tmp_path):
    from common.quality.verify import verify_export
    from tests.conftest import rewrite_nemo

    def add_lora(state):
        state["encoder.layers.0.self_attn.linear_q.lora_A.weight"] = torch.zeros(8, 128)
        return state

    bad = rewrite_nemo(finished / "out.nemo", tmp_path / "with-lora.nemo", weights=add_lora)
    report = verify_export(bad, manifest=demo.adapt_val, max_utts=2, bs=2)
    assert not report.ok
    check = report.checks[0]
    assert check.name == "restore" and not check.ok and "lora_A" in check.detail


def test_a_truncated_export_fails(finished, tmp_path):
    from common.quality.verify import verify_export

    data = (finished / "out.nemo").read_bytes()
    cut = tmp_path / "cut.nemo"
    cut.write_bytes(data[: len(data) // 2])
    report = verify_export(cut)
    assert not report.ok and report.checks[0].name == "restore"
    assert "restore_from failed" in report.checks[0].detail


def test_the_wrong_base_is_refused(finished, demo, tiny_model_path):
    from common.errors import UserError
    from common.quality.verify import verify_export

    with pytest.raises(UserError, match="is not the .nemo the run was trained from"):
        verify_export(finished / "out.nemo", against=finished, base=tiny_model_path, manifest=demo.adapt_val)


def test_training_state_sources(finished, tmp_path):
    from common.quality.verify import load_trained_state

    from_dir = load_trained_state(finished)
    assert from_dir.source.name == "adapters.safetensors" and from_dir.backend == "linear" and from_dir.step == 4
    from_ckpt = load_trained_state(finished / "checkpoints" / "last.ckpt")
    assert from_ckpt.step == 4 and from_ckpt.base_nemo == from_dir.base_nemo
    assert from_ckpt.spec["targets"] == from_dir.spec["targets"]
    assert from_ckpt.weights.keys() == from_dir.weights.keys()
    assert all(torch.equal(from_ckpt.weights[k], from_dir.weights[k]) for k in from_dir.weights)
    # an interrupt export is compared with the interrupt checkpoint of its run directory
    (finished / "checkpoints" / "interrupt.ckpt").write_bytes((finished / "checkpoints" / "step-2.ckpt").read_bytes())
    try:
        picked = load_trained_state(finished, nemo=Path("out-interrupt.nemo"))
        assert picked.source.name == "interrupt.ckpt" and picked.step == 2
    finally:
        (finished / "checkpoints" / "interrupt.ckpt").unlink()


def test_no_arguments_without_the_demo_export_says_what_to_do(monkeypatch, tmp_path):
    from common.errors import UserError

    module = _recipe()
    monkeypatch.setattr(module, "DEMO_EXPORT", tmp_path / "models" / "demo" / "none.nemo")
    with pytest.raises(UserError, match="run `just demo` first"):
        module.main([])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["peft", "nemo", "full"])
def test_verify_other_backends(backend, fast_tiny_path, demo, tmp_path):
    """PEFT names its checkpoint parameters `lora_A.default.weight`, NeMo adapters stay in the export (enabled),
    full fine-tuning has no adapters: checked against both the checkpoint and the run directory."""
    from common.quality.verify import verify_export

    exp = tmp_path / "exp"
    flags = {"full_finetune": True} if backend == "full" else {"backend": backend}
    code, out = run(tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", max_steps=3, accum=1, save_every=2,
                              no_eval_before=True, mem_report_steps=0, **flags))
    assert code == 0, out
    for against in (exp / "checkpoints" / "last.ckpt", exp):
        report = verify_export(exp / "out.nemo", against=against, manifest=demo.adapt_val, max_utts=2, bs=2)
        assert report.ok, [(c.name, c.detail) for c in report.checks]
        names = [c.name for c in report.checks]
        if backend == "nemo":
            assert names == ["restore", "adapters restored", "adapters enabled", "outputs equal the training state"]
        else:
            assert names == ["restore", "no adapter keys left", "outputs equal the training state"]
