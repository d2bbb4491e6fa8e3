"""One fine-tuning run, top to bottom: check input -> load -> adapt -> train -> save -> merge/export -> report.

Everything that can be checked without NeMo is checked first (manifests, the `.nemo` archive, languages,
output folders), so bad input costs a second, not a model load.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import TrainConfig, exp_paths, resolve_base_dtype, resolve_precision
from common.errors import UserError
from common.manifest import check_writable_dir, load_manifest
from common.preflight import check_languages, inspect_nemo, sha256_file


@dataclass
class RunResult:
    exp_dir: Path
    status: str  # "finished", "interrupted", "nonfinite"
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


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float, what: str = "loss"):
        super().__init__(f"non-finite {what} ({value}) at step {step}")
        self.step, self.value, self.what = step, value, what


def preflight(cfg: TrainConfig):
    """Validate manifests, checkpoint, languages and output folders; no NeMo import."""
    train = load_manifest(cfg.train, max_duration=cfg.max_duration, skip_bad=cfg.skip_bad)
    val = load_manifest(cfg.val, max_duration=cfg.max_duration, skip_bad=cfg.skip_bad)
    reg = (load_manifest(cfg.regression_manifest, max_duration=cfg.max_duration, skip_bad=cfg.skip_bad)
           if cfg.regression_manifest else None)
    info = inspect_nemo(cfg.nemo)
    reports = [r for r in (train, val, reg) if r is not None]
    check_languages(info, {str(r.path): {e.source_lang for e in r.entries} | {e.target_lang for e in r.entries}
                           for r in reports})
    check_writable_dir(Path(cfg.exp_dir), "--exp_dir")
    if cfg.export_nemo:
        check_writable_dir(Path(cfg.export_nemo).parent, "--export_nemo folder")
    return train, val, reg, info


def _print_reports(*reports) -> None:
    for r in reports:
        if r is None:
            continue
        print(f"[data] {r.summary()}", flush=True)
        for note in r.notes:
            print(f"[data]   {note}", flush=True)


def apply_vram_budget(budget_gb: float | None) -> None:
    import torch

    if budget_gb is None or not torch.cuda.is_available():
        return
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, budget_gb * 1024**3 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    print(f"[vram] allocator capped at {budget_gb:.1f} GB of {total / 1024**3:.1f} GB ({fraction:.3f})", flush=True)


def run(cfg: TrainConfig) -> RunResult:
    t_start = time.time()
    paths = exp_paths(cfg.exp_dir)
    train_rep, val_rep, reg_rep, info = preflight(cfg)
    _print_reports(train_rep, val_rep, reg_rep)
    print(f"[model] {info.path.name}: {info.prompt_format} prompt format, "
          f"{'aggregate' if info.tokenizer_type == 'agg' else 'unified'} tokenizer, languages: "
          f"{', '.join(info.languages) or '?'}", flush=True)

    # ---- heavy imports only after the input is known to be good ----------------------------------
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.accelerators import CUDAAccelerator

    from backends import registry
    from common import data, model_io
    from common.checkpoints import (AtomicCheckpointIO, StepCheckpoint, StopOnSignal, checkpoint_step, find_resume,
                                    interrupt_raises, save_adapters)
    from common.errors import Interrupted
    from common.module import CanaryFinetune, OptimSettings
    from common.telemetry import MetricsLog, report_memory

    from common.callbacks import MetricsCallback, oom_message

    resume_path = find_resume(cfg.resume, paths["checkpoints"])
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    apply_vram_budget(cfg.vram_budget_gb)
    precision, notice = resolve_precision(cfg.precision)
    if notice:
        print(f"[precision] {notice}", flush=True)

    base_sha = sha256_file(info.path)
    model = model_io.restore(info.path, info=info)
    base_keys = set(model.state_dict().keys())
    spec = registry.AdapterSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                targets=cfg.targets or registry.DEFAULT_TARGETS, adapter_dim=cfg.adapter_dim)
    backend = None if cfg.full_finetune else registry.get(cfg.backend)
    base_dtype = resolve_base_dtype(cfg.base_dtype, precision, cfg.full_finetune)
    adapted, cast = prepare(model, backend, spec, base_dtype=base_dtype, debug_linear=cfg.debug_linear)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"[lora] {'full fine-tuning' if backend is None else 'backend ' + backend.name}: {len(adapted)} modules, "
          f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / max(1, total):.3f}%)", flush=True)

    meta = {"base_nemo": str(info.path.resolve()), "base_sha256": base_sha,
            "backend": backend.name if backend else "full", "spec": spec.__dict__ | {"targets": list(spec.targets)},
            # what fixes the order of training batches: a resume with other values cannot repeat the run exactly
            "data": {"bs": cfg.bs, "accum": cfg.accum, "batch_duration": cfg.batch_duration, "seed": cfg.seed,
                     "max_train_cuts": cfg.max_train_cuts, "train": str(Path(cfg.train).resolve())}}
    module = CanaryFinetune(model, backend, OptimSettings(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                          warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps,
                                                          sched=cfg.sched), meta=meta)
    if cfg.compile:
        compile_for_training(model, module, cuda_graphs=cfg.cuda_graphs, bucketed=cfg.batch_duration is not None)

    # ---- data ---------------------------------------------------------------------------------------
    if cfg.max_train_cuts:
        train_rep.entries = train_rep.entries[: cfg.max_train_cuts]
    data_dir = Path(cfg.data_dir)
    cut_paths = {}
    for name, rep in (("train", train_rep), ("val", val_rep), ("regression", reg_rep)):
        if rep is None:
            continue
        cut_paths[name], built = data.build_cuts(rep, data_dir, info.prompt_format)
        print(f"[data] {name} cuts: {cut_paths[name]} ({'built' if built else 'reused'})", flush=True)

    strategy = "ddp" if cfg.devices * cfg.num_nodes > 1 else "auto"
    metrics = MetricsLog(paths["metrics"])
    stopper = StopOnSignal(paths["checkpoints"] / "interrupt.ckpt", stop_after_steps=cfg.stop_after_steps)
    # metrics first: a step's loss is checked (and logged) before anything saves that step
    callbacks = [MetricsCallback(metrics, mem_every=cfg.mem_report_steps), stopper]
    callbacks.append(StepCheckpoint(dirpath=paths["checkpoints"], filename="step-{step}",
                                    every_n_train_steps=cfg.save_every, save_top_k=-1, save_last=True,
                                    save_on_train_epoch_end=False, auto_insert_metric_name=False))
    trainer = pl.Trainer(
        accelerator="auto", devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy, precision=precision,
        max_steps=cfg.max_steps, max_epochs=-1, accumulate_grad_batches=cfg.accum,
        gradient_clip_val=cfg.grad_clip or None, val_check_interval=cfg.val_every_n_steps * cfg.accum,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, limit_val_batches=cfg.limit_val_batches,
        logger=make_logger(cfg.log, paths["root"]), callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        enable_model_summary=False, use_distributed_sampler=False, log_every_n_steps=1, default_root_dir=paths["root"],
        enable_progress_bar=sys.stderr.isatty() or os.environ.get("CANARY_LORA_PROGRESS") == "1",
    )
    pin = isinstance(trainer.accelerator, CUDAAccelerator)
    loader_settings = data.LoaderSettings(batch_size=cfg.bs, batch_duration=cfg.batch_duration,
                                          num_workers=cfg.num_workers, seed=cfg.seed, pin_memory=pin,
                                          world_size=trainer.world_size, rank=trainer.global_rank)
    train_dl = data.make_loader(cut_paths["train"], model.tokenizer, model.prompt, loader_settings, train=True)
    val_settings = data.LoaderSettings(batch_size=cfg.val_bs or cfg.bs, num_workers=cfg.num_workers, seed=cfg.seed,
                                       pin_memory=pin, world_size=trainer.world_size, rank=trainer.global_rank)
    val_dl = data.make_loader(cut_paths["val"], model.tokenizer, model.prompt, val_settings, train=False)
    reg_dl = (data.make_loader(cut_paths["regression"], model.tokenizer, model.prompt, val_settings, train=False)
              if "regression" in cut_paths else None)
    module.train_sampler = train_dl.sampler
    audio_s = data.total_duration(cut_paths["train"])
    rank0 = trainer.global_rank == 0

    if rank0:
        write_run_json(paths["run"], cfg, meta, adapted, trainable, total, cut_paths, precision, resume_path)
    result = RunResult(exp_dir=paths["root"], status="finished", global_step=0, adapted=adapted,
                       trainable_params=trainable)

    # ---- train --------------------------------------------------------------------------------------
    report_memory("fit_start")
    if cfg.eval_before and resume_path is None:
        with interrupt_raises():  # Ctrl+C here: nothing trained yet, the CLI exits with 130
            result.before = evaluate(trainer, module, val_dl, metrics, "before")
            if reg_dl is not None:
                result.regression_before = evaluate(trainer, module, reg_dl, metrics, "before", kind="regression")
    stopper.install()
    t_fit = time.time()
    try:
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                    ckpt_path=str(resume_path) if resume_path else None)
    except NonFiniteLoss as e:
        result.status = "nonfinite"
        last = paths["checkpoints"] / "last.ckpt"
        kept = (f"The last good checkpoint is kept: {last} (step {checkpoint_step(last)}); "
                if last.is_file() else "No checkpoint had been saved yet; ")
        print(f"[error] training stopped: the {e.what} became {e.value} at step {e.step}. {kept}nothing was "
              f"exported. Try a lower --lr, --precision 32 or fp16 -> bf16, or check the data near that step.",
              flush=True)
    except torch.cuda.OutOfMemoryError as e:
        raise UserError(oom_message(cfg)) from e
    finally:
        stopper.uninstall()
    result.global_step = trainer.global_step
    train_wall_s = time.time() - t_fit
    report_memory("fit_end")
    from common.report import write_report

    audio_done = next(c for c in callbacks if isinstance(c, MetricsCallback)).audio_seconds
    stats = {"precision": precision, "train_wall_s": train_wall_s, "audio_processed_s": audio_done,
             "train_set_s": audio_s}
    if result.status == "nonfinite":
        result.wall_s = time.time() - t_start
        if rank0:
            write_report(paths, cfg, result, meta, total, stats)
        return result
    # every rank validates its shard (the metrics are all-reduced): rank 0 alone would wait forever in DDP
    if not stopper.requested:
        try:
            with interrupt_raises():
                result.after = evaluate(trainer, module, val_dl, metrics, "after")
                if reg_dl is not None:
                    result.regression_after = evaluate(trainer, module, reg_dl, metrics, "after", kind="regression")
        except Interrupted:  # training is complete and its last step saved (last.ckpt): export what was trained
            stopper.requested = True
            print("\n[interrupt] Ctrl+C during the final validation: skipped it; saving and exporting.", flush=True)
    if stopper.requested:
        result.status = "interrupted"

    # ---- save adapters, merge, export: a Ctrl+C from here on is ignored until the files are complete ----
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        # training is over: leave the process group so rank 0's CPU export cannot wait on a collective
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    with stopper.holding():
        if result.status == "interrupted":
            if stopper.saved is None:  # stopped after the final step (outside the loop): save that state
                trainer.save_checkpoint(paths["checkpoints"] / "interrupt.ckpt")
            print(f"[interrupt] checkpoint saved: {paths['checkpoints'] / 'interrupt.ckpt'} (step "
                  f"{trainer.global_step}); continue with the same command plus --resume auto", flush=True)
        if not rank0:
            return result
        if backend is not None:
            save_adapters(backend.adapter_state_dict(model), paths["adapters"],
                          {"backend": backend.name, "r": str(spec.r), "alpha": str(spec.alpha),
                           "base_sha256": base_sha, "base_nemo": meta["base_nemo"], "spec": json.dumps(meta["spec"]),
                           "step": str(trainer.global_step)})
        export_path = export_target(cfg.export_nemo, interrupted=result.status == "interrupted")
        if export_path is not None:
            from common.export import export_model

            result.export, result.kept_members, result.export_check = export_model(
                module, backend, info, export_path, val_dl, base_keys, fp32_base=cast)
        result.wall_s = time.time() - t_start
        write_report(paths, cfg, result, meta, total, stats)
    return result


def prepare(model, backend, spec, *, base_dtype: str = "fp32", debug_linear: int = 0):
    """Freeze the base, hold it in `base_dtype`, apply the backend (or unfreeze all for full fine-tuning).

    Returns the adapted module names and {key: parameter} of the base weights cast to bf16 (for the export).
    """
    import torch

    from common import model_io

    model_io.freeze(model)
    cast = model_io.cast_frozen_base(model, torch.bfloat16) if base_dtype == "bf16" else {}
    adapted = adapt(model, backend, spec, debug_linear)
    for p in model.parameters():
        # adapters are the optimizer's master weights: fp32 whatever the base holds (PEFT copies its dtype)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if cast:
        mb = sum(p.numel() for p in cast.values()) * 2 / 2**20
        print(f"[memory] frozen base held in bf16: {len(cast)} weight tensors ({mb:,.0f} MiB); the export merges "
              f"into the original fp32 weights", flush=True)
    return adapted, cast


def adapt(model, backend, spec, debug_linear: int) -> list[str]:
    """Apply the backend (or unfreeze everything for full fine-tuning); zero matches is an error."""
    from backends.registry import linear_names

    names = linear_names(model)
    if debug_linear:
        print(f"[debug_linear] {len(names)} nn.Linear modules; first {min(debug_linear, len(names))}:", flush=True)
        for n in names[:debug_linear]:
            print(f"[debug_linear]   {n}", flush=True)
    if backend is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return names
    applied = backend.apply(model, spec)
    for note in applied.notes:
        print(f"[lora] {note}", flush=True)
    if not applied.modules:
        shown = "\n".join(f"    {n}" for n in names[:40])
        raise UserError(f"--lora_targets matched no nn.Linear module (patterns: {', '.join(spec.targets)}). "
                        f"The model has {len(names)} Linear modules, e.g.:\n{shown}\nPatterns must match the whole "
                        f"name (e.g. 'encoder\\.layers\\.\\d+\\.self_attn\\.linear_q').")
    if debug_linear:
        print(f"[debug_linear] replaced {len(applied.modules)} modules", flush=True)
    return applied.modules


def evaluate(trainer, module, val_dl, metrics, tag: str, kind: str = "val") -> dict:
    """One validation pass: loss and WER, plus CER, per-language figures and the transcripts (`rows`).

    `kind` names the metrics.jsonl record: "regression" passes are kept apart from the validation curve.
    """
    from common.evaluate import validation_details
    from common.telemetry import report_memory

    trainer.validate(module, dataloaders=val_dl, verbose=False)
    result = dict(module.last_val) | validation_details(module.val_outputs)
    metrics.write(kind, step=trainer.global_step, tag=tag,
                  **{k: v for k, v in result.items() if not isinstance(v, (list, dict))})
    print(f"[{kind}:{tag}] loss={result['val_loss']:.4f}  wer={result['val_wer']:.4f}  cer={result['val_cer'] or float('nan'):.4f}  "
          f"({result['utterances']} utterances)", flush=True)
    report_memory("val_end")
    return result


def export_target(export_nemo: str | None, *, interrupted: bool) -> Path | None:
    if not export_nemo:
        return None
    path = Path(export_nemo)
    return path.with_name(f"{path.stem}-interrupt.nemo") if interrupted else path


def make_logger(kind: str, root: Path):
    if kind == "none":
        return False
    if kind == "tb":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(root), name="logs", version="")
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(root), name="logs", version="")


def compile_for_training(model, module, *, cuda_graphs: bool, bucketed: bool = False) -> bool:
    """--compile: compile the layers (as CUDA graphs on a GPU, with a fixed batch size, unless turned off); the
    module rounds its training batches' shapes to match.

    `bucketed` (--batch_duration): batch sizes vary with clip length, so nearly every batch is a new shape, and
    each new shape records a fresh set of graphs (two per layer). Measured on an H200 with 2-30 s clips: 32
    steps did not finish in 4 minutes with graphs; without them the compiled step ran at 1498 audio s/s against
    1290 eager. So bucketed runs get the compiled kernels only.
    """
    import torch

    graphs = cuda_graphs and torch.cuda.is_available()
    if graphs and bucketed:
        print("[compile] --batch_duration: batch shapes vary too much for CUDA graphs; compiling the layers without "
              "them (a fixed --bs gets them)", flush=True)
        graphs = False
    compiled = compile_layers(model, cuda_graphs=graphs)
    if compiled:
        module.compiled_layers(cuda_graphs=graphs)
        align_relative_positions(model)
    return compiled


def align_relative_positions(model) -> bool:
    """Training steps hand the encoder's attention 2T relative positions instead of 2T-1; returns whether it
    applies (NeMo's relative-position encoding and attention, unchanged).

    The attention multiplies its queries by the position embeddings, and 2T-1 is odd, so cuBLAS runs that
    product with kernels for unaligned operands (4.8 ms of a 133 ms step on an H100, bs 32 x 15 s). The extra
    position goes last, and the attention never reads it: its shift reads position T-1-i+j for query i and key j,
    for every length, and keeps keys j < T. So the scores are the same. Validation and decoding are left alone.
    """
    import torch
    from nemo.collections.asr.parts.submodules import multi_head_attention as mha

    encoder = getattr(model, "encoder", None)
    pos_enc = getattr(encoder, "pos_enc", None)
    if type(pos_enc) is not mha.RelPositionalEncoding:
        return False
    attention = [m for m in encoder.modules() if isinstance(m, mha.MultiHeadAttention)]
    if not attention or any(type(m) is not mha.RelPositionMultiHeadAttention for m in attention):
        return False
    positions = pos_enc.forward

    def forward(x, cache_len=0):
        x, pos_emb = positions(x, cache_len=cache_len)
        if pos_enc.training and torch.is_grad_enabled() and cache_len == 0 and pos_emb.shape[1] % 2:
            pos_emb = torch.nn.functional.pad(pos_emb, (0, 0, 0, 1))
        return x, pos_emb

    pos_enc.forward = forward
    return True


def compile_layers(model, *, cuda_graphs: bool = False) -> bool:
    """torch.compile the pre-encoder and the encoder's and the decoder's layers in place, for training steps;
    eager otherwise.

    One compiled function serves each stack (its layers share their code; their weights are inputs), so
    compiling costs one layer's time per stack, not 40 layers'. Compiling the whole encoder as one graph took
    minutes on canary-1b-v2's 32 layers, and its training step turned the loss to NaN. Validation and decoding
    stay eager: their shapes change every call (batch sizes, generated lengths) and would recompile endlessly.
    The modules stay as they are, so state-dict keys (checkpoints, exports) are the same with and without
    --compile. Compiling happens on the first call, so errors surface there: that stack then runs eagerly.

    `cuda_graphs` (a CUDA device): compile with mode="reduce-overhead", which replays each layer's kernels as
    one CUDA graph. The step is otherwise bound by the host issuing thousands of small kernels; graphs need
    few distinct shapes, so the caller pads batches (CanaryFinetune.compiled_layers). A graph that cannot be
    used (e.g. BatchNorm statistics updating in full fine-tuning) falls back to the plain compiled kernels.

    New shapes recompile: each dimension that changes once more, twice over (the first layer's input differs
    from the others' in dtype and in needing no gradient). Past torch's limit of 8 compiled versions per
    function, new shapes run eagerly. Compiling with dynamic=True did not help: the relative-position
    attention's reshapes still specialize the length.
    """
    import torch

    # the pre-encoder (convolutional subsampling) is a stack of one: eager, its 3x3 convolutions ran with cuDNN
    # layout conversions around them; compiled, the step ran at 2900 against 2812 audio s/s (H100, bs 32 x 15 s)
    pre_encode = getattr(model.encoder, "pre_encode", None)
    stacks = {"pre-encoder": [pre_encode] if isinstance(pre_encode, torch.nn.Module) else []}
    stacks["encoder"] = list(getattr(model.encoder, "layers", []))
    decoder = getattr(getattr(model, "transf_decoder", None), "_decoder", None)
    stacks["decoder"] = list(getattr(decoder, "layers", []))
    done = []
    for name, layers in stacks.items():
        if not layers or len({type(layer) for layer in layers}) != 1:
            continue
        try:
            compiled = torch.compile(type(layers[0]).forward, mode="reduce-overhead" if cuda_graphs else None)
        except Exception as e:  # noqa: BLE001 - a platform without a working compiler: train uncompiled
            print(f"[compile] torch.compile unavailable ({type(e).__name__}: {e}); training without it", flush=True)
            return False
        _route_layers(name, layers, type(layers[0]).forward, compiled)
        done.append(f"the {name}" if name == "pre-encoder" else f"{len(layers)} {name}")
    if not done:
        print("[compile] no uniform layer stack to compile; training without torch.compile", flush=True)
        return False
    how = " as CUDA graphs" if cuda_graphs else ""
    names = done[0] if len(done) == 1 else f"{', '.join(done[:-1])} and {done[-1]}"
    print(f"[compile] {names} layers compiled{how} with torch.compile for training steps (the first "
          f"steps are slow while it compiles)", flush=True)
    return True


def _route_layers(name: str, layers: list, eager, compiled) -> None:
    """Make each layer call `compiled` in training mode and `eager` otherwise; the first failure turns the
    compiled path off for the whole stack, with a warning."""
    import torch

    state = {"fn": compiled}

    def call(layer, *args, **kwargs):
        fn = state["fn"]
        if fn is not None and layer.training and torch.is_grad_enabled():
            try:
                return fn(layer, *args, **kwargs)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure: keep training, eagerly
                state["fn"] = None
                first = " ".join(str(e).split())[:300]
                print(f"[compile] torch.compile failed on the {name} ({type(e).__name__}: {first}); continuing "
                      f"without it", flush=True)
        return eager(layer, *args, **kwargs)

    for layer in layers:
        layer.forward = functools.partial(call, layer)


def write_run_json(path: Path, cfg, meta, adapted, trainable, total, cut_paths, precision, resume_path) -> None:
    import platform

    import torch

    from common.atomic import write_text

    info = {
        "settings": cfg.to_dict(), "precision": precision, "resume_from": str(resume_path) if resume_path else None,
        "base": {"nemo": meta["base_nemo"], "sha256": meta["base_sha256"]}, "backend": meta["backend"],
        "adapter_spec": meta["spec"], "adapted_modules": adapted, "trainable_params": trainable,
        "total_params": total, "cuts": {k: str(v) for k, v in cut_paths.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "argv": sys.argv,
    }
    write_text(path, json.dumps(info, indent=2, ensure_ascii=False))
