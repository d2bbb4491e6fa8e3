"""Training with the A6000 48 GB defaults; `--outdir`/`--export` are aliases of `--exp_dir`/`--export_nemo`.

Called by recipes/runpod_finetune_canary.sh after its environment checks. Any finetune_canary.py flag passes
through; a flag given twice under its two names with different values is an error. `--tiny` runs on the
embedded tiny default (no --nemo/--train/--val needed), e.g. to check a machine without a GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.cli import run_main  # noqa: E402
from common.launch import A6000_DEFAULTS, ALIASES, split_flags, resolve_argv  # noqa: E402



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
        from common.embedded import ensure_embedded

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
    from common.train import run

    result = run(cfg)
    return 0 if result.status == "finished" and result.export_check.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
