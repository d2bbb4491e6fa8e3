"""Small helpers shared by tests (real data, real loaders)."""
from __future__ import annotations

import tempfile
from pathlib import Path


def val_loader(model, manifest: Path, bs: int = 4, data_dir: Path | None = None):
    """An in-order loader over a manifest's cuts, with the model's own tokenizer and prompt format."""
    from common.data.loader import LoaderSettings, manifest_loader

    data_dir = data_dir or Path(tempfile.gettempdir()) / "canary-lora-test-cuts"
    return manifest_loader(manifest, model, LoaderSettings(batch_size=bs), data_dir=data_dir).loader
