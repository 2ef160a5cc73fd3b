"""One contrastive training step whose image tower runs in micro-batches.

The contrastive loss compares every spot of a batch with every patch of it, so a batch of 128
needs the image tower's activations for all 128 patches at once (≈ 20 GiB for DenseNet-121 in
fp32). Caching the gradient at the embeddings makes the tower's memory a function of a
micro-batch instead, with the loss unchanged:

1. embed every micro-batch of patches without building a graph (train mode);
2. compute the spot tower (all spots: one attention sequence, as always) and the loss over the
   whole batch from those embeddings, and backpropagate it to the spot tower's parameters and
   to the embeddings;
3. re-run each micro-batch with a graph and backpropagate its slice of the embedding gradient.

This is the gradient cache of Gao, Zhang, Han and Callan, "Scaling Deep Contrastive Learning
Batch Size under Memory Limited Setup" (RepL4NLP 2021). The image tower runs twice, as with activation checkpointing, but its
activations never exceed one micro-batch.

What differs from one whole-batch step: BatchNorm normalises with each micro-batch's statistics
(as under data parallelism without synchronised BatchNorm, or "ghost" BatchNorm) and its
running statistics are updated once per micro-batch. Step 1 leaves them as it found them, and
step 3 replays step 1's random state, so dropout draws the same masks in both passes. Without
BatchNorm in train mode the gradients equal the whole-batch ones (tests/test_micro_batch.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from ..models.mclstexp.modeling_mclstexp import contrastive_loss


def _batchnorm_buffers(module: nn.Module) -> list[torch.Tensor]:
    return [buf for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked) if buf is not None]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def micro_batched_backward(model: Any, pixel_values: torch.Tensor, expression: torch.Tensor,
                           positions: torch.Tensor, micro_batch: int, *, loss_scale: float = 1.0,
                           autocast: Callable[[], AbstractContextManager] = nullcontext,
                           ) -> torch.Tensor:
    """Accumulate the gradients of the whole-batch contrastive loss into `model`'s parameters.

    model: an `MclSTExpModel` (unwrapped) in train mode. The image tower runs on slices of
    `micro_batch` patches; `loss_scale` multiplies the loss before backpropagation (e.g. 1 /
    gradient-accumulation steps); `autocast` makes the context the forward passes run in (e.g.
    bf16 autocast; the backward passes run outside it). Returns the unscaled loss, detached.
    """
    if not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive integer; got {micro_batch!r}.")
    chunks = pixel_values.split(micro_batch)
    device = pixel_values.device
    buffers = _batchnorm_buffers(model.image_encoder)
    saved = [buf.clone() for buf in buffers]
    states, embeds = [], []
    with torch.no_grad(), autocast():
        for chunk in chunks:
            states.append(_rng_state(device))
            embeds.append(model.get_image_features(pixel_values=chunk).pooler_output)
    for buf, value in zip(buffers, saved):
        buf.copy_(value)
    image_embeds = torch.cat(embeds).detach().requires_grad_(True)
    with autocast():
        spot_embeds = model.get_spot_features(expression, positions)
        loss = contrastive_loss(model.logits_per_spot(spot_embeds, image_embeds))
    (loss * loss_scale).backward()
    after = _rng_state(device)
    for chunk, state, grad in zip(chunks, states, image_embeds.grad.split(micro_batch)):
        _set_rng_state(state, device)
        with autocast():
            embeds = model.get_image_features(pixel_values=chunk).pooler_output
        embeds.backward(grad.to(embeds.dtype))
    _set_rng_state(after, device)
    return loss.detach()


__all__ = ["micro_batched_backward"]
