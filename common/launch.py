"""Flags for the Linux launcher: the A6000 48 GB defaults and the `--outdir`/`--export` aliases."""
from __future__ import annotations

from common.errors import UserError

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
