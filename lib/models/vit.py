"""Vision Transformers built by timm, with the feature list of the original release.

The original release copied timm's ViT and registered one model name per input size
(vit_tiny_patch16_56, ...), shadowing timm's registry. Here timm builds its own 224 model with keyword arguments
(`img_size=S`), so timm's pretrained mechanism (AugReg weights, position embeddings resampled to S) and its
parameter names are kept, and nothing is registered into timm.
"""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

__all__ = ["PixelVisionTransformer", "build_vit", "tokens_to_map"]


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Reshape patch tokens (B, N, D) into a feature map (B, D, h, w), N = h * w."""
    b, n, d = tokens.shape
    h, w = grid
    return tokens.transpose(1, 2).reshape(b, d, h, w)


class PixelVisionTransformer(VisionTransformer):
    """timm's VisionTransformer whose forward can also return the original release's feature list."""

    def forward(
        self, x: Tensor, return_feat: bool = False, preReLU: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Return logits (B, num_classes), or (logits, feats) when `return_feat`.

        feats = [patch embedding before the position embedding, then each block's patch tokens (class/prefix
        tokens dropped)], each (B, D, h, w) with h = w = S // 16: 1 + depth features. A ViT has no ReLU at
        these points, so `preReLU` is accepted for a uniform interface and ignored.
        """
        if not return_feat:
            return super().forward(x)
        # The same submodules in the same order as timm's forward_features / forward_head, so logits match.
        grid = self.patch_embed.grid_size
        x = self.patch_embed(x)  # (B, N, D)
        feats = [tokens_to_map(x, grid)]
        x = self.norm_pre(self.patch_drop(self._pos_embed(x)))  # (B, prefix + N, D)
        for block in self.blocks:
            x = block(x)
            feats.append(tokens_to_map(x[:, self.num_prefix_tokens :], grid))
        logits = self.forward_head(self.norm(x))  # (B, num_classes)
        return logits, feats


def build_vit(family: str, img_size: int, num_classes: int, pretrained: bool = False) -> PixelVisionTransformer:
    """Build a timm ViT family ("vit_tiny_patch16", ...) for `img_size` x `img_size` inputs.

    Args:
        family: timm model name without its `_224` suffix.
        img_size: input side in pixels; timm resamples pretrained position embeddings to it.
        num_classes: classifier outputs; timm drops the ImageNet head when it differs from 1000.
        pretrained: load timm's default pretrained weights (AugReg IN-21k -> IN-1k) through timm.
    Returns:
        The model, a PixelVisionTransformer with timm's parameter names.
    """
    model = timm.create_model(f"{family}_224", pretrained=pretrained, img_size=img_size, num_classes=num_classes)
    if type(model) is not VisionTransformer:
        raise TypeError(f"timm built {type(model).__name__} for {family}_224, expected VisionTransformer")
    # Re-class the instance rather than wrap it: a wrapper would prefix every key ("vit.") and break loading
    # timm / original-release state dicts; the subclass adds only a forward, no state.
    model.__class__ = PixelVisionTransformer
    return model
