"""The peer: what a user would pick instead of this project, Hugging Face transformers' Canary port
(`CanaryForConditionalGeneration`, transformers >= 5.23) with PEFT LoRA, measured in the same process sequence
as our rows and given the best settings we know.

- The same shape: the `CanaryConfig` of the NeMo config our rows build (canary-1b-v2's shape gives
  `CanaryConfig()`'s defaults on a GPU; the tiny model's shape with `just bench --tiny`), random weights.
- LoRA r / alpha as our rows (8 / 16), dropout 0, on the encoder's `q_proj k_proj v_proj o_proj relative_k_proj
  linear1 linear2` and the decoder's `q_proj k_proj v_proj o_proj fc1 fc2` (368 layers for canary-1b-v2).
- The frozen base in bf16 under bf16 autocast where our rows take it (bf16 precision on a GPU), the adapters in
  fp32 (PEFT's default), AdamW on the adapters, gradients clipped at 1.0 as our step does.
- Fed log-mel features of the same batch size and clip length (100 frames a second) and labels of the same token
  length as our batches (the canary2 prompt plus the transcript), `use_cache=False`.
- With --compile on a GPU, each encoder and decoder layer wrapped in `torch.compile(mode="reduce-overhead")`
  (CUDA graphs; plain compiled kernels with --no-cuda_graphs); eager on a CPU.

`peer-forward` is its no-grad forward pass of the same batch (SDPA, eager), the peer's own step/forward reference.
Timing is our rows' timing: the device synchronized after the first step, at the end of the warm-up and after the
last step; the median step is the timed window over its steps.
"""
from __future__ import annotations

import contextlib
import time

from common.bench.config import PEER, PEER_FORWARD

PEER_MODES = (PEER, PEER_FORWARD)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "relative_k_proj", "linear1", "linear2", "fc1", "fc2")
# decoder input length of a canary2 batch: the prompt (a leading "▁" piece, <|startofcontext|>,
# <|startoftranscript|>, emotion, source and target language, pnc, itn, timestamp, diarize: 10 tokens), then the
# transcript (its end-of-text token is the last label)
CANARY2_PROMPT_TOKENS = 10
FRAMES_PER_SECOND = 100  # Canary's 10 ms hop


def peer_config(nemo_cfg: dict, vocab_size: int):
    """transformers' `CanaryConfig` for the shape a NeMo Canary config describes."""
    from transformers import CanaryConfig

    enc, dec = nemo_cfg["encoder"], nemo_cfg["transf_decoder"]["config_dict"]
    encoder = {"hidden_size": enc["d_model"], "num_hidden_layers": enc["n_layers"],
               "num_attention_heads": enc["n_heads"], "intermediate_size": enc["d_model"] * enc["ff_expansion_factor"],
               "num_mel_bins": enc["feat_in"], "subsampling_factor": enc["subsampling_factor"],
               "subsampling_conv_channels": enc["subsampling_conv_channels"],
               "conv_kernel_size": enc["conv_kernel_size"],
               "dropout": enc["dropout"], "attention_dropout": enc["dropout_att"], "scale_input": bool(enc["xscaling"]),
               "layerdrop": 0.0}
    decoder = {"vocab_size": vocab_size, "hidden_size": dec["hidden_size"], "intermediate_size": dec["inner_size"],
               "num_hidden_layers": dec["num_layers"], "num_attention_heads": dec["num_attention_heads"],
               "num_key_value_heads": dec["num_attention_heads"],
               "head_dim": dec["hidden_size"] // dec["num_attention_heads"], "hidden_act": dec["hidden_act"]}
    return CanaryConfig(encoder_config=encoder, decoder_config=decoder, vocab_size=vocab_size)


def peer_inputs(cfg, data, bs: int, device, seed: int = 0):
    """Random log-mel features (bs x frames x mels) and labels of our batches' decoder length."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    frames = int(round(data.mean_s * FRAMES_PER_SECOND)) + 1
    mels = cfg.encoder_config.num_mel_bins
    length = CANARY2_PROMPT_TOKENS + int(round(data.mean_tokens))
    features = torch.randn(bs, frames, mels, generator=gen)
    # ids past the special tokens, as a transcript's pieces would be
    labels = torch.randint(32, cfg.vocab_size, (bs, length), generator=gen)
    return features.to(device), labels.to(device)


def build_peer(bench_cfg, nemo_cfg: dict, vocab_size: int, device, *, train: bool):
    """The peer model on `device` (bf16 base where our rows hold theirs in bf16), with PEFT LoRA when training."""
    import torch
    from transformers import CanaryForConditionalGeneration

    from common.config import resolve_base_dtype

    config = peer_config(nemo_cfg, vocab_size)
    torch.manual_seed(0)
    with torch.device(device):
        model = CanaryForConditionalGeneration(config)
    if resolve_base_dtype(bench_cfg.base_dtype, bench_cfg.lightning_precision, False) == "bf16":
        model.to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(False)
    if not train:
        return model.eval(), model
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=bench_cfg.lora_r, lora_alpha=bench_cfg.lora_alpha,
                                                  lora_dropout=0.0, target_modules=list(TARGETS)))
    return peft_model.train(), model


def compile_peer_layers(model, *, cuda_graphs: bool) -> int:
    """Each encoder and decoder layer wrapped in torch.compile, as the issue's tuned peer was."""
    layers = list(model.model.encoder.layers) + list(model.model.decoder.layers)
    for layer in layers:
        layer.compile(mode="reduce-overhead" if cuda_graphs else None)
    return len(layers)


def peer_steps(bench_cfg, nemo_cfg: dict, vocab_size: int, data, warmup: int, steps: int,
               profile_dir=None) -> dict:
    """Time the peer's LoRA training step (mode `peer`) or its no-grad forward pass (`peer-forward`); with a
    profile folder, profile 3 more steps after the timed ones (kernels-<config>.txt, as our rows)."""
    import torch

    from common.bench.profile import profiled
    from common.bench.steps import _rss_gb
    from common.telemetry import GB, device_sync

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    train = bench_cfg.mode == PEER
    peft_model, model = build_peer(bench_cfg, nemo_cfg, vocab_size, device, train=train)
    compiled = train and bench_cfg.compile and cuda
    graphs = compiled and bench_cfg.cuda_graphs
    if compiled:
        compile_peer_layers(model, cuda_graphs=graphs)
    features, labels = peer_inputs(model.config, data, bench_cfg.bs, device)
    autocast = contextlib.nullcontext()
    if cuda and bench_cfg.lightning_precision == "bf16-mixed":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, **({"foreach": True} if cuda else {})) if train else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    last = {}

    def step() -> None:
        if train:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                last["loss"] = peft_model(input_features=features, labels=labels, use_cache=False).loss
            last["loss"].backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=cuda)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast:
                model(input_features=features, labels=labels, use_cache=False)
            device_sync()  # forward rows time each pass, as ours do

    total = warmup + steps
    times, peak_rss, t_warm, window = [], 0.0, None, None
    device_sync()
    t = time.perf_counter()
    for n in range(1, total + 1):
        step()
        if n in (1, warmup, total):
            device_sync()
        now = time.perf_counter()
        times.append(now - t)
        if n == warmup:
            t_warm = now
        if n == total and t_warm is not None and total > warmup:
            window = now - t_warm
        t = now
        if not cuda:
            peak_rss = max(peak_rss, _rss_gb())
    peak = torch.cuda.max_memory_allocated() / GB if cuda else peak_rss
    loss = last.get("loss")
    profiled(profile_dir, bench_cfg.label, step)
    audio = data.mean_s * bench_cfg.bs
    return {"step_s": times, "audio_s": [audio] * total, "clips": [bench_cfg.bs] * total, "peak_gb": peak,
            "trainable_params": sum(p.numel() for p in trainable), "window_s": window if train else None,
            "last_loss": float(loss) if loss is not None else None,
            "row": {"compile": compiled, "cuda_graphs": graphs}}
