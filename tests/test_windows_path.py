"""The Windows path: `just win-dryrun` end to end, and no import of triton, deepspeed, apex or Megatron.

The dry run runs in a fresh interpreter whose first meta-path finder records every import a finder is asked
for, so an attempt is caught even on a machine where none of those packages is installed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import build_parser, config_from
from common.import_guard import BLOCKED, block, is_portable_path

REPO = Path(__file__).resolve().parents[1]

RECORDER = r"""
import json, runpy, sys
attempted = []

class Recorder:
    # first on the meta path: sees every import that reaches the finders, installed or not
    def find_spec(self, name, path=None, target=None):
        attempted.append(name)
        return None

sys.meta_path.insert(0, Recorder())
sys.argv = [sys.argv[1]] + sys.argv[3:]
out = sys.argv_out = None
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
loaded = sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in BLOCKED)
with open(OUT, "w") as f:
    json.dump({"code": code, "attempted": sorted(set(attempted)), "loaded": loaded}, f)
sys.exit(code)
"""


def _run_recorded(script: Path, out: Path, args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, dict]:
    code = f"BLOCKED = {BLOCKED!r}\nOUT = {str(out)!r}\n" + RECORDER
    proc = subprocess.run([sys.executable, "-c", code, str(script), "--", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    return proc, json.loads(out.read_text())


def test_win_dryrun_passes_and_never_imports_gpu_only_packages(tmp_path, embedded):
    proc, seen = _run_recorded(REPO / "recipes" / "win_dryrun.py", tmp_path / "imports.json",
                               ["--precision", "32"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "[dryrun] PASSED" in out
    replaced = [line for line in out.splitlines() if line.startswith("[debug_linear] replaced")]
    assert replaced and int(replaced[0].split()[2]) > 0
    for tag in ("[MEM:fit_start]", "[MEM:step1]", "[MEM:val_end]", "[MEM:fit_end]"):
        assert tag in out, tag
    assert (tmp_path / "exp" / "win-dryrun" / "dryrun.nemo").is_file()
    # NeMo's import really does probe apex and Megatron, and torch probes triton: the guard turns them away
    # before any finder runs, so none of them shows up here
    tops = {name.split(".")[0] for name in seen["attempted"]}
    assert not tops & set(BLOCKED), sorted(tops & set(BLOCKED))
    assert seen["loaded"] == []
    assert "nemo" in tops and "torch" in tops  # the recorder did see the run's imports


def test_an_installed_but_broken_package_is_never_executed(tmp_path):
    for name in ("apex", "triton"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"open({str(tmp_path / (name + '.ran'))!r}, 'w').close()\n"
                                         "raise RuntimeError('broken install')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
            "from common.import_guard import block; block()\n"
            "for name in ('apex', 'triton'):\n"
            "    try:\n        __import__(name)\n    except ImportError:\n        print(name, 'absent')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["apex absent", "triton absent"]
    assert not (tmp_path / "apex.ran").exists() and not (tmp_path / "triton.ran").exists()


@pytest.mark.parametrize("argv, portable", [
    ([], True),
    (["--backend", "linear", "--bs", "4"], True),
    (["--full_finetune"], True),
    (["--backend", "linear", "--compile"], False),  # Inductor needs triton on a GPU
    (["--backend", "linear", "--compile", "--compile_backend", "cudagraphs"], True),  # CUDA graphs need no triton
    (["--backend", "peft"], False),
    (["--backend=nemo"], False),
])
def test_the_guard_applies_to_portable_backends_only(argv, portable):
    assert is_portable_path(config_from(build_parser().parse_args(argv))) is portable


def test_block_leaves_an_already_imported_module_alone():
    import json as already

    assert block(("json",)) == []
    assert sys.modules["json"] is already
