"""The models the bench measures: a `.nemo` restored fresh for every configuration, or a random-weight stand-in
of a real Canary's shape (canary-1b-v2), built on the GPU directly."""
from __future__ import annotations

import gc
import os
from pathlib import Path

from common.bench.synthetic import token_counter


class NemoFactory:
    """A fresh model per call, restored from a `.nemo` (the tiny default or a user's checkpoint)."""

    def __init__(self, path: str | os.PathLike):
        from common.model.archive import inspect_nemo

        self.path = Path(path)
        self.info = inspect_nemo(self.path)
        self.name = self.path.name
        self.prompt_format = self.info.prompt_format
        self._count = None

    def __call__(self):
        from common.model.io import restore

        return restore(self.path, info=self.info)

    def count_tokens(self, text: str, lang: str = "ru") -> int:
        if self._count is None:
            tokenizer = self().tokenizer  # the model itself is dropped at once
            self._count, self._vocab = token_counter(tokenizer, lang), tokenizer.vocab_size
        return self._count(text)

    @property
    def nemo_config(self) -> dict:
        return self.info.config

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (the output head's width), for the peer's config."""
        if self._count is None:
            self.count_tokens("")
        return self._vocab


class StandInFactory:
    """A fresh random-weight model of a `common.model_builder` preset per call (`1b-v2`: canary-1b-v2's shape).

    The tokenizer is trained once; each call only builds the network. On a GPU the weights are created there
    directly: initializing a billion parameters on the host takes far longer than the measurement itself.
    """

    def __init__(self, preset: str, work_dir: str | os.PathLike):
        from common.embedded.speech import tokenizer_corpus
        from common.embedded.model_builder import SHAPES, model_config, train_unified_tokenizer

        self.preset = preset
        self.name = f"{preset} (random weights)"
        tok_dir = Path(work_dir) / f"tokenizer-{preset}"
        train_unified_tokenizer(tokenizer_corpus(), tok_dir, ("ru", "en"), SHAPES[preset].vocab_size)
        tokenizer_cfg = {"dir": str(tok_dir), "type": "bpe", "custom_tokenizer": {
            "_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryBPETokenizer"}}
        self.cfg = model_config(SHAPES[preset], tokenizer_cfg, "canary2")
        self.vocab_size = SHAPES[preset].vocab_size
        self.prompt_format = "canary2"
        self._on_gpu = True
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))

    def count_tokens(self, text: str, lang: str = "ru") -> int:
        return len(self._sp.encode(text))

    @property
    def nemo_config(self) -> dict:
        return self.cfg

    def __call__(self):
        import torch
        from nemo.collections.asr.models import EncDecMultiTaskModel
        from omegaconf import OmegaConf

        torch.manual_seed(0)
        if self._on_gpu and torch.cuda.is_available():
            try:
                with torch.device("cuda"):
                    return EncDecMultiTaskModel(cfg=OmegaConf.create(self.cfg))
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - some init code may insist on host tensors: build there
                self._on_gpu = False
                print(f"[bench] building on the GPU failed ({type(e).__name__}: {e}); building on the host from "
                      f"now on (slower)", flush=True)
                gc.collect()
                torch.cuda.empty_cache()
        return EncDecMultiTaskModel(cfg=OmegaConf.create(self.cfg))


DECODE_CAP = 8  # tokens past the encoder length: a random model never ends its transcript


def cli_nemo(factory, work: Path) -> Path:
    """The measured model as a `.nemo` the CLI can load (saved once per work folder), with greedy decoding capped
    at DECODE_CAP tokens past the encoder length, so validating a random model does not run to the decoder's
    limit. The tiny default is restored from its file, the canary-1b-v2 stand-in built (on the GPU) and saved."""
    from omegaconf import open_dict

    path = work / f"cli-{Path(str(factory.name)).stem.split(' ')[0]}.nemo"
    if path.is_file():
        return path
    model = factory()
    with open_dict(model.cfg):
        decoding = model.cfg.get("decoding") or {}
        for strategy in ("greedy", "beam"):
            if strategy in decoding:
                model.cfg.decoding[strategy].max_generation_delta = DECODE_CAP
    tmp = path.with_suffix(".part.nemo")
    model.save_to(str(tmp))
    os.replace(tmp, path)
    del model
    return path
