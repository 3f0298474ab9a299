"""Feature distillation between two networks of the same architecture at two input sizes (TAS stage 2).

The assistant sees the large image and the student the same crop K times smaller, so their features have the
same channels but K times fewer positions in the student. The release's unused "feature distillation loss in
input compression stage" upsampled the student's feature bilinearly (align_corners=True) to the assistant's size
and took the MSE; the published loss is unknown, so this is that hint, made explicit (docs/tas.md), by default with
align_corners=False (mode "bilinear_align_corners" is the release's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from lib.config import FKD_INTERP_MODES

from .pairs import full_precision, per_pair, upcast

__all__ = ["FKD_INTERP_MODES", "feature_distillation_loss", "FKDLoss"]


def feature_distillation_loss(f_s: Tensor, f_a: Tensor, mode: str = "bilinear") -> Tensor:
    """MSE between the student's feature resized to the assistant's H x W and the assistant's feature.

    Args:
        f_s: student feature, (B, C, h, w), from the small image.
        f_a: assistant feature, (B, C, H, W), from the large image; treated as a constant (the assistant is frozen).
        mode: interpolation of f_s to (H, W), one of FKD_INTERP_MODES: bilinear, bicubic (align_corners=False),
            nearest, or bilinear_align_corners (bilinear with align_corners=True, the release's).

    Returns:
        Scalar mean over batch, channels and the assistant's positions of (up(f_s) - f_a)^2.
    """
    if f_s.shape[:2] != f_a.shape[:2]:
        raise ValueError(f"feature distillation pairs features of the same batch and channels, got student "
                         f"{tuple(f_s.shape)} and assistant {tuple(f_a.shape)}")
    if mode not in FKD_INTERP_MODES:
        raise ValueError(f"unknown interpolation {mode!r}; valid: {', '.join(FKD_INTERP_MODES)}")
    f_a = f_a.detach()
    if f_s.shape[2:] != f_a.shape[2:]:
        resize, corners = {"bilinear": ("bilinear", False), "bicubic": ("bicubic", False), "nearest": ("nearest", None),
                           "bilinear_align_corners": ("bilinear", True)}[mode]
        f_s = F.interpolate(f_s, size=f_a.shape[2:], mode=resize, align_corners=corners)  # (B, C, H, W)
    # The MSE written out: F.mse_loss would keep f_a for its backward, which autograd refuses for a teacher's
    # inference-mode output; (f_s - f_a) keeps only the difference. In fp32 under mixed precision, as the other
    # feature statistics: a squared difference of deep features passes fp16's 65 504.
    with full_precision(f_s):
        return (upcast(f_s) - upcast(f_a)).pow(2).mean()


class FKDLoss(nn.Module):
    """One unweighted feature distillation loss per (student, assistant) feature pair; TAS weights each one."""

    def __init__(self, mode: str = "bilinear"):
        super().__init__()
        if mode not in FKD_INTERP_MODES:
            raise ValueError(f"unknown interpolation {mode!r}; valid: {', '.join(FKD_INTERP_MODES)}")
        self.mode = mode

    def forward(self, feats_s: Sequence[Tensor], feats_a: Sequence[Tensor]) -> list[Tensor]:
        """Return [feature_distillation_loss(f_s, f_a) for each pair of features]."""
        return per_pair("feature distillation", lambda f_s, f_a: feature_distillation_loss(f_s, f_a, self.mode),
                        feats_s, feats_a, other="assistant")
