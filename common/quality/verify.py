"""Verify an exported `.nemo` the way a user will load it: stock `restore_from`, in a process of its own.

Checks, each reported with what differed:

1. it restores as an `EncDecMultiTaskModel`;
2. no LoRA wrapper is left in it (its state-dict keys are the base model's), or, for an unmergeable backend
   (NeMo adapters), its adapters came back, hold the trained weights and are enabled;
3. on a fixed validation batch its outputs equal the unmerged training state, rebuilt from the base `.nemo`
   named in the checkpoint or adapter file plus the trained adapter weights (needs `against`);
4. it transcribes a validation manifest; the WER is printed (a figure, not a pass/fail check).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from backends import registry
from common.errors import UserError

TOLERANCE = 1e-4  # as the export's own check: merged vs unmerged differ by ~1e-6 in fp32


@dataclass
class TrainedState:
    """What a run trained: enough to rebuild the unmerged model it exported."""

    source: Path
    backend: str  # a registered backend name, or "full" (full fine-tuning: `weights` is the whole model)
    spec: dict
    weights: dict  # model-relative name -> tensor
    layout: str  # "params": named like the model's parameters (a checkpoint); "adapters": the backend's own layout
    base_nemo: Path | None
    base_sha256: str | None
    step: int | None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    nemo: Path
    checks: list[Check] = field(default_factory=list)
    wer: float | None = None
    utterances: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> Check:
        check = Check(name, bool(ok), detail)
        self.checks.append(check)
        print(f"[verify] {'OK  ' if check.ok else 'FAIL'} {name}: {detail}", flush=True)
        return check


# ---- what the run trained -----------------------------------------------------------------------------------
def load_trained_state(against: str | Path, nemo: Path | None = None) -> TrainedState:
    """Read a `.ckpt` of this tool, an `adapters.safetensors`, or a run directory (`--exp_dir`).

    In a run directory the adapter file wins: it is rewritten right before every export, so it matches the
    newest one. An export named `*-interrupt.nemo` is checked against `checkpoints/interrupt.ckpt`.
    """
    path = Path(against)
    if path.is_dir():
        path = _pick_in_run_dir(path, nemo)
    if not path.is_file():
        raise UserError(f"--against {against}: not found. Pass a checkpoint (.ckpt), an adapters.safetensors or the "
                        f"run directory (--exp_dir) of the run that wrote the export.")
    if path.suffix == ".safetensors":
        return _from_adapters(path)
    return _from_checkpoint(path)


def _pick_in_run_dir(run_dir: Path, nemo: Path | None) -> Path:
    from common.checkpoint_files import find_resume

    ckpts = run_dir / "checkpoints"
    if nemo is not None and nemo.stem.endswith("-interrupt") and (ckpts / "interrupt.ckpt").is_file():
        return ckpts / "interrupt.ckpt"
    if (run_dir / "adapters.safetensors").is_file():
        return run_dir / "adapters.safetensors"
    newest = find_resume("auto", ckpts)
    if newest is None:
        raise UserError(f"--against {run_dir}: no adapters.safetensors and no checkpoint (checkpoints/last.ckpt or "
                        f"interrupt.ckpt) in this directory; pass the run's --exp_dir or one of its files.")
    return newest


def _from_checkpoint(path: Path) -> TrainedState:
    from common.checkpoint_files import read_checkpoint

    ckpt = read_checkpoint(path, "--against")  # weights_only: a foreign file is refused, nothing in it runs
    meta = ckpt["canary_lora"]
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    return TrainedState(source=path, backend=meta.get("backend", registry.DEFAULT), spec=dict(meta.get("spec") or {}),
                        weights=weights, layout="params", base_nemo=Path(meta["base_nemo"]) if meta.get("base_nemo") else None,
                        base_sha256=meta.get("base_sha256"), step=ckpt.get("global_step"))


def _from_adapters(path: Path) -> TrainedState:
    from common.checkpoint_files import load_adapters

    try:
        weights, meta = load_adapters(path)
    except Exception as e:
        raise UserError(f"--against {path}: cannot read it as a safetensors file ({type(e).__name__}: {e}).") from e
    spec = json.loads(meta["spec"]) if meta.get("spec") else {"r": int(meta.get("r", 8)),
                                                               "alpha": float(meta.get("alpha", 16.0))}
    return TrainedState(source=path, backend=meta.get("backend", registry.DEFAULT), spec=spec, weights=weights,
                        layout="adapters", base_nemo=Path(meta["base_nemo"]) if meta.get("base_nemo") else None,
                        base_sha256=meta.get("base_sha256"),
                        step=int(meta["step"]) if meta.get("step", "").isdigit() else None)


def rebuild_unmerged(state: TrainedState, base: Path | None = None):
    """The model as it was trained: the base `.nemo` with the backend applied and the trained weights loaded.

    Returns (model, base state-dict keys).
    """
    import torch

    from common.model import io as model_io
    from common.model.archive import inspect_nemo, sha256_file

    base = Path(base) if base else state.base_nemo
    if base is None:
        raise UserError(f"{state.source} does not name its base .nemo (written by an older version): pass --base "
                        f"with the .nemo the run was trained from.")
    if not base.is_file():
        raise UserError(f"the base model {base} recorded in {state.source} is not there (moved, or trained on "
                        f"another machine): pass --base with its new path.")
    if state.base_sha256 and sha256_file(base) != state.base_sha256:
        raise UserError(f"--base {base} is not the .nemo the run was trained from (sha256 differs from "
                        f"{state.base_sha256[:12]}... recorded in {state.source}); pass the original file.")
    info = inspect_nemo(base)
    model = model_io.restore(base, info=info)
    model_io.freeze(model)
    base_keys = set(model.state_dict().keys())
    if state.backend == registry.FULL:
        missing, unexpected = model.load_state_dict(state.weights, strict=False)
        if missing or unexpected:
            raise UserError(f"{state.source}: the full fine-tuning weights do not fit {base.name} ({len(missing)} "
                            f"missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[:3]}).")
        return model, base_keys
    backend = registry.get(state.backend)
    backend.apply(model, registry.AdapterSpec.from_dict(state.spec))
    weights = {k: v.to(torch.float32) for k, v in state.weights.items()}
    try:
        if state.layout == "adapters":
            backend.load_adapter_state_dict(model, weights)
        else:  # as Lightning loads a checkpoint: by parameter name, and it must cover exactly what trained
            trained = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(weights) != trained:
                raise KeyError(f"missing {sorted(trained - set(weights))[:3]}, unexpected "
                               f"{sorted(set(weights) - trained)[:3]}")
            model.load_state_dict(weights, strict=False)
    except KeyError as e:
        raise UserError(f"{state.source}: its adapter weights do not fit the {state.backend} backend applied with "
                        f"the recorded settings ({e}).") from e
    return model, base_keys


# ---- data --------------------------------------------------------------------------------------------------
def make_val_loader(model, manifest: Path, bs: int, max_utts: int | None, work_dir: Path):
    """An in-order loader over (the first `max_utts` clips of) a manifest, and how many clips it holds."""
    from common.data.loader import LoaderSettings, manifest_loader

    data = manifest_loader(manifest, model, LoaderSettings(batch_size=bs), data_dir=work_dir, limit=max_utts)
    return data.loader, data.clips


# ---- the checks ----------------------------------------------------------------------------------------------
def verify_export(nemo: str | Path, *, against: str | Path | None = None, base: str | Path | None = None,
                  manifest: str | Path | None = None, bs: int = 4, max_utts: int | None = None,
                  tolerance: float = TOLERANCE, device: str = "cpu") -> VerifyReport:
    from common.model.steps import fixed_batch, log_probs, to_device

    nemo = Path(nemo)
    if not nemo.is_file():
        raise UserError(f"{nemo}: export not found. Pass the .nemo written by --export_nemo.")
    state = load_trained_state(against, nemo) if against else None
    report = VerifyReport(nemo=nemo)

    from nemo.collections.asr.models import EncDecMultiTaskModel

    try:
        restored = EncDecMultiTaskModel.restore_from(str(nemo), map_location="cpu")
    except Exception as e:  # the point of the check: any failure to restore is the finding
        report.add("restore", False, f"EncDecMultiTaskModel.restore_from failed: {type(e).__name__}: {e}")
        return report
    report.add("restore", isinstance(restored, EncDecMultiTaskModel),
               f"{type(restored).__name__}, {sum(p.numel() for p in restored.parameters()):,} parameters")
    restored.to(device).float().eval()
    keys = set(restored.state_dict().keys())
    lora_left = sorted(k for k in keys if "lora_" in k)

    reference = base_keys = None
    if state is not None:
        reference, base_keys = rebuild_unmerged(state, base)
        reference.to(device).float().eval()
        print(f"[verify] training state: {state.source} (backend {state.backend}, step {state.step}, base "
              f"{state.base_nemo if base is None else base})", flush=True)

    mergeable = state is None or state.backend == registry.FULL or _mergeable(state.backend)
    if mergeable:
        extra = sorted(keys - base_keys) if base_keys is not None else lora_left
        missing = sorted(base_keys - keys) if base_keys is not None else []
        report.add("no adapter keys left", not lora_left and not extra and not missing,
                   "state-dict keys equal the base model's" if base_keys is not None and not (extra or missing)
                   else "no lora_* keys" if not (lora_left or extra or missing)
                   else f"{len(extra)} keys not in the base (e.g. {extra[:3]}), {len(missing)} base keys missing "
                        f"(e.g. {missing[:3]})")
    else:
        _check_kept_adapters(report, restored, reference, state.backend)

    with tempfile.TemporaryDirectory(prefix="canary-verify-") as tmp:
        if manifest is not None:
            loader, n = make_val_loader(restored, Path(manifest), bs, max_utts, Path(tmp))
            if reference is not None:
                batch = to_device(fixed_batch(loader), device)
                diff = float((log_probs(restored, batch) - log_probs(reference, batch)).abs().max())
                report.add("outputs equal the training state", diff <= tolerance,
                           f"max |diff| of log-probs on {batch.audio.shape[0]} clips {diff:.2e} "
                           f"(tolerance {tolerance:g})")
            report.wer, report.utterances, report.examples = transcribe_wer(restored, loader, device)
            print(f"[verify] WER {report.wer:.4f} on {report.utterances} of {n} clips of {manifest}", flush=True)
            for ref, hyp in report.examples[:3]:
                print(f"[verify]   ref: {ref}\n[verify]   hyp: {hyp}", flush=True)
        elif reference is not None:
            raise UserError("comparing with the training state needs audio: pass --manifest (a validation manifest).")
    if state is None:
        print("[verify] note: no --against given, so the outputs were not compared with the training state "
              "(pass the run's --exp_dir, a checkpoint or adapters.safetensors)", flush=True)
    return report


def _mergeable(backend: str) -> bool:
    return bool(getattr(registry.get(backend), "mergeable", True))


def _check_kept_adapters(report: VerifyReport, restored, reference, backend_name: str) -> None:
    """Unmergeable backend: the export must carry the trained adapters, enabled."""
    backend = registry.get(backend_name)
    kept, trained = backend.adapter_state_dict(restored), backend.adapter_state_dict(reference)
    missing, extra = sorted(set(trained) - set(kept)), sorted(set(kept) - set(trained))
    diff = max((float((kept[k].float().cpu() - trained[k].float().cpu()).abs().max())
                for k in set(kept) & set(trained)), default=float("inf"))
    report.add("adapters restored", not missing and not extra and diff <= 1e-6,
               f"{len(kept)} adapter tensors, max |diff| to the trained ones {diff:.2e}" if not (missing or extra)
               else f"{len(missing)} trained adapter tensors missing (e.g. {missing[:3]}), {len(extra)} unexpected")
    enabled = list(restored.get_enabled_adapters()) if hasattr(restored, "get_enabled_adapters") else []
    report.add("adapters enabled", bool(enabled), f"enabled: {', '.join(enabled) or 'none'}")


def transcribe_wer(model, loader, device: str) -> tuple[float, int, list[tuple[str, str]]]:
    import torch

    from common.model.steps import greedy_transcripts, to_device
    from common.quality.metrics import wer

    refs, hyps = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            hyps += greedy_transcripts(model, to_device(batch, device))
            refs += [" ".join(s.text for s in c.supervisions) for c in batch.cuts]
    rate = wer(refs, hyps, mode="normalized").rate if refs else float("nan")
    return rate, len(refs), list(zip(refs, hyps))
