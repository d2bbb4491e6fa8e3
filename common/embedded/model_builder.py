"""Build Canary models offline from config: the tiny embedded default and a canary-1b-v2-shaped stand-in.

Nothing can be downloaded, so the project makes its own checkpoints:
- `tiny`: canary2 prompt format, unified `CanaryBPETokenizer` (SentencePiece trained here on Russian + English
  text with the special tokens as user-defined symbols, the canary-1b-v2 layout), 2 encoder + 2 decoder layers.
- `tiny-agg`: the older layout (canary-1b, -flash): `canary` prompt format, aggregate tokenizer, en/de/es/fr only.
  It exists so the "language not in this checkpoint" path is tested on a real model.
- `1b-v2`: canary-1b-v2's real architecture (32/8 layers, d 1024, 128 mels, vocab 16384) with random weights,
  for memory and speed measurements.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


# canary-1b-v2's special tokens, `<pad>` first; language tokens are appended per model.
CANARY2_SPECIAL_TOKENS = (
    "<pad>", "<|endoftext|>", "<|startoftranscript|>", "<|nospeech|>", "<|startofcontext|>",
    "<|pnc|>", "<|nopnc|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>",
    "<|diarize|>", "<|nodiarize|>", "<|spkchange|>", "<|audioseparator|>",
    "<|emo:undefined|>", "<|emo:neutral|>", "<|emo:happy|>", "<|emo:sad|>", "<|emo:angry|>",
    "<|transcribe|>", "<|translate|>", "<|unklang|>",
)


@dataclass(frozen=True)
class Shape:
    """Architecture knobs that differ between the presets."""

    enc_layers: int
    d_model: int
    enc_heads: int
    dec_layers: int
    dec_hidden: int
    dec_heads: int
    mels: int
    subsampling_channels: int
    vocab_size: int  # text pieces to learn; the 1b-v2 preset pads up to this with filler symbols
    dropout: float = 0.1
    subsampling_factor: int = 8  # canary-1b-v2: 8 (80 ms frames)
    spec_augment: bool = True


SHAPES = {
    # The demo's clips last 1-3 s: at 80 ms a 2 s clip gives 25 encoder frames for ~17 tokens, and a 2-layer
    # model trained from scratch then barely learns to listen (WER ~0.8 after 2400 steps); at 40 ms and without
    # SpecAugment it reaches WER ~0.09 in the same steps (measured on the demo set, 2 CPU cores).
    "tiny": Shape(enc_layers=2, d_model=128, enc_heads=4, dec_layers=2, dec_hidden=128, dec_heads=4,
                  mels=64, subsampling_channels=64, vocab_size=256, subsampling_factor=4, spec_augment=False),
    "1b-v2": Shape(enc_layers=32, d_model=1024, enc_heads=8, dec_layers=8, dec_hidden=1024, dec_heads=8,
                   mels=128, subsampling_channels=256, vocab_size=16384),
}


def train_unified_tokenizer(corpus: list[str], out_dir: Path, languages: tuple[str, ...], vocab_size: int) -> Path:
    """SentencePiece on `corpus` with Canary's special tokens as user-defined symbols (one unified vocab).

    A small corpus cannot yield 16384 real pieces: past what it supports, the vocabulary is padded with
    user-defined filler symbols so the embedding and output head have canary-1b-v2's size.
    """
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    specials = list(CANARY2_SPECIAL_TOKENS) + [f"<|{lang}|>" for lang in languages]
    text_path = out_dir / "train_text.txt"
    text_path.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    chars = {c for line in corpus for c in line}
    # A unigram model needs more pieces than distinct characters; cap what the corpus can support.
    learnable = min(vocab_size, max(len(chars) + len(specials) + 32, len(corpus) // 2 + len(specials)))
    fillers = [f"<|filler{i}|>" for i in range(max(0, vocab_size - learnable))]
    spm.SentencePieceTrainer.train(
        input=str(text_path), model_prefix=str(out_dir / "tokenizer"), vocab_size=learnable + len(fillers),
        model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, hard_vocab_limit=False,
        user_defined_symbols=specials + fillers, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    with open(out_dir / "vocab.txt", "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(sp.id_to_piece(i) + "\n")
    return out_dir


def _aggregate_tokenizer_cfg(corpus_by_lang: dict[str, list[str]], out_dir: Path) -> dict:
    """canary-1b layout: one SentencePiece model per language plus a special-token model."""
    from nemo.collections.common.tokenizers.canary_tokenizer import CanaryTokenizer
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    langs_cfg = {}
    spl_dir = out_dir / "spl_tokens"
    CanaryTokenizer.build_special_tokenizer(
        ["<|transcribe|>", "<|translate|>"] + [f"<|{lang}|>" for lang in corpus_by_lang], spl_dir
    )
    langs_cfg["spl_tokens"] = {"dir": str(spl_dir), "type": "bpe"}
    for lang, lines in corpus_by_lang.items():
        lang_dir = out_dir / lang
        lang_dir.mkdir(parents=True, exist_ok=True)
        text = lang_dir / "text.txt"
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        create_spt_model(str(text), vocab_size=48, sample_size=-1, do_lower_case=False, output_dir=str(lang_dir))
        langs_cfg[lang] = {"dir": str(lang_dir), "type": "bpe"}
    return {
        "dir": None, "type": "agg", "langs": langs_cfg,
        "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryTokenizer"},
    }


def model_config(shape: Shape, tokenizer_cfg: dict, prompt_format: str) -> dict:
    """A complete `EncDecMultiTaskModel` config (FastConformer encoder + Transformer decoder, tied head)."""
    return {
        "sample_rate": 16000,
        "prompt_format": prompt_format,
        "restore_timestamps_model": False,  # nothing to restore offline; see CANARY_FACTS
        "use_loss_mask_for_prompt": False,
        "model_defaults": {"asr_enc_hidden": shape.d_model, "lm_enc_hidden": shape.dec_hidden,
                           "lm_dec_hidden": shape.dec_hidden},
        "tokenizer": tokenizer_cfg,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": shape.mels, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 0, "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "time_masks": 2, "freq_width": 8, "time_width": 0.05,
        } if shape.spec_augment else None,
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": shape.mels, "feat_out": -1, "n_layers": shape.enc_layers, "d_model": shape.d_model,
            "subsampling": "dw_striding", "subsampling_factor": shape.subsampling_factor,
            "subsampling_conv_channels": shape.subsampling_channels, "causal_downsampling": False,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": shape.enc_heads,
            "att_context_size": [-1, -1], "xscaling": False, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "conv_context_size": None,
            "dropout": shape.dropout, "dropout_pre_encoder": shape.dropout, "dropout_emb": 0.0,
            "dropout_att": shape.dropout,
        },
        "transf_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": 0, "hidden_size": shape.dec_hidden, "inner_size": 4 * shape.dec_hidden,
            "num_attention_heads": shape.dec_heads, "ffn_dropout": 0.1, "attn_score_dropout": 0.1,
            "attn_layer_dropout": 0.1, "mask_future": False, "pre_ln": True, "pre_ln_final_layer_norm": True,
        },
        "transf_decoder": {
            "_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer",
            "model_name": None, "pretrained": False, "encoder": None, "pre_ln_final_layer_norm": True,
            "config_dict": {
                "max_sequence_length": 512, "num_token_types": 0, "embedding_dropout": shape.dropout,
                "learn_positional_encodings": False, "hidden_size": shape.dec_hidden,
                "inner_size": 4 * shape.dec_hidden, "num_layers": shape.dec_layers,
                "num_attention_heads": shape.dec_heads, "ffn_dropout": shape.dropout,
                "attn_score_dropout": shape.dropout, "attn_layer_dropout": shape.dropout,
                "hidden_act": "relu", "pre_ln": True, "vocab_size": None,
            },
        },
        "head": {
            "_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier",
            "num_layers": 1, "activation": "relu", "log_softmax": True, "hidden_size": shape.dec_hidden,
            "num_classes": None, "dropout": 0.0, "use_transformer_init": True,
        },
        "loss": {"_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                 "label_smoothing": 0.0, "pad_id": None},
        "optim": {"name": "adamw", "lr": 3e-4},
    }


def build_model(preset: str, corpus: list[str], work_dir: Path, *, languages: tuple[str, ...] = ("ru", "en"),
                seed: int = 0):
    """Build a random-weight `EncDecMultiTaskModel` for a preset (`tiny`, `tiny-agg`, `1b-v2`)."""
    import torch
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    tok_dir = work_dir / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    if preset == "tiny-agg":
        shape = SHAPES["tiny"]
        by_lang = {lang: corpus for lang in languages}
        tokenizer_cfg = _aggregate_tokenizer_cfg(by_lang, tok_dir)
        prompt_format = "canary"
    else:
        shape = SHAPES[preset]
        train_unified_tokenizer(corpus, tok_dir, languages, shape.vocab_size)
        tokenizer_cfg = {
            "dir": str(tok_dir), "type": "bpe",
            "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryBPETokenizer"},
        }
        prompt_format = "canary2"
    cfg = OmegaConf.create(model_config(shape, tokenizer_cfg, prompt_format))
    return EncDecMultiTaskModel(cfg=cfg)
