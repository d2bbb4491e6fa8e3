"""One fine-tuning run, top to bottom: check -> load -> adapt -> train -> select -> export -> report.

`run` reads as that list; each phase is a short function over the `Run` it fills in. Everything that can be
checked without NeMo is checked first (manifests, the `.nemo` archive, languages, output folders), so bad input
costs a second, not a model load.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import TrainConfig
from common.data.entries import ManifestReport
from common.model.archive import NemoInfo


@dataclass
class RunResult:
    exp_dir: Path
    status: str  # "finished", "interrupted", "nonfinite", "done" (finished before: nothing trained, nothing written)
    global_step: int
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    export: Path | None = None
    export_check: dict = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    trainable_params: int = 0
    wall_s: float = 0.0
    kept_members: list[str] = field(default_factory=list)
    regression_before: dict = field(default_factory=dict)
    regression_after: dict = field(default_factory=dict)
    selected_step: int | None = None  # the validation pass that was exported (see common.training.selection)
    selection: dict = field(default_factory=dict)  # how it was chosen: mode, candidates, reference, regression_ok


@dataclass
class Run:
    """What the phases hand each other: the settings, the checked input, then the model, trainer and loaders."""

    cfg: TrainConfig
    paths: dict[str, Path]
    manifests: dict[str, ManifestReport]  # "train", "val" and, with --regression_manifest, "regression"
    data: Any  # the checked --train and --mix sources (common.data.sources.TrainingData); "train" above if plain
    info: NemoInfo
    result: RunResult
    plan: Any = None  # what the run does with its folder and export (common.training.guard)
    t_start: float = field(default_factory=time.time)
    model: Any = None
    backend: Any = None  # None in full fine-tuning
    meta: dict = field(default_factory=dict)  # what a checkpoint records about the run (base, backend, data order)
    base_keys: set[str] = field(default_factory=set)
    cast: dict = field(default_factory=dict)  # base weights held in bf16 while training (the export restores them)
    total_params: int = 0
    precision: str = ""
    resume_path: Path | None = None
    module: Any = None
    trainer: Any = None
    loaders: dict[str, Any] = field(default_factory=dict)
    cuts: dict[str, Path] = field(default_factory=dict)
    metrics: Any = None
    stopper: Any = None
    selection: Any = None  # common.training.selection.Selection
    stats: dict = field(default_factory=dict)

    @property
    def rank0(self) -> bool:
        return self.trainer is None or self.trainer.global_rank == 0


def run(cfg: TrainConfig) -> RunResult:
    r = check(cfg)
    if r.result.status == "done":  # a finished run resumed again, its outputs in place: nothing to do
        return r.result
    load(r)
    adapt(r)
    prepare_training(r)
    train(r)
    select(r)
    with r.stopper.holding():  # a Ctrl+C from here on is ignored until the files are complete
        export(r)
        report(r)
    return r.result


# ---- check: everything that needs no NeMo ---------------------------------------------------------------------
def check(cfg: TrainConfig) -> Run:
    """Validate manifests, checkpoint, languages and output folders; no NeMo import. Only when every check has
    passed does the run folder change (an earlier run replaced, metrics cut back to the resumed step)."""
    from common.data.manifest import load_manifest
    from common.data.sources import check_training_data
    from common.model.archive import check_languages, inspect_nemo
    from common.rundir import exp_paths
    from common.training import guard

    data = check_training_data(cfg.train, cfg.mix, max_duration=cfg.max_duration, skip_bad=cfg.skip_bad)
    manifests = {name: load_manifest(path, max_duration=cfg.max_duration, skip_bad=cfg.skip_bad)
                 for name, path in (("val", cfg.val), ("regression", cfg.regression_manifest)) if path}
    if data.plain:
        manifests = {"train": data.train.report, **manifests}
    info = inspect_nemo(cfg.nemo)
    check_languages(info, {str(m.path): {e.source_lang for e in m.entries} | {e.target_lang for e in m.entries}
                           for m in manifests.values()} | data.languages())
    paths = exp_paths(cfg.exp_dir)
    guard.check_paths(cfg, paths)
    plan = guard.plan(cfg, paths, info)
    for m in manifests.values():
        print(f"[data] {m.summary()}", flush=True)
        for note in m.notes:
            print(f"[data]   {note}", flush=True)
    for source in () if data.plain else data.sources:
        print(f"[data] {source.summary()}", flush=True)
        for note in source.notes:
            print(f"[data]   {note}", flush=True)
    if data.endless:
        print(f"[data] {data.stream_line()}", flush=True)
    print(f"[model] {info.path.name}: {info.prompt_format} prompt format, "
          f"{'aggregate' if info.tokenizer_type == 'agg' else 'unified'} tokenizer, languages: "
          f"{', '.join(info.languages) or '?'}", flush=True)
    r = Run(cfg=cfg, paths=paths, manifests=manifests, data=data, info=info, plan=plan,
            result=RunResult(exp_dir=paths["root"], status="finished", global_step=0))
    if plan.resume is not None:
        r.resume_path, r.result.global_step = plan.resume.path, plan.resume.step
        print(guard.done_message(plan, cfg, paths) if plan.done else
              f"[resume] continuing from {plan.resume.path} (step {plan.resume.step})", flush=True)
        if plan.complete:
            r.result.status = "done"
    guard.apply(plan, cfg, paths)
    return r


# ---- load: the base model, seeded and capped as asked ------------------------------------------------------
def load(r: Run) -> None:
    import lightning.pytorch as pl
    import torch

    from common.config import resolve_precision
    from common.model.archive import sha256_file
    from common.model.io import restore
    from common.telemetry import set_memory_cap

    cfg = r.cfg
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    set_memory_cap(cfg.vram_budget_gb, announce=True)
    r.precision, notice = resolve_precision(cfg.precision)
    if notice:
        print(f"[precision] {notice}", flush=True)
    r.meta = {"base_nemo": str(r.info.path.resolve()), "base_sha256": sha256_file(r.info.path)}
    r.model = restore(r.info.path, info=r.info)
    r.base_keys = set(r.model.state_dict().keys())


# ---- adapt: freeze the base, apply the backend ----------------------------------------------------------------
def adapt(r: Run) -> None:
    from backends import registry
    from common.config import resolve_base_dtype
    from common.model.adapt import prepare
    from common.model.speedups import prepare_step
    from common.training.trainer import make_module

    cfg = r.cfg
    spec = cfg.adapter_spec()
    r.backend = None if cfg.full_finetune else registry.get(cfg.backend)
    base_dtype = resolve_base_dtype(cfg.base_dtype, r.precision, cfg.full_finetune)
    adapted, r.cast = prepare(r.model, r.backend, spec, base_dtype=base_dtype, debug_linear=cfg.debug_linear)
    trainable = sum(p.numel() for p in r.model.parameters() if p.requires_grad)
    r.total_params = sum(p.numel() for p in r.model.parameters())
    r.result.adapted, r.result.trainable_params = adapted, trainable
    print(f"[lora] {'full fine-tuning' if r.backend is None else 'backend ' + r.backend.name}: {len(adapted)} "
          f"modules, {trainable:,} trainable of {r.total_params:,} parameters "
          f"({100 * trainable / max(1, r.total_params):.3f}%)", flush=True)
    r.meta |= {"backend": r.backend.name if r.backend else registry.FULL, "spec": spec.to_dict(),
               # what fixes the order of training batches: a resume with other values cannot repeat the run exactly
               "data": {"bs": cfg.bs, "accum": cfg.accum, "batch_duration": cfg.batch_duration, "seed": cfg.seed,
                        "max_train_cuts": cfg.max_train_cuts, "train": str(Path(cfg.train).resolve()),
                        "mix": [f"{s.path}:{s.weight:g}" for s in r.data.sources[1:]]},
               "describe": r.backend.describe(r.model) if r.backend else {}}
    r.module = make_module(r.model, r.backend, cfg, r.meta)
    graphs = prepare_step(r.model, r.backend, cfg)  # --speedups, --grad_ckpt, --compile
    if graphs is not None:
        r.module.compiled_layers(cuda_graphs=graphs)


# ---- the trainer, its callbacks and the loaders ---------------------------------------------------------------
def prepare_training(r: Run) -> None:
    from lightning.pytorch.accelerators import CUDAAccelerator

    from common.data.loader import LoaderSettings, manifest_loader, total_duration
    from common.data.streams import stream_loader
    from common.telemetry import MetricsLog
    from common.training.callbacks import MetricsCallback
    from common.training.checkpoints import AtomicCheckpointIO, StepCheckpoint
    from common.training.mixing import MixShares
    from common.training.selection import Selection
    from common.training.signals import StopOnSignal
    from common.training.status import StatusLine, wanted
    from common.training.trainer import make_logger, make_trainer

    cfg, paths = r.cfg, r.paths
    r.metrics = MetricsLog(paths["metrics"])
    r.stopper = StopOnSignal(paths["checkpoints"] / "interrupt.ckpt", stop_after_steps=cfg.stop_after_steps)
    r.selection = Selection(paths["checkpoints"] / "best.ckpt" if cfg.select == "best" else None,
                            threshold=cfg.regression_threshold, patience=cfg.early_stop_patience)
    # metrics first: a step's loss is checked (and logged) before anything saves that step
    callbacks = [MetricsCallback(r.metrics, mem_every=cfg.mem_report_steps), r.stopper, r.selection,
                 StepCheckpoint(dirpath=paths["checkpoints"], filename="step-{step}",
                                every_n_train_steps=cfg.save_every, save_top_k=-1, save_last=True,
                                save_on_train_epoch_end=False, auto_insert_metric_name=False,
                                keep_last=cfg.keep_last)]
    if r.data.mixed:  # counted before the stopper's interrupt checkpoint, which then holds this batch's counts
        callbacks.insert(1, MixShares(r.data, r.metrics, every=cfg.val_every_n_steps, into=r.stats))
    if cfg.status_seconds > 0 and wanted():
        callbacks.append(StatusLine(callbacks[0], every_s=cfg.status_seconds))
    r.trainer = make_trainer(cfg, precision=r.precision, root=paths["root"], callbacks=callbacks,
                             logger=make_logger(cfg.log, paths["root"], cfg.to_dict()), plugins=[AtomicCheckpointIO()])
    pin = isinstance(r.trainer.accelerator, CUDAAccelerator)
    shard = dict(num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=pin, world_size=r.trainer.world_size,
                 rank=r.trainer.global_rank)
    train = LoaderSettings(batch_size=cfg.bs, batch_duration=cfg.batch_duration, **shard)
    held_out = LoaderSettings(batch_size=cfg.val_bs or cfg.bs, **shard)
    for name, manifest in r.manifests.items():
        data = manifest_loader(manifest, r.model, train if name == "train" else held_out, data_dir=cfg.data_dir,
                               train=name == "train", limit=cfg.max_train_cuts if name == "train" else None)
        r.loaders[name], r.cuts[name] = data.loader, data.cuts_path
        print(f"[data] {name} cuts: {data.cuts_path} ({'built' if data.built else 'reused'})", flush=True)
    if not r.data.plain:  # tarred, Shar, cuts, input_cfg, or mixed: one stream over the sources
        stream = stream_loader(r.data, r.model, train, data_dir=cfg.data_dir, max_duration=cfg.max_duration,
                               limit=cfg.max_train_cuts)
        r.loaders["train"] = stream.loader
        r.cuts |= {("train" if i == 0 else f"mix:{r.data.sources[i].name}"): p for i, p in stream.caches.items()}
    r.module.train_sampler = r.loaders["train"].sampler
    r.module.set_names = tuple(name for name in ("val", "regression") if name in r.loaders)
    r.stats |= {"precision": r.precision,
                "train_set_s": total_duration(r.cuts["train"]) if "train" in r.cuts else r.data.train.seconds}
    if r.rank0:
        write_run_json(r)


# ---- train -----------------------------------------------------------------------------------------------------
def train(r: Run) -> None:
    import torch

    from common.checkpoint_files import checkpoint_step
    from common.errors import NonFiniteLoss, UserError
    from common.telemetry import report_memory
    from common.training.callbacks import MetricsCallback, oom_message
    from common.training.passes import evaluate
    from common.training.signals import interrupt_raises

    cfg, trainer, result = r.cfg, r.trainer, r.result
    held_out = {name: r.loaders[name] for name in r.module.set_names}
    report_memory("fit_start")
    if r.resume_path is None:
        # the base model's scores; on the regression set it is the selection's reference, so it is measured even
        # under --no_eval_before (a resumed run keeps the reference its checkpoint holds)
        before = held_out if cfg.eval_before else {k: v for k, v in held_out.items() if k == "regression"}
        if before:
            with interrupt_raises():  # Ctrl+C here: nothing trained yet, the CLI exits with 130
                scores = evaluate(trainer, r.module, before, r.metrics, "before")
            result.before = scores.get("val", {})
            result.regression_before = scores.get("regression", {})
            r.selection.reference = result.regression_before.get("val_wer")
    if r.plan is not None and r.plan.done:  # finished before: restore its state for the export, train no step
        trainer.fit_loop.epoch_loop.max_steps = r.plan.resume.step
    r.stopper.install()
    t_fit = time.time()
    try:
        trainer.fit(r.module, train_dataloaders=r.loaders["train"], val_dataloaders=list(held_out.values()),
                    ckpt_path=str(r.resume_path) if r.resume_path else None)
    except NonFiniteLoss as e:
        result.status = "nonfinite"
        last = r.paths["checkpoints"] / "last.ckpt"
        kept = (f"The last good checkpoint is kept: {last} (step {checkpoint_step(last)}); "
                if last.is_file() else "No checkpoint had been saved yet; ")
        print(f"[error] training stopped: the {e.what} became {e.value} at step {e.step}. {kept}nothing was "
              f"exported. Try a lower --lr, --precision 32 or fp16 -> bf16, or check the data near that step.",
              flush=True)
    except torch.cuda.OutOfMemoryError as e:
        raise UserError(oom_message(cfg)) from e
    finally:
        r.stopper.uninstall()
    result.global_step = trainer.global_step
    r.stats["train_wall_s"] = time.time() - t_fit
    r.stats["audio_processed_s"] = next(c for c in trainer.callbacks if isinstance(c, MetricsCallback)).audio_seconds
    report_memory("fit_end")


# ---- select: the state to export, scored on the held-out sets --------------------------------------------------
def select(r: Run) -> None:
    """Score the final state (unless the last pass during training already did), then put the selected pass's
    weights in place and describe them: `after` is always the exported model. Every rank takes part: the passes'
    figures are reduced over all ranks. A Ctrl+C here skips it: training is complete and its last step saved,
    and the current state is exported, as after any Ctrl+C."""
    from common.errors import Interrupted
    from common.training.selection import choose
    from common.training.signals import interrupt_raises

    result = r.result
    if result.status == "nonfinite":
        return
    if not r.stopper.requested:
        held_out = {name: r.loaders[name] for name in r.module.set_names}
        try:
            with interrupt_raises():
                chosen = choose(r.trainer, r.module, r.selection, held_out, r.metrics, mode=r.cfg.select)
        except Interrupted:
            r.stopper.requested = True
            print("\n[interrupt] Ctrl+C during the final validation: skipped it; saving and exporting.", flush=True)
        else:
            result.after, result.regression_after = chosen["val"], chosen.get("regression") or {}
            result.selected_step = chosen["step"]
            result.selection = r.selection.summary(mode=r.cfg.select, chosen=chosen["step"])
            if r.selection.stopped_early:  # a later --resume auto finds the run finished
                r.module.meta["stopped_early"] = True
                r.trainer.save_checkpoint(r.paths["checkpoints"] / "last.ckpt")
    if r.stopper.requested:
        result.status = "interrupted"


# ---- export: adapters, then the merged .nemo ---------------------------------------------------------------------
def export(r: Run) -> None:
    """Save what was trained: the interrupt checkpoint when stopped, adapters.safetensors, the merged .nemo."""
    import torch

    from common.checkpoint_files import save_adapters
    from common.model.export import export_model

    cfg, trainer, result = r.cfg, r.trainer, r.result
    if result.status == "nonfinite":
        return
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        # training is over: leave the process group so rank 0's CPU export cannot wait on a collective
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if result.status == "interrupted":
        if r.stopper.saved is None:  # stopped after the final step (outside the loop): save that state
            trainer.save_checkpoint(r.paths["checkpoints"] / "interrupt.ckpt")
        print(f"[interrupt] checkpoint saved: {r.paths['checkpoints'] / 'interrupt.ckpt'} (step "
              f"{trainer.global_step}); continue with the same command plus --resume auto", flush=True)
    if not r.rank0:
        return
    if r.backend is not None:
        spec = r.meta["spec"]
        save_adapters(r.backend.adapter_state_dict(r.model), r.paths["adapters"],
                      {"backend": r.backend.name, "r": str(spec["r"]), "alpha": str(spec["alpha"]),
                       "base_sha256": r.meta["base_sha256"], "base_nemo": r.meta["base_nemo"],
                       "spec": json.dumps(spec),
                       "step": str(result.selected_step if result.selected_step is not None else trainer.global_step)})
    target = export_target(cfg.export_nemo, interrupted=result.status == "interrupted")
    if target is not None:
        result.export, result.kept_members, result.export_check = export_model(
            r.module, r.backend, r.info, target, r.loaders["val"], r.base_keys, fp32_base=r.cast)


def export_target(export_nemo: str | None, *, interrupted: bool) -> Path | None:
    from common.training.guard import interrupt_export

    if not export_nemo:
        return None
    path = Path(export_nemo)
    return interrupt_export(path) if interrupted else path


# ---- report -------------------------------------------------------------------------------------------------------
def report(r: Run) -> None:
    from common.quality.report import write_report

    r.result.wall_s = time.time() - r.t_start
    if r.rank0:
        write_report(r.paths, r.cfg, r.result, r.meta, r.total_params, r.stats)


def write_run_json(r: Run) -> None:
    """run.json: the settings, versions, base checksum and adapted modules: what it takes to repeat the run."""
    import torch

    from common.atomic import write_text

    info = {
        "settings": r.cfg.to_dict(), "precision": r.precision,
        "resume_from": str(r.resume_path) if r.resume_path else None,
        "base": {"nemo": r.meta["base_nemo"], "sha256": r.meta["base_sha256"]}, "backend": r.meta["backend"],
        "adapter_spec": r.meta["spec"], "adapted_modules": r.result.adapted,
        "trainable_params": r.result.trainable_params, "total_params": r.total_params,
        "cuts": {k: str(v) for k, v in r.cuts.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "argv": sys.argv,
    }
    write_text(r.paths["run"], json.dumps(info, indent=2, ensure_ascii=False))
