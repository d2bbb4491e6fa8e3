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

# Run every test, the slow ones included (more backends, parity, the sweep grid, resume/interrupt runs, real torch.compile)
[group('main')]
test-all *args: setup
    {{python}} -m pytest -q -m "not gpu" {{args}}

# Build a NeMo manifest from --audio_dir (with <name>.txt transcripts), --tsv (Common Voice) or --cuts (Lhotse); --split val=0.05
[group('data')]
manifest *args: setup
    {{python}} recipes/manifest.py {{args}}

# Fine-tune with the original command line (--nemo --train --val --bs --accum ...)
[group('train')]
finetune *args: setup
    {{python}} recipes/finetune_canary.py {{args}}

# Short dry run from the Windows runbook: small subset, --debug_linear 20, MEM lines, export + reload
[group('train')]
win-dryrun *args: setup
    {{python}} recipes/win_dryrun.py {{args}}

# Evaluate a .nemo on a manifest: WER/CER overall and per language, --baseline Y side by side (eval.md, eval.json)
[group('quality')]
eval *args: setup
    {{python}} recipes/eval.py {{args}}

# Transcribe a file, a folder or a manifest with a .nemo: one JSONL row per file (--out hyp.jsonl), WER/CER against a manifest's text
[group('quality')]
transcribe *args: setup
    {{python}} recipes/transcribe.py {{args}}

# Write a Hugging Face transformers folder from a .nemo (--nemo X --out DIR) and check it computes the same; --adapters for PEFT
[group('quality')]
export-hf *args: setup
    {{python}} recipes/export_hf.py {{args}}

# Check an export in a fresh process: restores, no LoRA left, outputs equal training (--against RUN_DIR|CKPT), WER
[group('quality')]
export-verify *args: setup
    {{python}} recipes/export_verify.py {{args}}

# Linux / Runpod launcher with the A6000 48 GB defaults (--outdir/--export accepted)
[group('train')]
runpod-train *args:
    bash recipes/runpod_finetune_canary.sh {{args}}

# Step time, audio s/s and peak memory per backend on synthetic speech (--tiny on CPU; --compile as training compiles; --gpu-suite --out DIR)
[group('perf')]
bench *args: setup
    {{python}} recipes/bench.py {{args}}

# Find the fastest --bs/--accum that fits: the runbook ladder under --vram_budget_gb (default 11 GB on CUDA)
[group('tune')]
tune-batch *args: setup
    {{python}} recipes/tune_batch.py {{args}}

# Short runs over --lora_r x --lora_alpha x --lora_dropout, ranked by validation loss (sweep.md/.csv/.png)
[group('tune')]
sweep *args: setup
    {{python}} recipes/sweep.py {{args}}

# Compare backends on the tiny default: linear vs peft must agree, nemo adapters beside them (exp/parity/parity.md)
[group('quality')]
parity *args: setup
    {{python}} recipes/parity.py {{args}}
