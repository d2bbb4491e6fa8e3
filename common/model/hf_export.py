"""A Canary `.nemo` as a Hugging Face transformers `CanaryForConditionalGeneration` folder: config, weights
(safetensors), tokenizer and processor (feature extractor + chat template), for unified-tokenizer checkpoints
(canary-1b-v2's layout). Aggregate-tokenizer checkpoints (canary-1b, -flash) have no transformers port.

The model's shape is read from the `.nemo`'s config (the tiny default has 2+2 layers, 64 mels and 4x subsampling;
canary-1b-v2 32+8 layers, 128 mels, 8x), the weights are renamed module by module to the port's layout
(transformers/models/canary and parakeet), and what the port cannot express is refused by name, not converted
approximately.

One difference is absorbed exactly: the decoder's fixed sinusoidal position table. NeMo stores it in the
checkpoint (this NeMo builds it with sines and cosines interleaved), the port computes its own (sines, then
cosines). When the two tables hold the same columns in another order, the decoder's model dimension is permuted
to match: token embedding and its tied output head, every layer norm, and each linear layer's side that reads
or writes the residual stream. That computes the same function; the export's check proves it numerically.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from common.errors import UserError
from common.model.archive import NemoInfo

ENCODER_NAMES = ((r"^encoder\.pre_encode\.conv\.", "encoder.subsampling.layers."),
                 (r"^encoder\.pre_encode\.out\.", "encoder.subsampling.linear."),
                 (r"\.conv\.batch_norm\.", ".conv.norm."),
                 (r"\.self_attn\.linear_([qkv])\.", r".self_attn.\1_proj."),
                 (r"\.self_attn\.linear_out\.", ".self_attn.o_proj."),
                 (r"\.self_attn\.linear_pos\.", ".self_attn.relative_k_proj."),
                 (r"\.self_attn\.pos_bias_([uv])$", r".self_attn.bias_\1"))
DECODER_NAMES = ((r"^transf_decoder\._embedding\.token_embedding\.", "decoder.embed_tokens."),
                 (r"^transf_decoder\._embedding\.layer_norm\.", "decoder.embedding_layernorm."),
                 (r"^transf_decoder\._decoder\.final_layer_norm\.", "decoder.norm."),
                 (r"^transf_decoder\._decoder\.layers\.", "decoder.layers."),
                 (r"\.layer_norm_1\.", ".input_layernorm."),
                 (r"\.layer_norm_2\.", ".post_attention_layernorm."),
                 (r"\.layer_norm_3\.", ".final_layernorm."),
                 (r"\.first_sub_layer\.", ".self_attn."),
                 (r"\.second_sub_layer\.", ".encoder_attn."),
                 (r"\.third_sub_layer\.dense_in\.", ".mlp.fc1."),
                 (r"\.third_sub_layer\.dense_out\.", ".mlp.fc2."),
                 (r"\.query_net\.", ".q_proj."), (r"\.key_net\.", ".k_proj."), (r"\.value_net\.", ".v_proj."),
                 (r"\.out_projection\.", ".o_proj."))
SKIPPED = (r"^preprocessor\.", r"\.position_embedding\.pos_enc$", r"num_batches_tracked$")
# decoder modules by the side of the residual stream they touch (for the position-table permutation)
READS_RESIDUAL = re.compile(r"decoder\.layers\.\d+\.(self_attn\.[qkv]_proj|encoder_attn\.q_proj|mlp\.fc1)\.weight$")
WRITES_RESIDUAL = re.compile(r"decoder\.layers\.\d+\.(self_attn\.o_proj|encoder_attn\.o_proj|mlp\.fc2)\.(weight|bias)$")
RESIDUAL_VECTORS = re.compile(r"decoder\.(embedding_layernorm|norm|layers\.\d+\.\w+layernorm)\.(weight|bias)$")


def hf_name(key: str) -> str | None:
    """The port's name for a NeMo state-dict key; None for what the port recomputes (features, position tables)."""
    if any(re.search(p, key) for p in SKIPPED):
        return None
    if key.startswith("encoder."):
        rules = ENCODER_NAMES
    elif key.startswith("transf_decoder."):
        rules = DECODER_NAMES
    elif key.startswith("log_softmax.mlp.layer0."):
        return "proj_out." + key.rsplit(".", 1)[1]
    else:
        raise UserError(f"the .nemo holds weights the transformers Canary port has no place for ({key}); it converts "
                        f"canary-1b-v2-style models (FastConformer encoder, Transformer decoder, one-layer head)")
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return "model." + key


def check_convertible(info: NemoInfo) -> None:
    """Refuse, by name, what the port cannot express; an aggregate tokenizer first."""
    if info.tokenizer_type == "agg":
        raise UserError(f"--nemo {info.path.name}: an aggregate-tokenizer checkpoint (one SentencePiece model per "
                        f"language, as canary-1b, -1b-flash and -180m-flash have). The transformers Canary port reads "
                        f"only unified-tokenizer checkpoints (canary-1b-v2's layout); this one cannot be exported.")
    cfg = info.config
    enc, dec = cfg.get("encoder") or {}, (cfg.get("transf_decoder") or {}).get("config_dict") or {}
    problems = []
    for key, wanted in (("subsampling", "dw_striding"), ("self_attention_model", "rel_pos"),
                        ("conv_norm_type", "batch_norm"), ("causal_downsampling", False)):
        if enc.get(key, wanted) != wanted:
            problems.append(f"encoder.{key} is {enc.get(key)!r} (the port has {wanted!r} only)")
    if list(enc.get("att_context_size") or [-1, -1]) != [-1, -1]:
        problems.append(f"encoder.att_context_size is {enc.get('att_context_size')} (the port attends over all frames)")
    if int((cfg.get("transf_encoder") or {}).get("num_layers", 0) or 0) > 0:
        problems.append("transf_encoder has layers (the port has none between encoder and decoder)")
    if int((cfg.get("head") or {}).get("num_layers", 1)) != 1:
        problems.append("head.num_layers is not 1")
    if not dec.get("pre_ln", True):
        problems.append("transf_decoder is post-LN (the port is pre-LN)")
    if cfg.get("model_defaults", {}).get("asr_enc_hidden") != cfg.get("model_defaults", {}).get("lm_dec_hidden"):
        problems.append("encoder and decoder widths differ (a projection between them the port does not have)")
    if problems:
        raise UserError(f"--nemo {info.path.name} cannot be expressed by the transformers Canary port: "
                        + "; ".join(problems))


def canary_config(info: NemoInfo, specials: dict[str, int]):
    """`CanaryConfig` from the `.nemo`'s config; `specials` maps pad/eos/bos/start tokens to their ids."""
    from transformers import CanaryConfig

    cfg = info.config
    enc, dec = cfg["encoder"], cfg["transf_decoder"]["config_dict"]
    vocab = int(cfg["head"]["num_classes"])
    encoder = dict(
        model_type="parakeet_encoder", hidden_size=enc["d_model"], num_hidden_layers=enc["n_layers"],
        num_attention_heads=enc["n_heads"], intermediate_size=enc["d_model"] * enc.get("ff_expansion_factor", 4),
        hidden_act="silu", attention_bias=enc.get("use_bias", True), convolution_bias=enc.get("use_bias", True),
        conv_kernel_size=enc.get("conv_kernel_size", 31), subsampling_factor=enc.get("subsampling_factor", 8),
        subsampling_conv_channels=enc.get("subsampling_conv_channels", 256), num_mel_bins=enc["feat_in"],
        scale_input=bool(enc.get("xscaling", True)), max_position_embeddings=enc.get("pos_emb_max_len", 5000),
        dropout=enc.get("dropout", 0.1), dropout_positions=enc.get("dropout_emb", 0.0), layerdrop=0.0,
        activation_dropout=enc.get("dropout", 0.1), attention_dropout=enc.get("dropout_att", 0.1))
    decoder = dict(
        vocab_size=vocab, hidden_size=dec["hidden_size"], intermediate_size=dec["inner_size"],
        num_hidden_layers=dec["num_layers"], num_attention_heads=dec["num_attention_heads"],
        num_key_value_heads=dec["num_attention_heads"], head_dim=dec["hidden_size"] // dec["num_attention_heads"],
        hidden_act=dec.get("hidden_act", "relu"), max_position_embeddings=dec.get("max_sequence_length", 512),
        attention_dropout=dec.get("attn_score_dropout", 0.0), pad_token_id=specials["pad"],
        bos_token_id=specials["bos"], eos_token_id=specials["eos"])
    return CanaryConfig(encoder_config=encoder, decoder_config=decoder, vocab_size=vocab, pad_token_id=specials["pad"],
                        bos_token_id=specials["bos"], eos_token_id=specials["eos"],
                        decoder_start_token_id=specials["start"], tie_word_embeddings=True)


def position_permutation(nemo_table: torch.Tensor, port_table: torch.Tensor) -> torch.Tensor | None:
    """Column order `p` with nemo_table[:, p] == port_table (None: already equal); a UserError when the port's
    table is not a reordering of NeMo's."""
    if torch.allclose(nemo_table, port_table, atol=1e-6):
        return None
    found = []
    for j in range(port_table.shape[1]):
        close = (nemo_table - port_table[:, j:j + 1]).abs().amax(dim=0) < 1e-5
        hits = torch.nonzero(close).flatten()
        if len(hits) != 1:
            raise UserError("the .nemo's decoder position table is not one the transformers Canary port can "
                            "reproduce (its columns are not a reordering of the port's sinusoids)")
        found.append(int(hits[0]))
    return torch.tensor(found)


def permute_decoder(state: dict[str, torch.Tensor], p: torch.Tensor) -> None:
    """Reorder the decoder's model dimension by `p`, in place, in port names (see the module's note)."""
    for key, value in state.items():
        if key in ("model.decoder.embed_tokens.weight", "proj_out.weight") or READS_RESIDUAL.search(key):
            state[key] = value[:, p].contiguous()
        elif WRITES_RESIDUAL.search(key) or RESIDUAL_VECTORS.search(key):
            state[key] = value[p].contiguous()


def port_state_dict(nemo_state: dict[str, torch.Tensor], config) -> tuple[dict[str, torch.Tensor],
                                                                          torch.Tensor | None]:
    """The checkpoint's weights in the port's names (and decoder order), and the decoder's column order (None:
    unchanged)."""
    from transformers.models.canary.modeling_canary import CanaryPositionalEmbedding

    state = {}
    for key, value in nemo_state.items():
        name = hf_name(key)
        if name is not None:
            state[name] = value.detach().float().clone()
    dec = config.decoder_config
    table = nemo_state.get("transf_decoder._embedding.position_embedding.pos_enc")
    port = CanaryPositionalEmbedding(dec.max_position_embeddings, dec.hidden_size)
    p = None if table is None else position_permutation(table.float(), port(torch.arange(table.shape[0])))
    if p is not None:
        permute_decoder(state, p)
    return state, p


def build_model(state: dict[str, torch.Tensor], config):
    """The port's model holding `state`; every key must land (strict), the tied head included."""
    from transformers import CanaryForConditionalGeneration

    model = CanaryForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(("inv_freq", "positional_embedding"))]
    if missing or result.unexpected_keys:
        raise UserError(f"the converted weights do not fit the transformers Canary port: missing {missing[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")
    if not torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight):
        raise UserError("the .nemo's output head is not tied to its token embedding, as the port requires")
    return model.eval()


def save_folder(model, processor, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.generation_config.bos_token_id = model.config.bos_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


# ---- tokenizer and processor ----------------------------------------------------------------------------------
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- for item in message['content'] if item['type'] == 'text' -%}"
    "PREFIX<|startofcontext|><|startoftranscript|><|emo:undefined|><|{{ item['source_language'] }}|>"
    "<|{{ item['target_language'] }}|>{{ '<|pnc|>' if item['punctuation'] else '<|nopnc|>' }}"
    "<|noitn|><|notimestamp|><|nodiarize|>{%- endfor -%}{%- endfor -%}")


def _tokenizer_file(info: NemoInfo, folder: Path) -> Path:
    """The SentencePiece model inside the archive, extracted to `folder`."""
    import tarfile

    from common.model.archive import _artifact_name, _member

    wanted = _artifact_name((info.config.get("tokenizer") or {}).get("model_path")) or "tokenizer.model"
    with tarfile.open(info.path, "r:*") as tar:
        member = _member(tar, tar.getnames(), wanted)
        if member is None:
            raise UserError(f"--nemo {info.path.name}: no tokenizer model ({wanted}) in the archive")
        out = folder / "tokenizer.model"
        out.write_bytes(tar.extractfile(member).read())
    return out


def _converter(model_file: Path):
    """transformers' Canary tokenizer converter; for a unigram SentencePiece model (the tiny default's) a unigram
    model with the same scores, so text splits into the same pieces as SentencePiece splits it."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram
    from transformers.convert_slow_tokenizer import CanaryConverter

    class Converter(CanaryConverter):
        def tokenizer(self, proto):
            if proto.trainer_spec.model_type != 1:  # BPE (canary-1b-v2): the port's own conversion
                return super().tokenizer(proto)
            tok = Tokenizer(Unigram(self.vocab(proto), unk_id=proto.trainer_spec.unk_id,
                                    byte_fallback=proto.trainer_spec.byte_fallback))
            added = [(i, p.piece, p.type == 3 or p.piece in self.special_tokens)
                     for i, p in enumerate(proto.pieces) if p.type in (3, 4)]
            tok.add_tokens([AddedToken(piece, normalized=False, special=special) for _, piece, special in added])
            return tok

    return Converter(str(model_file)).converted()


def make_processor(info: NemoInfo, prompt_pieces: list[str], folder: Path):
    """`CanaryProcessor`: the feature extractor set from the `.nemo`'s preprocessor, the tokenizer converted from
    its SentencePiece model, and a chat template that writes the prompt NeMo writes (`prompt_pieces`, for a
    checkpoint whose tokenizer puts SentencePiece's word-start piece before the prompt, starts with it)."""
    from tokenizers import AddedToken
    from transformers import CanaryProcessor, ParakeetFeatureExtractor, TokenizersBackend

    pre = info.config.get("preprocessor") or {}
    unsupported = [f"{k}={pre.get(k)!r}" for k, ok in (("normalize", "per_feature"), ("window", "hann"),
                                                        ("log", True), ("frame_splicing", 1)) if pre.get(k, ok) != ok]
    if unsupported:
        raise UserError(f"--nemo {info.path.name}: its preprocessor ({', '.join(unsupported)}) differs from the "
                        f"feature extractor transformers has for Canary")
    rate = int(pre.get("sample_rate", 16000))
    features = ParakeetFeatureExtractor(
        feature_size=int(pre["features"]), sampling_rate=rate, hop_length=int(round(pre["window_stride"] * rate)),
        win_length=int(round(pre["window_size"] * rate)), n_fft=int(pre.get("n_fft") or 512),
        preemphasis=float(pre.get("preemph", 0.97)))
    model_file = _tokenizer_file(info, folder)
    tokenizer = TokenizersBackend(tokenizer_object=_converter(model_file), clean_up_tokenization_spaces=False,
                                  bos_token="<|startoftranscript|>", eos_token="<|endoftext|>", pad_token="<pad>",
                                  unk_token="<unk>")
    prefix = prompt_pieces[0] if prompt_pieces and not prompt_pieces[0].startswith("<|") else ""
    if prefix:  # matched on the raw prompt text only: ordinary text never holds it (spaces become it later)
        tokenizer.add_tokens([AddedToken(prefix, normalized=False, special=False)])
    model_file.unlink()
    return CanaryProcessor(feature_extractor=features, tokenizer=tokenizer,
                           chat_template=CHAT_TEMPLATE.replace("PREFIX", prefix))
