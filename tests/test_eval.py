"""`just eval`: its WER/CER against jiwer (on hand-made transcripts and on the model's own), the normalization
switch, the baseline comparison, beam search, and the checks that run before NeMo loads."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jiwer
import pytest

from common.quality.scoring import differences, score, score_both
from common.quality.metrics import normalize

REPO = Path(__file__).resolve().parents[1]

# Hand-made transcripts. Word errors worked out by hand:
#   raw:        2/2 ("Привет," "мир!" vs "привет" "мир"), 3/4 (Ёлка->елка, "в" deleted, "лесу."->лесу),
#               2/2 (Hello->hello, world->word)                                   = 7/8
#   normalized: 0/2, 1/4 ("в" deleted), 1/2 (world->word)                         = 2/8
HAND = [
    {"id": "1", "lang": "ru", "ref": "Привет, мир!", "hyp": "привет мир"},
    {"id": "2", "lang": "ru", "ref": "Ёлка стоит в лесу.", "hyp": "елка стоит лесу"},
    {"id": "3", "lang": "en", "ref": "Hello world", "hyp": "hello word"},
]


def jiwer_scores(rows: list[dict], mode: str, hyp_key: str = "hyp") -> tuple[float, float]:
    """WER and CER by jiwer, after the project's normalization (jiwer's own defaults only trim whitespace)."""
    refs = [normalize(r["ref"], mode) for r in rows]
    hyps = [normalize(r[hyp_key], mode) for r in rows]
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


def test_hand_made_pair_matches_hand_count_and_jiwer() -> None:
    raw, norm = score(HAND, "raw"), score(HAND, "normalized")
    assert raw["wer"] == pytest.approx(7 / 8)
    assert norm["wer"] == pytest.approx(2 / 8)
    assert (raw["wer"], raw["cer"]) == pytest.approx(jiwer_scores(HAND, "raw"))
    assert (norm["wer"], norm["cer"]) == pytest.approx(jiwer_scores(HAND, "normalized"))
    # raw text needs no normalization at all for jiwer: the figures are jiwer's defaults
    assert raw["wer"] == pytest.approx(jiwer.wer([r["ref"] for r in HAND], [r["hyp"] for r in HAND]))
    # per language
    assert norm["per_language"]["ru"]["wer"] == pytest.approx(1 / 6)
    assert norm["per_language"]["en"]["wer"] == pytest.approx(1 / 2)
    assert norm["per_language"]["ru"]["utterances"] == 2
    assert raw["per_language"]["ru"]["wer"] == pytest.approx(5 / 6)


def test_normalization_switch_changes_the_figure_as_expected() -> None:
    both = score_both(HAND)
    # case, punctuation and ё are errors only without normalization
    assert both["raw"]["wer"] > both["normalized"]["wer"]
    assert both["raw"]["cer"] > both["normalized"]["cer"]
    # identical text differing only in those: 0 when normalized, not 0 raw
    same = [{"id": "x", "lang": "ru", "ref": "Ёж, ёлка — и всё!", "hyp": "еж елка и все"}]
    assert score(same, "normalized")["wer"] == 0.0
    assert score(same, "raw")["wer"] == pytest.approx(jiwer.wer("Ёж, ёлка — и всё!", "еж елка и все"))
    with pytest.raises(ValueError, match="unknown normalization"):
        score(HAND, "lowercase")


def test_differences_worst_first() -> None:
    rows = [dict(r, baseline_hyp=r["ref"]) for r in HAND]  # a perfect baseline
    rows[0]["hyp"] = rows[0]["ref"]  # the model matches it on the first utterance
    rows.append({"id": "4", "lang": "ru", "ref": "один два три", "hyp": "один два три", "baseline_hyp": "один"})
    diffs = differences(rows, "normalized")
    assert [d["id"] for d in diffs] == ["2", "3", "1", "4"]
    assert [d["delta"] for d in diffs] == [1, 1, 0, -2]
    assert all(d["delta"] == d["errors"] - d["baseline_errors"] for d in diffs)


# ---- the command, on the tiny model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def perturbed_path(fast_tiny_path, tmp_path_factory) -> Path:
    """The fast tiny model with noise on its matrices: a second, different model to compare against."""
    from tests.conftest import rewrite_nemo

    def noise(state: dict) -> dict:
        import torch

        gen = torch.Generator().manual_seed(0)
        return {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.ndim >= 2 else v
                for k, v in state.items()}

    return rewrite_nemo(fast_tiny_path, tmp_path_factory.mktemp("perturbed") / "perturbed.nemo", weights=noise)


@pytest.fixture(scope="module")
def few_clips(demo, tmp_path_factory) -> Path:
    """Four validation clips, two of them labelled English, so the per-language split has two languages."""
    lines = [json.loads(line) for line in demo.adapt_val.read_text(encoding="utf-8").splitlines()[:4]]
    for entry in lines[2:]:
        entry["source_lang"] = entry["target_lang"] = "en"
    path = tmp_path_factory.mktemp("clips") / "few.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_run(perturbed_path, fast_tiny_path, few_clips, tmp_path_factory, python_exe):
    out = tmp_path_factory.mktemp("eval") / "out"
    cmd = [python_exe, str(REPO / "recipes" / "eval.py"), "--nemo", str(perturbed_path), "--manifest",
           str(few_clips), "--baseline", str(fast_tiny_path), "--normalization", "raw", "--bs", "2",
           "--out", str(out), "--data_dir", str(out.parent / "cuts")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_eval_writes_both_files(eval_run) -> None:
    out, proc = eval_run
    assert (out / "eval.md").is_file() and (out / "eval.json").is_file()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert "model:" in proc.stderr and "100%" in proc.stderr  # the tqdm progress bar
    assert f"[eval] wrote {out / 'eval.md'}" in proc.stdout


def test_eval_wer_matches_jiwer_on_the_models_transcripts(eval_run, few_clips) -> None:
    out, _ = eval_run
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = result["rows"]
    assert len(rows) == result["utterances"] == 4
    manifest = [json.loads(line) for line in few_clips.read_text(encoding="utf-8").splitlines()]
    assert [(r["audio_filepath"], r["ref"]) for r in rows] == [(e["audio_filepath"], e["text"]) for e in manifest]
    assert any(r["hyp"] for r in rows), "the perturbed model emits text, so the check is not trivially 100 %"
    for role, key in (("model", "hyp"), ("baseline", "baseline_hyp")):
        scores = result["models"][role]["scores"]
        for mode in ("raw", "normalized"):
            assert (scores[mode]["wer"], scores[mode]["cer"]) == pytest.approx(jiwer_scores(rows, mode, key))
            for lang in ("ru", "en"):
                subset = [r for r in rows if r["lang"] == lang]
                per = scores[mode]["per_language"][lang]
                assert per["utterances"] == 2
                assert (per["wer"], per["cer"]) == pytest.approx(jiwer_scores(subset, mode, key))


def test_eval_durations_are_each_clips_own_not_the_padded_batch(eval_run) -> None:
    """Batches of two clips are padded to the longer one; each row's duration is its own file's, read from the
    audio header, and the total and the speed follow from them."""
    import soundfile

    out, _ = eval_run
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    rows = result["rows"]
    own = [soundfile.info(r["audio_filepath"]).duration for r in rows]
    assert len(set(round(d, 2) for d in own)) > 1  # clips of different lengths share batches
    assert [r["duration"] for r in rows] == pytest.approx(own, abs=1e-3)
    assert result["audio_s"] == pytest.approx(sum(own), abs=0.01)
    model = result["models"]["model"]
    assert model["audio_s_per_s"] == pytest.approx(sum(own) / model["decode_s"], rel=1e-3)  # rows rounded to ms


def test_eval_markdown_leads_with_the_chosen_normalization(eval_run) -> None:
    out, proc = eval_run
    result = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    md = (out / "eval.md").read_text(encoding="utf-8")
    assert result["normalization"] == "raw"
    assert "normalization: **raw**" in md
    assert "|  | WER (raw) | CER (raw) | S / I / D | WER (normalized) | CER (normalized) |" in md
    model = result["models"]["model"]["scores"]
    assert f"**{100 * model['raw']['wer']:.2f}%**" in md  # headline figure is the raw one
    assert f"{100 * model['normalized']['wer']:.2f}%" in md  # and the other one is shown too
    assert "## Per language (raw)" in md and "| en | 2 |" in md and "| ru | 2 |" in md
    assert "## Per-utterance differences, worst first" in md
    diffs = result["differences"]
    assert [d["delta"] for d in diffs] == sorted((d["delta"] for d in diffs), reverse=True)
    assert f"[eval] model    WER {100 * model['raw']['wer']:.2f}%" in proc.stdout


def test_beam_search_option(fast_tiny_path, few_clips, tmp_path) -> None:
    """`--beam N` goes through change_decoding_strategy; transcripts still come out, one per clip."""
    from common.data.loader import LoaderSettings, manifest_loader
    from common.data.manifest import load_manifest
    from common.quality.evaluate import set_decoding, transcribe
    from tests.conftest import restore_tiny

    model = restore_tiny(fast_tiny_path)
    assert set_decoding(model, None) == "greedy (beam 1)"
    assert set_decoding(model, 3) == "beam search, beam 3"
    assert model.decoding.decoding.beam_search.beam_size == 3
    manifest = load_manifest(few_clips)
    loader = manifest_loader(manifest, model, LoaderSettings(batch_size=2), data_dir=tmp_path).loader
    rows = transcribe(model, loader, total=4, desc="beam")
    assert [r["ref"] for r in rows] == [e.text for e in manifest.entries]


def test_bad_input_fails_before_nemo_loads(fast_tiny_path, few_clips, tmp_path, python_exe) -> None:
    """A broken manifest or an unknown language is reported in about a second, without importing NeMo."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio_filepath": "missing.wav", "text": "да"}\nnot json\n', encoding="utf-8")
    german = tmp_path / "de.jsonl"
    german.write_text(few_clips.read_text(encoding="utf-8").replace('"en"', '"de"'), encoding="utf-8")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from common.errors import UserError\n"
        "from recipes.eval import main\n"
        "for manifest in sys.argv[3:]:\n"
        "    try:\n"
        "        main(['--nemo', sys.argv[2], '--manifest', manifest, '--out', sys.argv[-1] + '.out'])\n"
        "    except UserError as e:\n"
        "        print('ERROR', str(e).replace('\\n', ' '))\n"
        "print('nemo imported:', 'nemo' in sys.modules, 'torch imported:', 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([python_exe, "-c", code, str(REPO), str(fast_tiny_path), str(bad), str(german)],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 2, proc.stdout + proc.stderr
    assert "line 2: not valid JSON" in lines[0]
    assert "Language not supported" in lines[1] and "de" in lines[1]
    assert "nemo imported: False torch imported: False" in proc.stdout


def test_eval_decodes_longest_clips_first_in_the_asked_dtype_and_reports_in_manifest_order(
        fast_tiny_path, demo, tmp_path) -> None:
    """Batches of clips of similar length, longest first (little padding); bf16 holds the Linear and convolution
    weights in bf16 under autocast; the report keeps the manifest's order."""
    import torch

    from common.data.loader import LoaderSettings, manifest_loader
    from common.data.manifest import load_manifest
    from common.quality.evaluate import EvalSettings, eval_dtype, prepare_for_decoding, run_eval
    from tests.conftest import restore_tiny

    manifest = load_manifest(demo.adapt_val)
    model = restore_tiny(fast_tiny_path)
    loader = manifest_loader(manifest, model, LoaderSettings(batch_size=3, sort_by_duration=True),
                             data_dir=tmp_path / "cuts").loader
    order = [c.duration for batch in loader for c in batch.cuts]
    assert len(order) == len(manifest.entries) and order == sorted(order, reverse=True)
    assert order != [e.duration for e in manifest.entries]  # the manifest itself is not in that order
    assert eval_dtype(None) == torch.float32 and eval_dtype("bf16") == torch.bfloat16  # a CPU: fp32 by default
    prepare_for_decoding(model, torch.bfloat16)
    assert model.encoder.layers[0].self_attn.linear_q.weight.dtype == torch.bfloat16
    assert model.transf_decoder._embedding.token_embedding.weight.dtype == torch.float32
    result = run_eval(EvalSettings(nemo=str(fast_tiny_path), manifest=str(demo.adapt_val), bs=3, precision="bf16",
                                   out=str(tmp_path / "out"), data_dir=str(tmp_path / "cuts")))
    assert result["models"]["model"]["dtype"] == "bfloat16" and result["models"]["model"]["batch_size"] == 3
    assert [r["audio_filepath"] for r in result["rows"]] == [str(e.audio_filepath) for e in manifest.entries]
