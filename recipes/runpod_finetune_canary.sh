#!/usr/bin/env bash
# Linux launcher for a rented GPU (Runpod PyTorch image: CUDA 12.x, PyTorch >= 2.6, A6000 48 GB):
# checks Python/torch/CUDA, installs NeMo, Lhotse and Lightning only when missing (never touching the image's
# torch), prints the GPU, then trains with the 48 GB defaults. Every flag passes through; see --help.
#
#   ./recipes/runpod_finetune_canary.sh --nemo /workspace/models/canary-1b-v2.nemo \
#       --train /workspace/data/train.jsonl --val /workspace/data/val.jsonl \
#       --outdir /workspace/exp/canary_ru_lora_a6000 --export /workspace/models/canary-ru-lora-a6000.nemo
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then exec "$PY" -m recipes.runpod_train --help; fi
done

"$PY" - <<'PYCHECK'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"error: Python {sys.version.split()[0]} is too old; this tool needs Python >= 3.10.")
try:
    import torch
except ImportError:
    sys.exit("error: torch is not installed. Use a PyTorch image (e.g. Runpod's PyTorch 2.6) or install a CUDA "
             "build of torch >= 2.6 first; this launcher never installs or replaces torch.")
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
if (major, minor) < (2, 6):
    sys.exit(f"error: torch {torch.__version__} is older than 2.6; use a newer PyTorch image.")
PYCHECK

# find_spec only looks for the packages: importing NeMo here would cost ~15 s
mapfile -t missing < <("$PY" - <<'PYMISSING'
import importlib.util
from importlib.metadata import PackageNotFoundError, version
def have(module, dist=None, prefix=None):
    if importlib.util.find_spec(module) is None:
        return False
    try:
        return prefix is None or version(dist or module).startswith(prefix)
    except PackageNotFoundError:
        return False
wanted = [("nemo", "nemo_toolkit", "3.0", "nemo_toolkit[asr]==3.0.0"), ("lightning", None, "2.4", "lightning==2.4.0"),
          ("lhotse", None, None, "lhotse>=1.33"), ("peft", None, None, "peft")]
for module, dist, prefix, spec in wanted:
    if not have(module, dist, prefix):
        print(spec)
PYMISSING
)
if ((${#missing[@]})); then
  echo "[launcher] installing: ${missing[*]} (the image's torch is kept)"
  "$PY" -m pip install --quiet "${missing[@]}" "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
fi

"$PY" - <<'PYINFO'
import torch
print(f"[launcher] torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"[launcher] GPU {i}: {p.name}, {p.total_memory / 1024**3:.1f} GB, bf16: {torch.cuda.is_bf16_supported()}")
else:
    print("[launcher] no CUDA GPU found: training runs on the CPU (fine for the tiny default, far too slow for a 1B model)")
PYINFO

exec "$PY" -m recipes.runpod_train "$@"  # -m: the repository root is the import root, installed or not
