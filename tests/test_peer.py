"""The peer row: transformers' Canary port with PEFT LoRA, built from the shape of our model and fed batches of
our batches' sizes."""
from __future__ import annotations

import re

import pytest
import torch


def test_peer_has_the_tiny_model_s_shape_and_the_issue_s_lora_targets(embedded):
    from common.bench.config import BenchConfig
    from common.bench.factories import NemoFactory
    from common.bench.peer import TARGETS, build_peer, peer_config

    factory = NemoFactory(embedded.random_nemo)
    enc, dec = factory.nemo_config["encoder"], factory.nemo_config["transf_decoder"]["config_dict"]
    cfg = peer_config(factory.nemo_config, factory.vocab_size)
    assert (cfg.encoder_config.num_hidden_layers, cfg.encoder_config.hidden_size, cfg.encoder_config.num_mel_bins,
            cfg.encoder_config.subsampling_factor) == (enc["n_layers"], enc["d_model"], enc["feat_in"],
                                                       enc["subsampling_factor"])
    assert (cfg.decoder_config.num_hidden_layers, cfg.decoder_config.hidden_size, cfg.vocab_size) == (
        dec["num_layers"], dec["hidden_size"], factory.vocab_size)
    peft_model, model = build_peer(BenchConfig("peer", 2, precision="32"), factory.nemo_config, factory.vocab_size,
                                   "cpu", train=True)
    adapted = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and n.endswith(TARGETS)]
    assert len(adapted) == 9 * enc["n_layers"] + 10 * dec["num_layers"]  # 368 for canary-1b-v2's 32 + 8 layers
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 rows: no bf16 base on a CPU


def test_peer_of_canary_1b_v2_is_canary_config_s_default():
    """CanaryConfig() is canary-1b-v2's shape: the peer built from our stand-in's NeMo config must be that model
    (962,155,520 parameters, counted on the meta device)."""
    from transformers import CanaryConfig, CanaryForConditionalGeneration

    from common.bench.peer import peer_config
    from common.embedded.model_builder import SHAPES, model_config

    nemo_cfg = model_config(SHAPES["1b-v2"], {"dir": None, "type": "bpe"}, "canary2")
    ours, default = peer_config(nemo_cfg, SHAPES["1b-v2"].vocab_size), CanaryConfig()
    for part in ("encoder_config", "decoder_config"):
        mine, theirs = getattr(ours, part).to_dict(), getattr(default, part).to_dict()
        differ = {k: (mine.get(k), v) for k, v in theirs.items() if mine.get(k) != v and k not in (
            "transformers_version", "architectures", "_name_or_path")}
        assert not differ, (part, differ)
    with torch.device("meta"):
        count = sum(p.numel() for p in CanaryForConditionalGeneration(ours).parameters())
    assert count == 962_155_520


def test_peer_labels_are_as_long_as_our_decoder_inputs(embedded, tmp_path):
    """The peer's labels: the canary2 prompt plus the transcript, as long as our batches' decoder inputs."""
    from common.bench.factories import NemoFactory
    from common.bench.peer import peer_config, peer_inputs
    from common.bench.synthetic import synthetic_set
    from tests.helpers import val_loader

    factory = NemoFactory(embedded.random_nemo)
    data = synthetic_set(tmp_path / "set", 6, 2.0, count_tokens=factory.count_tokens)
    batch = next(iter(val_loader(factory(), data.manifest, bs=6, data_dir=tmp_path / "cuts")))
    ours = float((batch.prompted_transcript_lens - 1).float().mean())
    features, labels = peer_inputs(peer_config(factory.nemo_config, factory.vocab_size), data, 3, "cpu")
    assert labels.shape[1] == round(ours) and features.shape == (3, 201, 64)  # 2 s at 100 frames a second, +1


def test_ratios_pair_ours_with_the_peer_and_each_with_its_own_forward_pass():
    from common.bench.measure import add_forward_ratios

    def row(mode, step, rate, speedups=""):
        return {"label": mode, "mode": mode, "set": "15s", "bs": 32, "accum": 1, "precision": "bf16-mixed",
                "status": "ok", "median_step_s": step, "audio_s_per_s": rate, "speedups": speedups,
                "step_over_fwd": None, "vs_peer": None}

    rows = [row("linear", 0.16, 3000.0), row("forward", 0.08, 6000.0), row("peer", 0.15, 2000.0),
            row("peer-forward", 0.06, 8000.0), row("linear", 0.12, 4000.0, "sdpa"),
            row("forward", 0.06, 8000.0, "sdpa")]
    add_forward_ratios(rows)
    assert [r["step_over_fwd"] for r in rows] == [2.0, None, 2.5, None, 2.0, None]
    assert [r["vs_peer"] for r in rows] == [1.5, 0.75, None, None, 2.0, 1.0]


@pytest.mark.parametrize("bad, message", [
    (dict(mode="peer", speedups=("sdpa",)), "the peer (transformers + PEFT) takes --compile and --cuda_graphs only"),
    (dict(mode="peer-forward", compile=True), "compile applies to training steps only"),
    (dict(mode="forward", grad_ckpt=True), "--grad_ckpt saves memory for a backward pass"),
])
def test_bench_configs_refuse_what_a_row_cannot_measure(bad, message):
    from common.bench.config import BenchConfig
    from common.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        BenchConfig(bs=2, **bad)
