"""Similarity-preserving KD (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import full_precision, per_pair, upcast

__all__ = ["sp_loss", "SPLoss"]


def _similarity(f: Tensor) -> Tensor:
    """Row-normalised batch x batch Gram matrix of flattened features (Tung & Mori, Eq. 2)."""
    with full_precision(f):
        f = upcast(f).flatten(1)  # (B, C*H*W)
        return F.normalize(f @ f.t(), dim=1)  # (B, B)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared Frobenius distance between the student's and teacher's similarity matrices.

    Args:
        f_s: student feature, (B, ...); any size, only the batch dimension must match.
        f_t: teacher feature, (B, ...); treated as a constant (the teacher is frozen).

    Returns:
        Scalar ||G_t - G_s||_F^2 / B^2 (Tung & Mori, Eq. 4).
    """
    b = f_s.shape[0]
    diff = _similarity(f_t.detach()) - _similarity(f_s)  # (B, B)
    return diff.pow(2).sum() / (b * b)


class SPLoss(nn.Module):
    """One unweighted SP loss per (student, teacher) feature pair; the caller weights them by SP.BETA."""

    def forward(self, feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> list[Tensor]:
        """Return [sp_loss(f_s, f_t) for each pair of layers]."""
        return per_pair("SP", sp_loss, feats_s, feats_t)
