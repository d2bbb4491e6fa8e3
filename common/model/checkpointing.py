"""--grad_ckpt: activation checkpointing per encoder and decoder layer, in training steps.

A layer's forward pass keeps, for the backward pass, every intermediate its gradients need: with LoRA on the
attention and feed-forward projections, the inputs of each adapted projection, the attention scores and the
feed-forward's wide activations. Checkpointed, a layer keeps only its input and computes the rest again when the
backward pass reaches it: one more forward pass per step for much less memory, which is what lets a 12 GB card
take larger batches or longer clips.

The checkpoint is non-reentrant (`use_reentrant=False`): it works when no input of the layer needs a gradient
(the frozen pre-encoder's output) and with keyword arguments, and it restores the random state, so the recomputed
dropout masks are the ones the forward pass drew. With --compile the checkpoint goes inside each layer's compiled
function, where the compiler plans the recompute (`common.model.compile`: `compile_layers` and, uncompiled,
`checkpoint_layers`).
"""
from __future__ import annotations

import functools


def checkpointed(forward):
    """`forward(layer, *args, **kwargs)` run under a non-reentrant activation checkpoint."""
    import torch.utils.checkpoint

    @functools.wraps(forward)
    def run(layer, *args, **kwargs):
        return torch.utils.checkpoint.checkpoint(forward, layer, *args, use_reentrant=False, **kwargs)

    return run

