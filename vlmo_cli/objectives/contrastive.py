"""Image-text contrastive loss (ITC) as in the official ``compute_itc`` / ``compute_irtr``.

Default (``gather_with_grad=False``): features of every process are gathered without gradient, the local ones
first, and every process computes the full global N×N loss. ``gather_with_grad=True`` is open_clip's scheme for
large scale: gathered features keep their gradient and each process computes the loss of its own rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import gather_local_first, gather_with_grad, world


@dataclass
class ContrastiveResult:
    loss: torch.Tensor
    logits_i2t: torch.Tensor  # rows: local images first; columns: texts (gathered)
    logits_t2i: torch.Tensor
    scale: torch.Tensor
    accuracy_i2t: torch.Tensor
    accuracy_t2i: torch.Tensor
    #: column of each local row's positive; the columns are the gathered batch, local first (official) or in rank
    #: order (``gather_with_gradient``) — gather ITM's negative pool in the same order (``pool_gather``).
    labels: torch.Tensor
    local_first: bool = True


def contrastive_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    gather_with_gradient: bool = False,
    max_scale: float | None = None,
) -> ContrastiveResult:
    """Symmetric InfoNCE over the gathered batch with temperature ``exp(logit_scale)`` (unclamped unless ``max_scale``)."""
    scale = logit_scale.exp()
    if max_scale is not None:
        scale = scale.clamp(max=max_scale)
    if gather_with_gradient:
        rank, _ = world()
        all_img, all_txt = gather_with_grad(image_emb), gather_with_grad(text_emb)
        b = image_emb.shape[0]
        logits_i2t = scale * image_emb @ all_txt.t()
        logits_t2i = scale * text_emb @ all_img.t()
        labels = torch.arange(b, device=image_emb.device) + rank * b
    else:
        all_img, all_txt = gather_local_first(image_emb), gather_local_first(text_emb)
        logits_i2t = scale * all_img @ all_txt.t()
        logits_t2i = logits_i2t.t()
        labels = torch.arange(logits_i2t.shape[0], device=image_emb.device)
    loss = (F.cross_entropy(logits_i2t.float(), labels) + F.cross_entropy(logits_t2i.float(), labels)) / 2
    with torch.no_grad():
        acc_i2t = (logits_i2t.argmax(-1) == labels).float().mean()
        acc_t2i = (logits_t2i.argmax(-1) == labels).float().mean()
    return ContrastiveResult(loss, logits_i2t, logits_t2i, scale, acc_i2t, acc_t2i, labels[: image_emb.shape[0]],
                             local_first=not gather_with_gradient)
