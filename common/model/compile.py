"""--compile: the pre-encoder and the encoder's and decoder's layers compiled with torch.compile for training
steps (as CUDA graphs on a GPU; with --compile_backend cudagraphs, without Inductor), the encoder attention's
relative positions aligned for fast kernels, and the compiler's caches kept under .cache/. --grad_ckpt checkpoints
the same layers, inside their compiled functions or (uncompiled) around them."""
from __future__ import annotations

import functools


def layer_stacks(model) -> dict[str, list]:
    """The pre-encoder (a stack of one), the encoder's layers and the decoder's layers, by name."""
    import torch

    pre_encode = getattr(model.encoder, "pre_encode", None)
    stacks = {"pre-encoder": [pre_encode] if isinstance(pre_encode, torch.nn.Module) else []}
    stacks["encoder"] = list(getattr(model.encoder, "layers", []))
    decoder = getattr(getattr(model, "transf_decoder", None), "_decoder", None)
    stacks["decoder"] = list(getattr(decoder, "layers", []))
    return stacks


def compile_layers(model, *, cuda_graphs: bool = False, backend: str = "inductor", grad_ckpt: bool = False) -> bool:
    """torch.compile the pre-encoder and the encoder's and the decoder's layers in place, for training steps;
    eager otherwise.

    One compiled function serves each stack (its layers share their code; their weights are inputs), so
    compiling costs one layer's time per stack, not 40 layers'. Compiling the whole encoder as one graph took
    minutes on canary-1b-v2's 32 layers, and its training step turned the loss to NaN. Validation and decoding
    stay eager: their shapes change every call (batch sizes, generated lengths) and would recompile endlessly.
    The modules stay as they are, so state-dict keys (checkpoints, exports) are the same with and without
    --compile. Compiling happens on the first call, so errors surface there: that stack then runs eagerly.

    `cuda_graphs` (a CUDA device): compile with mode="reduce-overhead", which replays each layer's kernels as
    one CUDA graph. The step is otherwise bound by the host issuing thousands of small kernels; graphs need
    few distinct shapes, so the caller pads batches (CanaryFinetune.compiled_layers). A graph that cannot be
    used (e.g. BatchNorm statistics updating in full fine-tuning) falls back to the plain compiled kernels.

    New shapes recompile: each dimension that changes once more, twice over (the first layer's input differs
    from the others' in dtype and in needing no gradient). Past torch's limit of 8 compiled versions per
    function, new shapes run eagerly. Compiling with dynamic=True did not help: the relative-position
    attention's reshapes still specialize the length.
    """
    import torch

    from common.model.checkpointing import checkpointed

    # the pre-encoder (convolutional subsampling) is a stack of one: eager, its 3x3 convolutions ran with cuDNN
    # layout conversions around them; compiled, the step ran at 2900 against 2812 audio s/s (H100, bs 32 x 15 s)
    # `backend` "cudagraphs": TorchDynamo and AOTAutograd capture each layer and replay it as CUDA graphs, with
    # no Inductor and so no triton (Windows); on a CPU it runs the captured graphs as they are
    how_kw = {"backend": "cudagraphs"} if backend == "cudagraphs" else {
        "mode": "reduce-overhead" if cuda_graphs else None}
    done = []
    for name, layers in layer_stacks(model).items():
        if not layers or len({type(layer) for layer in layers}) != 1:
            continue
        forward = type(layers[0]).forward
        # --grad_ckpt: the checkpoint goes inside the compiled function, where the compiler plans the recompute
        train_forward = checkpointed(forward) if grad_ckpt and name != "pre-encoder" else forward
        try:
            compiled = torch.compile(train_forward, **how_kw)
        except Exception as e:  # noqa: BLE001 - a platform without a working compiler: train uncompiled
            print(f"[compile] torch.compile unavailable ({type(e).__name__}: {e}); training without it", flush=True)
            return False
        _route_layers(name, layers, forward, compiled, train_forward)
        done.append(f"the {name}" if name == "pre-encoder" else f"{len(layers)} {name}")
    if not done:
        print("[compile] no uniform layer stack to compile; training without torch.compile", flush=True)
        return False
    cuda = torch.cuda.is_available()
    how = (" as CUDA graphs without Inductor" if backend == "cudagraphs" and cuda else
           " without Inductor (as CUDA graphs on a GPU)" if backend == "cudagraphs" else
           " as CUDA graphs" if cuda_graphs else "")
    how += ", each layer checkpointed" if grad_ckpt else ""
    names = done[0] if len(done) == 1 else f"{', '.join(done[:-1])} and {done[-1]}"
    print(f"[compile] {names} layers compiled{how} with torch.compile for training steps (the first "
          f"steps are slow while it compiles)", flush=True)
    return True


def checkpoint_layers(model) -> int:
    """--grad_ckpt without --compile: checkpoint every encoder and decoder layer in training steps (validation and
    decoding run as before); returns how many layers."""
    from common.model.checkpointing import checkpointed

    count = 0
    for name, layers in layer_stacks(model).items():
        if name == "pre-encoder" or not layers or len({type(layer) for layer in layers}) != 1:
            continue
        forward = type(layers[0]).forward
        _route_layers(name, layers, forward, None, checkpointed(forward))
        count += len(layers)
    return count


def _route_layers(name: str, layers: list, eager, compiled, train_eager=None) -> None:
    """Make each layer call `compiled` in training mode (`train_eager` if there is none, or once it failed) and
    `eager` otherwise; the first failure turns the compiled path off for the whole stack, with a warning."""
    import torch

    state = {"fn": compiled}
    train_eager = train_eager or eager

    def call(layer, *args, **kwargs):
        fn = state["fn"]
        if layer.training and torch.is_grad_enabled():
            if fn is not None:
                try:
                    return fn(layer, *args, **kwargs)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as e:  # noqa: BLE001 - any compiler failure: keep training, eagerly
                    state["fn"] = None
                    first = " ".join(str(e).split())[:300]
                    print(f"[compile] torch.compile failed on the {name} ({type(e).__name__}: {first}); continuing "
                          f"without it", flush=True)
            return train_eager(layer, *args, **kwargs)
        return eager(layer, *args, **kwargs)

    for layer in layers:
        layer.forward = functools.partial(call, layer)


def align_relative_positions(model) -> bool:
    """Training steps hand the encoder's attention 2T relative positions instead of 2T-1; returns whether it
    applies (NeMo's relative-position encoding and attention, unchanged).

    The attention multiplies its queries by the position embeddings, and 2T-1 is odd, so cuBLAS runs that
    product with kernels for unaligned operands (4.8 ms of a 133 ms step on an H100, bs 32 x 15 s). The extra
    position goes last, and the attention never reads it: its shift reads position T-1-i+j for query i and key j,
    for every length, and keeps keys j < T. So the scores are the same. Validation and decoding are left alone.
    """
    import torch
    from nemo.collections.asr.parts.submodules import multi_head_attention as mha

    encoder = getattr(model, "encoder", None)
    pos_enc = getattr(encoder, "pos_enc", None)
    if type(pos_enc) is not mha.RelPositionalEncoding:
        return False
    attention = [m for m in encoder.modules() if isinstance(m, mha.MultiHeadAttention)]
    if not attention or any(type(m) is not mha.RelPositionMultiHeadAttention for m in attention):
        return False
    positions = pos_enc.forward

    def forward(x, cache_len=0):
        x, pos_emb = positions(x, cache_len=cache_len)
        if pos_enc.training and torch.is_grad_enabled() and cache_len == 0 and pos_emb.shape[1] % 2:
            pos_emb = torch.nn.functional.pad(pos_emb, (0, 0, 0, 1))
        return x, pos_emb

    pos_enc.forward = forward
    return True



def compile_for_training(model, *, cuda_graphs: bool, bucketed: bool = False, backend: str = "inductor",
                         grad_ckpt: bool = False) -> bool | None:
    """--compile: compile the layers, as CUDA graphs on a GPU unless turned off. Returns None when nothing was
    compiled, else whether the layers replay as CUDA graphs (the training module then rounds batch shapes).

    `bucketed` (--batch_duration): batch sizes vary with clip length, so nearly every batch is a new shape, and
    each new shape records a fresh set of graphs (two per layer). Measured on an H200 with 2-30 s clips: 32
    steps did not finish in 4 minutes with graphs; without them the compiled step ran at 1498 audio s/s against
    1290 eager. So bucketed runs get the compiled kernels only.
    """
    import torch

    graphs = cuda_graphs and torch.cuda.is_available()
    if graphs and bucketed:
        if backend == "cudagraphs":
            print("[compile] --batch_duration: batch shapes vary too much for CUDA graphs, and --compile_backend "
                  "cudagraphs has nothing else to offer; training without torch.compile", flush=True)
            return None
        print("[compile] --batch_duration: batch shapes vary too much for CUDA graphs; compiling the layers without "
              "them (a fixed --bs gets them)", flush=True)
        graphs = False
    persistent_caches()
    if not compile_layers(model, cuda_graphs=graphs, backend=backend, grad_ckpt=grad_ckpt):
        return None
    align_relative_positions(model)
    return graphs


def persistent_caches() -> str:
    """Keep Inductor's compiled kernels and AOTAutograd's graphs under the project's cache folder (.cache/torch,
    or $TORCHINDUCTOR_CACHE_DIR if set), so a repeat run with the same shapes loads them instead of compiling
    again; torch's default, a folder under /tmp, is lost on reboot. Returns the folder."""
    import os

    from common.rundir import cache_dir

    folder = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torch" / "inductor"))
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # a torch without these caches compiles as before
        pass
    return folder
