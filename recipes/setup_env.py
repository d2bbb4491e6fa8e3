"""Create (or reuse) the project's virtual environment and install what it needs. Idempotent.

Runs with any Python >= 3.10 and only the standard library. The venv is `.venv` in the repository (override
with CANARY_LORA_VENV). If the Python running this already has torch (a Runpod image, a Windows CUDA build),
the venv sees it through system site-packages and it is kept; otherwise torch comes from PyPI
(CANARY_LORA_TORCH, default `torch==2.13.0`). Windows users: install the CUDA torch from PyTorch's own index
first (PyPI's Windows torch is CPU-only).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("CANARY_LORA_VENV", REPO / ".venv"))


def venv_python(root: Path = VENV) -> Path:
    return root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _has_module(python: Path | str, name: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {name}"], capture_output=True).returncode == 0


def main() -> int:
    extras = "[dev]" if "--dev" in sys.argv else ""
    stamp = VENV / ".canary-lora-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    if venv_python().exists() and stamp.exists() and stamp.read_text().strip() == want:
        return 0  # already set up for this pyproject
    if not venv_python().exists():
        system_torch = _has_module(sys.executable, "torch")
        print(f"[setup] creating {VENV} ({'reusing this Python’s torch' if system_torch else 'torch from PyPI'})",
              flush=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=system_torch).create(VENV)
    py = str(venv_python())
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check"]
    if not _has_module(py, "torch"):
        torch_spec = os.environ.get("CANARY_LORA_TORCH", "torch==2.13.0")
        print(f"[setup] installing {torch_spec}", flush=True)
        subprocess.run(pip + [torch_spec], check=True)
    print("[setup] installing nemo_toolkit[asr], lightning, lhotse, peft (a few minutes the first time)", flush=True)
    subprocess.run(pip + ["-e", f"{REPO}{extras}"], check=True)
    stamp.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
