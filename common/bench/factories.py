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
            self._count = token_counter(self().tokenizer, lang)  # the model itself is dropped at once
        return self._count(text)


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
        self.prompt_format = "canary2"
        self._on_gpu = True
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))

    def count_tokens(self, text: str, lang: str = "ru") -> int:
        return len(self._sp.encode(text))

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

