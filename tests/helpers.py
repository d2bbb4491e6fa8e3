"""Small helpers shared by tests (real data, real loaders)."""
from __future__ import annotations

from pathlib import Path


def val_loader(model, manifest: Path, bs: int = 4, data_dir: Path | None = None):
    """An in-order loader over a manifest's cuts, with the model's own tokenizer and prompt format."""
    import tempfile

    from common.data import LoaderSettings, build_cuts, make_loader
    from common.manifest import load_manifest

    data_dir = data_dir or Path(tempfile.gettempdir()) / "canary-lora-test-cuts"
    cuts, _ = build_cuts(load_manifest(manifest), data_dir, model.prompt_format)
    return make_loader(cuts, model.tokenizer, model.prompt, LoaderSettings(batch_size=bs), train=False)
