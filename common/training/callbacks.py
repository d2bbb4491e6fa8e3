"""Per-step telemetry: `[MEM:stepN]` lines, `metrics.jsonl` records, and the non-finite loss guard."""
from __future__ import annotations

import math
import time

import torch
from lightning.pytorch.callbacks import Callback

from common.errors import NonFiniteLoss
from common.telemetry import MetricsLog, allocated_gb, mem_line, memory_snapshot
from common.training.passes import pass_result, record


class MetricsCallback(Callback):
    """One record per optimizer step (mean loss over its micro-batches, lr, memory, audio seconds, and the
    total norm of the trainable gradients before clipping as `grad_norm`).

    Loss, audio seconds and gradient norm stay on the device and are read in one go every `sync_every` steps
    (and before any checkpoint is written and when training ends): reading a GPU value makes the host wait for
    the GPU, and a step that waits can no longer queue the next step's kernels while this one computes. On a
    CPU there is nothing to overlap, so every step is read at once. Records still come one per step.
    """

    def __init__(self, log: MetricsLog, mem_every: int = 50, sync_every: int | None = None):
        self.metrics = log
        self.mem_every = mem_every
        self.sync_every = sync_every
        self._loss_sum = None
        self._audio_sum = None
        self._grad_norm = None
        self._micro = 0
        self._step_at_start = -1
        self._pending: list[dict] = []  # finished steps whose figures are still on the device
        self.last_loss = float("nan")
        self.audio_seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if self.sync_every is None:
            self.sync_every = 10 if pl_module.device.type == "cuda" else 1
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_start = trainer.global_step
        # first batch after a resume: put the RNG exactly where the saved run had it
        pl_module.restore_rng()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # total norm of the trainable gradients before clipping; stays on the device until it is read
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss = loss.detach() * trainer.accumulate_grad_batches  # Lightning scaled it for accumulation
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        audio = getattr(pl_module, "_audio_s", None)
        if audio is not None:
            self._audio_sum = audio if self._audio_sum is None else self._audio_sum + audio
        self._micro += 1
        if trainer.global_step == self._step_at_start:
            return  # still accumulating
        step = trainer.global_step
        parts = {"loss": self._loss_sum, "audio": self._audio_sum, "grad_norm": self._grad_norm}
        parts = {k: v for k, v in parts.items() if v is not None}
        device = self._loss_sum.device
        stacked = torch.stack([v.detach().float().reshape(()).to(device) for v in parts.values()])
        if trainer.world_size > 1:  # DDP: loss and audio summed over ranks (one small all-reduce per step)
            stacked = trainer.strategy.reduce(stacked, reduce_op="sum") / torch.tensor(
                [trainer.world_size if k != "audio" else 1 for k in parts], device=device)
        alloc, peak = allocated_gb()
        self._pending.append({"step": step, "keys": list(parts), "values": stacked, "micro": self._micro,
                              "lr": trainer.optimizers[0].param_groups[0]["lr"], "epoch": trainer.current_epoch,
                              "mem": alloc, "peak": peak, **step_end_marker(device)})
        self._loss_sum, self._audio_sum, self._grad_norm, self._micro = None, None, None, 0
        due_mem = self.mem_every and step % self.mem_every == 0
        if len(self._pending) >= (self.sync_every or 1) or due_mem or step >= trainer.max_steps:
            self.flush(trainer, pl_module)
            if trainer.global_rank == 0:  # Lightning allows self.log here, not in the checkpoint/end hooks
                pl_module.log("train_loss", self.last_loss, prog_bar=True, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.flush(trainer, pl_module)  # a non-finite loss must stop the run before it is saved

    def on_validation_start(self, trainer, pl_module) -> None:
        self.flush(trainer, pl_module)  # keeps metrics.jsonl in step order around validation records

    def on_validation_end(self, trainer, pl_module) -> None:
        # the passes every --val_every_n_steps during training; the before/after passes outside fit() are
        # recorded by common.training.passes with their tag
        if trainer.state.fn != "fit" or trainer.sanity_checking or trainer.global_rank != 0:
            return
        for name, result in pass_result(pl_module).items():
            record(self.metrics, name, trainer.global_step, "during", result)
        print(mem_line("val_end", memory_snapshot()), flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        self.flush(trainer, pl_module)

    def flush(self, trainer, pl_module) -> None:
        """Read the pending steps' figures (one host sync), write their records, check the losses."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flat = torch.cat([p["values"] for p in pending]).tolist()  # the one host sync
        ends = step_end_times(pending)
        offset = 0
        for p, end in zip(pending, ends):
            read = dict(zip(p["keys"], flat[offset: offset + len(p["keys"])]))
            offset += len(p["keys"])
            mean_loss = read["loss"] / p["micro"]
            audio_s = read.get("audio", 0.0)
            grad_norm = read.get("grad_norm")
            self.audio_seconds += audio_s
            step = p["step"]
            if trainer.global_rank == 0:  # one writer for metrics.jsonl and the MEM lines
                record = dict(loss=mean_loss, lr=p["lr"], audio_s=round(audio_s, 3), mem_gb=round(p["mem"], 4),
                              peak_gb=round(p["peak"], 4), **({"grad_norm": round(grad_norm, 6)}
                                                              if grad_norm is not None else {}))
                self.metrics.write("train", at=end, step=step, epoch=p["epoch"], **record)
                to_loggers(trainer.loggers, step, record)
                if self.mem_every and step % self.mem_every == 0:
                    print(mem_line(f"step{step}", memory_snapshot()), flush=True)
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(step, mean_loss)
        self.last_loss = mean_loss


def to_loggers(loggers, step: int, record: dict) -> None:
    """A step's figures to every Lightning logger (csv, tb, wandb) as `train/<name>`; the loss also goes there as
    `train_loss`, logged by Lightning."""
    for logger in loggers:
        logger.log_metrics({f"train/{k}": v for k, v in record.items() if k != "loss"}, step=step)


def step_end_marker(device: torch.device) -> dict:
    """What tells, later, when a step ended: the host's clock now and, on a GPU, an event queued behind the step's
    work. The host runs ahead of a GPU (nothing waits for it between reads), so its clock alone would date a step
    when it was queued, and records read in one go would all carry the time of the read."""
    marker = {"t": time.time()}
    if device.type == "cuda":
        marker["event"] = torch.cuda.Event(enable_timing=True)
        marker["event"].record()
    return marker


def step_end_times(pending: list[dict]) -> list[float]:
    """Wall-clock end of each pending step (`time.time()` values), read after the last one completed: the last
    step's end, minus the device time between each step's event and the last one. Without events (a CPU, where
    every step is read at once) the host's clock at each step's end."""
    last = pending[-1].get("event") if pending else None
    if last is None:
        return [p["t"] for p in pending]
    last.synchronize()  # queued right behind the values just read: a short wait, if any
    now = time.time()
    return end_times_from_events(now, [p["event"].elapsed_time(last) for p in pending])


def end_times_from_events(now: float, ms_to_last: list[float]) -> list[float]:
    """Step ends from the time the last step was seen complete and each step's device milliseconds before it."""
    return [now - max(0.0, ms) / 1000.0 for ms in ms_to_last]


def oom_message(cfg) -> str:
    return (f"CUDA out of memory with --bs {cfg.bs} --accum {cfg.accum} (max clip {cfg.max_duration:g} s, precision "
            f"{cfg.precision or 'bf16'}). Try a smaller --bs with a larger --accum (same effective batch "
            f"{cfg.bs * cfg.accum}, e.g. --bs {max(1, cfg.bs // 2)} --accum {cfg.accum * 2}), a shorter "
            f"--max_duration (e.g. 20), or find the largest batch that fits with `just tune-batch`. Checkpoints "
            f"written so far are kept in {cfg.exp_dir}/checkpoints; continue with --resume auto.")
