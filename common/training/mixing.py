"""What each --train/--mix source really contributed to training, in cuts and in seconds of audio.

`MixShares` counts the cuts of every training batch by the source tag `common.data.streams` put on them, and every
--val_every_n_steps optimizer steps (and when training ends) writes the shares so far: a `mix` record in
metrics.jsonl, a `[mix]` console line, and at the end the `mix` summary that summary.json and report.md show. The
counts live in the checkpoints, so a resumed run's shares cover the whole run; with DDP they are summed over ranks.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from common.data.sources import TrainingData
from common.data.streams import source_of
from common.telemetry import MetricsLog


class MixShares(Callback):
    def __init__(self, data: TrainingData, log: MetricsLog, *, every: int, into: dict):
        self.sources = [{"name": s.name, "kind": s.kind, "weight": s.weight, "expected_share": round(p, 6)}
                        for s, p in zip(data.sources, data.expected_shares())]
        self.metrics, self.every, self.into = log, max(1, every), into
        self.counts = [[0, 0.0] for _ in self.sources]  # per source: cuts, seconds
        self._written, self._last = -1, {}

    def state_dict(self) -> dict:
        return {"counts": [list(c) for c in self.counts], "written": self._written}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict.get("counts", ())) == len(self.counts):  # else the sources changed: count afresh
            self.counts = [[int(n), float(s)] for n, s in state_dict["counts"]]
            self._written = int(state_dict.get("written", -1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for cut in batch.cuts:  # host-side metadata only: no wait for the GPU
            index, seconds = source_of(cut)
            self.counts[index][0] += 1
            self.counts[index][1] += seconds
        step = trainer.global_step
        if step > 0 and step != self._written and step % self.every == 0:  # the step's last micro-batch: every rank is here
            self.write(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self.into["mix"] = self._last if step == self._written and self._last else self.write(trainer, step)

    def write(self, trainer, step: int) -> dict:
        """Sum the counts over ranks (every rank calls this at the same step), record and print them on rank 0."""
        self._written = step
        totals = torch.tensor(self.counts, dtype=torch.float64)
        if trainer.world_size > 1:
            totals = trainer.strategy.reduce(totals.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        summary = mix_summary(self.sources, totals.tolist())
        if trainer.global_rank == 0:
            self.metrics.write("mix", step=step, sources={s["name"]: {"cuts": s["cuts"], "seconds": s["seconds"]}
                                                       for s in summary["sources"]})
            print(f"[mix] step {step}: {mix_line(summary)}", flush=True)
        self._last = summary
        return summary


def mix_summary(sources: list[dict], counts: list[list[float]]) -> dict:
    cuts, seconds = sum(c[0] for c in counts), sum(c[1] for c in counts)
    rows = [{**s, "cuts": int(n), "seconds": round(sec, 3), "cut_share": round(n / cuts, 6) if cuts else None,
             "second_share": round(sec / seconds, 6) if seconds else None} for s, (n, sec) in zip(sources, counts)]
    return {"cuts": int(cuts), "seconds": round(seconds, 3), "sources": rows}


def mix_line(summary: dict) -> str:
    """`adapt.jsonl 76% of cuts (74% of audio), general.jsonl 24% (26%); expected 77% : 23%`."""
    rows = summary["sources"]
    got = ", ".join(f"{r['name']} {100 * (r['cut_share'] or 0):.0f}%" + (" of cuts" if i == 0 else "")
                    + f" ({100 * (r['second_share'] or 0):.0f}%" + (" of audio)" if i == 0 else ")")
                    for i, r in enumerate(rows))
    expected = " : ".join(f"{100 * r['expected_share']:.0f}%" for r in rows)
    return f"{got}; by weight {expected} of cuts ({summary['cuts']} cuts so far)"
