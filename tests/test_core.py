"""The training core on the real tiny Canary: targets, CLI defaults, cut cache, languages, a full run + export."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from common.config import build_parser, parse_args
from common.errors import UserError


# ---- the user's original command line ---------------------------------------------------------------------
ORIGINAL_DEFAULTS = {  # the original script's defaults, kept on purpose
    "bs": 2, "accum": 8, "max_steps": 3000, "val_every_n_steps": 200, "lora_r": 8, "lora_alpha": 16.0,
    "lora_dropout": 0.0, "debug_linear": 0, "exp_dir": "exp/canary_ru_lora_win", "save_every": 500,
    "export_nemo": "models/nemo/canary-ru-lora-merged.nemo", "mem_report_steps": 50, "log": "csv",
}


def test_original_flags_parse_to_original_defaults():
    cfg = parse_args(["--nemo", "m.nemo", "--train", "t.jsonl", "--val", "v.jsonl"])
    for name, value in ORIGINAL_DEFAULTS.items():
        assert getattr(cfg, name) == value, name
    assert cfg.precision is None  # resolved to bf16 (bf16-mixed) unless the GPU lacks it
    assert (cfg.backend, cfg.seed, cfg.lora_targets, cfg.num_workers) == ("linear", 42, None, 0)
    assert (cfg.lr, cfg.warmup_steps, cfg.sched) == (3e-4, 100, "cosine")


def test_every_original_flag_is_accepted():
    argv = ("--nemo a.nemo --train t.jsonl --val v.jsonl --bs 3 --accum 6 --precision bf16 --max_steps 10 "
            "--val_every_n_steps 5 --lora_r 16 --lora_alpha 32 --lora_dropout 0.05 --debug_linear 20 --exp_dir e "
            "--save_every 5 --export_nemo o.nemo --mem_report_steps 1 --log tb").split()
    cfg = parse_args(argv)
    assert (cfg.bs, cfg.accum, cfg.precision, cfg.lora_r, cfg.lora_dropout, cfg.log) == (3, 6, "bf16", 16, 0.05, "tb")


def test_compile_takes_cuda_graphs_unless_turned_off():
    base = ["--nemo", "m.nemo", "--train", "t", "--val", "v"]
    assert (parse_args(base).compile, parse_args(base).cuda_graphs) == (False, True)
    assert parse_args(base + ["--compile"]).cuda_graphs is True
    assert parse_args(base + ["--compile", "--no-cuda_graphs"]).cuda_graphs is False


def test_bad_values_are_reported_together():
    with pytest.raises(UserError) as e:
        parse_args(["--nemo", "m.nemo", "--train", "t", "--val", "v", "--bs", "0", "--lora_dropout", "1.5",
                    "--lora_targets", "enc(oder"])
    msg = str(e.value)
    assert "--bs must be > 0, got 0" in msg and "--lora_dropout must be in [0, 1), got 1.5" in msg
    assert "enc(oder" in msg


def test_help_explains_every_flag():
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings


# ---- LoRA targets -------------------------------------------------------------------------------------------
def expected_targets(n_enc: int, n_dec: int) -> list[str]:
    names = []
    for i in range(n_enc):
        names += [f"encoder.layers.{i}.feed_forward1.linear1", f"encoder.layers.{i}.feed_forward1.linear2"]
        names += [f"encoder.layers.{i}.self_attn.linear_{x}" for x in ("q", "k", "v", "out")]
        names += [f"encoder.layers.{i}.feed_forward2.linear1", f"encoder.layers.{i}.feed_forward2.linear2"]
    for i in range(n_dec):
        for sub in ("first", "second"):
            names += [f"transf_decoder._decoder.layers.{i}.{sub}_sub_layer.{x}"
                      for x in ("query_net", "key_net", "value_net", "out_projection")]
        names += [f"transf_decoder._decoder.layers.{i}.third_sub_layer.dense_{x}" for x in ("in", "out")]
    return names


def test_default_targets_wrap_exactly_canarys_projections(tiny_model):
    from backends import registry

    applied = registry.get("linear").apply(tiny_model, registry.AdapterSpec())
    assert applied.modules == expected_targets(2, 2)
    # never the tied head, the positional projection or the subsampling output
    assert not any(re.search(r"log_softmax|linear_pos|pre_encode", n) for n in applied.modules)


def test_tied_head_is_never_wrapped_even_when_asked(tiny_model):
    from backends import registry

    applied = registry.get("linear").apply(tiny_model, registry.AdapterSpec(targets=(r"log_softmax\.mlp\.layer0",)))
    assert applied.modules == []
    assert any("tied head" in n for n in applied.notes)


def test_zero_matches_is_an_error_listing_names(tiny_model):
    from backends import registry
    from common.model.adapt import adapt

    with pytest.raises(UserError) as e:
        adapt(tiny_model, registry.get("linear"), registry.AdapterSpec(targets=(r"linear_qkv",)), debug_linear=0)
    assert "matched no nn.Linear" in str(e.value) and "encoder.layers.0.self_attn.linear_q" in str(e.value)


def test_merged_equals_unmerged_with_nonzero_b(tiny_model, demo):
    from backends import registry
    from backends.linear.layer import LoRALinear
    from common.model.steps import fixed_batch, log_probs
    from tests.helpers import val_loader

    backend = registry.get("linear")
    backend.apply(tiny_model, registry.AdapterSpec(r=4, alpha=8))
    torch.manual_seed(0)
    for m in tiny_model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.05)
    batch = fixed_batch(val_loader(tiny_model, demo.adapt_val))
    unmerged = log_probs(tiny_model, batch)
    backend.set_enabled(tiny_model, False)
    base = log_probs(tiny_model, batch)
    backend.set_enabled(tiny_model, True)
    backend.merge(tiny_model)
    merged = log_probs(tiny_model, batch)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter really changes the output
    assert (merged - unmerged).abs().max() < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in tiny_model.modules())


# ---- data ---------------------------------------------------------------------------------------------------
def test_cut_cache_is_reused_and_rebuilt_when_the_manifest_changes(tmp_path, demo):
    from common.data.cuts import build_cuts
    from common.data.manifest import load_manifest

    manifest = tmp_path / "m.jsonl"
    lines = demo.adapt_val.read_text(encoding="utf-8").splitlines()[:6]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first, built = build_cuts(load_manifest(manifest), tmp_path / "data", "canary2")
    assert built and first.name.endswith(".jsonl.gz") and first.parent == tmp_path / "data"
    again, built_again = build_cuts(load_manifest(manifest), tmp_path / "data", "canary2")
    assert again == first and not built_again
    manifest.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    changed, rebuilt = build_cuts(load_manifest(manifest), tmp_path / "data", "canary2")
    assert rebuilt and changed != first
    from lhotse import CutSet

    cuts = CutSet.from_file(changed)
    assert len(cuts) == 5
    cut = next(iter(cuts))
    assert cut.custom["source_lang"] == "ru" and cut.custom["pnc"] == "yes" and cut.supervisions[0].language == "ru"


def test_batches_for_pinning_come_out_as_the_models_batches(tmp_path, tiny_model, demo, monkeypatch):
    """The pinned path on a GPU: the DataLoader's own pin step must unwrap our pinnable batches into NeMo's
    batch with the same tensors. Pinning needs CUDA: on this CPU machine a loader asked to pin gives plain
    batches, and the unwrap is checked through torch's pin step with Tensor.pin_memory standing in as a copy."""
    import dataclasses

    from torch.utils.data._utils.pin_memory import pin_memory

    from common.data.cuts import build_cuts
    from common.data.loader import LoaderSettings, _PinnableBatches, make_loader
    from common.data.manifest import load_manifest

    cuts, _ = build_cuts(load_manifest(demo.adapt_val), tmp_path / "data", tiny_model.prompt_format)
    plain = next(iter(make_loader(cuts, tiny_model.tokenizer, tiny_model.prompt, LoaderSettings(batch_size=3),
                                  train=False)))
    asked = next(iter(make_loader(cuts, tiny_model.tokenizer, tiny_model.prompt,
                                  LoaderSettings(batch_size=3, pin_memory=True), train=False)))
    assert type(asked) is type(plain)  # no CUDA: nothing to pin, and nothing left wrapped

    loader = make_loader(cuts, tiny_model.tokenizer, tiny_model.prompt, LoaderSettings(batch_size=3), train=False)
    wrapped = _PinnableBatches(loader.dataset)[next(iter(loader.sampler))]
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: t.clone())
    pinned = pin_memory(wrapped)
    assert type(pinned) is type(plain) and [c.id for c in pinned.cuts] == [c.id for c in plain.cuts]
    for f in dataclasses.fields(plain):
        if isinstance(getattr(plain, f.name), torch.Tensor):
            assert torch.equal(getattr(pinned, f.name), getattr(plain, f.name)), f.name


def test_missing_fields_default_as_before(tmp_path, demo):
    from common.data.manifest import load_manifest

    entry = json.loads(demo.adapt_val.read_text(encoding="utf-8").splitlines()[0])
    bare = {"audio_filepath": entry["audio_filepath"], "text": entry["text"]}
    manifest = tmp_path / "bare.jsonl"
    manifest.write_text(json.dumps(bare, ensure_ascii=False) + "\n", encoding="utf-8")
    e = load_manifest(manifest).entries[0]
    assert (e.source_lang, e.target_lang, e.pnc) == ("ru", "ru", "yes")


# ---- languages ----------------------------------------------------------------------------------------------
def test_language_missing_from_the_checkpoint_names_the_ones_it_has(embedded, tmp_path):
    from common.embedded.default import ensure_random_tiny
    from common.model.archive import check_languages, inspect_nemo

    agg = ensure_random_tiny(embedded.random_nemo.parent, ["hello world", "guten tag", "hola", "bonjour"] * 30,
                             preset="tiny-agg")
    info = inspect_nemo(agg)
    assert info.prompt_format == "canary" and info.tokenizer_type == "agg"
    assert info.languages == ["de", "en", "es", "fr"]
    with pytest.raises(UserError) as e:
        check_languages(info, {"train.jsonl": {"ru"}})
    assert "ru" in str(e.value) and "de, en, es, fr" in str(e.value)
    unified = inspect_nemo(embedded.random_nemo)
    assert unified.prompt_format == "canary2" and unified.tokenizer_type == "bpe" and unified.languages == ["en", "ru"]


# ---- a real run through the CLI -------------------------------------------------------------------------------
def test_full_run_trains_only_lora_freezes_batchnorm_and_exports_base_keys(tmp_path, embedded, capsys):
    from common.model.io import restore
    from common.model.archive import inspect_nemo
    from common.training.run import run

    cfg = parse_args([
        "--nemo", str(embedded.random_nemo), "--train", str(embedded.data.adapt_train),
        "--val", str(embedded.data.adapt_val), "--precision", "32", "--bs", "4", "--accum", "2",
        "--max_steps", "6", "--val_every_n_steps", "3", "--save_every", "3", "--lr", "1e-2", "--warmup_steps", "1",
        "--max_train_cuts", "24", "--limit_val_batches", "1", "--mem_report_steps", "2", "--debug_linear", "3",
        "--exp_dir", str(tmp_path / "exp"), "--export_nemo", str(tmp_path / "out" / "merged.nemo"),
        "--data_dir", str(tmp_path / "data")])
    result = run(cfg)
    out = capsys.readouterr().out
    assert result.status == "finished" and result.global_step == 6
    for tag in ("[MEM:fit_start]", "[MEM:step2]", "[MEM:step4]", "[MEM:step6]", "[MEM:val_end]", "[MEM:fit_end]"):
        assert tag in out
    assert "[debug_linear] replaced 36 modules" in out
    assert result.export_check["ok"] and result.export_check["keys_equal_base"]
    exp = tmp_path / "exp"
    assert {p.name for p in (exp / "checkpoints").iterdir()} >= {"last.ckpt", "step-3.ckpt", "step-6.ckpt"}
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(".lora_" in k for k in ckpt["state_dict"]) and len(ckpt["state_dict"]) == 72
    assert ckpt["canary_lora"]["base_sha256"] and ckpt["optimizer_states"] and ckpt["lr_schedulers"]

    base = restore(embedded.random_nemo, info=inspect_nemo(embedded.random_nemo)).state_dict()
    merged = restore(result.export, info=inspect_nemo(result.export)).state_dict()
    assert set(base) == set(merged)
    adapted = {f"{n}.weight" for n in result.adapted}
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed == adapted  # every adapted weight moved, nothing else did (BatchNorm stats included)
    assert any("batch_norm.running_mean" in k for k in base)
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_bf16_base_trains_and_exports_into_the_original_fp32_weights(tmp_path, embedded, capsys):
    """--base_dtype bf16 holds frozen Linear/Conv1d weights in bf16 while training; the export must still merge
    into the user's exact fp32 weights (not their bf16 rounding), and leave every other weight bit-identical."""
    from common.model.io import restore
    from common.model.archive import inspect_nemo
    from common.training.run import run

    cfg = parse_args([
        "--nemo", str(embedded.random_nemo), "--train", str(embedded.data.adapt_train),
        "--val", str(embedded.data.adapt_val), "--precision", "bf16", "--base_dtype", "bf16", "--bs", "4",
        "--accum", "1", "--max_steps", "3", "--val_every_n_steps", "3", "--save_every", "3", "--lr", "1e-2",
        "--warmup_steps", "1", "--max_train_cuts", "12", "--limit_val_batches", "1", "--no_eval_before",
        "--exp_dir", str(tmp_path / "exp"), "--export_nemo", str(tmp_path / "merged.nemo"),
        "--data_dir", str(tmp_path / "data"), "--log", "none"])
    result = run(cfg)
    out = capsys.readouterr().out
    assert result.status == "finished" and result.export_check["ok"], result.export_check
    assert "[memory] frozen base held in bf16" in out
    base = restore(embedded.random_nemo, info=inspect_nemo(embedded.random_nemo)).state_dict()
    merged = restore(result.export, info=inspect_nemo(result.export)).state_dict()
    adapted = {f"{n}.weight" for n in result.adapted}
    assert all(v.dtype != torch.bfloat16 for v in merged.values())
    untouched = [k for k in base if k not in adapted]
    # weights that trained in bf16 without an adapter (convolutions, positional projections) come back exact
    cast_untouched = {"encoder.layers.0.conv.pointwise_conv1.weight", "encoder.layers.0.self_attn.linear_pos.weight"}
    assert cast_untouched <= set(untouched)
    assert all(not torch.equal(base[k], base[k].bfloat16().float()) for k in cast_untouched)  # bf16 would differ
    assert all(torch.equal(base[k], merged[k]) for k in untouched)  # exact fp32 values, not bf16-rounded
    assert all(not torch.equal(base[k], merged[k]) for k in adapted)  # the adapters were merged


def test_deferred_metrics_reads_keep_one_record_per_step_in_order(tmp_path, embedded, capsys, monkeypatch):
    """On a GPU the metrics are read every 10 steps, not every step; the records, MEM lines and the order
    around validation must be exactly those of per-step reads. Forced here on the CPU with a period of 4."""
    from common.training.callbacks import MetricsCallback
    from common.training.run import run

    start = MetricsCallback.on_train_start

    def every_4(self, trainer, pl_module):
        self.sync_every = 4
        start(self, trainer, pl_module)

    monkeypatch.setattr(MetricsCallback, "on_train_start", every_4)
    cfg = parse_args([
        "--nemo", str(embedded.random_nemo), "--train", str(embedded.data.adapt_train),
        "--val", str(embedded.data.adapt_val), "--precision", "32", "--bs", "2", "--accum", "1",
        "--max_steps", "7", "--val_every_n_steps", "5", "--save_every", "100", "--warmup_steps", "1",
        "--max_train_cuts", "16", "--limit_val_batches", "1", "--mem_report_steps", "3", "--no_eval_before",
        "--exp_dir", str(tmp_path / "exp"), "--export_nemo", "", "--data_dir", str(tmp_path / "data"),
        "--log", "none"])
    result = run(cfg)
    out = capsys.readouterr().out
    assert result.status == "finished" and result.global_step == 7
    assert out.index("[MEM:step3]") < out.index("[MEM:step6]")
    records = [json.loads(line) for line in (tmp_path / "exp" / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["kind"], r["step"]) for r in records if r["kind"] in ("train", "val")]
    assert [s for k, s in steps if k == "train"] == [1, 2, 3, 4, 5, 6, 7]
    # the validation after step 5 comes after step 5's record and before step 6's
    kinds = [k for k, _ in steps]
    assert kinds.index("val") == 5 and steps[5] == ("val", 5)
    assert all(math.isfinite(r["loss"]) and r["audio_s"] > 0 for r in records if r["kind"] == "train")
