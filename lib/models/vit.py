"""Vision Transformers built by timm, with the feature list of the original release.

The original release copied timm's ViT and registered one model name per input size
(vit_tiny_patch16_56, ...), shadowing timm's registry. Here timm builds its own 224 model with keyword arguments
(`img_size=S`), so timm's pretrained mechanism (AugReg weights, position embeddings resampled to S) and its
parameter names are kept, and nothing is registered into timm.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor

__all__ = ["PRETRAINED_TAG", "PixelVisionTransformer", "build_vit", "fit_state_dict", "resize_pos_embed",
           "tokens_to_map"]

# The original release's ImageNet weights (its lib/models/vit_pixel.py): Google's AugReg checkpoints pretrained on
# ImageNet-21k and fine-tuned on ImageNet-1k at 224 px (Ti/S/B-16), which timm tags "augreg_in21k_ft_in1k". The
# tag is named because timm's untagged default differs for ViT-B (a later "augreg2" fine-tune).
PRETRAINED_TAG = "augreg_in21k_ft_in1k"


def tokens_to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Reshape patch tokens (B, N, D) into a feature map (B, D, h, w), N = h * w."""
    b, _, d = tokens.shape
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


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Resample a (1, prefix + h0*w0, D) position embedding to `grid` as the original release did.

    The release's resize_pos_embed: the prefix (class) token is kept, the h0 x w0 grid (square) is resized
    with plain bilinear interpolation (align_corners False, no antialiasing). timm's own default is antialiased
    bicubic, which gives other initial weights for the small students (14x14 -> 3x3 at 56 px).
    """
    prefix, grid_tokens = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = round(grid_tokens.shape[1] ** 0.5)
    dim = grid_tokens.shape[-1]
    maps = grid_tokens.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, h0, w0)
    maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
    resized = maps.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


def fit_state_dict(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """A ViT state dict (timm's layout or an older one timm converts) fitted to `model`'s input size."""
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        state_dict = dict(state_dict)
        state_dict["pos_embed"] = resize_pos_embed(pos_embed, tuple(model.patch_embed.grid_size),
                                                   model.num_prefix_tokens)
    return checkpoint_filter_fn(state_dict, model)  # the sizes now match: timm only converts the layout


def build_vit(family: str, img_size: int, num_classes: int, pretrained: bool = False) -> PixelVisionTransformer:
    """Build a timm ViT family ("vit_tiny_patch16", ...) for `img_size` x `img_size` inputs.

    Args:
        family: timm model name without its `_224` suffix.
        img_size: input side in pixels.
        num_classes: classifier outputs; the ImageNet head is dropped when it differs from 1000.
        pretrained: load the release's ImageNet weights (timm's `<family>_224.augreg_in21k_ft_in1k`, through
            timm's pretrained mechanism and cache), position embeddings resampled as the release did.
    Returns:
        The model, a PixelVisionTransformer with timm's parameter names.
    """
    model = timm.create_model(f"{family}_224", img_size=img_size, num_classes=num_classes)
    if type(model) is not VisionTransformer:
        raise TypeError(f"timm built {type(model).__name__} for {family}_224, expected VisionTransformer")
    if pretrained:
        # timm loads the 224 px checkpoint into a 224 px model (nothing resampled, the head dropped when
        # num_classes differs); its weights are then fitted to img_size the release's way.
        source = timm.create_model(f"{family}_224.{PRETRAINED_TAG}", pretrained=True, num_classes=num_classes)
        model.load_state_dict(fit_state_dict(source.state_dict(), model), strict=True)
    # Re-class the instance rather than wrap it: a wrapper would prefix every key ("vit.") and break loading
    # timm / original-release state dicts; the subclass adds only a forward, no state.
    model.__class__ = PixelVisionTransformer
    return model
