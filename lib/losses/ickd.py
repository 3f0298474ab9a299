"""Inter-channel correlation KD (Liu et al., "Exploring Inter-Channel Correlation for Diversity-Preserved
Knowledge Distillation", ICCV 2021)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import full_precision, per_pair, upcast

__all__ = ["ickd_loss", "ICKDLoss"]


def _channel_correlation(f: Tensor) -> Tensor:
    """Row-normalised channel x channel correlation over spatial positions, (B, C, H, W) -> (B, C, C)."""
    with full_precision(f):
        f = upcast(f).flatten(2)  # (B, C, H*W)
        return F.normalize(f @ f.transpose(1, 2), dim=2)  # (B, C, C)


def ickd_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Squared distance between the inter-channel correlation matrices of student and teacher.

    Args:
        f_s: student feature already embedded to the teacher's channels, (B, C, H_s, W_s).
        f_t: teacher feature, (B, C, H_t, W_t); treated as a constant. The spatial sizes may differ: the
            correlation sums over positions, so a student fed a smaller image still compares.

    Returns:
        Scalar sum of (G_s - G_t)^2 over batch and channel pairs, divided by C * B (Liu et al., Eq. 3;
        the normalisation of the release).
    """
    b, c = f_s.shape[:2]
    if f_t.shape[1] != c:
        raise ValueError(f"ICKD needs the student embedded to the teacher's {f_t.shape[1]} channels, got {c}")
    diff = _channel_correlation(f_s) - _channel_correlation(f_t.detach())  # (B, C, C)
    return diff.pow(2).sum() / (c * b)


class ICKDLoss(nn.Module):
    """Embeds each student feature (1x1 conv + BN) to the teacher's channels and applies ickd_loss."""

    def __init__(self, channels_s: int, channels_t: int, train_embed: bool = False):
        super().__init__()
        # The release's Embed: 1x1 conv without bias, then BatchNorm (its `l2norm` attribute is a BatchNorm2d).
        self.embed = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(channels_s, channels_t, kernel_size=1, bias=False),
                bn=nn.BatchNorm2d(channels_t),
            )
        )
        self.train_embed = train_embed
        if not self.train_embed:
            # The release never gave the embedding to the optimiser: it stays at its random initialisation
            # (BN running statistics still move in train mode, as there).
            self.embed.requires_grad_(False)

    def learnable_parameters(self) -> list[nn.Parameter]:
        """The embedding's parameters when ICKD.TRAIN_EMBED, else none (the release's frozen embedding)."""
        return list(self.embed.parameters()) if self.train_embed else []

    def forward(self, feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> list[Tensor]:
        """Return [ickd_loss(embed(f_s), f_t) for each pair of layers], unweighted (the caller applies ICKD.BETA)."""
        return per_pair("ICKD", lambda f_s, f_t: ickd_loss(self.embed(f_s), f_t), feats_s, feats_t)
