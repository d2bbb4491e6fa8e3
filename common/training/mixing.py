"""What each --train/--mix source really contributed to training, in cuts and in seconds of audio.

`MixShares` counts the cuts of every training batch by the source tag `common.data.streams` put on them, and every
--val_every_n_steps optimizer steps (and when training ends) writes the shares so far: a `mix` record in
metrics.jsonl, a `[mix]` console line, and at the end the `mix` summary that summary.json and report.md show. With
DDP the counts are summed over ranks after every optimizer step; they live in the checkpoints, so a resumed run's
shares cover the whole run.
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
        self.counts = [[0, 0.0] for _ in self.sources]  # per source, over all ranks, at the last optimizer step
        self._pending = [[0, 0.0] for _ in self.sources]  # this rank's micro-batches since then
        self._step_at_start = -1
        self._written, self._last = -1, {}

    def state_dict(self) -> dict:
        return {"counts": [list(c) for c in self.counts], "written": self._written}

    def load_state_dict(self, state_dict: dict) -> None:
        if len(state_dict.get("counts", ())) == len(self.counts):  # else the sources changed: count afresh
            self.counts = [[int(n), float(s)] for n, s in state_dict["counts"]]
            self._written = int(state_dict.get("written", -1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for cut in batch.cuts:  # host-side metadata only: no wait for the GPU
            index, seconds = source_of(cut)
            self._pending[index][0] += 1
            self._pending[index][1] += seconds
        step = trainer.global_step
        if step == self._step_at_start:
            return  # mid-accumulation
        # every rank is here after each optimizer step: the counts become the same on all of them, so the
        # checkpoint rank 0 writes holds the whole run's (DDP already meets here every step, to stop together)
        pending = torch.tensor(self._pending, dtype=torch.float64)
        if trainer.world_size > 1:
            pending = trainer.strategy.reduce(pending.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        self.counts = [[int(n + dn), s + ds] for (n, s), (dn, ds) in zip(self.counts, pending.tolist())]
        self._pending = [[0, 0.0] for _ in self.sources]
        if step != self._written and step % self.every == 0:
            self.write(trainer, step)

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self.into["mix"] = self._last if step == self._written and self._last else self.write(trainer, step)

    def write(self, trainer, step: int) -> dict:
        self._written = step
        summary = mix_summary(self.sources, self.counts)
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
