"""Run the real training CLI (and other recipes) as subprocesses: wait for a line, send signals, read results."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINETUNE = REPO / "recipes" / "finetune_canary.py"


def tiny_args(nemo: Path, demo, exp_dir: Path, data_dir: Path, **overrides) -> list[str]:
    """A few optimizer steps on 10 clips (3 batches of 4, 4, 2): with --accum 2 an epoch is 2 optimizer steps,
    so 10 steps cross 4 epoch boundaries. fp32, lora_dropout 0; the model's own dropout and SpecAugment are on
    (they exercise the RNG restore)."""
    settings = {"nemo": nemo, "train": demo.adapt_train, "val": demo.adapt_val, "bs": 4, "accum": 2,
                "precision": "32", "max_steps": 10, "warmup_steps": 2, "save_every": 4, "val_every_n_steps": 4,
                "limit_val_batches": 1, "val_bs": 2, "max_train_cuts": 10, "exp_dir": exp_dir, "data_dir": data_dir,
                "export_nemo": exp_dir / "out.nemo", "log": "none", "mem_report_steps": 1}
    settings.update(overrides)
    argv = []
    for key, value in settings.items():
        if value is None:
            continue
        if value is True:
            argv.append(f"--{key}")
        else:
            argv += [f"--{key}", str(value)]
    return argv


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ, PYTHONUNBUFFERED="1", NEMO_LOG_LEVEL="WARNING", TOKENIZERS_PARALLELISM="false")
    out.pop("CANARY_LORA_WRITE_DELAY_S", None)
    out.update(extra)
    return out


class Proc:
    """A subprocess whose combined output is collected by a thread, so a test can wait for a line.

    `group=True` starts it in a process group of its own and signals the whole group, as a terminal's Ctrl+C
    does (data loader workers included).
    """

    def __init__(self, argv: list[str], script: Path = FINETUNE, group: bool = False, **env_extra: str):
        self.group = group
        self.popen = subprocess.Popen([sys.executable, str(script), *argv], cwd=REPO, env=env(**env_extra),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                      start_new_session=group)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        """Block until a line matches `pattern`; fail with the output so far if it never comes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                seen += 1
                if m := rx.search(line):
                    return m
            if self.popen.poll() is not None and seen >= len(self.lines):
                self._reader.join(5)
                if seen >= len(self.lines):
                    break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} (exit code {self.popen.poll()}); output:\n{self.output}")

    def signal(self, sig: int = signal.SIGINT) -> None:
        if self.group:
            os.killpg(self.popen.pid, sig)
        else:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 600) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(10)
        return code


def run(argv: list[str], script: Path = FINETUNE, timeout: float = 900, **env_extra: str) -> tuple[int, str]:
    proc = Proc(argv, script, **env_extra)
    return proc.wait(timeout), proc.output


def run_parallel(*jobs: list[str]) -> list[tuple[int, str]]:
    """Several CLI runs at once, each in a thread waiting on its process; (exit code, output) of each, in order."""
    results: list[tuple[int, str]] = [(0, "")] * len(jobs)

    def go(i, argv):
        results[i] = run(argv)

    threads = [threading.Thread(target=go, args=(i, argv)) for i, argv in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def train_records(exp_dir: Path) -> list[dict]:
    path = Path(exp_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r["kind"] == "train"]


def checkpoint_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


__all__ = ["REPO", "FINETUNE", "Proc", "run", "run_parallel", "tiny_args", "train_records", "checkpoint_step", "signal"]
