"""Bench sections that run whole processes: the real training CLI on one and on two GPUs (`ddp`), and the bench
itself twice over one compile cache, cold then warm (`firststep`).

The commands come from the recipe (`recipes/bench.py`): the bench wing starts `python -m recipes.finetune_canary`
and `python -m recipes.bench` without importing them. Every process gets NCCL_NVLS_ENABLE=0 (with PyTorch's and
NVSHMEM's multicast switches): NVLink multicast must stay off on shared hosts, also in the workers a launcher
starts, which inherit this environment.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from backends import registry
from common.atomic import write_text
from common.bench.config import BenchConfig
from common.bench.factories import cli_nemo
from common.bench.measure import _empty_row

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def process_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1", **extra}


def repeated_manifest(manifest: Path, copies: int, out: Path) -> Path:
    """`manifest`'s lines `copies` times over (the same audio files, new lines): a long training set in seconds."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    return write_text(out, "".join(line + "\n" for _ in range(copies) for line in lines))


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl's records; a broken last line (a run stopped mid-write) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def steady_rate(records: list[dict], warm: int) -> dict:
    """Audio seconds per second, step time and first step from `metrics.jsonl`'s training records, over the steps
    after `warm` (each record carries its own step's end time). Empty when too few steps were recorded."""
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    window = [r for r in train if r["step"] > warm]
    start = [r for r in train if r["step"] == warm]
    if not window or not start or window[-1]["time_s"] <= start[0]["time_s"]:
        return {}
    span = window[-1]["time_s"] - start[0]["time_s"]
    return {"steps": len(window), "median_step_s": round(span / len(window), 4),
            "audio_s_per_s": round(sum(r["audio_s"] for r in window) / span, 1),
            "first_step_s": round(train[0]["time_s"], 2), "last_loss": round(train[-1]["loss"], 4),
            "peak_gb": round(max(r.get("peak_gb", 0.0) for r in train), 3)}


REPO = Path(__file__).resolve().parents[2]


def run_process(argv: list[str], env: dict[str, str], timeout: float | None) -> tuple[int, str]:
    """Run `argv` from the repository root in a session of its own; past `timeout` seconds stop it and every
    process it started (a DDP launcher's other ranks too). Returns the exit code (-1 when stopped) and output."""
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(15)
                break
            except subprocess.TimeoutExpired:
                continue
        output, _ = proc.communicate()
        return -1, f"{output}\n[bench] stopped after {timeout:.0f} s (time budget)"


def _remaining(deadline: float | None, floor: float = 60.0) -> float | None:
    return None if deadline is None else max(floor, deadline - time.monotonic())


def _log_tail(text: str, n: int = 6) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-600:]


def ddp_scaling(command: list[str], factory, sets, scale, *, devices: list[int], compiled: bool, workers: int,
                work: Path, logs: Path, add, deadline: float | None,
                variants: tuple[tuple[str, ...], ...] = ((), ("nosync",))) -> list[str]:
    """The real CLI (`command` = python -m recipes.finetune_canary) on each device count, bs as the bench's largest
    size per device, --accum 1, on the bench's clips; rates from metrics.jsonl after `warm` steps. `variants` are
    --speedups sets tried on the largest device count after the plain runs (then on one device, to tell what is
    DDP's own)."""
    from common.bench.measure import _free

    bs, max_steps, warm = scale.sizes[-1], scale.ddp_steps, scale.ddp_warm
    nemo = cli_nemo(factory, work)
    _free(False)  # the model built to save it leaves the GPU to the runs
    data = sets.get(scale.clip_s, scale.n_clips)
    need = max(devices) * bs * (max_steps + 2)  # no epoch ends inside the measured steps
    copies = -(-need // len(data.durations))
    train = repeated_manifest(data.manifest, copies, work / "ddp" / f"train-x{copies}.jsonl")
    val_lines = data.manifest.read_text(encoding="utf-8").splitlines()[:max(devices)]
    val = write_text(work / "ddp" / "val.jsonl", "".join(line + "\n" for line in val_lines))
    plans = [(n, ()) for n in devices]
    for options in variants:
        if options:
            plans += [(max(devices), options)] + ([(1, options)] if max(devices) > 1 else [])
    rows: dict[tuple, dict] = {}
    notes = [f"The CLI as users run it: {' '.join(command[-2:])} --compile --bs {bs} --accum 1 --max_steps "
             f"{max_steps} --num_workers {workers}, on {len(data.durations)} clips of {data.label} listed "
             f"{copies} times; rates over steps {warm + 1}-{max_steps} from metrics.jsonl (audio of every GPU)."]
    for n, options in plans:
        cfg = BenchConfig(registry.DEFAULT, bs, compile=compiled, speedups=options,
                          tag=f"{n} GPU" + ("s" if n > 1 else ""))
        row = _empty_row(cfg, data, "ok")
        row.update(devices=n, eff_bs=bs * n)
        if deadline is not None and time.monotonic() > deadline:
            row.update(status="skipped", message="time budget used up")
            add(row)
            continue
        exp = work / "ddp" / f"run-{n}gpu{'-' + '-'.join(options) if options else ''}"
        shutil.rmtree(exp, ignore_errors=True)
        argv = [*command, "--nemo", str(nemo), "--train", str(train), "--val", str(val), "--devices", str(n),
                "--bs", str(bs), "--accum", "1", "--max_steps", str(max_steps), "--num_workers", str(workers),
                "--no_eval_before", "--val_every_n_steps", str(100 * max_steps),
                "--save_every", str(100 * max_steps), "--limit_val_batches", "1", "--val_bs", "1",
                "--export_nemo", "", "--exp_dir", str(exp), "--data_dir", str(work / "cuts"), "--log", "none",
                "--lr", "1e-4", "--warmup_steps", "0", "--mem_report_steps", "0", "--seed", "0",
                *(["--compile"] if compiled else []), *(["--speedups", ",".join(options)] if options else [])]
        t0 = time.monotonic()
        code, output = run_process(argv, process_env(), _remaining(deadline))
        row["wall_s"] = round(time.monotonic() - t0, 1)
        write_text(logs / f"ddp-{n}gpu{'-' + '-'.join(options) if options else ''}.log", output)
        rate = steady_rate(read_records(exp / "metrics.jsonl"), warm)
        if not rate:
            row.update(status="error", message=f"exit {code}: {_log_tail(output)}")
        else:
            row.update(rate, message="" if code == 0 else f"exit {code} after its steps: {_log_tail(output, 2)}")
            rows[(n, options)] = row
            one = rows.get((1, options))
            if n > 1 and one:
                row["scaling"] = round(row["audio_s_per_s"] / one["audio_s_per_s"], 3)
                with_ = " +" + "+".join(options) if options else ""
                notes.append(f"{n} GPUs{with_}: {row['audio_s_per_s']} audio s/s, {row['scaling']:.2f}x one GPU "
                             f"({100 * row['scaling'] / n:.0f}% per GPU).")
        add(row)
    return notes


def first_step(command: list[str], spec: str, *, compiled: bool, work: Path, logs: Path, add,
               deadline: float | None) -> list[str]:
    """The bench (`command` = python -m recipes.bench) run twice on one configuration over one fresh compile
    cache folder: cold (empty), then warm (what the first run stored). Each is a new process, so nothing
    compiled stays in memory between them; `first step s` includes compiling, `wall s` the whole process."""
    cache = work / "first-step-cache"
    shutil.rmtree(cache, ignore_errors=True)
    notes = [f"`{' '.join(command[-2:])} --configs {spec}{' --compile' if compiled else ''} --warmup 1 --steps 2`, "
             f"twice, TORCHINDUCTOR_CACHE_DIR={cache} (emptied first)."]
    first = {}
    for phase in ("cold", "warm"):
        if deadline is not None and time.monotonic() > deadline:
            notes.append(f"{phase}: skipped (time budget used up)")
            continue
        out = work / "first-step-out" / phase
        shutil.rmtree(out, ignore_errors=True)
        argv = [*command, "--configs", spec, "--warmup", "1", "--steps", "2", "--out", str(out), "--work",
                str(work), *(["--compile"] if compiled else [])]
        t0 = time.monotonic()
        code, output = run_process(argv, process_env(TORCHINDUCTOR_CACHE_DIR=str(cache)), _remaining(deadline))
        wall = round(time.monotonic() - t0, 1)
        write_text(logs / f"firststep-{phase}.log", output)
        table = out / "bench.json"
        if code != 0 or not table.is_file():
            notes.append(f"{phase}: exit {code}: {_log_tail(output)}")
            continue
        for row in json.loads(table.read_text(encoding="utf-8"))["rows"]:
            row.update(label=f"{row['label']} {phase} cache", wall_s=wall, process_s=wall)
            first[phase] = row.get("first_step_s")
            add(row)
    if first.get("cold") and first.get("warm"):
        notes.append(f"First compiled step: {first['cold']:.1f} s cold, {first['warm']:.1f} s warm "
                     f"({first['cold'] / max(first['warm'], 1e-9):.1f}x faster from the cache).")
    return notes


def process_section(name: str, args, factory, sets, scale, work: Path, runner, workers: int, add) -> list[str]:
    """The sections of whole processes (ddp, firststep), the Windows 12 GB rows and eval against transcribe()."""
    from common.bench.evalspeed import eval_speed
    from common.bench.windows12 import windows12

    logs = Path(args.out) / "logs"
    if name == "ddp":
        devices = [int(x) for x in args.ddp_devices.split(",")] if args.ddp_devices else default_devices()
        return ddp_scaling(args.train_command, factory, sets, scale, devices=devices, compiled=args.compile,
                           workers=workers, work=work, logs=logs, add=add, deadline=runner.deadline)
    if name == "firststep":
        return first_step(args.bench_command, f"{registry.DEFAULT}:{scale.sizes[-1]}", compiled=args.compile,
                          work=work, logs=logs, add=add, deadline=runner.deadline)
    if name == "win12":
        return windows12(runner, sets, scale, add)
    return eval_speed(factory, sets, scale, work, add)


def default_devices() -> list[int]:
    import torch

    return [1, 2] if torch.cuda.device_count() >= 2 else [1]
