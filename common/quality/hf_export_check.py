"""`just export-hf`: write the transformers folder, reload it, and prove it computes what the `.nemo` computes.

On a fixed batch (two clips of different lengths, so padding is in play: the user's with `--audio`, else two
synthetic ones), in fp32:
1. teacher-forced log-probabilities: NeMo's features into both models, NeMo's decoder inputs; every non-padding
   position within 1e-4;
2. the prompt: what the exported processor's chat template writes equals the token ids NeMo's prompt format makes;
3. greedy text from raw audio: NeMo's preprocessor and decoding on one side, the transformers processor and
   `generate()` on the other; the texts must be equal.
With `--adapters`, the same log-probability check runs between the NeMo base with the run's LoRA applied by its
backend and the transformers base with the PEFT adapter loaded by `PeftModel.from_pretrained`.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError
from common.flags import flag

TOLERANCE = 1e-4
FIXED_TEXTS = ("проверка экспорта модели", "второй пример")


@dataclass(frozen=True)
class HfExportSettings:
    nemo: str = flag(None, "the Canary .nemo (unified tokenizer, canary-1b-v2's layout): a merged export or a base",
                     type=str)
    out: str = flag(None, "the folder to write (config.json, model.safetensors, tokenizer, processor)", type=str)
    audio: str | None = flag(None, "speech for the check: a file, a folder or a manifest (its first two clips; "
                                   "default: two synthetic clips)", type=str)
    lang: str = flag("ru", "language of the check's prompt")
    adapters: str | None = flag(None, "adapters.safetensors of a LoRA run on this --nemo (the base): also written "
                                      "as a PEFT adapter in <out>/adapter", type=str)


def _synthetic(folder: Path) -> list[str]:
    """Two fixed clips (2.3 s and 1.7 s) of tones and noise: the check needs audio, not any particular speech."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate((2.3, 1.7)):
        t = np.arange(int(seconds * 16000)) / 16000
        wave = sum(np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * (1.5 + k) * t))
                   for k, f in enumerate((180 + 40 * i, 420, 950)))
        wave = 0.1 * wave / 3 + 0.01 * rng.standard_normal(len(t))
        paths.append(str(folder / f"check{i}.wav"))
        sf.write(paths[-1], wave.astype("float32"), 16000)
    return paths


def fixed_batch(model, s: HfExportSettings, folder: Path):
    """NeMo's own batch of the check's two clips, as training would build it."""
    from lhotse import CutSet
    from nemo.collections.asr.data.audio_to_text_lhotse_prompted import PromptedAudioToTextLhotseDataset

    from common.data.audio import probe_all
    from common.data.cuts import _cut_for  # the cut training makes of a manifest line
    from common.data.entries import ManifestEntry
    from common.data.inputs import read_inputs

    inputs = read_inputs(s.audio)[:2] if s.audio else None
    paths = [i.audio for i in inputs] if inputs else _synthetic(folder)
    probes = probe_all(paths)
    bad = [f"{p} ({why})" for p, why in probes.items() if isinstance(why, str)]
    if bad:
        raise UserError(f"--audio: unreadable: {', '.join(bad)}")
    cuts = []
    for n, path in enumerate(paths):
        ref = inputs[n].ref if inputs and inputs[n].ref else FIXED_TEXTS[n % 2]
        entry = ManifestEntry(line=n, audio_filepath=path, duration=probes[path].duration, text=ref,
                              source_lang=s.lang, target_lang=s.lang, pnc="yes", sample_rate=probes[path].sample_rate,
                              channels=probes[path].channels)
        cuts.append(_cut_for(entry, "check", model.prompt_format))
    return PromptedAudioToTextLhotseDataset(tokenizer=model.tokenizer, prompt=model.prompt)[CutSet.from_cuts(cuts)]


def port_log_probs(hf_model, nemo_model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The port's teacher-forced log-probabilities on NeMo's features and decoder inputs, and the valid positions."""
    with torch.no_grad():
        feats, lengths = nemo_model.preprocessor(input_signal=batch.audio, length=batch.audio_lens)
        ids, _ = batch.get_decoder_inputs_outputs()
        valid = torch.arange(ids.shape[1])[None, :] < (batch.prompted_transcript_lens - 1)[:, None]
        frames = torch.arange(feats.shape[-1])[None, :] < lengths[:, None]
        out = hf_model(input_features=feats.transpose(1, 2), attention_mask=frames, decoder_input_ids=ids,
                       decoder_attention_mask=valid)
    return torch.log_softmax(out.logits.float(), dim=-1), valid


def greedy_texts(folder: Path, batch, lang: str, prompt_ids: list[int]) -> dict:
    """The reloaded folder's processor and `generate()` on the batch's raw audio."""
    from transformers import AutoProcessor, CanaryForConditionalGeneration

    processor = AutoProcessor.from_pretrained(str(folder))
    model = CanaryForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
    waves = [batch.audio[i, : batch.audio_lens[i]].numpy() for i in range(batch.audio.shape[0])]
    inputs = processor.apply_transcription_request(audio=waves, source_language=lang, punctuation=True)
    written = inputs["decoder_input_ids"][0].tolist()
    limit = model.config.decoder_config.max_position_embeddings - len(written)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=limit, num_beams=1, do_sample=False)
    texts = [" ".join(t.split()) for t in processor.batch_decode(out[:, len(written):], skip_special_tokens=True)]
    return {"prompt_equal": written == prompt_ids, "prompt": written, "texts": texts, "model": model}


def export_and_check(s: HfExportSettings) -> dict:
    """Convert, write, reload and compare; returns the figures (also written to <out>/conversion.json)."""
    from common.atomic import write_text
    from common.model.archive import inspect_nemo, sha256_file
    from common.model.hf_export import (canary_config, check_convertible, make_processor, port_state_dict,
                                        build_model, save_folder)
    from common.model.io import _read_weights, restore
    from common.model.steps import greedy_transcripts, log_probs
    from common.quality.evaluate import set_decoding
    from common.rundir import check_writable_dir

    problems = [f"--{n} is required" for n in ("nemo", "out") if not getattr(s, n)]
    if problems:
        raise UserError("Invalid arguments:\n" + "\n".join(f"  - {p}" for p in problems))
    info = inspect_nemo(s.nemo)
    check_convertible(info)
    if info.prompt_format != "canary2":
        raise UserError(f"--nemo {info.path.name}: prompt format {info.prompt_format!r}; the transformers port "
                        f"writes canary-1b-v2's canary2 prompt only")
    out = Path(s.out).expanduser()
    check_writable_dir(out, "--out")
    adapters = None
    if s.adapters:
        from common.model.hf_adapter import read_lora

        adapters = read_lora(s.adapters, sha256_file(info.path))
    model = restore(info.path, info=info).eval()
    set_decoding(model, 1)  # greedy: one hypothesis, the most likely token each step
    with tempfile.TemporaryDirectory(prefix="export_hf_") as tmp:
        batch = fixed_batch(model, s, Path(tmp))
        prompt = batch.prompt[0][: int(batch.prompt_lens[0])].tolist()
        tok = model.tokenizer
        specials = {"pad": tok.pad_id, "eos": tok.token_to_id("<|endoftext|>"),
                    "bos": tok.token_to_id("<|startoftranscript|>"), "start": prompt[0]}
        config = canary_config(info, specials)
        state, order = port_state_dict(_read_weights(info.path), config)
        processor = make_processor(info, tok.ids_to_tokens(prompt), Path(tmp))
    save_folder(build_model(state, config), processor, out)
    print(f"[export-hf] wrote {out}" + (" (decoder dimension reordered to the port's position table)"
                                        if order is not None else ""), flush=True)

    reference = log_probs(model, batch)
    greedy = greedy_texts(out, batch, s.lang, prompt)
    ported, valid = port_log_probs(greedy.pop("model"), model, batch)
    nemo_texts = greedy_transcripts(model, batch)
    check = {"log_prob_max_abs_diff": float((ported - reference).abs()[valid].max()), "tolerance": TOLERANCE,
             "prompt_equal": greedy["prompt_equal"], "nemo_texts": nemo_texts, "transformers_texts": greedy["texts"],
             "texts_equal": nemo_texts == greedy["texts"], "decoder_reordered": order is not None}
    if adapters is not None:
        check["adapter"] = _adapter_check(model, batch, adapters, out, order)
    check["ok"] = (check["log_prob_max_abs_diff"] <= TOLERANCE and check["prompt_equal"] and check["texts_equal"]
                   and check.get("adapter", {}).get("ok", True))
    write_text(out / "conversion.json", json.dumps(check, indent=2, ensure_ascii=False))
    return check


def _adapter_check(model, batch, adapters, out: Path, order) -> dict:
    """Write the PEFT adapter and compare NeMo base + LoRA (its own backend) with the port + PEFT on the batch."""
    from peft import PeftModel
    from transformers import CanaryForConditionalGeneration

    from backends import registry
    from common.model.hf_adapter import port_lora, write_adapter
    from common.model.steps import log_probs

    lora, spec, backend_name = adapters
    folder = write_adapter(port_lora(lora, order), spec, out)
    backend = registry.get(backend_name)
    backend.apply(model, registry.AdapterSpec.from_dict(spec))
    backend.load_adapter_state_dict(model, lora)
    reference = log_probs(model, batch)
    base = CanaryForConditionalGeneration.from_pretrained(str(out), dtype=torch.float32).eval()
    without, valid = port_log_probs(base, model, batch)
    ported, _ = port_log_probs(PeftModel.from_pretrained(base, str(folder)).eval(), model, batch)
    diff = float((ported - reference).abs()[valid].max())
    effect = float((ported - without).abs()[valid].max())  # how far the LoRA moves the base: the check's reach
    print(f"[export-hf] PEFT adapter: {folder} (max |diff| vs NeMo with the run's LoRA {diff:.2e}; the LoRA itself "
          f"moves log-probs by up to {effect:.2e})", flush=True)
    return {"folder": str(folder), "log_prob_max_abs_diff": diff, "lora_effect": effect, "ok": diff <= TOLERANCE}
