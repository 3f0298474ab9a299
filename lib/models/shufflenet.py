"""ShuffleNetV2 on torchvision's definitions, with the feature list of the original release.

As in the original release, each block applies the ReLU that ends torchvision's branches at its START instead
(pre-activation), so a stage's output is available before its ReLU (MODEL.PRERELU). Channel split, concat and
shuffle are permutations, so ReLU commutes with them; every value is ReLU'd before a convolution uses it, hence
the logits are torchvision's, and so are the parameter names (a torchvision state dict loads with strict=True).
"""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import shufflenetv2 as tv_shufflenet

__all__ = ["InvertedResidual", "ShuffleNetV2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0"]


def _run_without_last(seq: nn.Sequential, x: Tensor) -> Tensor:
    """Run every module of `seq` but its last (torchvision's closing ReLU)."""
    for module in islice(seq, len(seq) - 1):
        x = module(x)
    return x


class InvertedResidual(tv_shufflenet.InvertedResidual):
    """torchvision's ShuffleNetV2 block whose output ReLU is applied by the next block instead."""

    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__(inp, oup, stride)
        # forward() skips the closing ReLU of each branch; fail loudly if torchvision's layout ever changes.
        branches = [self.branch2] + ([self.branch1] if stride > 1 else [])
        if not all(isinstance(branch[-1], nn.ReLU) for branch in branches):
            raise RuntimeError("torchvision's InvertedResidual no longer ends its branches with a ReLU")

    def forward(self, x: Tensor) -> Tensor:
        """Return the block output before its final ReLU (the input may be pre-ReLU too)."""
        if self.stride == 1:
            # x1 passes through untouched: its ReLU stays deferred until a branch (or the next stage) uses it.
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, _run_without_last(self.branch2, F.relu(x2))), dim=1)
        else:
            x = F.relu(x)  # not in place: the caller keeps `x` as a pre-ReLU feature
            out = torch.cat((_run_without_last(self.branch1, x), _run_without_last(self.branch2, x)), dim=1)
        return tv_shufflenet.channel_shuffle(out, 2)


class ShuffleNetV2(tv_shufflenet.ShuffleNetV2):
    """torchvision's ShuffleNetV2 whose forward can also return the original release's feature list."""

    def __init__(self, stages_repeats: list[int], stages_out_channels: list[int], num_classes: int = 1000) -> None:
        super().__init__(stages_repeats, stages_out_channels, num_classes, inverted_residual=InvertedResidual)

    def forward(
        self, x: Tensor, return_feat: bool = False, preReLU: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Return logits (B, num_classes), or (logits, feats) when `return_feat`.

        feats = [conv1's conv+BN output before its ReLU (B, C0, H/2, W/2), stage2 (H/8), stage3 (H/16),
        stage4 (H/32), conv5 (B, 1024, H/32, W/32)], each but conv5 ReLU'd unless `preReLU`, as in the original
        release; conv5 ends with its own ReLU (in torchvision and in the original), so preReLU does not change it.
        """
        if not return_feat:  # no stage output kept for the caller: torchvision's memory profile
            x = self.maxpool(F.relu(_run_without_last(self.conv1, x)))
            x = self.stage4(self.stage3(self.stage2(x)))
            return self.fc(self.conv5(F.relu(x)).mean([2, 3]))
        feat_input = _run_without_last(self.conv1, x)  # (B, C0, H/2, W/2)
        x = self.maxpool(F.relu(feat_input))
        feat1 = self.stage2(x)  # stage outputs are pre-ReLU, see the module docstring
        feat2 = self.stage3(feat1)
        feat3 = self.stage4(feat2)
        feat4 = self.conv5(F.relu(feat3))  # (B, 1024, H/32, W/32), already ReLU'd
        logits = self.fc(feat4.mean([2, 3]))  # global average pool as torchvision
        feats = [feat_input, feat1, feat2, feat3]
        return logits, [*(feats if preReLU else [F.relu(f) for f in feats]), feat4]


def shufflenet_v2_x0_5(num_classes: int = 1000) -> ShuffleNetV2:
    """Build ShuffleNetV2 0.5x (randomly initialised)."""
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], num_classes=num_classes)


def shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    """Build ShuffleNetV2 1.0x (randomly initialised)."""
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes=num_classes)
