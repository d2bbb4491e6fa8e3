"""Mixing and data at scale through the real CLI, on the tiny model and real files.

- `--train` a JSONL manifest `--mix` a Lhotse cut manifest, a NeMo tarred dataset and an input_cfg YAML (over the
  tarred set and a Lhotse Shar folder, read by NeMo): 2 steps, stop (as Ctrl+C would), `--resume auto`, 2 more steps
  draw the same cuts as 4 steps straight: every step's loss, the adapters and each source's counts are equal; the
  shares are logged (metrics.jsonl, console) and reported (summary.json, report.md);
- `--train` a Lhotse Shar folder alone trains in epochs, as a manifest does;
- a bad --mix stops before NeMo is imported, naming the value and the fix.

Validation runs only after training (--val_every_n_steps past --max_steps): the runs stay short.
"""
from __future__ import annotations

import json
import shutil
import time

import pytest

from tests.source_sets import build_sets
from tests.train_cli import run, run_parallel, tiny_args, train_records

MIX = ("general_cuts.jsonl.gz", "tarred", "mix.yaml")


@pytest.fixture(scope="module")
def runs(fast_tiny_path, demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixing")
    sets = build_sets(demo, root / "data")
    d = {name: root / name for name in ("straight", "part1", "resumed", "shar")}

    def args(name, **kw):
        settings = dict(export_nemo="", no_eval_before=True, max_steps=4, save_every=2, val_every_n_steps=100)
        argv = tiny_args(fast_tiny_path, demo, d[name], root / "cuts", **(settings | kw))
        if name != "shar":
            for spec in (f"{sets['cuts']}:0.5", f"{sets['tarred']}:0.25", f"{sets['yaml']}:0.25"):
                argv += ["--mix", spec]
        return argv

    first = dict(zip(("straight", "part1", "shar"), run_parallel(
        args("straight"), args("part1", stop_after_steps=2), args("shar", train=sets["shar"], max_steps=3))))
    shutil.copytree(d["part1"], d["resumed"])
    first["resumed"] = run(args("resumed", resume="auto"))
    return d, first


def _summary(path):
    return json.loads((path / "summary.json").read_text(encoding="utf-8"))


def test_mixing_resumes_exactly(runs):
    d, codes = runs
    assert codes["part1"][0] == 130, codes["part1"][1]
    for name in ("straight", "resumed"):
        assert codes[name][0] == 0, codes[name][1]
    out = codes["resumed"][1]
    assert "[resume] the training data is back where it stopped: 4 batches drawn again and skipped" in out

    from safetensors.torch import load_file

    straight, resumed = (load_file(str(d[n] / "adapters.safetensors")) for n in ("straight", "resumed"))
    assert max(float((straight[k] - resumed[k]).abs().max()) for k in straight) == 0.0
    ref = {r["step"]: r["loss"] for r in train_records(d["straight"])}
    got = {r["step"]: r["loss"] for r in train_records(d["resumed"])}
    assert sorted(got) == [1, 2, 3, 4] and got == ref
    assert _summary(d["resumed"])["mix"] == _summary(d["straight"])["mix"]


def test_mix_shares_are_logged_and_reported(runs):
    d, codes = runs
    out = codes["straight"][1]
    assert "[data] --mix general_cuts.jsonl.gz (Lhotse cuts): 16 clips" in out
    assert "[data] --mix tarred (NeMo tarred): 12 clips" in out and "--mix mix.yaml (input_cfg YAML): 24 clips" in out
    assert ("mixing by weight (1 : 0.5 : 0.25 : 0.25): adapt_train.jsonl 50%, general_cuts.jsonl.gz 25%, tarred 12%, "
            "mix.yaml 12% of the cuts drawn") in out
    mix = _summary(d["straight"])["mix"]
    rows = {r["name"]: r for r in mix["sources"]}
    assert list(rows) == ["adapt_train.jsonl", *MIX]
    trained = sum(r["audio_s"] for r in train_records(d["straight"]))
    assert mix["cuts"] == 4 * 2 * 4 and abs(mix["seconds"] - trained) < 0.01 * trained
    assert sum(r["cuts"] for r in rows.values()) == mix["cuts"]
    assert [r["expected_share"] for r in rows.values()] == [0.5, 0.25, 0.125, 0.125]
    assert f"[mix] step 4: adapt_train.jsonl {100 * rows['adapt_train.jsonl']['cut_share']:.0f}% of cuts" in out
    records = [json.loads(x) for x in (d["straight"] / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    logged = [r for r in records if r["kind"] == "mix"]
    assert [r["step"] for r in logged] == [4]
    assert {k: v["cuts"] for k, v in logged[0]["sources"].items()} == {k: r["cuts"] for k, r in rows.items()}
    report = (d["straight"] / "report.md").read_text(encoding="utf-8")
    assert "### Data mixing" in report and "| `general_cuts.jsonl.gz` | Lhotse cuts | 0.5 | 25.0% |" in report


def test_a_shar_folder_trains_in_epochs(runs):
    d, codes = runs
    assert codes["shar"][0] == 0, codes["shar"][1]
    out = codes["shar"][1]
    assert "[data] --train shar (Lhotse Shar): 12 clips" in out and "defaults ru/ru/yes" in out and "[mix]" not in out
    steps = train_records(d["shar"])
    assert [r["step"] for r in steps] == [1, 2, 3] and all(r["loss"] > 0 for r in steps)
    assert max(r["epoch"] for r in steps) >= 1  # one source: epochs, as with a manifest (10 clips: 3 batches each)
    assert _summary(d["shar"])["mix"] is None


@pytest.mark.parametrize("spec, expected", [
    ("{general}", ["--mix", "has no weight", "DATA:WEIGHT"]),
    ("C:\\data\\general.jsonl", ["drive letter C:", "C:\\data\\general.jsonl:0.3"]),
    ("{general}:lots", ["'lots' after the last ':' is not a number"]),
    ("{missing}:0.3", ["--mix", "gone.jsonl not found", "input_cfg YAML"]),
    ("{foreign}:0.3", ["Language not supported", "--mix", "foreign.jsonl uses xx", "knows only"]),
])
def test_a_bad_mix_fails_before_nemo(spec, expected, fast_tiny_path, demo, tmp_path):
    """Checked as --train is, before the model loads: the spec, the files, the languages against the checkpoint."""
    lines = demo.base_val.read_text(encoding="utf-8").splitlines()[:3]
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text("".join(json.dumps(json.loads(x) | {"source_lang": "xx"}) + "\n" for x in lines),
                       encoding="utf-8")
    spec = spec.format(general=demo.base_val, missing=tmp_path / "gone.jsonl", foreign=foreign)
    t0 = time.monotonic()
    code, out = run(tiny_args(fast_tiny_path, demo, tmp_path / "exp", tmp_path / "cuts", mix=spec), timeout=120)
    assert code == 2, out
    for text in expected:
        assert text in out, out
    assert "Traceback" not in out and "[NeMo" not in out  # stopped before NeMo was imported
    assert time.monotonic() - t0 < 10
