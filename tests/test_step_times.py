"""metrics.jsonl time stamps: every training record carries its own step's end, also when records are read in
groups (every 10 steps on a GPU), so per-step rates can be read from the file."""
from __future__ import annotations

import json
import time

from common.config import parse_args
from tests.train_cli import tiny_args


def test_end_times_from_device_events():
    from common.training.callbacks import end_times_from_events

    # the last step seen complete at t=100 s; the steps' events 300, 200, 100 and 0 ms before it
    assert end_times_from_events(100.0, [300.0, 200.0, 100.0, 0.0]) == [99.7, 99.8, 99.9, 100.0]
    assert end_times_from_events(5.0, [-0.001]) == [5.0]  # timer jitter never dates a step after the last one


def test_records_read_in_groups_keep_each_step_s_time(tmp_path, embedded, monkeypatch):
    """Read every 4 steps (as a GPU reads every 10): each record's time_s must fall between its step's start and
    the next step's start, not at the time of the read that wrote it."""
    from common.training.callbacks import MetricsCallback
    from common.training.run import run

    start, batch_start = MetricsCallback.on_train_start, MetricsCallback.on_train_batch_start
    starts: list[float] = []  # each step's start, on the metrics log's clock

    def every_4(self, trainer, pl_module):
        self.sync_every = 4
        start(self, trainer, pl_module)

    def note_start(self, trainer, pl_module, batch, batch_idx):
        starts.append(time.time() - self.metrics.t0)
        batch_start(self, trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(MetricsCallback, "on_train_start", every_4)
    monkeypatch.setattr(MetricsCallback, "on_train_batch_start", note_start)
    cfg = parse_args(tiny_args(embedded.random_nemo, embedded.data, tmp_path / "exp", tmp_path / "data", bs=2,
                               accum=1, max_steps=8, val_every_n_steps=100, save_every=100, warmup_steps=1,
                               max_train_cuts=16, mem_report_steps=0, no_eval_before=True, export_nemo=""))
    assert run(cfg).global_step == 8
    records = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9)) and len(starts) == 8
    for record, began, next_began in zip(train, starts, starts[1:]):
        # written in groups of 4, yet dated by its own step (time_s is rounded to the millisecond)
        assert began < record["time_s"] <= next_began + 0.001, (record["step"], began, record["time_s"], next_began)
