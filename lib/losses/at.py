"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import full_precision, per_pair, upcast

__all__ = ["attention_map", "at_loss", "ATLoss"]


def attention_map(f: Tensor) -> Tensor:
    """Spatial attention of a feature map (B, C, H, W): mean over channels of f^2, L2-normalised, (B, H*W)."""
    # F_sum^p with p = 2 (Zagoruyko & Komodakis, Eq. 2), averaged rather than summed; the normalisation removes
    # the difference.
    with full_precision(f):
        return F.normalize(upcast(f).pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Mean squared difference of the student's and teacher's attention maps.

    Args:
        f_s: student feature, (B, C_s, H_s, W_s).
        f_t: teacher feature, (B, C_t, H_t, W_t); treated as a constant (the teacher is frozen).

    Returns:
        Scalar mean over batch and positions of (a_s - a_t)^2. When the spatial sizes differ (a student fed a
        smaller image), the larger feature is average-pooled to the smaller size before its attention map is
        taken, as the release does.
    """
    f_t = f_t.detach()
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return (attention_map(f_s) - attention_map(f_t)).pow(2).mean()


class ATLoss(nn.Module):
    """One unweighted AT loss per (student, teacher) feature pair; the caller weights them by AT.BETA."""

    def forward(self, feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> list[Tensor]:
        """Return [at_loss(f_s, f_t) for each pair of layers]."""
        return per_pair("AT", at_loss, feats_s, feats_t)
