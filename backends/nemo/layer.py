"""Where NeMo adapters go in a Canary model, what they are called, and the config that rebuilds them.

`LinearAdapter` is LayerNorm -> down (dim) -> swish -> up, added to the layer output; its up projection starts at
zero, so a fresh adapter leaves the model unchanged. The decoder gets a LinearAdapter only: a decoder attention
adapter makes cached step-by-step decoding differ from teacher forcing.
"""
from __future__ import annotations

from typing import Any

from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

# NeMo's save/load_adapters match names by substring: neither name is part of the other, and neither contains
# "lora_" (the export check reads such keys as unmerged LoRA).
ENCODER_ADAPTER = "canary_enc"
DECODER_ADAPTER = "canary_dec"
LOCATIONS = (("encoder", ENCODER_ADAPTER), ("transf_decoder", DECODER_ADAPTER))

# get_nemo_transformer's defaults for keys a `config_dict` may leave out
_DECODER_DEFAULTS = {"max_sequence_length": 512, "num_token_types": 2, "embedding_dropout": 0.0,
                     "learn_positional_encodings": False, "ffn_dropout": 0.0, "attn_score_dropout": 0.0,
                     "attn_layer_dropout": 0.0, "hidden_act": "relu", "pre_ln": False}
_DECODER_REQUIRED = ("hidden_size", "num_layers", "inner_size", "num_attention_heads")


def adapter_config(in_features: int, config) -> LinearAdapterConfig:
    return LinearAdapterConfig(in_features=in_features, dim=config.dim, dropout=config.dropout)


def location_width(model: nn.Module, location: str) -> int:
    module = getattr(model, location)
    return int(module.d_model if location == "encoder" else module.hidden_size)


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The adapter modules (one per layer and location), in model order."""
    suffixes = tuple(f"adapter_layer.{name}" for _, name in LOCATIONS)
    return [(n, m) for n, m in model.named_modules() if n.endswith(suffixes)]


def is_adapter_param(name: str) -> bool:
    return any(f".adapter_layer.{adapter}." in name for _, adapter in LOCATIONS)


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def decoder_cfg(model: nn.Module) -> DictConfig:
    """The decoder's cfg as explicit `TransformerDecoderNMAdapter` arguments.

    Canary's cfg builds the decoder through `get_nemo_transformer(config_dict=...)`, a factory that always makes
    the plain class, and leaves `vocab_size` to be filled in from the tokenizer at build time. A `.nemo` must name
    the adapter class itself, with every argument, or its adapters cannot be rebuilt on restore.
    """
    current = model.cfg.transf_decoder
    decoder = model.transf_decoder
    if "config_dict" in current:
        source = OmegaConf.to_container(current.config_dict, resolve=True)
        missing = [k for k in _DECODER_REQUIRED if source.get(k) is None]
        if missing:
            raise ValueError(f"transf_decoder.config_dict lacks {', '.join(missing)}: cannot name the adapter class")
        args: dict[str, Any] = {k: source[k] for k in _DECODER_REQUIRED}
        args.update({k: source.get(k, default) for k, default in _DECODER_DEFAULTS.items()})
        args["pre_ln_final_layer_norm"] = current.get("pre_ln_final_layer_norm", True)
    else:  # already explicit arguments (a cfg rewritten before, or a hand-written one)
        args = {k: v for k, v in OmegaConf.to_container(current, resolve=True).items() if k != "_target_"}
    args["vocab_size"] = int(decoder.vocab_size)
    return OmegaConf.create({"_target_": class_path(type(decoder)), **args})
