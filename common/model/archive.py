"""Checks that run before NeMo is imported, so bad input fails in about a second.

A `.nemo` is a tar archive with `model_config.yaml`, `model_weights.ckpt` and tokenizer artifacts. Reading
the config and the tokenizer's vocabulary from the archive tells the model class, the prompt format, the
tokenizer layout (unified or aggregate) and the languages the checkpoint knows, without loading weights.

A `.nemo` from elsewhere is also checked for what it could do when NeMo restores it: every member must be a plain
file or folder inside the archive (no absolute path, no `..`, no link, no device), and every class its config
names for NeMo to build (`_target_`, `target`, `cls`) must be one of NeMo's (`ALLOWED_TARGETS`).
"""
from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError
from common.messages import capped, disp, show

LANG_TOKEN = re.compile(r"^<\|([a-z]{2}(?:-[A-Z]{2})?)\|>$")
MODEL_CLASS = "EncDecMultiTaskModel"
# the classes and functions a .nemo's config may ask NeMo to import and call: NeMo's own, and nothing else. The
# one place to allow more (a prefix ending in "." or an exact dotted name), should a real checkpoint need it.
ALLOWED_TARGETS = ("nemo.",)
TARGET_KEYS = ("_target_", "target", "cls")  # Hydra's key, and NeMo's from_config_dict keys


@dataclass
class NemoInfo:
    path: Path
    target: str
    prompt_format: str
    tokenizer_type: str  # "bpe" (unified CanaryBPETokenizer) or "agg" (one SentencePiece per language)
    languages: list[str]
    config: dict = field(repr=False, default_factory=dict)
    members: list[str] = field(repr=False, default_factory=list)
    size: int = 0  # bytes of all members: the size of a merged fp32 export, near enough

    @property
    def export_bytes(self) -> int:
        """About what an export of this model takes on disk: 4 bytes per parameter (weights are saved in fp32)
        plus the tokenizer and other artifacts, i.e. about the archive's own size for an fp32 source."""
        return self.size


def _member(tar: tarfile.TarFile, names: list[str], wanted: str) -> tarfile.TarInfo | None:
    """Find an archive member by its base name (NeMo prefixes artifacts with a hash and may use ./)."""
    for n in names:
        base = n.rsplit("/", 1)[-1]
        if base == wanted or base.endswith("_" + wanted):
            return tar.getmember(n)
    return None


def _artifact_name(value: str | None) -> str | None:
    return value.split(":", 1)[1] if value and value.startswith("nemo:") else (Path(value).name if value else None)


def inspect_nemo(path: str | Path) -> NemoInfo:
    """Read what the checkpoint says about itself; a clear error if it is not a Canary `.nemo`."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise UserError(f"--nemo {path}: file not found. Pass the path of your Canary .nemo checkpoint "
                        f"(e.g. canary-1b-v2.nemo).")
    if path.is_dir() or not tarfile.is_tarfile(path):
        raise UserError(f"--nemo {path}: not a .nemo archive (a .nemo is a tar file holding model_config.yaml "
                        f"and model_weights.ckpt). Check the path, or re-download the checkpoint if it is truncated.")
    try:
        with tarfile.open(path, "r:*") as tar:
            entries = tar.getmembers()
            check_members(path, entries)
            names = [m.name for m in entries]
            cfg_member = _member(tar, names, "model_config.yaml")
            if cfg_member is None or _member(tar, names, "model_weights.ckpt") is None:
                raise UserError(f"--nemo {path}: the archive has no model_config.yaml/model_weights.ckpt, so it is "
                                f"not a NeMo checkpoint.")
            config = yaml.safe_load(tar.extractfile(cfg_member).read()) or {}
            if not isinstance(config, dict):
                raise UserError(f"--nemo {path}: its model_config.yaml is not a mapping, so it is not a NeMo model.")
            check_targets(path, config)
            target = str(config.get("target", ""))
            if MODEL_CLASS not in target:
                raise UserError(f"--nemo {path}: this is a {target.rsplit('.', 1)[-1] or 'unknown'} checkpoint, not an "
                                f"{MODEL_CLASS} (Canary). This tool fine-tunes Canary models such as canary-1b-v2.")
            tok = config.get("tokenizer", {}) or {}
            tok_type = str(tok.get("type", "bpe")).lower()
            languages = _languages(tar, names, tok, tok_type)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"--nemo {path}: cannot read the archive ({e}). The file is probably truncated; "
                        f"copy or download it again.") from e
    return NemoInfo(path=path, target=target, prompt_format=str(config.get("prompt_format", "canary")),
                    tokenizer_type=tok_type, languages=languages, config=config, members=names,
                    size=sum(m.size for m in entries if m.isfile()))


# ---- what restoring the archive could do --------------------------------------------------------------------
def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why extracting `member` could write or read outside the archive's folder; None for a plain file or folder
    with a relative name."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in name.split("/"):
        return "a path with '..'"
    if member.issym():
        return f"a symbolic link to {member.linkname}"
    if member.islnk():
        return f"a hard link to {member.linkname}"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a named pipe"
    if not (member.isfile() or member.isdir()):
        return "not a regular file"
    return None


def check_members(path: Path, members: list[tarfile.TarInfo]) -> None:
    bad = [f"{disp(m.name)!r} ({why})" for m in members if (why := unsafe_member(m))]
    if bad:
        raise UserError(f"--nemo {path}: refused: the archive has members that would land outside its folder or "
                        f"are not plain files: {'; '.join(capped(bad))}. A .nemo written by NeMo has none; get the "
                        f"checkpoint from its original source.")


def target_allowed(name: str) -> bool:
    return any(name.startswith(a) if a.endswith(".") else name == a for a in ALLOWED_TARGETS)


def config_targets(node, where: str = "") -> list[tuple[str, object]]:
    """Every (config path, value) naming a class or function to build, anywhere in the config."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            at = f"{where}.{key}" if where else str(key)
            names_class = key in ("_target_", "target") or (key == "cls" and "params" in node)
            if names_class and (key == "_target_" or isinstance(value, str)):
                found.append((at, value))
            else:
                found += config_targets(value, at)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += config_targets(value, f"{where}[{i}]")
    return found


def check_targets(path: Path, config: dict) -> None:
    bad = [f"{at}: {show(value)}" for at, value in config_targets(config)
           if not (isinstance(value, str) and target_allowed(value))]
    if bad:
        raise UserError(f"--nemo {path}: refused: its model_config.yaml names classes outside NeMo for NeMo to "
                        f"build, which would run their code: {'; '.join(capped(bad))}. Only names under "
                        f"{', '.join(ALLOWED_TARGETS)} are accepted (common/model/archive.py: ALLOWED_TARGETS).")


def _vocab_tokens(tar: tarfile.TarFile, names: list[str], cfg: dict) -> list[str]:
    for key, fallback in (("vocab_path", "vocab.txt"), ("spe_tokenizer_vocab", "tokenizer.vocab")):
        member = _member(tar, names, _artifact_name(cfg.get(key)) or fallback)
        if member is not None:
            text = tar.extractfile(member).read().decode("utf-8", errors="replace")
            return [line.split("\t", 1)[0].strip() for line in text.splitlines()]
    return []


def _languages(tar, names, tok: dict, tok_type: str) -> list[str]:
    if tok_type == "agg":
        # one sub-tokenizer per language; the special-token model (spl_tokens) is not a language
        return sorted(k for k in (tok.get("langs") or {}) if k != "spl_tokens")
    return sorted({m.group(1) for t in _vocab_tokens(tar, names, tok) if (m := LANG_TOKEN.match(t))})


def check_languages(info: NemoInfo, used: dict[str, set[str]]) -> None:
    """`used` maps a manifest path to the languages it asks for; each must be known to the checkpoint."""
    if not info.languages:
        return  # could not read the vocabulary from the archive; the model load will check again
    problems = []
    for manifest, langs in used.items():
        missing = sorted(langs - set(info.languages))
        if missing:
            problems.append(f"{manifest} uses {', '.join(missing)}")
    if problems:
        raise UserError(
            f"Language not supported by this checkpoint: {'; '.join(problems)}. {info.path.name} "
            f"({info.prompt_format} prompt format, {'aggregate' if info.tokenizer_type == 'agg' else 'unified'} "
            f"tokenizer) knows only: {', '.join(info.languages)}. Use a Canary that covers the language (canary-1b-v2 "
            f"knows 25 European languages incl. ru) or fix source_lang/target_lang in the manifest.")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
