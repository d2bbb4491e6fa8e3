"""--speedups, --grad_ckpt and --compile, applied to a prepared model before training (`prepare_step`).

Each speed-up leaves the step's numbers as they were (up to floating-point rounding) and may make it faster on a
GPU; `just bench` measures each against the plain step (`--configs linear:32+sdpa`, docs/performance.md), and a
run turns them on with `--speedups NAME[,NAME]`:

- `sdpa`: attention through `scaled_dot_product_attention`, one fused kernel (FlashAttention, or the
  memory-efficient kernel where a bias is added) instead of separate products, softmax and dropout over
  materialized scores. The encoder's relative-position attention adds its position term as a bias (NeMo's own
  `use_pytorch_sdpa` path); the decoder's self- and cross-attention take their masks as a bias.
- `qkv`: the projections of one input computed together: one matrix product for the frozen q, k and v weights
  (concatenated per call) and, with the linear backend, one for the three LoRA A's. Each adapter keeps its own
  weights, so checkpoints, adapter files and merging are unchanged. The encoder's q, k and v share their input;
  in the decoder, k and v do (its q is normalized separately).
- `nosync`: no host sync per step in NeMo's preprocessor (it reads a device flag to refuse one-frame clips, whose
  normalization it then guards anyway) nor, with DDP, in the encoder (an all-reduce of the longest input, read on
  the host, that only sizes its position table, already long enough for 400 s).
"""
from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn


def prepare_step(model, backend, cfg) -> bool | None:
    """Apply `cfg`'s --speedups, then --compile (with --grad_ckpt inside it) or --grad_ckpt alone. Returns None when
    nothing was compiled, else whether the compiled layers replay as CUDA graphs (see `compile_for_training`)."""
    from common.model.compile import checkpoint_layers, compile_for_training

    for note in apply_speedups(model, backend, cfg.speedup_names):
        print(f"[speedups] {note}", flush=True)
    if cfg.compile:
        return compile_for_training(model, cuda_graphs=cfg.cuda_graphs, bucketed=cfg.batch_duration is not None,
                                    backend=cfg.compile_backend, grad_ckpt=cfg.grad_ckpt)
    if cfg.grad_ckpt:
        print(f"[memory] --grad_ckpt: {checkpoint_layers(model)} encoder and decoder layers recompute their "
              f"activations in the backward pass", flush=True)
    return None


def apply_speedups(model, backend, names) -> list[str]:
    """Turn on each named speed-up; returns one line per speed-up saying what it changed."""
    notes = []
    for name in names:
        notes.append(f"{name}: " + {"sdpa": use_sdpa, "qkv": fuse_projections, "nosync": no_host_syncs}[name](
            model, backend))
    return notes


# ---- attention modules -------------------------------------------------------------------------------------
def _encoder_attention(model) -> list[nn.Module]:
    from nemo.collections.asr.parts.submodules import multi_head_attention as mha

    return [m for m in model.encoder.modules() if type(m) is mha.RelPositionMultiHeadAttention]


def _decoder_attention(model) -> list[nn.Module]:
    from nemo.collections.asr.modules.transformer.transformer_modules import MultiHeadAttention

    decoder = getattr(model, "transf_decoder", None)
    return [m for m in decoder.modules() if type(m) is MultiHeadAttention] if decoder is not None else []


def _patch_decoder(m: nn.Module, **settings) -> None:
    """The decoder attention's forward, with the settings accumulated over the speed-ups turned on."""
    settings = {**getattr(m, "_speedups", {}), **settings}
    m._speedups = settings
    m.forward = functools.partial(decoder_attention, m, **settings)


def use_sdpa(model, backend) -> str:
    encoder, decoder = _encoder_attention(model), _decoder_attention(model)
    for m in encoder:
        m.use_pytorch_sdpa = True  # NeMo's own path: the position term as an additive bias
        m.use_pytorch_sdpa_backends = []
    for m in decoder:
        _patch_decoder(m, sdpa=True)
    return (f"{len(encoder)} encoder and {len(decoder)} decoder attention modules use "
            f"scaled_dot_product_attention")


def decoder_attention(m, queries, keys, values, attention_mask, *, sdpa: bool = False, project=None):
    """NeMo's transformer `MultiHeadAttention.forward` (queries and keys pre-divided by d**0.25, additive mask,
    dropout on the probabilities), with the projections through `project` and the attention through SDPA."""
    if project is not None:
        query, key, value = project(queries, keys, values)
    else:
        query, key, value = m.query_net(queries), m.key_net(keys), m.value_net(values)
    query = m.transpose_for_scores(query) / m.attn_scale
    key = m.transpose_for_scores(key) / m.attn_scale
    value = m.transpose_for_scores(value)
    probs = None
    if sdpa and not m.return_xatt_scores:
        mask = attention_mask.to(query.dtype) if attention_mask is not None else None
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=1.0,
                                                 dropout_p=m.attn_dropout.p if m.training else 0.0)
    else:
        scores = torch.matmul(query, key.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores + attention_mask.to(scores.dtype)
        probs = m.attn_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, value)
    context = context.permute(0, 2, 1, 3).contiguous()
    context = context.view(*context.size()[:-2], m.num_attention_heads * m.attn_head_size)
    output = m.layer_dropout(m.out_projection(context))
    return output, ({"xatt_scores": probs} if m.return_xatt_scores else {})


# ---- projections of one input ------------------------------------------------------------------------------
def shared_input(modules: list[nn.Module], backend):
    """A function computing every module's output from one input in fewer matrix products, or None.

    Plain `nn.Linear` layers concatenate their weights; adapted layers ask the backend
    (`backend.shared_input(modules)`, an optional part of the backend contract)."""
    if all(type(m) is nn.Linear for m in modules):
        return functools.partial(linear_together, modules)
    ask = getattr(backend, "shared_input", None)
    return ask(modules) if ask is not None else None


def linear_together(layers: list[nn.Linear], x: torch.Tensor) -> list[torch.Tensor]:
    """`[layer(x) for layer in layers]` as one matrix product over the concatenated weights."""
    biases = [layer.bias for layer in layers]
    bias = torch.cat(biases) if all(b is not None for b in biases) else None
    if bias is None and any(b is not None for b in biases):
        return [layer(x) for layer in layers]
    y = F.linear(x, torch.cat([layer.weight for layer in layers]), bias)
    return list(y.split([layer.out_features for layer in layers], dim=-1))


def projector(nets: list[nn.Module], backend):
    """project(q_in, k_in, v_in) -> [q, k, v]: inputs that are one tensor go through one fused call."""
    all_three, key_value = shared_input(nets, backend), shared_input(nets[1:], backend)
    if all_three is None and key_value is None:
        return None

    def project(queries, keys, values):
        if all_three is not None and queries is keys and keys is values:
            return all_three(queries)
        if key_value is not None and keys is values:
            return [nets[0](queries), *key_value(keys)]
        return [nets[0](queries), nets[1](keys), nets[2](values)]

    return project


def _forward_qkv(m, project, query, key, value):
    """NeMo's `MultiHeadAttention.forward_qkv` (encoder), projecting through `project`."""
    n_batch = query.size(0)
    q, k, v = project(query, key, value)
    return tuple(t.view(n_batch, -1, m.h, m.d_k).transpose(1, 2) for t in (q, k, v))


def fuse_projections(model, backend) -> str:
    encoder = decoder = 0
    for m in _encoder_attention(model):
        project = projector([m.linear_q, m.linear_k, m.linear_v], backend)
        if project is not None:
            m.forward_qkv = functools.partial(_forward_qkv, m, project)
            encoder += 1
    for m in _decoder_attention(model):
        project = projector([m.query_net, m.key_net, m.value_net], backend)
        if project is not None:
            _patch_decoder(m, project=project)
            decoder += 1
    if not encoder and not decoder:
        name = getattr(backend, "name", "full fine-tuning")
        return f"not available with {name}: its layers compute their projections one by one"
    return (f"{encoder} encoder attention modules project q, k and v, and {decoder} decoder attention modules k and "
            f"v, in one call each")


# ---- host syncs --------------------------------------------------------------------------------------------
_NO_SYNC = threading.local()  # set while a model with `nosync` computes its features


def no_host_syncs(model, backend) -> str:
    from nemo.collections.asr.parts.preprocessing import features

    if features.normalize_batch is not _normalize_batch:
        _normalize_batch.nemo = features.normalize_batch
        features.normalize_batch = _normalize_batch  # read as a global by FilterbankFeatures.forward
    featurizer = getattr(getattr(model, "preprocessor", None), "featurizer", None)
    if featurizer is not None:  # only this model's preprocessor skips the read: other models keep NeMo's
        featurizer.forward = functools.partial(_without_sync, featurizer.forward)
    encoder = getattr(model, "encoder", None)
    if hasattr(encoder, "sync_max_audio_length"):
        encoder.sync_max_audio_length = False
    return "the preprocessor's one-frame check and the encoder's DDP length all-reduce no longer sync the host"


def _without_sync(forward, *args, **kwargs):
    _NO_SYNC.on = True
    try:
        return forward(*args, **kwargs)
    finally:
        _NO_SYNC.on = False


def _normalize_batch(x, seq_len, normalize_type):
    """NeMo's `normalize_batch`, without its per-step device read (`torch.any(seq_len == 1).item()`, on CUDA
    only) for the models `no_host_syncs` set up: the same numbers, a one-frame clip included (its deviation is
    guarded to 0, as NeMo does)."""
    if normalize_type != "per_feature" or not getattr(_NO_SYNC, "on", False):
        return _normalize_batch.nemo(x, seq_len, normalize_type)
    batch_size, max_time = x.shape[0], x.shape[2]
    time_steps = torch.arange(max_time, device=x.device).unsqueeze(0).expand(batch_size, max_time)
    valid_mask = time_steps < seq_len.unsqueeze(1)
    x_mean_numerator = torch.where(valid_mask.unsqueeze(1), x, 0.0).sum(axis=2)
    x_mean_denominator = valid_mask.sum(axis=1)
    x_mean = x_mean_numerator / x_mean_denominator.unsqueeze(1)
    x_std = torch.sqrt(torch.sum(torch.where(valid_mask.unsqueeze(1), x - x_mean.unsqueeze(2), 0.0) ** 2, axis=2)
                       / (x_mean_denominator.unsqueeze(1) - 1.0))
    x_std = x_std.masked_fill(x_std.isnan(), 0.0)
    x_std += 1e-5  # NeMo's CONSTANT
    normalized = (x - x_mean.unsqueeze(2)) / x_std.unsqueeze(2)
    normalized.masked_fill_(~valid_mask.unsqueeze(1), 0.0)
    return normalized, x_mean, x_std
