"""What a run may do to the folders it is given, decided before anything is written or any model loads.

- It never clobbers: an `--exp_dir` holding another run is refused without `--resume` (or `--overwrite`), and so
  is an existing `--export_nemo` that is not this run's own export being resumed. Refused, nothing changes.
- `--resume auto` continues from the checkpoint with the highest step among all of the run's checkpoints; empty or
  unreadable files are skipped with a warning. A run with nothing left to train says so and trains nothing.
- A resumed run's `metrics.jsonl` keeps the records up to the step it resumes from, so no step appears twice.
- Temporary files a killed run left are removed; the export's folder must have room for the export.

`plan` only reads; `apply` makes the changes the plan allows, on the first process of a run only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from common.atomic import free_bytes, remove_stale_temps, write_text
from common.config import TrainConfig
from common.errors import UserError
from common.fmt import fmt_bytes
from common.messages import disp
from common.model.archive import NemoInfo
from common.rundir import RUN_FILES, RUN_FOLDERS, check_writable_dir

if TYPE_CHECKING:  # checkpoint_files loads torch: only a run that resumes pays for it before the checks end
    from common.checkpoint_files import ResumePoint


@dataclass
class Plan:
    resume: ResumePoint | None = None
    done: bool = False  # nothing left to train: the resumed step reached --max_steps, or early stopping ended it
    complete: bool = False  # done, and its outputs are in place: nothing to do at all
    clear: list[Path] = field(default_factory=list)  # the earlier run's files, removed before this run starts
    keep_metrics_to: int | None = None  # rewrite metrics.jsonl keeping the records up to this step (-1: none)
    first: bool = True  # the run's first process (rank 0): the one that changes files


def launched_rank() -> int:
    """This process's rank as its launcher set it (Lightning's own rule), known before Lightning loads: DDP's
    other processes run the command again, and must find the folder as the first one left it."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def interrupt_export(export: Path) -> Path:
    """Where Ctrl+C's export goes: `<stem>-interrupt.nemo` next to --export_nemo."""
    return export.with_name(f"{export.stem}-interrupt.nemo")


# ---- output paths -------------------------------------------------------------------------------------------
def check_paths(cfg: TrainConfig, paths: dict[str, Path]) -> None:
    """Every folder the run writes to can be written, and no output path is a folder."""
    check_writable_dir(paths["root"], "--exp_dir")
    if paths["checkpoints"].exists():
        check_writable_dir(paths["checkpoints"], "the checkpoints folder")
    check_writable_dir(Path(cfg.data_dir), "--data_dir")
    if cfg.export_nemo:
        export = Path(cfg.export_nemo)
        for p in (export, interrupt_export(export)):
            if p.is_dir():
                raise UserError(f"--export_nemo {disp(export)}: {disp(p)} is a folder; pass the path of the .nemo "
                                f"file to write, e.g. {disp(export / 'model.nemo')}")
        check_writable_dir(export.parent, "--export_nemo folder")


# ---- the plan ---------------------------------------------------------------------------------------------------
def plan(cfg: TrainConfig, paths: dict[str, Path], info: NemoInfo) -> Plan:
    p = Plan(first=launched_rank() == 0)
    p.resume = _resume_point(cfg, paths)
    earlier = earlier_run(paths)
    if p.first:
        _check_run_folder(cfg, paths, p, earlier)
    if p.resume is not None:
        step = p.resume.step
        p.done = step >= cfg.max_steps or p.resume.stopped_early
        p.complete = p.done and not missing_outputs(cfg, paths)
        if p.complete:
            p.keep_metrics_to = None  # nothing runs: the finished run's records stay as they are
    if cfg.export_nemo and p.first and not p.complete:
        _check_export(cfg, paths, p)
        check_room(Path(cfg.export_nemo), info)
    return p


def _resume_point(cfg: TrainConfig, paths: dict[str, Path]) -> ResumePoint | None:
    if not cfg.resume:
        return None
    from common.checkpoint_files import newest_resume_point, resume_point

    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise UserError(f"--resume {disp(cfg.resume)}: checkpoint not found. Use --resume auto to continue from "
                            f"the newest checkpoint in --exp_dir, or pass an existing .ckpt file.")
        return resume_point(path, "--resume")
    point = newest_resume_point(paths["checkpoints"])
    if point is None:
        print(f"[resume] --resume auto: no checkpoint to continue from in {disp(paths['checkpoints'])}: starting "
              f"from step 0", flush=True)
    return point


def earlier_run(paths: dict[str, Path]) -> list[str]:
    """What of an earlier run the run folder holds (its files, its checkpoints)."""
    root = paths["root"]
    ckpts = list(paths["checkpoints"].glob("*.ckpt")) if paths["checkpoints"].is_dir() else []
    return ([f"checkpoints/ ({len(ckpts)} .ckpt)"] if ckpts else []) + [
        name for name in RUN_FILES if (root / name).is_file()]


def _check_run_folder(cfg: TrainConfig, paths: dict[str, Path], p: Plan, earlier: list[str]) -> None:
    root = paths["root"]
    if not cfg.resume:
        if earlier and not cfg.overwrite:
            held = ", ".join(earlier[:3]) + (f" and {len(earlier) - 3} more" if len(earlier) > 3 else "")
            raise UserError(f"--exp_dir {disp(root)} already holds a run ({held}). Continue it with "
                            f"--resume auto, replace it with --overwrite, or choose another --exp_dir; nothing was "
                            f"changed.")
        if earlier:
            p.clear = [root / n for n in RUN_FILES + RUN_FOLDERS if (root / n).exists()]
            if cfg.export_nemo and interrupt_export(Path(cfg.export_nemo)).is_file():
                p.clear.append(interrupt_export(Path(cfg.export_nemo)))
        return
    if p.resume is None:  # --resume auto found nothing: what the earlier run recorded is not continued
        p.keep_metrics_to = -1
        return
    p.keep_metrics_to = p.resume.step
    if cfg.resume == "auto":
        return  # the newest there is
    from common.checkpoint_files import resume_candidates

    newer = [c for c in resume_candidates(paths["checkpoints"])
             if (step := _step_or_none(c)) is not None and step > p.resume.step]
    if newer and not cfg.overwrite:
        raise UserError(f"--resume {disp(p.resume.path)} is at step {p.resume.step}, but {disp(root)} holds newer "
                        f"checkpoints ({', '.join(c.name for c in newer)}): continue from them with --resume auto, "
                        f"or pass --overwrite to go back to step {p.resume.step} (they are removed); nothing was "
                        f"changed.")
    p.clear = newer


def _step_or_none(path: Path) -> int | None:
    from common.checkpoint_files import resume_point

    try:
        return resume_point(path).step
    except UserError:
        return None


def missing_outputs(cfg: TrainConfig, paths: dict[str, Path]) -> list[Path]:
    """The files a finished run leaves that are not there: the export, the adapters, the report (written last)."""
    wanted = [Path(cfg.export_nemo)] if cfg.export_nemo else []
    wanted += ([] if cfg.full_finetune else [paths["adapters"]]) + [paths["report"]]
    return [w for w in wanted if not w.is_file()]


def recorded_export(paths: dict[str, Path]) -> Path | None:
    """The --export_nemo the run in this folder recorded in its run.json."""
    try:
        settings = json.loads(paths["run"].read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return None
    return Path(settings["export_nemo"]).resolve() if settings.get("export_nemo") else None


def _check_export(cfg: TrainConfig, paths: dict[str, Path], p: Plan) -> None:
    export = Path(cfg.export_nemo)
    existing = [f for f in (export, interrupt_export(export)) if f.is_file() and f not in p.clear]
    if not existing or cfg.overwrite:
        return
    if cfg.resume and recorded_export(paths) == export.resolve():
        return  # this run's own export, and the run is resumed: it may replace it
    raise UserError(f"--export_nemo {disp(export)}: {' and '.join(disp(f) for f in existing)} already "
                    f"exist{'s' if len(existing) == 1 else ''} and {'are' if len(existing) > 1 else 'is'} not this "
                    f"run's export. Choose another --export_nemo, or pass --overwrite to replace it; nothing was "
                    f"changed.")


def check_room(export: Path, info: NemoInfo) -> None:
    """Refuse to start when the export cannot be written: it needs about 4 bytes per parameter (about the base
    archive's size) in its folder, and as much again in the temp folder where NeMo assembles it."""
    need = info.export_bytes
    where = [(export.parent.absolute(), "the --export_nemo folder"),
             (Path(tempfile.gettempdir()), "the temp folder (TMPDIR)")]
    by_volume: dict[int, list[tuple[Path, str]]] = {}
    for folder, label in where:
        by_volume.setdefault(_volume(folder), []).append((folder, label))
    for folders in by_volume.values():
        free, total = free_bytes(folders[0][0]), need * len(folders)
        if free is not None and free < total:
            what = " and ".join(f"{label} {disp(folder)}" for folder, label in folders)
            raise UserError(f"--export_nemo {disp(export)}: not enough disk space: the export needs about "
                            f"{fmt_bytes(total)} in {what} (4 bytes per parameter, as the base {info.path.name} "
                            f"of {fmt_bytes(need)} holds), and {fmt_bytes(free)} is free. Free some space, or choose "
                            f"an --export_nemo (or TMPDIR) on another disk.")


def _volume(folder: Path) -> int:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.stat().st_dev


# ---- the changes ------------------------------------------------------------------------------------------------
def apply(p: Plan, cfg: TrainConfig, paths: dict[str, Path]) -> None:
    """Remove what the plan replaces, cut metrics.jsonl back to the resumed step, sweep stale temporary files."""
    if not p.first:
        return
    if p.clear:
        for path in p.clear:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        reason = "--overwrite" if cfg.overwrite else "going back"
        print(f"[run] {reason}: removed {', '.join(disp(c.name) for c in p.clear)} from the earlier run in "
              f"{disp(paths['root'])}", flush=True)
    if p.keep_metrics_to is not None:
        kept, dropped = keep_metrics_until(paths["metrics"], p.keep_metrics_to)
        if dropped:
            print(f"[resume] metrics.jsonl: kept the {kept} records up to step {max(p.keep_metrics_to, 0)}, removed "
                  f"{dropped} that this run writes again (later steps, the final evaluation)", flush=True)
    swept = remove_stale_temps(paths["root"]) + remove_stale_temps(paths["checkpoints"], recursive=True)
    if cfg.export_nemo:
        export = Path(cfg.export_nemo)
        swept += remove_stale_temps(export.parent, names=(export.name, interrupt_export(export).name))
    if swept:
        print(f"[run] removed {len(swept)} temporary file(s) a stopped run left: "
              f"{', '.join(disp(s.name) for s in swept[:5])}{' ...' if len(swept) > 5 else ''}", flush=True)


def keep_metrics_until(path: Path, step: int) -> tuple[int, int]:
    """Rewrite metrics.jsonl (atomically) with the records up to `step` only; the final evaluation at `step`
    (tag "after") goes too, since the resumed run ends with its own. A broken last line (a kill while it was
    written) is dropped. Returns (kept, dropped)."""
    if not path.is_file():
        return 0, 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        at = record.get("step") if isinstance(record, dict) else None
        if isinstance(at, int) and (at > step or (at == step and record.get("tag") == "after")):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        write_text(path, "".join(line + "\n" for line in kept))
    return len(kept), dropped


def done_message(p: Plan, cfg: TrainConfig, paths: dict[str, Path]) -> str:
    """What a resume of a finished run says, and what it still does."""
    point = p.resume
    why = ("early stopping ended it there" if point.stopped_early
           else f"--max_steps is {cfg.max_steps}")
    head = (f"[resume] the run in {disp(paths['root'])} is finished: {disp(point.path)} is at step {point.step} and "
            f"{why}, so there is nothing to train.")
    if p.complete:
        outputs = [cfg.export_nemo] if cfg.export_nemo else []
        return (f"{head} Its outputs are in place{' (' + disp(outputs[0]) + ')' if outputs else ''}. To train "
                f"further, pass a larger --max_steps.")
    missing = ", ".join(disp(m) for m in missing_outputs(cfg, paths))
    return f"{head} Missing {missing}: loading the model to write {'it' if ',' not in missing else 'them'} from " \
           f"that checkpoint (no training step runs)."
