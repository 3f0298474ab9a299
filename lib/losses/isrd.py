"""ISRD, input spatial representation distillation (Guo et al., "Pixel Distillation", TPAMI 2024).

The student's input-module feature (ResNet conv1 output, ViT patch embedding as D x h x w) is decoded back to the
teacher's large image; the L1 reconstruction error is added to the KD loss with weight FSR.ETA.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["isrd_scale", "SRDecoder", "isrd_loss", "build_decoder"]


def isrd_scale(out_size: int, feat_width: int) -> int:
    """Upscale factor s = ceil(out_size / feat_width) of the decoder (ViT-Tiny@56: ceil(224 / 3) = 75)."""
    return -(-out_size // feat_width)


class SRDecoder(nn.Module):
    """1x1 conv (no bias) to s^2 * 3 channels, PixelShuffle(s), PReLU(3), cropped to out_size x out_size."""

    def __init__(self, in_channels: int, scale: int, out_size: int):
        super().__init__()
        self.scale = scale
        self.out_size = out_size
        self.conv = nn.Conv2d(in_channels, scale * scale * 3, kernel_size=1, bias=False)  # as the release's SR1x1
        self.shuffle = nn.PixelShuffle(scale)
        self.act = nn.PReLU(3)

    def forward(self, x: Tensor) -> Tensor:
        """Decode a feature (B, C, h, w) into an image (B, 3, out_size, out_size)."""
        h, w = x.shape[2] * self.scale, x.shape[3] * self.scale
        if h < self.out_size or w < self.out_size:
            raise ValueError(
                f"a {x.shape[2]}x{x.shape[3]} feature upscaled by {self.scale} gives {h}x{w}, "
                f"smaller than the {self.out_size}x{self.out_size} target"
            )
        y = self.act(self.shuffle(self.conv(x)))  # (B, 3, s*h, s*w)
        # The paper's figure: ViT-Tiny@56 decodes to 3x225x225, cropped to the top-left 3x224x224.
        return y[:, :, : self.out_size, : self.out_size]


def isrd_loss(decoded: Tensor, image_large: Tensor) -> Tensor:
    """L1 reconstruction loss of the decoded image against the teacher's input.

    Args:
        decoded: the decoder's output, (B, 3, S, S).
        image_large: the large image as normalised for the teacher, (B, 3, S, S).

    Returns:
        Scalar mean absolute error.
    """
    if decoded.shape != image_large.shape:
        raise ValueError(f"ISRD decoded {tuple(decoded.shape)} but the large image is {tuple(image_large.shape)}")
    return F.l1_loss(decoded, image_large)


def build_decoder(feat_shape: tuple[int, int, int], out_size: int) -> SRDecoder:
    """Build the ISRD decoder for a student feature of shape (C, h, w).

    Args:
        feat_shape: (C, h, w) of the student's decoded feature (FSR.POSITION picks it).
        out_size: side of the large image that the decoder reconstructs (DATA.CROP_SIZE, the teacher's input).

    Returns:
        An SRDecoder with scale ceil(out_size / w).
    """
    channels, _, width = feat_shape
    return SRDecoder(channels, isrd_scale(out_size, width), out_size)
