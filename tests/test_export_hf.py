"""`just export-hf` on real checkpoints: the tiny base to a transformers folder that reloads and transcribes raw
audio as NeMo does, a run's LoRA as a PEFT adapter, and the aggregate-tokenizer checkpoint refused clearly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_cli import REPO, run, tiny_args

EXPORT_HF = REPO / "recipes" / "export_hf.py"


def manifest_of(demo, rows: slice, path: Path) -> Path:
    lines = Path(demo.base_val).read_text(encoding="utf-8").splitlines()[rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hf_folder(base_nemo_path, demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    code, out = run(["--nemo", str(base_nemo_path), "--out", str(root / "hf"), "--audio",
                     str(manifest_of(demo, slice(0, 2), root / "check.jsonl"))], script=EXPORT_HF)
    assert code == 0, out
    return root / "hf", out


def test_folder_reloads_and_transcribes_raw_audio_as_nemo_does(hf_folder, base_nemo_path, demo):
    import soundfile as sf
    import torch
    from transformers import AutoProcessor, CanaryForConditionalGeneration

    from tests.conftest import restore_tiny
    from tests.helpers import val_loader
    from common.model.steps import greedy_transcripts

    folder, out = hf_folder
    assert "[export-hf] check: OK" in out
    check = json.loads((folder / "conversion.json").read_text(encoding="utf-8"))
    assert check["ok"] and check["log_prob_max_abs_diff"] <= 1e-4 and check["prompt_equal"] and check["texts_equal"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
            "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    # clips the command did not check: the reloaded folder, through its own processor, against NeMo's decoding
    clips = manifest_of(demo, slice(2, 5), folder.parent / "more.jsonl")
    nemo = restore_tiny(base_nemo_path).eval()
    from common.quality.evaluate import set_decoding

    set_decoding(nemo, 1)
    batch = next(iter(val_loader(nemo, clips, bs=3, data_dir=folder.parent / "cuts")))
    expected = greedy_transcripts(nemo, batch)
    processor = AutoProcessor.from_pretrained(str(folder))
    model = CanaryForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    waves = [sf.read(json.loads(line)["audio_filepath"], dtype="float32")[0]
             for line in clips.read_text(encoding="utf-8").splitlines()]
    inputs = processor.apply_transcription_request(audio=waves, source_language="ru", punctuation=True)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=64, num_beams=1, do_sample=False)
    prompt = inputs["decoder_input_ids"].shape[1]
    texts = [" ".join(t.split()) for t in processor.batch_decode(ids[:, prompt:], skip_special_tokens=True)]
    assert texts == expected and all(texts)


def test_aggregate_tokenizer_is_refused_clearly(embedded, tmp_path):
    agg = embedded.random_nemo.parent / "canary-tiny-agg-random.nemo"
    if not agg.is_file():
        from common.embedded.default import ensure_random_tiny
        from common.embedded.speech import DemoSpec, tokenizer_corpus

        agg = ensure_random_tiny(embedded.random_nemo.parent, tokenizer_corpus(DemoSpec()), preset="tiny-agg")
    proc = subprocess.run([sys.executable, str(EXPORT_HF), "--nemo", str(agg), "--out", str(tmp_path / "hf")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "aggregate-tokenizer checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "hf" / "config.json").exists()


@pytest.mark.slow
def test_lora_adapter_loads_with_peft_onto_the_port(base_nemo_path, demo, tmp_path):
    """A short LoRA run on the base with a high learning rate (so the adapter visibly moves the outputs), its
    adapters.safetensors written as a PEFT adapter and checked against NeMo with the same LoRA."""
    exp = tmp_path / "exp"
    code, out = run(tiny_args(base_nemo_path, demo, exp, tmp_path / "cuts", max_steps=3, accum=1, lr=0.02,
                              warmup_steps=0, save_every=3, val_every_n_steps=3, export_nemo="") + ["--no_eval_before"])
    assert code == 0, out
    code, out = run(["--nemo", str(base_nemo_path), "--out", str(tmp_path / "hf"), "--adapters",
                     str(exp / "adapters.safetensors")], script=EXPORT_HF)
    assert code == 0, out
    check = json.loads((tmp_path / "hf" / "conversion.json").read_text(encoding="utf-8"))["adapter"]
    assert check["ok"] and check["lora_effect"] > 100 * check["log_prob_max_abs_diff"]
    config = json.loads((tmp_path / "hf" / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["peft_type"] == "LORA" and config["r"] == 8 and len(config["target_modules"]) == 36
