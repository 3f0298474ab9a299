"""Models of the original release: ResNet/ResNeXt, ShuffleNetV2 (torchvision) and ViT (timm)."""

from .model_builder import (
    ARCHS,
    VIT_FAMILIES,
    build_model,
    check_input_size,
    clean_state_dict,
    feature_shapes,
    is_vit,
    parse_arch,
)

__all__ = [
    "ARCHS",
    "VIT_FAMILIES",
    "build_model",
    "check_input_size",
    "clean_state_dict",
    "feature_shapes",
    "is_vit",
    "parse_arch",
]
