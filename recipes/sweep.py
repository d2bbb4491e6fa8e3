"""Short real training runs over LoRA rank, alpha and dropout, ranked by final validation loss.

    just sweep                                       # tiny default + demo speech: 8 runs of ~20 s on a CPU
    just sweep --lora_r 8 16 32 --lora_alpha 16 --lora_dropout 0.0
    just sweep --nemo base.nemo --train train.jsonl --val val.jsonl --max_steps 300 --bs 8 --val_batches 20

Every run is `common.train.run` (the same loop as `just finetune`) without export. Per run: final validation
loss, median step time, peak memory (GPU peak, or process RSS on a CPU), and stability: any non-finite loss, and
gradient-norm spikes (a step whose norm exceeds --spike_factor times the median of the steps before it).
Writes sweep.md, sweep.csv and sweep.png (validation loss per run) and names the best trade-off: the stable run
with the fewest trainable parameters, then the fastest step, among those within --tolerance of the best loss.
"""
from __future__ import annotations

import argparse
import itertools
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

T_START = time.monotonic()

from common.config import TrainConfig
from common.flags import add_flags
from recipes.entry import run_main
from common.errors import UserError

COLUMNS = (
    ("rank", "rank", "{}"), ("label", "run", "{}"), ("status", "status", "{}"),
    ("val_loss", "final val loss", "{:.4f}"), ("val_wer", "val WER", "{:.3f}"),
    ("median_step_s", "step s (median)", "{:.3f}"), ("peak_gb", "peak GB", "{:.2f}"),
    ("trainable_params", "trainable", "{:,}"), ("max_grad_norm", "max grad norm", "{:.3g}"),
    ("spikes", "norm spikes", "{}"), ("stable", "stable", "{}"), ("wall_s", "run s", "{:.0f}"),
)


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # the training flags, from TrainConfig, with the sweep's defaults: the embedded tiny Canary and the demo's adapt
    # slice when no model or data is given, short runs, and a higher learning rate so that short runs separate;
    # --lora_r, --lora_alpha and --lora_dropout take several values, and every combination runs
    add_flags(p, TrainConfig, only=("nemo", "train", "val", "lora_r", "lora_alpha", "lora_dropout", "backend",
                                    "max_steps", "bs", "accum", "lr", "warmup_steps", "val_bs", "precision", "seed"),
              defaults={"lora_r": [8, 16], "lora_alpha": [16.0, 32.0], "lora_dropout": [0.0, 0.05], "max_steps": 30,
                        "bs": 4, "accum": 1, "lr": 1e-3, "warmup_steps": 5, "val_bs": 16, "seed": 0},
              nargs={"lora_r": "+", "lora_alpha": "+", "lora_dropout": "+"}, group="training flags")
    # Validation also decodes greedily (for WER); a barely trained model rarely stops early, so decoding runs to
    # the maximum length and costs far more than the loss. One batch keeps that cost to a single decode.
    p.add_argument("--val_batches", type=int, default=1, help="validation batches for the final loss")
    p.add_argument("--spike_factor", type=float, default=5.0,
                   help="a gradient norm above this many times the running median counts as a spike")
    p.add_argument("--tolerance", type=float, default=0.02,
                   help="runs within this fraction of the best validation loss count as equally good")
    p.add_argument("--out", default="exp/sweep", help="sweep.md/.csv/.png here, one run folder each under runs/")
    return p.parse_args(argv)


def grad_spikes(norms: list[float], factor: float, settle: int = 3) -> int:
    """Steps whose gradient norm exceeds `factor` x the median of the steps before it (after `settle` steps)."""
    return sum(1 for i in range(settle, len(norms)) if norms[i] > factor * statistics.median(norms[:i]))


def summarize(label: str, cfg, result, factor: float) -> dict:
    from common.quality.plots import read_metrics, series

    records = read_metrics(Path(cfg.exp_dir) / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    times = [r["time_s"] for r in train if isinstance(r.get("time_s"), (int, float))]
    steps = [b - a for a, b in zip(times, times[1:])][1:]  # the first interval holds the warm-up
    losses = [r.get("loss") for r in train]
    norms = series(records, "train", "grad_norm")[1]
    nonfinite = result.status == "nonfinite" or any(not isinstance(x, (int, float)) or not math.isfinite(x)
                                                    for x in losses)
    spikes = grad_spikes(norms, factor)
    val_loss = result.after.get("val_loss")
    return {
        "label": label, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout,
        "status": result.status, "val_loss": val_loss, "val_wer": result.after.get("val_wer"),
        "median_step_s": round(statistics.median(steps), 4) if steps else None,
        "peak_gb": max((r.get("peak_gb") or 0.0 for r in train), default=None),
        "trainable_params": result.trainable_params, "max_grad_norm": max(norms, default=None),
        "spikes": spikes, "nonfinite": nonfinite, "stable": not nonfinite and spikes == 0 and val_loss is not None,
        "steps": result.global_step, "wall_s": round(result.wall_s, 1),
    }


def rank(rows: list[dict]) -> list[dict]:
    def key(r):
        v = r.get("val_loss")
        return (0 if r["stable"] else 1, v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf)

    ordered = sorted(rows, key=key)
    for i, r in enumerate(ordered, 1):
        r["rank"] = i
    return ordered


def best_tradeoff(rows: list[dict], tolerance: float) -> tuple[dict | None, str]:
    stable = [r for r in rows if r["stable"] and isinstance(r["val_loss"], (int, float))]
    if not stable:
        return None, "No run was stable (non-finite loss or gradient-norm spikes in every run): lower --lr."
    best = min(r["val_loss"] for r in stable)
    near = [r for r in stable if r["val_loss"] <= best + tolerance * abs(best)]
    pick = min(near, key=lambda r: (r["trainable_params"], r["median_step_s"] or math.inf, r["val_loss"]))
    lowest = min(stable, key=lambda r: r["val_loss"])
    why = (f"Best trade-off: **{pick['label']}** (--lora_r {pick['lora_r']} --lora_alpha {pick['lora_alpha']:g} "
           f"--lora_dropout {pick['lora_dropout']:g}): val loss {pick['val_loss']:.4f}, "
           f"{pick['trainable_params']:,} trainable parameters, {pick['median_step_s']} s/step; "
           f"{len(near)} stable run(s) lie within {tolerance:.0%} of the lowest loss ({lowest['label']}, "
           f"{best:.4f}), and it is the smallest and then fastest of them.")
    return pick, why


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    from common.bench.tables import markdown_table, write_table
    from common.config import validate
    from common.quality.plots import plot_bars
    from common.training.run import run

    # ---- setup ---------------------------------------------------------------------------------------
    out = Path(args.out)
    if args.nemo is None or args.train is None or args.val is None:
        from common.embedded.default import ensure_embedded

        emb = ensure_embedded(pretrain=False)
        args.nemo = args.nemo or str(emb.random_nemo)
        args.train = args.train or str(emb.data.adapt_train)
        args.val = args.val or str(emb.data.adapt_val)
    precision = args.precision or (None if torch.cuda.is_available() else "32")
    grid = list(itertools.product(args.lora_r, args.lora_alpha, args.lora_dropout))
    print(f"[sweep] {len(grid)} runs of {args.max_steps} steps: r {args.lora_r} x alpha {args.lora_alpha} x "
          f"dropout {args.lora_dropout}; base {args.nemo}", flush=True)

    # ---- train: one short run per setting ------------------------------------------------------------
    rows: list[dict] = []
    for r, alpha, dropout in grid:
        label = f"r{r}_a{alpha:g}_d{dropout:g}"
        exp_dir = out / "runs" / label
        if exp_dir.exists():  # a fresh run: metrics.jsonl is appended to, and checkpoints would resume
            shutil.rmtree(exp_dir)
        cfg = validate(TrainConfig(
            nemo=args.nemo, train=args.train, val=args.val, bs=args.bs, accum=args.accum, precision=precision,
            max_steps=args.max_steps, val_every_n_steps=args.max_steps + 1, save_every=args.max_steps,
            lora_r=r, lora_alpha=alpha, lora_dropout=dropout, backend=args.backend, lr=args.lr,
            warmup_steps=args.warmup_steps, seed=args.seed, exp_dir=str(exp_dir), export_nemo="",
            mem_report_steps=0, log="none", eval_before=False, data_dir=str(out / "cuts"),
            limit_val_batches=args.val_batches, val_bs=args.val_bs))
        print(f"[sweep] run {len(rows) + 1}/{len(grid)}: {label}", flush=True)
        result = run(cfg)
        rows.append(summarize(label, cfg, result, args.spike_factor))
        print(f"[sweep]   {label}: val loss {rows[-1]['val_loss']}, step {rows[-1]['median_step_s']} s, "
              f"spikes {rows[-1]['spikes']}, {result.wall_s:.0f} s", flush=True)

    # ---- report --------------------------------------------------------------------------------------
    ranked = rank(rows)
    pick, why = best_tradeoff(ranked, args.tolerance)
    notes = [f"{len(grid)} runs of {args.max_steps} steps (bs {args.bs} x accum {args.accum}, lr {args.lr:g}, "
             f"backend {args.backend}, seed {args.seed}) on {args.train}; final validation loss on "
             f"{args.val_batches} batch(es) of {args.val}.", why]
    if not isinstance(ranked[0].get("val_loss"), (int, float)):
        raise UserError("no sweep run produced a validation loss; see the messages above")
    paths = write_table(ranked, out, "sweep", title="LoRA sweep: rank x alpha x dropout", notes=notes,
                              columns=COLUMNS, formats=("md", "csv"))
    png = plot_bars([r["label"] for r in ranked], [r["val_loss"] for r in ranked], out / "sweep.png",
                    ylabel="final validation loss", title="LoRA sweep (lower is better)")
    print("\n" + markdown_table(ranked, COLUMNS) + "\n" + "\n".join(notes), flush=True)
    print(f"[sweep] wrote {paths['md']}, {paths['csv']}, {png} ({time.monotonic() - T_START:.0f} s)", flush=True)
    return 0 if pick is not None else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
