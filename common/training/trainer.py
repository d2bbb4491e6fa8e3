"""The Lightning pieces every training run is assembled from, in one place: the Trainer, the module with its
optimizer settings, and the logger. `common.training.run` and the bench both build them here, so the bench
measures exactly the step users train with."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from common.config import TrainConfig
from common.training.module import CanaryFinetune, OptimSettings


def make_module(model, backend, cfg: TrainConfig, meta: dict | None = None) -> CanaryFinetune:
    return CanaryFinetune(model, backend, OptimSettings(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                        warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                                        sched=cfg.sched), meta=meta)


def make_trainer(cfg: TrainConfig, *, precision: str, root: Path, callbacks: list, logger=False, plugins=(),
                 **overrides):
    """A Trainer for `cfg`: optimizer steps, accumulation, clipping, validation cadence and devices as flagged.

    `overrides` are Trainer arguments a caller sets otherwise (the bench: no validation, no checkpoints).
    """
    import lightning.pytorch as pl

    settings = dict(
        accelerator="auto", devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto", precision=precision,
        max_steps=cfg.max_steps, max_epochs=-1, accumulate_grad_batches=cfg.accum,
        gradient_clip_val=cfg.grad_clip or None, val_check_interval=cfg.val_every_n_steps * cfg.accum,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, limit_val_batches=cfg.limit_val_batches,
        logger=logger, callbacks=callbacks, plugins=list(plugins), enable_model_summary=False,
        # Lhotse samplers shard the data themselves (rank and world size): Lightning must not wrap them
        use_distributed_sampler=False, log_every_n_steps=1, default_root_dir=str(root),
        enable_progress_bar=sys.stderr.isatty() or os.environ.get("CANARY_LORA_PROGRESS") == "1",
    )
    settings.update(overrides)
    return pl.Trainer(**settings)


def make_logger(kind: str, root: Path, settings: dict | None = None):
    """The --log logger; `settings` (the run's flags) are recorded as its hyperparameters."""
    if kind == "none":
        return False
    if kind == "tb":
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(root), name="logs", version="")
    elif kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        # WANDB_MODE=offline writes the run under WANDB_DIR (else the run directory); `wandb sync` uploads it
        logger = WandbLogger(project=os.environ.get("WANDB_PROJECT", "canary-lora"), name=Path(root).name,
                             save_dir=os.environ.get("WANDB_DIR") or str(root))
        run_dir = Path(logger.experiment.dir).parent
        offline = logger.experiment.settings.mode == "offline"
        print(f"[log] wandb run {run_dir}" + (f" (offline; `wandb sync {run_dir}` uploads it)" if offline else ""),
              flush=True)
    else:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(root), name="logs", version="")
    if settings:
        logger.log_hyperparams({k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))})
    return logger
