"""ResNet / ResNeXt on torchvision's definitions, with the feature list of the original release.

Feature distillation (AT, SP, ICKD) can match features before their last ReLU (MODEL.PRERELU), and ISRD decodes
the raw input-conv feature. To expose the pre-ReLU output of a stage, the final ReLU of every residual block is
moved to the START of the next block (and after layer4 for the classifier). ReLU is idempotent and the next block
is the only consumer, so the logits are those of torchvision's ResNet, and the parameter names are torchvision's:
a torchvision state dict loads with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models import resnet as tv_resnet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
]


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's BasicBlock whose output ReLU is applied by the next block instead."""

    def forward(self, x: Tensor, relu_inplace: bool = False) -> Tensor:
        """Return the block output before its final ReLU (`relu_inplace`: `x` is not kept by the caller)."""
        # The previous block's deferred ReLU; in place only when the caller does not keep `x` as a pre-ReLU
        # feature (x is then the previous block's sum, which autograd does not save: torchvision's ReLU is in
        # place there too).
        x = F.relu(x, inplace=relu_inplace)
        # One layer per statement, as torchvision: `out = bn(conv(out))` would hold the old `out` until bn returns,
        # three maps of the block's width at once instead of two (+8% peak memory for ResNeXt-50).
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        # In place and after the branch, as torchvision: the downsampled identity is not held through the branch,
        # and batch norm does not save its output for backward.
        out += x if self.downsample is None else self.downsample(x)
        return out


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's Bottleneck (ResNet v1.5) whose output ReLU is applied by the next block instead."""

    def forward(self, x: Tensor, relu_inplace: bool = False) -> Tensor:
        """Return the block output before its final ReLU (`relu_inplace`: see BasicBlock.forward)."""
        x = F.relu(x, inplace=relu_inplace)  # the previous block's deferred ReLU, see BasicBlock.forward
        out = self.conv1(x)  # one layer per statement, see BasicBlock.forward
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        out += x if self.downsample is None else self.downsample(x)  # see BasicBlock.forward
        return out


class ResNet(tv_resnet.ResNet):
    """torchvision's ResNet whose forward can also return the original release's feature list."""

    def forward(
        self, x: Tensor, return_feat: bool = False, preReLU: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Return logits (B, num_classes), or (logits, feats) when `return_feat`.

        feats = [conv1 output before bn1/relu (B, 64, H/2, W/2), layer1 (H/4), layer2 (H/8), layer3 (H/16),
        layer4 (H/32)], each ReLU'd unless `preReLU`, as in the original release (which ReLU'd conv1's pre-BN
        output too; no loss here reads it so). ISRD asks for `preReLU` and decodes the raw conv1 output.
        """
        if not return_feat:
            # torchvision's memory profile: no stage output kept for the caller, the deferred ReLUs in place
            # (the teacher's and the plain students' forward, and the cost tool's peak activation memory).
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                for block in stage:
                    x = block(x, relu_inplace=True)
            return self.fc(torch.flatten(self.avgpool(F.relu(x, inplace=True)), 1))
        feat_input = self.conv1(x)  # (B, 64, H/2, W/2)
        x = self.maxpool(self.relu(self.bn1(feat_input)))  # self.relu is in place, on bn1's fresh output
        feat1 = self.layer1(x)  # each stage output is pre-ReLU, see the module docstring
        feat2 = self.layer2(feat1)
        feat3 = self.layer3(feat2)
        feat4 = self.layer4(feat3)  # (B, C4, H/32, W/32)
        logits = self.fc(torch.flatten(self.avgpool(F.relu(feat4)), 1))  # (B, num_classes)
        feats = [feat_input, feat1, feat2, feat3, feat4]
        return logits, feats if preReLU else [F.relu(f) for f in feats]


def resnet18(num_classes: int = 1000) -> ResNet:
    """Build ResNet-18 (randomly initialised)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """Build ResNet-34 (randomly initialised)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """Build ResNet-50 (randomly initialised)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


def resnet101(num_classes: int = 1000) -> ResNet:
    """Build ResNet-101 (randomly initialised)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes)


def resnet152(num_classes: int = 1000) -> ResNet:
    """Build ResNet-152 (randomly initialised)."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes)


def resnext50_32x4d(num_classes: int = 1000) -> ResNet:
    """Build ResNeXt-50 32x4d (randomly initialised)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=4)
