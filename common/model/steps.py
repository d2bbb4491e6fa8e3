"""One batch through the model: the teacher-forced loss, greedy transcripts and log-probabilities, and the
shape rounding that keeps compiled layers from recompiling. Training, validation, evaluation, verification and
the export all compute these the same way, here."""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

import torch

_SPECIAL = re.compile(r"<\|[^|]*\|>")


@dataclass(frozen=True)
class ShapeRounding:
    """Pad a training batch's audio and decoder inputs up to rounded lengths.

    Compiled layers recompile, and CUDA-graphed ones record new graphs, for input shapes they have not met;
    with transcripts and clips of any length, nearly every batch would be a new shape (on a CPU, the tiny
    model's compiled step took 8 s unrounded and 0.05 s rounded). Rounded up, clips of up to 30 s make at most
    30 audio lengths, and transcripts a handful of token lengths. The padding is masked everywhere
    (preprocessor normalization, encoder attention and convolution, decoder attention; the loss ignores pad
    labels), so the loss of the real frames and tokens is the same. It costs, on average, half a second of
    audio and 8 tokens of padding per batch.

    `encoder_frames`: the audio is padded a little further, until the encoder's output length is a multiple of
    this. The attention's matrix products run over that length, and cuBLAS runs lengths that are not a multiple
    of 8 (15 s: 188 frames) with slower unaligned kernels: padding 15 s clips to 192 frames (15.28 s) made the
    step 4-9% faster on an H100 although it computes 2% more frames (docs/performance.md). 0 turns it off.
    """

    audio_s: float = 1.0
    tokens: int = 16
    encoder_frames: int = 8


def _pad_last(x: torch.Tensor, multiple: int, value) -> torch.Tensor:
    extra = -x.shape[-1] % multiple
    return torch.nn.functional.pad(x, (0, extra), value=value) if extra else x


def aligned_audio_length(samples: int, hop: int, subsampling: int, multiple: int) -> int:
    """The fewest samples >= `samples` whose encoder output length is a multiple of `multiple`.

    The preprocessor makes samples // hop + 1 frames; a striding subsampling by `subsampling` keeps
    ceil(frames / subsampling) of them. For another subsampling the estimate may miss, which only costs speed:
    the extra audio is padding, masked like any other.
    """
    frames = samples // hop + 1
    encoder = -(-frames // subsampling)
    target = -(-encoder // multiple) * multiple
    return max(samples, (target - 1) * subsampling * hop)


def rounded_inputs(model, batch, rounding: ShapeRounding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio, decoder input ids, labels) of `batch`, padded to the lengths `rounding` asks for."""
    input_ids, labels = batch.get_decoder_inputs_outputs()
    pad_id = model.tokenizer.pad_id
    input_ids = _pad_last(input_ids, rounding.tokens, pad_id)
    labels = _pad_last(labels, rounding.tokens, pad_id)
    # the audio's padded length first, then one pad (it is the largest tensor of the batch)
    samples = max(1, round(rounding.audio_s * model.sample_rate))
    length = -(-batch.audio.shape[-1] // samples) * samples
    hop = getattr(getattr(model.preprocessor, "featurizer", None), "hop_length", None)
    subsampling = getattr(model.encoder, "subsampling_factor", None)
    if rounding.encoder_frames > 0 and isinstance(hop, int) and isinstance(subsampling, int):
        length = aligned_audio_length(length, hop, subsampling, rounding.encoder_frames)
    extra = length - batch.audio.shape[-1]
    audio = torch.nn.functional.pad(batch.audio, (0, extra), value=0.0) if extra else batch.audio
    return audio, input_ids, labels


def compute_loss(model, batch, rounding: ShapeRounding | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced cross-entropy of one prompted batch, as NeMo's training_step computes it.

    Returns the loss and the number of target tokens (for token-weighted averages). `rounding` pads the batch
    to rounded shapes first (for CUDA graphs); the result is the same up to floating-point rounding.
    """
    if rounding is None:
        audio = batch.audio
        input_ids, labels = batch.get_decoder_inputs_outputs()
    else:
        audio, input_ids, labels = rounded_inputs(model, batch, rounding)
    input_ids_lens = batch.prompted_transcript_lens - 1
    log_probs, _, _, _ = model(input_signal=audio, input_signal_length=batch.audio_lens,
                               transcript=input_ids, transcript_length=input_ids_lens)
    loss = model.loss(log_probs=log_probs, labels=labels, output_mask=None)
    return loss, (labels != model.tokenizer.pad_id).sum()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The whole model in eval mode inside the block; afterwards every module is back in its own previous mode.

    NeMo's multitask greedy and beam decoding end with `transformer_decoder.train()` and `log_softmax.train()`,
    whatever mode the model was in: a loss computed after a decode in the same validation pass (the next batch's)
    would run with decoder dropout on. Every scoring pass (validation, regression, eval, verify, transcribe)
    computes its losses and decodes inside this guard.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def greedy_transcripts(model, batch) -> list[str]:
    """Decode a batch with the model's own decoding (prompt = the batch's prompts), special tokens stripped."""
    with eval_mode(model):
        _, _, enc_states, enc_mask = model(input_signal=batch.audio, input_signal_length=batch.audio_lens)
        hyps = model.decoding.decode_predictions_tensor(encoder_hidden_states=enc_states, encoder_input_mask=enc_mask,
                                                        decoder_input_ids=batch.prompt, return_hypotheses=False)
    return [" ".join(_SPECIAL.sub(" ", h.text if hasattr(h, "text") else str(h)).split()) for h in hyps]



def fixed_batch(loader, max_items: int = 2):
    """The first validation batch, cut to a few utterances, on CPU."""
    batch = next(iter(loader))
    n = min(max_items, batch.audio.shape[0])
    from dataclasses import fields, replace

    return replace(batch, **{f.name: getattr(batch, f.name)[:n] for f in fields(batch)
                             if isinstance(getattr(batch, f.name), torch.Tensor)})


@torch.no_grad()
def log_probs(model, batch) -> torch.Tensor:
    """Teacher-forced log-probabilities on `batch`, fp32, eval mode: the quantity compared across exports."""
    model.eval()  # and it stays so: every caller compares models for inference
    input_ids, _ = batch.get_decoder_inputs_outputs()
    out, _, _, _ = model(input_signal=batch.audio, input_signal_length=batch.audio_lens, transcript=input_ids,
                         transcript_length=batch.prompted_transcript_lens - 1)
    return out.detach().clone().float()  # clone drops NeMo's neural_type attribute



def to_device(batch, device):
    """The batch with every tensor moved to `device` (NeMo's batch is a dataclass of tensors and cuts)."""
    import dataclasses

    if str(device) == "cpu" and batch.audio.device.type == "cpu":
        return batch
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})
