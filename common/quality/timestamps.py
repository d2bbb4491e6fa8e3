"""Word timestamps, for checkpoints that carry NeMo's timestamps model (canary-1b-v2 and exports made from it).

The times come from NeMo's forced alignment of the transcript with that auxiliary CTC model, inside NeMo's own
`transcribe()`: that is the one place the alignment is done, so `--timestamps` goes through it (with NeMo's own
long-form chunking) rather than through the windows `just transcribe` uses otherwise.
"""
from __future__ import annotations

import time


def with_timestamps(info, p, s) -> tuple[list[dict], float]:
    """Rows with `words` ([{word, start, end}] in seconds) for every input `p` planned; and the decoding time."""
    import torch
    from nemo.collections.asr.models import EncDecMultiTaskModel

    model = EncDecMultiTaskModel.restore_from(str(info.path), map_location="cuda" if torch.cuda.is_available()
                                              else "cpu")
    model.eval()
    indices = sorted(p.windows)
    t0 = time.perf_counter()
    hyps = model.transcribe([p.inputs[i].audio for i in indices], batch_size=s.bs, source_lang=s.lang,
                            target_lang=s.lang, pnc=s.pnc, timestamps=True, verbose=False)
    seconds = time.perf_counter() - t0
    rows = []
    for index, hyp in zip(indices, hyps):
        inp = p.inputs[index]
        words = [{"word": w.get("word"), "start": round(float(w.get("start", 0.0)), 3),
                  "end": round(float(w.get("end", 0.0)), 3)} for w in (hyp.timestamp or {}).get("word", [])]
        row = {"audio_filepath": inp.shown, "duration": round(p.durations[index], 3), "text": hyp.text, "words": words}
        if inp.ref is not None:
            row["ref"] = inp.ref
        rows.append(row)
    return rows, seconds
