"""Shared fixtures: one NeMo import per test process, the embedded data and tiny models built once."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NEMO_LOG_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded():
    """Demo speech set + random tiny Canary (no pretraining): built once, cached in .cache/."""
    from common.embedded import ensure_embedded

    return ensure_embedded(pretrain=False)


@pytest.fixture(scope="session")
def tiny_model_path(embedded) -> Path:
    return embedded.random_nemo


@pytest.fixture(scope="session")
def demo(embedded):
    return embedded.data


def restore_tiny(path: Path):
    from common.model_io import restore
    from common.preflight import inspect_nemo

    return restore(path, info=inspect_nemo(path))


@pytest.fixture()
def tiny_model(tiny_model_path):
    """A fresh tiny model per test (restoring costs ~0.2 s)."""
    return restore_tiny(tiny_model_path)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
