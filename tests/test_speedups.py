"""--speedups and --grad_ckpt on the real tiny Canary: each leaves the loss and the gradients as they were.

The adapters get random weights (B included), so every adapted projection changes the loss, and a wrong fusion
(q and k swapped, a LoRA term lost) would show. The model's own dropout is set to 0 where the two paths would draw
different masks (SDPA draws its own); checkpointing keeps it on, since it must reproduce the forward pass's draws.
The CPU backward itself varies by up to ~0.5% of the largest gradient entry from one repeat to the next.
"""
from __future__ import annotations

import functools

import pytest
import torch

from backends import registry
from common.errors import UserError

SPEC = registry.AdapterSpec(r=4, alpha=8.0)


@pytest.fixture(scope="module")
def batch(tiny_model_path, demo):
    from tests.conftest import restore_tiny
    from tests.helpers import val_loader

    return next(iter(val_loader(restore_tiny(tiny_model_path), demo.adapt_train, bs=4)))


def adapted(tiny_model_path, name: str = "linear", *, dropout: bool = False):
    """A fresh tiny model in training mode (BatchNorm frozen) with randomized adapters of backend `name`."""
    from common.model.io import freeze
    from common.training.module import freeze_batchnorm
    from tests.conftest import restore_tiny

    model = restore_tiny(tiny_model_path)
    freeze(model)
    backend = registry.get(name)
    backend.apply(model, SPEC)
    gen = torch.Generator().manual_seed(0)
    backend.load_adapter_state_dict(model, {k: torch.randn(v.shape, generator=gen) * 0.05
                                            for k, v in sorted(backend.adapter_state_dict(model).items())})
    if not dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if hasattr(m, "dropout_rate"):  # NeMo's encoder attention hands this to SDPA
                m.dropout_rate = 0.0
    model.train()
    freeze_batchnorm(model)
    return model, backend


def loss_and_grads(model, backend, batch, rounding=None) -> tuple[float, torch.Tensor]:
    from common.model.steps import compute_loss

    torch.manual_seed(0)
    loss, _ = compute_loss(model, batch, rounding)
    grads = torch.autograd.grad(loss, [p for _, p in backend.trainable_parameters(model)])
    return float(loss), torch.cat([g.flatten() for g in grads])


def assert_same(reference: tuple[float, torch.Tensor], other: tuple[float, torch.Tensor], grad_tol: float = 0.02):
    (loss0, grads0), (loss1, grads1) = reference, other
    assert abs(loss1 - loss0) <= 1e-5 * abs(loss0), (loss0, loss1)
    scale = float(grads0.abs().max())
    assert scale > 0 and float((grads1 - grads0).abs().max()) <= grad_tol * scale


# ---- the speed-ups ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [("sdpa",), ("qkv",), ("nosync",), ("sdpa", "qkv", "nosync")])
def test_speedups_leave_loss_and_gradients_unchanged(names, tiny_model_path, batch):
    from common.model.speedups import apply_speedups

    model, backend = adapted(tiny_model_path)
    reference = loss_and_grads(model, backend, batch)
    keys = sorted(backend.adapter_state_dict(model))
    model, backend = adapted(tiny_model_path)
    notes = apply_speedups(model, backend, names)
    assert [n.split(":")[0] for n in notes] == list(names)
    attention = [m for m in model.encoder.modules() if hasattr(m, "linear_pos")]
    decoder = [m for m in model.transf_decoder.modules() if hasattr(m, "query_net")]
    assert attention and decoder
    if "sdpa" in names:
        assert all(m.use_pytorch_sdpa for m in attention) and all(m._speedups["sdpa"] for m in decoder)
    if "qkv" in names:
        assert all(isinstance(m.forward_qkv, functools.partial) for m in attention)
        assert all(m._speedups["project"] is not None for m in decoder)
    if "nosync" in names:
        assert model.encoder.sync_max_audio_length is False
    assert_same(reference, loss_and_grads(model, backend, batch))
    assert sorted(backend.adapter_state_dict(model)) == keys  # the saved layout is unchanged


def test_fused_linear_projections_compute_peft_s_function(tiny_model_path, batch):
    """`qkv` on the linear backend against PEFT's own layers, one projection at a time, with the same adapters."""
    from common.model.speedups import apply_speedups

    model, backend = adapted(tiny_model_path)
    state = backend.adapter_state_dict(model)
    apply_speedups(model, backend, ("qkv",))
    fused = loss_and_grads(model, backend, batch)
    peft_model, peft = adapted(tiny_model_path, "peft")
    peft.load_adapter_state_dict(peft_model, state)
    assert_same(loss_and_grads(peft_model, peft, batch), fused)
    notes = apply_speedups(peft_model, peft, ("qkv",))  # PEFT's layers offer no fused call: left as they are
    assert "not available with peft" in notes[0]


def test_lora_together_equals_separate_calls_and_falls_back_where_it_cannot_fuse():
    from backends.linear.layer import LoRALinear, lora_together

    torch.manual_seed(0)
    layers = [LoRALinear(torch.nn.Linear(16, n), r=4, alpha=8.0) for n in (16, 8, 16)]
    for layer in layers:
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    x = torch.randn(3, 5, 16)
    separate = [layer(x) for layer in layers]
    for got, want in zip(lora_together(layers, x), separate):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    layers[1].lora_dropout = torch.nn.Dropout(0.5)  # one mask per layer: computed one by one
    layers[1].eval()
    assert all(torch.equal(a, b) for a, b in zip(lora_together(layers, x), [layer(x) for layer in layers]))
    mixed = [LoRALinear(torch.nn.Linear(16, 8, bias=b), r=2, alpha=2.0) for b in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(lora_together(mixed, x), [layer(x) for layer in mixed]))


def test_normalization_without_the_host_sync_gives_nemo_s_numbers():
    from nemo.collections.asr.parts.preprocessing import features

    from common.model.speedups import _normalize_batch, _without_sync

    _normalize_batch.nemo = features.normalize_batch if features.normalize_batch is not _normalize_batch else \
        _normalize_batch.nemo
    torch.manual_seed(0)
    x = torch.randn(4, 8, 30)
    seq_len = torch.tensor([30, 17, 2, 1])  # a one-frame clip: its deviation guarded to 0
    ours = _without_sync(_normalize_batch, x, seq_len, "per_feature")
    theirs = _normalize_batch.nemo(x, seq_len, "per_feature")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) and torch.isfinite(ours[0]).all()
    assert all(torch.equal(a, b) for a, b in zip(_without_sync(_normalize_batch, x, seq_len, "all_features"),
                                                 _normalize_batch.nemo(x, seq_len, "all_features")))


def test_nosync_reaches_only_the_model_it_was_applied_to(tiny_model_path):
    from nemo.collections.asr.parts.preprocessing import features

    from common.model.speedups import _NO_SYNC, apply_speedups
    from tests.conftest import restore_tiny

    fast, plain = restore_tiny(tiny_model_path), restore_tiny(tiny_model_path)
    apply_speedups(fast, None, ("nosync",))
    seen = []
    nemo = features.normalize_batch.nemo

    def spy(*args):
        seen.append(getattr(_NO_SYNC, "on", False))
        return nemo(*args)

    features.normalize_batch.nemo = spy  # what the wrapper hands over to when the model did not ask for nosync
    try:
        audio, lengths = torch.randn(1, 16000), torch.tensor([16000])
        for model in (fast, plain):
            model.eval()
            model.preprocessor(input_signal=audio, length=lengths)
    finally:
        features.normalize_batch.nemo = nemo
    assert seen == [False]  # only the plain model's features went through NeMo's own function
    assert fast.encoder.sync_max_audio_length is False and plain.encoder.sync_max_audio_length is True


def test_speedup_and_compile_flags_are_checked_before_any_model_loads():
    from common.config import SPEEDUPS, parse_args

    base = ["--nemo", "m.nemo", "--train", "t.jsonl", "--val", "v.jsonl"]
    assert parse_args(base + ["--speedups", "all"]).speedup_names == SPEEDUPS
    assert parse_args(base + ["--speedups", "sdpa, qkv"]).speedup_names == ("sdpa", "qkv")
    with pytest.raises(UserError) as e:
        parse_args(base + ["--speedups", "sdpa,flash", "--compile_backend", "cudagraphs"])
    text = str(e.value)
    assert "--speedups: unknown 'flash'; choose from sdpa, qkv, nosync" in text
    assert "--compile_backend cudagraphs replays the layers as CUDA graphs: it needs --compile" in text
    with pytest.raises(UserError, match="not --no-cuda_graphs"):
        parse_args(base + ["--compile", "--no-cuda_graphs", "--compile_backend", "cudagraphs"])
    cfg = parse_args(base + ["--compile", "--compile_backend", "cudagraphs", "--grad_ckpt"])
    assert (cfg.compile_backend, cfg.grad_ckpt) == ("cudagraphs", True)


# ---- activation checkpointing ------------------------------------------------------------------------------------
def saved_bytes(model, backend, batch) -> int:
    """Bytes the autograd graph keeps for the backward pass of one training step."""
    from common.model.steps import compute_loss

    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute_loss(model, batch)
    return total


def test_checkpointed_layers_keep_less_and_reproduce_loss_gradients_and_dropout(tiny_model_path, batch):
    from common.model.compile import checkpoint_layers

    model, backend = adapted(tiny_model_path, dropout=True)
    reference, kept = loss_and_grads(model, backend, batch), saved_bytes(model, backend, batch)
    model, backend = adapted(tiny_model_path, dropout=True)
    assert checkpoint_layers(model) == 4  # 2 encoder + 2 decoder layers
    # the same seed draws the same dropout masks, and the recompute draws them again
    assert_same(reference, loss_and_grads(model, backend, batch))
    assert saved_bytes(model, backend, batch) < 0.6 * kept
    with torch.no_grad():  # validation: the layers run as before
        from common.model.steps import compute_loss

        assert torch.isfinite(compute_loss(model.eval(), batch)[0])


def test_checkpointing_inside_graphs_without_inductor(tiny_model_path, batch):
    """--compile --compile_backend cudagraphs --grad_ckpt: TorchDynamo and AOTAutograd capture each layer with its
    checkpoint (on a CPU the captured graphs run as they are, no CUDA graphs): the same loss and gradients."""
    from common.model.compile import compile_layers
    from common.model.steps import ShapeRounding

    rounding = ShapeRounding()
    model, backend = adapted(tiny_model_path)
    reference = loss_and_grads(model, backend, batch, rounding)
    model, backend = adapted(tiny_model_path)
    assert compile_layers(model, backend="cudagraphs", grad_ckpt=True)
    assert_same(reference, loss_and_grads(model, backend, batch, rounding))
    assert_same(reference, loss_and_grads(model, backend, batch, rounding))  # the captured graphs, run again
