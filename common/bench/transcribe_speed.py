"""`just transcribe ... --vs_nemo`: this command's decoding against NeMo's own `transcribe()`, same files, same
model object, same batch size, same device, in audio seconds per second of wall time.

Each side first decodes one batch untimed (kernels, allocator and file cache warm), then the whole set is timed,
the two sides taking turns for `ROUNDS` rounds and the median of each side reported (on a shared machine one
measurement is at the mercy of whatever else runs): ours from its batches of windows to texts, NeMo's
`transcribe()` from the file list to hypotheses (it writes a manifest and builds its own loader; that is part of
what a user of it waits for). Clips are meant to be shorter
than the model's window: NeMo's transcribe() feeds longer audio whole (or chunks it with canary-1b-v2's timestamps
model), so long files would not compare like for like.
"""
from __future__ import annotations

import statistics
import time

ROUNDS = 3


def compare_with_nemo(s, result: dict) -> dict:
    """Time both on the files `run_transcribe` transcribed; prints and returns the figures."""
    import torch

    from common.model.io import restore
    from common.quality.transcribe import check, decode, plan, precision
    from common.quality.windows import window_seconds

    info, inputs = check(s)
    p = plan(inputs, s, window_seconds(info.config))
    files = [p.inputs[i].audio for i in sorted(p.windows)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = restore(info.path, map_location=device, info=info)
    warm = plan([p.inputs[min(p.windows)]] * min(s.bs, len(files)), s, window_seconds(info.config))
    options = dict(batch_size=s.bs, source_lang=s.lang, target_lang=s.lang, pnc=s.pnc, verbose=False)
    decode(model, warm, s.bs)
    with precision(device):
        model.transcribe(files[: s.bs], **options)
    ours, nemo = [], []
    for _ in range(ROUNDS):
        ours.append(decode(model, p, s.bs)[1])
        with precision(device):
            t0 = time.perf_counter()
            model.transcribe(files, **options)
            if device == "cuda":
                torch.cuda.synchronize()
            nemo.append(time.perf_counter() - t0)
    ours_s, nemo_s = statistics.median(ours), statistics.median(nemo)
    audio = sum(p.durations.values())
    figures = {"files": len(files), "audio_s": audio, "device": torch.cuda.get_device_name(0) if device == "cuda"
               else "cpu", "ours_audio_s_per_s": audio / ours_s, "nemo_audio_s_per_s": audio / nemo_s,
               "ours_s": ours, "nemo_s": nemo}
    figures["speedup"] = figures["ours_audio_s_per_s"] / figures["nemo_audio_s_per_s"]
    print(f"[bench] {figures['files']} files, {audio:.1f} s of audio on {figures['device']}, batch {s.bs}, median of "
          f"{ROUNDS} rounds: this "
          f"command {figures['ours_audio_s_per_s']:.1f} audio s/s, NeMo transcribe() "
          f"{figures['nemo_audio_s_per_s']:.1f} audio s/s (x{figures['speedup']:.2f})", flush=True)
    result["bench"] = figures
    return figures

