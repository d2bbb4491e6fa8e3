"""`canary-lora`: one console command whose subcommands are the recipes (`canary-lora finetune ...`, `eval`, ...).

Each subcommand runs the recipe's own `main` with the remaining arguments, exactly as `python recipes/<name>.py`
and `just <name>` do; `canary-lora <subcommand> --help` shows that recipe's flags.
"""
from __future__ import annotations

import importlib
import sys

# subcommand -> (recipe module, what it does); the names follow the justfile's recipes
COMMANDS = {
    "manifest": ("manifest", "a NeMo manifest from a folder, a Common Voice TSV or Lhotse manifests"),
    "finetune": ("finetune_canary", "fine-tune a .nemo with LoRA and export a merged .nemo"),
    "demo": ("demo", "the embedded default end to end: build, fine-tune, export, verify"),
    "eval": ("eval", "WER/CER of a .nemo on a manifest, optionally against a baseline"),
    "export-verify": ("export_verify", "restore an export in a fresh process and compare it with training"),
    "transcribe": ("transcribe", "transcribe a file, a folder or a manifest: one JSONL row per file"),
    "export-hf": ("export_hf", "a transformers CanaryForConditionalGeneration folder from a .nemo, checked"),
    "parity": ("parity", "compare the backends on the tiny default"),
    "bench": ("bench", "speed and memory per backend on synthetic speech"),
    "tune-batch": ("tune_batch", "the fastest --bs/--accum that fits a memory budget"),
    "sweep": ("sweep", "short runs over LoRA rank x alpha x dropout"),
    "win-dryrun": ("win_dryrun", "a 4-step dry run of the Windows path"),
    "runpod-train": ("runpod_train", "training with the A6000 48 GB defaults"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: canary-lora <command> [flags]    (canary-lora <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:{width}s}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"canary-lora: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from recipes.entry import run_main

    recipe = importlib.import_module(f"recipes.{COMMANDS[name][0]}")
    sys.argv = [f"canary-lora {name}", *rest]  # recipes that read sys.argv (and argparse's usage line) see this
    return run_main(lambda: recipe.main(rest))


if __name__ == "__main__":
    sys.exit(main())
