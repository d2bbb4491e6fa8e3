"""Every backend through the same checks on the real tiny Canary (table-driven, after PEFT's custom-model tests).

Adapter weights are randomized wherever a check would pass trivially with a fresh adapter (LoRA's B and NeMo's
up projection start at zero), and each such test first asserts that the adapter really changes the output.
"""
from __future__ import annotations

import subprocess
import sys
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backends import registry
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BACKENDS = tuple(registry.names())  # every registered backend runs through the same table of checks
LORA = tuple(registry.same_method("linear"))  # one method: the same function, the same saved layout
SPEC = registry.AdapterSpec(r=4, alpha=8.0, options={"adapter_dim": 16})


# ---- shared inputs (built once per module) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tiny_model_path, demo):
    """A fixed validation batch, three training batches, and the base model's log-probs on the fixed batch."""
    from common.model.steps import fixed_batch, log_probs
    from tests.conftest import restore_tiny
    from tests.helpers import val_loader

    base = restore_tiny(tiny_model_path)
    batch = fixed_batch(val_loader(base, demo.adapt_val))
    train = list(islice(iter(val_loader(base, demo.adapt_train, bs=4)), 3))
    return SimpleNamespace(batch=batch, train=train, base_out=log_probs(base, batch),
                           base_state={k: v.clone() for k, v in base.state_dict().items()})


def adapted(model, name: str, spec: registry.AdapterSpec = SPEC):
    from common.model.io import freeze

    freeze(model)
    backend = registry.get(name)
    applied = backend.apply(model, spec)
    assert applied.modules, applied.notes
    return backend


def randomize(backend, model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Give every adapter weight a random value (B included) through the backend's own state-dict API."""
    gen = torch.Generator().manual_seed(seed)
    shapes = sorted((k, v.shape) for k, v in backend.adapter_state_dict(model).items())
    state = {k: torch.randn(shape, generator=gen) * 0.05 for k, shape in shapes}
    backend.load_adapter_state_dict(model, state)
    return state


def out(model, batch) -> torch.Tensor:
    from common.model.steps import log_probs

    return log_probs(model, batch)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---- the registry ---------------------------------------------------------------------------------------------
def test_every_backend_folder_is_registered_under_its_own_name():
    folders = sorted(p.parent.name for p in (REPO / "backends").glob("*/__init__.py"))
    assert registry.names() == folders and {"linear", "peft", "nemo"} <= set(folders)
    for name in BACKENDS:
        backend = registry.get(name)
        assert isinstance(backend, registry.AdapterBackend) and backend.name == name
    assert {n: registry.get(n).mergeable for n in ("linear", "peft", "nemo")} == {
        "linear": True, "peft": True, "nemo": False}
    assert LORA == ("linear", "peft") and registry.is_portable("linear") and not registry.is_portable("peft")


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        registry.get("lora2")
    assert "'lora2'" in str(e.value) and "linear, nemo, peft" in str(e.value) and "--backend" in str(e.value)


def test_choosing_linear_never_imports_peft_or_nemo_adapters():
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "import torch\n"
        "from backends import registry\n"
        "import common.training.run, common.training.module, common.model.export\n"
        "model = torch.nn.Module(); model.encoder = torch.nn.Module(); model.encoder.layers = torch.nn.ModuleList("
        "[torch.nn.Module()]); model.encoder.layers[0].self_attn = torch.nn.Module()\n"
        "model.encoder.layers[0].self_attn.linear_q = torch.nn.Linear(4, 4)\n"
        "backend = registry.get('linear'); assert backend.apply(model, registry.AdapterSpec()).modules\n"
        "heavy = [m for m in ('peft', 'backends.peft.model', 'backends.nemo.model') if m in sys.modules]\n"
        "assert registry.names() == ['linear', 'nemo', 'peft']\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout


# ---- training touches adapters only ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_only_adapters_train_and_only_they_change(name, tiny_model, inputs):
    from common.model.steps import compute_loss
    from common.training.module import freeze_batchnorm

    backend = adapted(tiny_model, name)
    trainable = {n for n, _ in backend.trainable_parameters(tiny_model)}
    assert trainable and trainable == {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    opt = torch.optim.AdamW([p for _, p in backend.trainable_parameters(tiny_model)], lr=1e-2, weight_decay=0.0)
    tiny_model.train()
    assert freeze_batchnorm(tiny_model) > 0
    for batch in inputs.train:
        loss, _ = compute_loss(tiny_model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = tiny_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable  # every adapter weight moved (B first, then A), no base weight or buffer did
    bn = [k for k in before if "batch_norm.running_" in k or "batch_norm.num_batches" in k]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)


def test_rounded_batch_shapes_leave_the_loss_unchanged(tiny_model, inputs):
    """CUDA-graphed training pads each batch to rounded audio and token lengths, and the audio further to an
    encoder length that is a multiple of 8; every pad must be masked."""
    from common.model.steps import ShapeRounding, compute_loss, rounded_inputs

    tiny_model.eval()  # no dither: the preprocessor is deterministic
    for batch in inputs.train:
        rounding = ShapeRounding(audio_s=0.7, tokens=16, encoder_frames=8)
        samples = round(rounding.audio_s * tiny_model.sample_rate)
        tokens = batch.prompted_transcript.shape[1] - 1
        assert batch.audio.shape[1] % samples and tokens % rounding.tokens  # the batch really gets padded
        audio, input_ids, _ = rounded_inputs(tiny_model, batch, rounding)
        assert input_ids.shape[1] % rounding.tokens == 0 and audio.shape[1] >= batch.audio.shape[1]
        with torch.no_grad():
            _, _, encoded, _ = tiny_model(input_signal=audio, input_signal_length=batch.audio_lens)
            _, _, unpadded, _ = tiny_model(input_signal=batch.audio, input_signal_length=batch.audio_lens)
            plain, n_plain = compute_loss(tiny_model, batch)
            padded, n_padded = compute_loss(tiny_model, batch, rounding)
        assert encoded.shape[1] % rounding.encoder_frames == 0 and unpadded.shape[1] % 8, (encoded.shape,
                                                                                          unpadded.shape)
        assert int(n_plain) == int(n_padded) > 0
        assert abs(float(plain) - float(padded)) <= 1e-5 * abs(float(plain)), (float(plain), float(padded))


def test_an_extra_relative_position_leaves_the_training_loss_unchanged(tiny_model, inputs):
    """Compiled training steps hand the attention 2T positions instead of 2T-1; the attention never reads the
    extra one, so the loss (same seed, so the same dropout draws) and the gradients stay the same."""
    from common.model.steps import compute_loss
    from common.training.module import freeze_batchnorm
    from common.model.compile import align_relative_positions

    seen = []
    layer = tiny_model.encoder.layers[0]
    layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["pos_emb"].shape[1]),
                                    with_kwargs=True)
    tiny_model.train()
    freeze_batchnorm(tiny_model)
    batch = inputs.train[0]
    target = layer.self_attn.linear_q.weight

    def loss_and_grad():
        torch.manual_seed(0)
        loss, _ = compute_loss(tiny_model, batch)
        (grad,) = torch.autograd.grad(loss, [target])
        return float(loss), grad

    plain, plain_grad = loss_and_grad()
    assert align_relative_positions(tiny_model)
    aligned, aligned_grad = loss_and_grad()
    with torch.no_grad():
        compute_loss(tiny_model, batch)  # no gradients (validation): positions as NeMo makes them
    frames = seen[0] // 2 + 1
    assert seen == [2 * frames - 1, 2 * frames, 2 * frames - 1], seen
    assert abs(aligned - plain) <= 1e-6 * abs(plain), (plain, aligned)
    # the CPU backward itself varies by ~0.5% of the largest entry from one repeat to the next
    scale = float(plain_grad.abs().max())
    assert scale > 0 and float((aligned_grad - plain_grad).abs().max()) <= 0.02 * scale


def test_audio_is_padded_to_the_fewest_samples_with_an_aligned_encoder_length(tiny_model):
    """15 s at canary's 10 ms hop and 8x subsampling gives 188 encoder frames; 15.28 s is the shortest audio
    that gives 192. Checked against the real preprocessor and encoder (the tiny model subsamples 4x): the
    padded batch's encoder output is what the attention multiplies."""
    from common.model.steps import aligned_audio_length

    hop, factor = tiny_model.preprocessor.featurizer.hop_length, tiny_model.encoder.subsampling_factor
    tiny_model.eval()
    for seconds in (3.0, 15.0):
        n = int(seconds * tiny_model.sample_rate)
        aligned = aligned_audio_length(n, hop, factor, 8)
        lengths = []
        for samples in (n, aligned - 1, aligned):
            audio = torch.zeros(1, samples)
            with torch.no_grad():
                features, frames = tiny_model.preprocessor(input_signal=audio, length=torch.tensor([samples]))
                encoded, _ = tiny_model.encoder(audio_signal=features, length=frames)
            lengths.append(encoded.shape[-1])
        assert lengths[2] % 8 == 0 and lengths[1] % 8 and lengths[0] <= lengths[2] < lengths[0] + 8, lengths
    assert aligned_audio_length(15 * 16000, 160, 8, 8) == 244480  # 15.28 s: 192 frames
    assert aligned_audio_length(14 * 16000, 160, 8, 8) == 14 * 16000  # 176 frames: already aligned


# ---- outputs: zero-init, disabled, merged ------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_fresh_adapter_and_disabled_adapter_equal_the_base(name, tiny_model, inputs):
    backend = adapted(tiny_model, name)
    assert max_diff(out(tiny_model, inputs.batch), inputs.base_out) <= 1e-6  # zero-initialized output side
    randomize(backend, tiny_model)
    trained = out(tiny_model, inputs.batch)
    assert max_diff(trained, inputs.base_out) > 1e-3  # the adapter really changes the output
    backend.set_enabled(tiny_model, False)
    assert max_diff(out(tiny_model, inputs.batch), inputs.base_out) <= 1e-6
    backend.set_enabled(tiny_model, True)
    assert max_diff(out(tiny_model, inputs.batch), trained) == 0.0


@pytest.mark.parametrize("name", BACKENDS)
def test_merge_keeps_the_outputs(name, tiny_model, inputs):
    backend = adapted(tiny_model, name)
    state = randomize(backend, tiny_model)
    unmerged = out(tiny_model, inputs.batch)
    backend.merge(tiny_model)
    backend.merge(tiny_model)  # idempotent
    assert max_diff(out(tiny_model, inputs.batch), unmerged) <= 1e-5
    keys = set(tiny_model.state_dict())
    if backend.mergeable:
        assert keys == set(inputs.base_state)  # plain nn.Linear back at every path
        assert not any("lora_" in k for k in keys) and not hasattr(tiny_model, "peft_config")
        moved = {k for k in keys if not torch.equal(tiny_model.state_dict()[k], inputs.base_state[k])}
        assert moved == {k.replace(".lora_A.weight", ".weight") for k in state if ".lora_A." in k}
    else:
        assert keys == set(inputs.base_state) | set(state)  # adapters kept as modules


# ---- adapter files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_adapter_file_round_trip_is_exact(name, tiny_model, tiny_model_path, inputs, tmp_path):
    from common.checkpoint_files import load_adapters, save_adapters
    from tests.conftest import restore_tiny

    backend = adapted(tiny_model, name)
    randomize(backend, tiny_model)
    state = backend.adapter_state_dict(tiny_model)
    if name in LORA:  # PEFT's saved layout, without the adapter name
        assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) and ".default." not in k for k in state)
        assert len(state) == 2 * 36
    path = save_adapters(state, tmp_path / "adapters.safetensors", {"backend": name})
    loaded, meta = load_adapters(path)
    assert meta["backend"] == name and loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    fresh = restore_tiny(tiny_model_path)
    other = adapted(fresh, name)
    other.load_adapter_state_dict(fresh, loaded)
    assert max_diff(out(fresh, inputs.batch), out(tiny_model, inputs.batch)) == 0.0
    with pytest.raises(KeyError):
        other.load_adapter_state_dict(fresh, dict(list(loaded.items())[1:]))


@pytest.mark.parametrize("src,dst", [("linear", "peft"), ("peft", "linear")])
def test_lora_adapters_move_between_linear_and_peft(src, dst, tiny_model, tiny_model_path, inputs, tmp_path):
    from common.checkpoint_files import load_adapters, save_adapters
    from tests.conftest import restore_tiny

    source = adapted(tiny_model, src)
    randomize(source, tiny_model, seed=3)
    path = save_adapters(source.adapter_state_dict(tiny_model), tmp_path / "a.safetensors", {"backend": src})
    target_model = restore_tiny(tiny_model_path)
    target = adapted(target_model, dst)
    target.load_adapter_state_dict(target_model, load_adapters(path)[0])
    expected = out(tiny_model, inputs.batch)
    assert max_diff(expected, inputs.base_out) > 1e-3
    assert max_diff(out(target_model, inputs.batch), expected) <= 1e-6


# ---- export --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_export_restores_with_stock_restore_from(name, tiny_model, tiny_model_path, inputs, demo, tmp_path):
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from backends.nemo.layer import DECODER_ADAPTER, ENCODER_ADAPTER
    from common.model.export import export_model
    from common.model.archive import inspect_nemo
    from tests.helpers import val_loader

    backend = adapted(tiny_model, name)
    state = randomize(backend, tiny_model)
    trained = out(tiny_model, inputs.batch)
    module = SimpleNamespace(model=tiny_model)
    path, _, check = export_model(module, backend, inspect_nemo(tiny_model_path), tmp_path / "out.nemo",
                                  val_loader(tiny_model, demo.adapt_val), set(inputs.base_state))
    assert check["ok"], check
    assert check["adapters_kept"] is (not backend.mergeable)
    restored = EncDecMultiTaskModel.restore_from(str(path), map_location="cpu")
    keys = set(restored.state_dict())
    if backend.mergeable:
        assert keys == set(inputs.base_state)
    else:
        assert keys == set(inputs.base_state) | set(state)
        assert restored.get_enabled_adapters() == sorted([DECODER_ADAPTER, ENCODER_ADAPTER])
        restored.set_enabled_adapters(enabled=False)
        assert max_diff(out(restored, inputs.batch), inputs.base_out) <= 1e-6
        restored.set_enabled_adapters(enabled=True)
    assert max_diff(out(restored, inputs.batch), trained) <= 1e-5


# ---- what each backend tells the training core ----------------------------------------------------------------------
@pytest.mark.parametrize("name", LORA)
def test_lora_backends_never_wrap_the_tied_head(name, tiny_model):
    backend = registry.get(name)
    applied = backend.apply(tiny_model, registry.AdapterSpec(targets=(r"log_softmax\.mlp\.layer0",)))
    assert applied.modules == [] and any("tied head" in n for n in applied.notes)
    assert not any("lora_" in n for n, _ in tiny_model.named_parameters())


@pytest.mark.parametrize("name", BACKENDS)
def test_adapt_reports_adapted_modules_and_describe(name, tiny_model, capsys):
    from common.model.io import freeze
    from common.model.adapt import adapt

    freeze(tiny_model)
    backend = registry.get(name)
    modules = adapt(tiny_model, backend, SPEC, debug_linear=0)
    info = backend.describe(tiny_model)
    assert tuple(info) == registry.DESCRIBE_KEYS  # one schema for every backend
    assert modules and info["adapted_modules"] == len(modules) and info["mergeable"] is backend.mergeable
    assert info["trainable_params"] == sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    assert isinstance(info["method"], str) and isinstance(info["export"], str) and info["settings"]
    if name == "nemo":
        assert len(modules) == 4 and all(".adapter_layer." in m for m in modules)  # 2 encoder + 2 decoder layers
        assert info["settings"] == {"adapter_dim": SPEC.options["adapter_dim"]} and info["mergeable"] is False
        printed = capsys.readouterr().out
        assert "--lora_targets" in printed and "keeps them" in printed
    elif name in LORA:
        assert len(modules) == 36 and info["settings"] == {"rank": SPEC.r, "scaling": SPEC.scaling}


# ---- `just parity` -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_parity_recipe_passes_and_writes_its_report(tmp_path):
    run_dir = tmp_path / "parity"
    done = subprocess.run([sys.executable, "recipes/parity.py", "--steps", "3", "--out", str(run_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    report = (run_dir / "parity.md").read_text(encoding="utf-8")
    for needle in ("Numeric", "Training", "Export", "keeps the adapters", "PASS", "trainable params", "step time",
                   "peak RSS", "WER", "Every backend side by side"):
        assert needle in report, needle
    assert "FAIL" not in report
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- a new backend is one new folder --------------------------------------------------------------------------------
@pytest.mark.slow  # a whole CLI scenario: the slow suite (just test-all)
def test_a_copied_backend_folder_trains_with_no_other_edit(tmp_path, embedded):
    """Drop a copy of a backend into backends/<x>/ and train with --backend <x> through the real command line:
    the registry finds it, the CLI offers it, the run trains, exports and reports it."""
    import shutil

    from tests.train_cli import run, tiny_args

    copy = REPO / "backends" / "lora_copy"
    assert not copy.exists()
    shutil.copytree(REPO / "backends" / "linear", copy, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        code, output = run(tiny_args(embedded.random_nemo, embedded.data, tmp_path / "run", tmp_path / "data",
                                     backend="lora_copy", max_steps=2, save_every=2, val_every_n_steps=2))
    finally:
        shutil.rmtree(copy)
    assert code == 0, output[-3000:]
    assert "[lora] backend lora_copy: 36 modules" in output
    summary = __import__("json").loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["backend"] == "lora_copy" and summary["status"] == "finished" and summary["export_check"]["ok"]
