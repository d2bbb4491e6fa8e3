# Canary LoRA: fine-tune NVIDIA Canary speech models with LoRA and get a merged .nemo back.
# Every recipe is a one-line call into Python, so it runs the same under bash and PowerShell.

set windows-shell := ["powershell.exe", "-NoLogo", "-NoProfile", "-Command"]
set positional-arguments := false

sys_python := if os_family() == "windows" { "python" } else { "python3" }
python := if os_family() == "windows" { ".venv/Scripts/python.exe" } else { ".venv/bin/python" }

# List the recipes
default:
    @just --list --unsorted

# Create .venv and install everything (idempotent; keeps an importable torch)
[group('setup')]
setup:
    {{sys_python}} recipes/setup_env.py --dev

# Build the embedded default (tiny Canary + Russian speech), fine-tune it with LoRA, export and verify
[group('main')]
demo *args: setup
    {{python}} recipes/demo.py {{args}}

# Run the test suite (fast tests; `just test-all` adds the slow ones)
[group('main')]
test *args: setup
    {{python}} -m pytest -q -m "not slow and not gpu" {{args}}

# Run every test, the slow ones (base pretraining, full demo) included
[group('main')]
test-all *args: setup
    {{python}} -m pytest -q -m "not gpu" {{args}}

# Fine-tune with the original command line (--nemo --train --val --bs --accum ...)
[group('train')]
finetune *args: setup
    {{python}} recipes/finetune_canary.py {{args}}

# Short dry run from the Windows runbook: small subset, --debug_linear 20, MEM lines, export + reload
[group('train')]
win-dryrun *args: setup
    {{python}} recipes/win_dryrun.py {{args}}
