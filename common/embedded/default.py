"""The embedded default: a tiny Canary and a synthetic Russian speech set, built offline and cached.

A random tiny model cannot show that fine-tuning helps, so the default base model is first trained in full on
the "base" slice of the speech (male voices, normal speed) and cached. LoRA runs then adapt it to the "adapt"
slice (female voices, faster, noisy); the base slice's validation set serves as the regression set.

Cache: `$CANARY_LORA_CACHE` or `<repo>/.cache`. Each artifact is rebuilt only when missing or when the recipe
that makes it changes (a stamp holds the settings it was made with).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from common.atomic import write_text
from common.rundir import cache_dir

_VERSION = 2


@dataclass(frozen=True)
class BaseTraining:
    """How the default base model is pretrained (full fine-tuning of the random tiny model)."""

    # From scratch the model first learns the sentences' grammar and only later (~1000-1500 steps) to listen;
    # a decaying learning rate stalls it before then, so the rate stays constant after warm-up.
    steps: int = 2400  # about 8 min on 2 CPU cores
    bs: int = 16
    lr: float = 2e-3
    warmup: int = 200
    sched: str = "constant"
    seed: int = 0


@dataclass(frozen=True)
class Embedded:
    data: object  # common.embedded.speech.DemoSet
    random_nemo: Path
    base_nemo: Path


def _stamp_ok(stamp: Path, settings: dict) -> bool:
    try:
        return json.loads(stamp.read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        return False


def ensure_random_tiny(root: Path, corpus: list[str], preset: str = "tiny") -> Path:
    """Build (once) a random-weight tiny Canary `.nemo` with a tokenizer trained on `corpus`."""
    out = root / f"canary-{preset}-random.nemo"
    stamp = out.with_suffix(".json")
    settings = {"version": _VERSION, "preset": preset, "corpus_lines": len(corpus),
                "corpus_hash": hash_lines(corpus)}
    if out.exists() and _stamp_ok(stamp, settings):
        return out
    from common.embedded.model_builder import build_model
    from common.model.io import save_nemo

    languages = ("en", "de", "es", "fr") if preset == "tiny-agg" else ("ru", "en")
    model = build_model(preset, corpus, root / f"build-{preset}", languages=languages)
    save_nemo(model, out)
    write_text(stamp, json.dumps(settings))
    return out


def hash_lines(lines: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def ensure_base(root: Path, data, random_nemo: Path, training: BaseTraining = BaseTraining()) -> Path:
    """Pretrain the random tiny model in full on the base slice (cached)."""
    out = root / "canary-tiny-ru-base.nemo"
    stamp = out.with_suffix(".json")
    settings = {"version": _VERSION, "training": asdict(training), "random": random_nemo.name,
                "data": json.loads((data.root / "demo.json").read_text(encoding="utf-8")).get("spec")}
    if out.exists() and _stamp_ok(stamp, settings):
        return out
    from common.config import TrainConfig, validate
    from common.training.run import run

    print(f"[embedded] pretraining the tiny base model on the base slice ({training.steps} steps, cached in {out})",
          flush=True)
    cfg = validate(TrainConfig(
        nemo=str(random_nemo), train=str(data.base_train), val=str(data.base_val), bs=training.bs, accum=1,
        precision="32", max_steps=training.steps, val_every_n_steps=training.steps, full_finetune=True,
        lr=training.lr, warmup_steps=training.warmup, sched=training.sched, seed=training.seed,
        exp_dir=str(root / "base-pretrain"),
        save_every=training.steps, export_nemo=str(out), mem_report_steps=0, log="none", eval_before=False,
        data_dir=str(root / "cuts"), limit_val_batches=10, val_bs=16))
    result = run(cfg)
    if result.status != "finished" or not result.export_check.get("ok"):
        raise RuntimeError(f"pretraining the embedded base model failed: {result.status} {result.export_check}")
    write_text(stamp, json.dumps(settings))
    return out


def ensure_embedded(*, pretrain: bool = True, training: BaseTraining = BaseTraining()) -> Embedded:
    """Everything the demo and the tests need: speech set, random tiny model and (optionally) the base."""
    from common.embedded.speech import DemoSpec, build_demo_set, tokenizer_corpus

    root = cache_dir()
    spec = DemoSpec()
    demo = build_demo_set(root / "demo", spec)
    random_nemo = ensure_random_tiny(root / "models", tokenizer_corpus(spec))
    base = ensure_base(root / "models", demo, random_nemo, training) if pretrain else random_nemo
    return Embedded(data=demo, random_nemo=random_nemo, base_nemo=base)
