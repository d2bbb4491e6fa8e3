"""The Windows runbook's dry run: a few steps on a small subset that prove the whole path works before a
long run: LoRA really replaced layers (--debug_linear 20), MEM lines print, the export merges and reloads.

    just win-dryrun                                   # on the embedded tiny default
    just win-dryrun --nemo canary-1b-v2.nemo --train train.jsonl --val val.jsonl
"""
from __future__ import annotations

import sys

from recipes.entry import run_main

DRYRUN = ["--max_train_cuts", "16", "--max_steps", "4", "--bs", "2", "--accum", "2", "--val_every_n_steps", "4",
          "--save_every", "4", "--limit_val_batches", "2", "--debug_linear", "20", "--mem_report_steps", "1",
          "--warmup_steps", "1", "--exp_dir", "exp/win-dryrun", "--export_nemo", "exp/win-dryrun/dryrun.nemo",
          "--log", "csv", "--overwrite"]  # its own folder: a repeat dry run replaces it


def main(argv: list[str] | None = None) -> int:
    from common.config import build_parser, config_from, parse_args
    from common.import_guard import guard_portable_path

    user = list(sys.argv[1:] if argv is None else argv)
    # the Windows path keeps triton/apex/megatron/deepspeed out (common/import_guard.py): decided from the flags,
    # before the embedded default (which loads NeMo) is built
    guard_portable_path(config_from(build_parser().parse_args(DRYRUN + user)))
    base = []
    if "--nemo" not in user:
        from common.embedded.default import ensure_embedded

        emb = ensure_embedded(pretrain=False)
        base = ["--nemo", str(emb.random_nemo), "--train", str(emb.data.adapt_train), "--val",
                str(emb.data.adapt_val), "--data_dir", str(emb.data.root.parent / "cuts")]
    cfg = parse_args(base + DRYRUN + user)
    from common.training.run import run

    result = run(cfg)  # zero replaced modules is already an error inside run()
    ok = result.status == "finished" and result.export_check.get("ok", False) and len(result.adapted) > 0
    print(f"\n[dryrun] {'PASSED' if ok else 'FAILED'}: {len(result.adapted)} modules adapted, "
          f"export {result.export} {'restored and matched' if result.export_check.get('ok') else 'did not verify'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
