"""Nothing executes on load: a planted checkpoint or a crafted `.nemo` runs no code, through the real CLI.

- Checkpoints are read with `weights_only=True`. A pickle whose `__reduce__` would create a marker file is given
  to `--resume PATH`, planted as `last.ckpt` for `--resume auto`, and given to `export-verify --against`: the
  marker never appears, and each command ends with one clear error naming the file (exit 2, no traceback).
- A `.nemo` is checked before NeMo sees it: members outside the archive's folder (absolute, `..`), links and
  devices are refused by name, and so is any class its config names for NeMo to build outside `nemo.`. The
  export copies only members that pass the same check.
"""
from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from tests.conftest import rewrite_nemo
from tests.train_cli import REPO, run, tiny_args

VERIFY = REPO / "recipes" / "export_verify.py"


class Payload:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def malicious(path: Path, marker: Path, *, zipped: bool) -> Path:
    """A file that looks like a checkpoint and runs a command when unpickled: torch.save's zip format, or a plain
    pickle (protocol 2, whose GLOBAL opcode names the function)."""
    record = {"global_step": 99, "state_dict": {}, "canary_lora": {"payload": Payload(marker)}}
    if zipped:
        torch.save(record, path)
    else:
        path.write_bytes(pickle.dumps(record, protocol=2))
    return path


def test_the_payload_is_real(tmp_path):
    """Loaded the old way, the file does run its command: the tests below prove something."""
    marker = tmp_path / "marker"
    torch.load(malicious(tmp_path / "x.ckpt", marker, zipped=True), weights_only=False)
    assert marker.exists()


@pytest.fixture()
def cli(fast_tiny_path, demo, tmp_path):
    def argv(exp: Path, **kw) -> list[str]:
        return tiny_args(fast_tiny_path, demo, exp, tmp_path / "cuts", export_nemo="", **kw)

    return argv


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-zip", "plain-pickle"])
def test_resume_path_with_a_payload_runs_nothing(cli, tmp_path, zipped):
    marker = tmp_path / "marker"
    evil = malicious(tmp_path / "evil.ckpt", marker, zipped=zipped)
    code, out = run(cli(tmp_path / "exp", resume=evil), timeout=300)
    assert code == 2, out
    assert f"--resume {evil}: refused to load it: it asks to import and call posix.system" in out
    assert "Nothing in it was run" in out and "Traceback" not in out
    assert not marker.exists()
    assert not (tmp_path / "exp" / "run.json").exists()  # refused before anything was written


def test_resume_auto_with_a_planted_last_ckpt_runs_nothing(cli, tmp_path):
    marker = tmp_path / "marker"
    ckpts = tmp_path / "exp" / "checkpoints"
    ckpts.mkdir(parents=True)
    evil = malicious(ckpts / "last.ckpt", marker, zipped=True)
    code, out = run(cli(tmp_path / "exp", resume="auto"), timeout=300)
    assert code == 2, out
    assert f"checkpoint {evil}: refused to load it" in out and "Traceback" not in out
    assert not marker.exists()


def test_export_verify_against_a_payload_runs_nothing(tiny_model_path, demo, tmp_path):
    marker = tmp_path / "marker"
    evil = malicious(tmp_path / "evil.ckpt", marker, zipped=True)
    code, out = run([str(tiny_model_path), "--against", str(evil), "--manifest", str(demo.adapt_val)],
                    script=VERIFY, timeout=300)
    assert code == 2, out
    assert f"--against {evil}: refused to load it" in out and "Traceback" not in out
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"not a checkpoint at all\n" * 40, "not a checkpoint this tool can read"),
    ("truncated", "not a checkpoint this tool can read"),
    ("foreign", "not a checkpoint written by this tool"),
], ids=["empty", "text", "truncated", "foreign"])
def test_a_garbage_resume_file_is_a_clear_error(cli, tmp_path, content, expected):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        buf = io.BytesIO()
        torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(1000)}, "canary_lora": {}}, buf)
        path.write_bytes(buf.getvalue()[:3000])
    elif content == "foreign":
        torch.save({"global_step": 3, "state_dict": {}}, path)
    else:
        path.write_bytes(content)
    code, out = run(cli(tmp_path / "exp", resume=path), timeout=300)
    assert code == 2, out
    assert f"--resume {path}: {expected}" in out and "Traceback" not in out


# ---- .nemo archives -------------------------------------------------------------------------------------------
def with_members(src: Path, dst: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A copy of the `.nemo` at `src` with the members `extra` appended (written as given, unchecked)."""
    with tarfile.open(src, "r:*") as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for info, data in extra:
            info.size = len(data) if data is not None else 0
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dst


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


UNSAFE = {  # name: (member, data, what the error says)
    "dotdot": (member("../x"), b"out", "'../x' (a path with '..')"),
    "nested-dotdot": (member("a/../../x"), b"out", "'a/../../x' (a path with '..')"),
    "absolute": (member("/abs/x"), b"out", "'/abs/x' (an absolute path)"),
    "symlink": (member("./passwd", tarfile.SYMTYPE, "/etc/passwd"), None, "'./passwd' (a symbolic link to /etc/passwd)"),
    "hardlink": (member("./hard", tarfile.LNKTYPE, "/etc/passwd"), None, "'./hard' (a hard link to /etc/passwd)"),
    "device": (member("./null", tarfile.CHRTYPE), None, "'./null' (a device)"),
    "fifo": (member("./pipe", tarfile.FIFOTYPE), None, "'./pipe' (a named pipe)"),
}


@pytest.mark.parametrize("kind", list(UNSAFE))
def test_preflight_refuses_unsafe_members_by_name(kind, tiny_model_path, tmp_path):
    from common.model.archive import inspect_nemo

    info, data, says = UNSAFE[kind]
    path = with_members(tiny_model_path, tmp_path / "crafted.nemo", [(info, data)])
    with pytest.raises(UserError) as e:
        inspect_nemo(path)
    assert f"--nemo {path}: refused" in str(e.value) and says in str(e.value)


def test_every_unsafe_member_is_named_at_once(tiny_model_path, tmp_path):
    from common.model.archive import inspect_nemo

    path = with_members(tiny_model_path, tmp_path / "crafted.nemo", [(i, d) for i, d, _ in UNSAFE.values()])
    with pytest.raises(UserError) as e:
        inspect_nemo(path)
    assert all(says in str(e.value) for _, _, says in UNSAFE.values())


def _set(path: str, value):
    def change(cfg: dict) -> dict:
        node = cfg
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
        return cfg

    return change


@pytest.mark.parametrize("where, value, says", [
    ("encoder._target_", "os.system", 'encoder._target_: "os.system"'),
    ("extra", [{"loss": {"_target_": "builtins.eval"}}], 'extra[0].loss._target_: "builtins.eval"'),
    ("target", "evil.EncDecMultiTaskModel", 'target: "evil.EncDecMultiTaskModel"'),
    ("head._target_", "nemo_evil.Head", 'head._target_: "nemo_evil.Head"'),
    ("legacy", {"cls": "subprocess.Popen", "params": {"args": "true"}}, 'legacy.cls: "subprocess.Popen"'),
    ("encoder._target_", 42, "encoder._target_: 42"),
], ids=["top-module", "nested-in-list", "model-class", "lookalike-prefix", "cls-params", "not-a-string"])
def test_preflight_accepts_only_nemo_targets(tiny_model_path, tmp_path, where, value, says):
    from common.model.archive import inspect_nemo

    path = rewrite_nemo(tiny_model_path, tmp_path / "crafted.nemo", config=_set(where, value))
    with pytest.raises(UserError) as e:
        inspect_nemo(path)
    assert "names classes outside NeMo" in str(e.value) and says in str(e.value)


def test_a_config_naming_only_nemo_classes_passes(tiny_model_path, tmp_path):
    from common.model.archive import config_targets, inspect_nemo

    info = inspect_nemo(tiny_model_path)
    targets = [v for _, v in config_targets(info.config)]
    assert len(targets) >= 5 and all(t.startswith("nemo.") for t in targets)
    path = rewrite_nemo(tiny_model_path, tmp_path / "x.nemo", config=_set("extra", {"cls": "not.a.class"}))
    assert inspect_nemo(path).target == info.target  # `cls` without `params` names nothing to build


def test_the_cli_refuses_a_crafted_nemo_before_loading_it(fast_tiny_path, demo, tmp_path):
    bad = rewrite_nemo(fast_tiny_path, tmp_path / "crafted.nemo", config=_set("encoder._target_", "os.system"))
    code, out = run(tiny_args(bad, demo, tmp_path / "exp", tmp_path / "cuts"), timeout=300)
    assert code == 2, out
    assert f"--nemo {bad}: refused" in out and "os.system" in out
    assert "Traceback" not in out and "Restoring" not in out and "restored" not in out


def test_the_export_copies_only_safe_members(tiny_model, tiny_model_path, tmp_path):
    """The export carries over the source members NeMo does not re-save (canary-1b-v2's timestamps model): a
    plain extra file is copied, members named outside the folder are not."""
    from common.model.archive import NemoInfo
    from common.model.io import save_nemo

    source = with_members(tiny_model_path, tmp_path / "source.nemo", [
        (member("./extra_artifact.bin"), b"kept"), (member("../escape.txt"), b"out"),
        (member("/abs/escape.txt"), b"out"), (member("./sub/../../up.txt"), b"out")])
    info = NemoInfo(path=source, target="", prompt_format="canary2", tokenizer_type="bpe", languages=[])
    out = tmp_path / "export.nemo"
    kept = save_nemo(tiny_model, out, source=info)
    assert kept == ["extra_artifact.bin"]
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert any(n.endswith("extra_artifact.bin") for n in names)
    assert not [n for n in names if "escape" in n or "up.txt" in n]
