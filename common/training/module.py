"""The LightningModule that trains a Canary model's adapters (or all of it, in full fine-tuning mode).

It wraps the NeMo model instead of using NeMo's own training_step, so the optimizer sees only trainable
parameters, checkpoints hold only what trains, BatchNorm statistics stay frozen, and validation reports
both teacher-forced loss and greedy-decoding WER.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from common.errors import NonFiniteLoss, UserError
from common.model.steps import ShapeRounding, compute_loss, eval_mode, greedy_transcripts
from common.quality.metrics import wer
from common.training.checkpoints import fix_midepoch_progress, resume_position


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep BatchNorm layers in eval mode so their running statistics do not drift while adapters train."""
    count = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            count += 1
    return count


@dataclass(frozen=True)
class OptimSettings:
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 3000
    sched: str = "cosine"


# the learning rate's factor after warm-up, by --sched, from the progress (0 to 1) towards max_steps
DECAY = {
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress: max(0.0, 1.0 - progress),
    "constant": lambda progress: 1.0,
}


def lr_lambda(settings: OptimSettings):
    """Linear warm-up, then cosine or linear decay to zero at max_steps (or constant)."""
    warm = max(0, settings.warmup_steps)
    total = max(1, settings.max_steps)
    decay = DECAY[settings.sched]

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return decay(min(1.0, (step - warm) / max(1, total - warm)))

    return f


class CanaryFinetune(pl.LightningModule):
    """Trains `model`'s parameters that require grad. `backend` is None in full fine-tuning mode.

    BatchNorm running statistics stay frozen while adapters train (`freeze_bn`, default: with a backend); full
    fine-tuning trains everything, those statistics included.
    """

    def __init__(self, model, backend, optim: OptimSettings, *, meta: dict[str, Any] | None = None,
                 freeze_bn: bool | None = None):
        super().__init__()
        self.model = model
        self.backend = backend
        self.optim = optim
        self.meta = dict(meta or {})
        self.freeze_bn = backend is not None if freeze_bn is None else freeze_bn
        self.strict_loading = False  # checkpoints hold only trainable weights
        # validation sets, in the order of the validation dataloaders: the adapted set, and the regression set
        # when there is one; a pass scores each (their loss and WER are logged as val_* and reg_*)
        self.set_names: tuple[str, ...] = ("val",)
        self.val_outputs: dict[str, list[dict]] = {}
        self.last_val: dict[str, dict[str, float]] = {}  # per set: val_loss, val_wer, utterances
        self.train_sampler = None  # set by the trainer so resume can fast-forward it
        self.listeners: list = []  # callables(kind, **fields) for per-step records
        self.cuda_graphs = False  # set by compiled_layers
        self.rounding: ShapeRounding | None = None

    def compiled_layers(self, *, cuda_graphs: bool, rounding: ShapeRounding | None = ShapeRounding()) -> None:
        """Training steps run compiled layers: round batch shapes (each new shape recompiles, and with CUDA
        graphs records new graphs), and with graphs mark each step's start."""
        self.cuda_graphs = cuda_graphs
        self.rounding = rounding

    # ---- training -------------------------------------------------------------------------------
    def trainable_names(self) -> list[str]:
        return [f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        self.model.train()
        if self.freeze_bn:
            freeze_batchnorm(self.model)

    def on_train_start(self) -> None:
        self.set_train_mode()
        if self.cuda_graphs:
            # Gradients must live outside the graphs' memory pool: a .grad that the first backward creates is
            # the graph's own output buffer, which the next replay overwrites, so a gradient accumulated over
            # several micro-batches would be lost. Zeroed buffers made here are added into instead, and are
            # zeroed rather than freed between steps (optimizer_zero_grad).
            for p in self.model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer) -> None:
        optimizer.zero_grad(set_to_none=not self.cuda_graphs)

    def on_train_epoch_start(self) -> None:
        self.set_train_mode()

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.cuda_graphs:
            # a new step: graph outputs of the previous one (all consumed by its backward) may be overwritten
            torch.compiler.cudagraph_mark_step_begin()

    def training_step(self, batch, batch_idx):
        loss, _ = compute_loss(self.model, batch, self.rounding)
        # seconds of audio in this batch, summed on device: no host sync per micro-batch
        self._audio_s = batch.audio_lens.sum() / float(self.model.sample_rate)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("no trainable parameters: adapters were not applied")
        # foreach (one kernel per param group step), not fused: Lightning's mixed-precision plugin refuses
        # gradient clipping with optimizers that unscale gradients internally, as fused AdamW does
        multi = torch.cuda.is_available() and all(p.is_cuda for p in params)
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay,
                                **({"foreach": True} if multi else {}))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.optim))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ---- validation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_outputs = {name: [] for name in self.set_names}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        # the loss and the decoding both in eval mode: decoding switches NeMo's decoder back to train mode
        with eval_mode(self.model):
            loss, tokens = compute_loss(self.model, batch)
            hyps = greedy_transcripts(self.model, batch)
        refs = [" ".join(s.text for s in c.supervisions) for c in batch.cuts]
        langs = [c.custom.get("target_lang", "") if c.custom else "" for c in batch.cuts]
        self.val_outputs[self.set_names[dataloader_idx]].append(
            {"loss_sum": float(loss) * int(tokens), "tokens": int(tokens), "refs": refs, "hyps": hyps,
             "langs": langs, "ids": [c.id for c in batch.cuts]})

    def on_validation_epoch_end(self) -> None:
        self.last_val = {}
        for name, outs in self.val_outputs.items():
            refs = [r for o in outs for r in o["refs"]]
            errors = wer(refs, [h for o in outs for h in o["hyps"]], mode="normalized")
            totals = torch.tensor([sum(o["loss_sum"] for o in outs), sum(o["tokens"] for o in outs), errors.errors,
                                   errors.ref_len, len(refs)], dtype=torch.float64, device=self.device)
            if self.trainer.world_size > 1:  # corpus figures over every rank's shard, the same on every rank
                totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
            loss_sum, tokens, n_errors, ref_len, utterances = totals.tolist()
            self.last_val[name] = {
                "val_loss": loss_sum / max(1.0, tokens),
                "val_wer": (n_errors / ref_len if ref_len else float(n_errors)) if utterances else float("nan"),
                "utterances": int(utterances)}
            prefix = "val" if name == "val" else "reg"  # the regression set is its own series, never val_*
            self.log(f"{prefix}_loss", self.last_val[name]["val_loss"], prog_bar=prefix == "val")
            self.log(f"{prefix}_wer", self.last_val[name]["val_wer"], prog_bar=prefix == "val")

    # ---- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = set(self.trainable_names())
        if self.backend is not None:  # adapters only: not a copy of the frozen base
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        # never replace a good checkpoint with weights that already overflowed
        bad = [k for k, v in checkpoint["state_dict"].items()
               if k in keep and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteLoss(checkpoint.get("global_step", -1), float("nan"), what=f"weights ({bad[0]})")
        fix_midepoch_progress(checkpoint)
        checkpoint["canary_lora"] = {**self.meta, "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("canary_lora", {})
        saved = set(checkpoint["state_dict"])
        expected = set(self.trainable_names())
        if self.backend is not None and saved != expected:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise UserError(
                f"The checkpoint's adapter weights do not match this run ({len(missing)} missing, "
                f"{len(unexpected)} unexpected; e.g. {(missing or unexpected)[:3]}). Resume with the same "
                f"--backend, --lora_r and --lora_targets as the run that wrote it (saved: backend="
                f"{info.get('backend')}, spec={info.get('spec')}).")
        for key in ("backend",):
            if key in info and key in self.meta and info[key] != self.meta[key]:
                raise UserError(f"The checkpoint was written by backend {info[key]!r}, this run uses "
                                f"{self.meta[key]!r}: resume with --backend {info[key]}.")
        if info.get("base_sha256") and self.meta.get("base_sha256") and info["base_sha256"] != self.meta["base_sha256"]:
            raise UserError(f"The checkpoint was trained on a different base model ({info.get('base_nemo')}, "
                            f"sha256 {info['base_sha256'][:12]}...) than --nemo {self.meta.get('base_nemo')} "
                            f"(sha256 {self.meta['base_sha256'][:12]}...). Pass the original .nemo to resume.")
        self._restored_rng = info.get("rng")
        changed = {k: (v, self.meta.get("data", {}).get(k)) for k, v in (info.get("data") or {}).items()
                   if self.meta.get("data", {}).get(k) != v}
        if changed:
            print("[resume] note: these settings differ from the run that wrote the checkpoint, so the data order "
                  "will not repeat it exactly: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new)
                                                                in sorted(changed.items())), flush=True)
        if self.train_sampler is not None:
            # Lightning restarts the epoch's batch count but not the data: skip what the optimizer already saw
            epoch, consumed = resume_position(checkpoint)
            self.train_sampler.resume_at(epoch, consumed)

    def restore_rng(self) -> None:
        rng = getattr(self, "_restored_rng", None)
        if not rng:
            return
        set_rng_state(rng)
        self._restored_rng = None


def rng_state() -> dict:
    """Every generator's state as tensors, numbers and tuples: what a `weights_only=True` load accepts (numpy's
    own state is a tuple holding an ndarray, which would need numpy's pickled globals)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict) -> None:
    random.setstate(rng["python"])
    n = rng["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
