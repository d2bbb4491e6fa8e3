"""Training with the A6000 48 GB defaults; `--outdir`/`--export` are aliases of `--exp_dir`/`--export_nemo`.

Called by recipes/runpod_finetune_canary.sh after its environment checks. Any finetune_canary.py flag passes
through; a flag given twice under its two names with different values is an error. `--tiny` runs on the
embedded tiny default (no --nemo/--train/--val needed), e.g. to check a machine without a GPU.
"""
from __future__ import annotations

import sys

from common.errors import UserError
from recipes.entry import run_main

# 48 GB card: batches of 8 clips fit without accumulation; a larger rank with some dropout suits the larger
# effective data a rented GPU gets through; eight loader workers keep a fast GPU fed.
A6000_DEFAULTS = {"--precision": "bf16", "--bs": "8", "--accum": "1", "--lora_r": "16", "--lora_alpha": "32",
                  "--lora_dropout": "0.05", "--log": "csv", "--mem_report_steps": "50", "--num_workers": "8",
                  "--exp_dir": "exp/canary_ru_lora_a6000", "--export_nemo": "models/nemo/canary-ru-lora-a6000.nemo"}
ALIASES = {"--outdir": "--exp_dir", "--export": "--export_nemo"}


def split_flags(argv: list[str]) -> list[tuple[str, str | None]]:
    """argv as (flag, value) pairs; `--flag=value` and `--flag value` both accepted, store_true flags alone."""
    pairs, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and "=" in token:
            flag, value = token.split("=", 1)
            pairs.append((flag, value))
        elif token.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((token, argv[i + 1]))
            i += 1
        else:
            pairs.append((token, None))
        i += 1
    return pairs


def resolve_argv(argv: list[str]) -> list[str]:
    """Apply aliases (conflicts are errors) and fill in the 48 GB defaults for flags the user did not give."""
    given: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    for flag, value in split_flags(argv):
        canonical = ALIASES.get(flag, flag)
        if canonical in given and given[canonical] != value:
            raise UserError(f"{sources[canonical]} {given[canonical]} and {flag} {value} conflict: "
                            f"{'/'.join(k for k, v in ALIASES.items() if v == canonical) or flag} and {canonical} "
                            f"name the same setting; give it once.")
        given[canonical], sources[canonical] = value, flag
    out: list[str] = []
    for flag, value in {**A6000_DEFAULTS, **given}.items():
        out += [flag] if value is None else [flag, value]
    return out


def build_help_parser():
    from common.config import build_parser

    parser = build_parser(prog="runpod_finetune_canary.sh")
    parser.description = ("Fine-tune a Canary .nemo with LoRA on a 48 GB GPU (A6000 defaults: " +
                          ", ".join(f"{k} {v}" for k, v in A6000_DEFAULTS.items()) +
                          "). --outdir = --exp_dir, --export = --export_nemo. --tiny: run the embedded tiny default.")
    for action in parser._actions:
        for flag in action.option_strings:
            if flag in A6000_DEFAULTS:
                action.default = A6000_DEFAULTS[flag]
                action.help = f"{action.help} [48 GB default: {A6000_DEFAULTS[flag]}]"
    parser.add_argument("--outdir", help="alias of --exp_dir")
    parser.add_argument("--export", help="alias of --export_nemo")
    parser.add_argument("--tiny", action="store_true", help="train the embedded tiny default (no GPU needed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_help_parser().print_help()
        return 0
    if "--tiny" in argv:
        argv.remove("--tiny")
        from common.embedded.default import ensure_embedded

        emb = ensure_embedded(pretrain=False)
        tiny = {"--nemo": str(emb.random_nemo), "--train": str(emb.data.adapt_train), "--val": str(emb.data.adapt_val),
                "--max_steps": "4", "--val_every_n_steps": "4", "--save_every": "4", "--limit_val_batches": "1",
                "--max_train_cuts": "16", "--num_workers": "0", "--precision": "32",
                "--data_dir": str(emb.data.root.parent / "cuts")}
        given = {ALIASES.get(f, f) for f, _ in split_flags(argv)}
        argv = [x for flag, value in tiny.items() if flag not in given for x in (flag, value)] + argv
    from common.config import parse_args

    cfg = parse_args(resolve_argv(argv))
    print("[launcher] settings: " + " ".join(f"--{k} {v}" for k, v in cfg.to_dict().items()
                                          if k in {a.lstrip('-') for a in A6000_DEFAULTS} | {"nemo", "train", "val"}),
          flush=True)
    from common.training.run import run

    result = run(cfg)
    return 0 if result.status == "finished" and result.export_check.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
