"""Shared fixtures: one NeMo import per test process, the embedded data and tiny models built once."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NEMO_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded():
    """Demo speech set + random tiny Canary (no pretraining): built once, cached in .cache/."""
    from common.embedded.default import ensure_embedded

    return ensure_embedded(pretrain=False)


@pytest.fixture(scope="session")
def tiny_model_path(embedded) -> Path:
    return embedded.random_nemo


@pytest.fixture(scope="session")
def demo(embedded):
    return embedded.data


def restore_tiny(path: Path):
    from common.model.io import restore
    from common.model.archive import inspect_nemo

    return restore(path, info=inspect_nemo(path))


@pytest.fixture()
def tiny_model(tiny_model_path):
    """A fresh tiny model per test (restoring costs ~0.2 s)."""
    return restore_tiny(tiny_model_path)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


def rewrite_nemo(src: Path, dst: Path, *, config=None, weights=None) -> Path:
    """Copy a `.nemo` archive, passing its config dict through `config` and/or its state dict through `weights`."""
    import io
    import tarfile

    import yaml

    with tarfile.open(src, "r:*") as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read() if member.isfile() else None
            base = member.name.rsplit("/", 1)[-1]
            if data is not None and base == "model_config.yaml" and config is not None:
                data = yaml.safe_dump(config(yaml.safe_load(data)), allow_unicode=True).encode("utf-8")
            elif data is not None and base == "model_weights.ckpt" and weights is not None:
                import torch

                buf = io.BytesIO()
                torch.save(weights(torch.load(io.BytesIO(data), map_location="cpu")), buf)
                data = buf.getvalue()
            if data is not None:
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return dst


@pytest.fixture(scope="session")
def fast_tiny_path(tiny_model_path, tmp_path_factory) -> Path:
    """The random tiny model with decoding capped at 8 tokens past the encoder length.

    A random model never emits end-of-text, so uncapped decoding runs to the decoder's 512-token limit: about
    10 s per batch on 2 CPU cores. With the cap a validation batch decodes in well under a second.
    """

    def cap(cfg: dict) -> dict:
        for strategy in ("greedy", "beam"):
            cfg["decoding"][strategy]["max_generation_delta"] = 8
        return cfg

    return rewrite_nemo(tiny_model_path, tmp_path_factory.mktemp("fast-tiny") / "canary-tiny-fast.nemo", config=cap)


@pytest.fixture(scope="session")
def base_nemo_path() -> Path:
    """The embedded default's pretrained base (it transcribes the demo speech): cached in .cache/, built by the
    demo (about 8 minutes on 2 CPU cores the first time)."""
    from common.embedded.default import ensure_embedded

    return ensure_embedded(pretrain=True).base_nemo
