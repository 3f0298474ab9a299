"""Build every architecture of the original release, optionally from ImageNet weights.

Names: the CNNs of ARCHS, and `<family>_<S>` for a ViT family of VIT_FAMILIES and any input size S in pixels
(vit_tiny_patch16_56). Every model's `forward(x, return_feat=False, preReLU=False)` returns logits (B, num_classes)
or `(logits, feats)`, feats being the original release's feature list (see resnet.py, shufflenet.py, vit.py).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn
from torchvision.models import get_model_weights

from lib.utils.errors import UserError, first_line, require_file, torch_file_problem
from lib.utils.log import get_logger

from . import resnet, shufflenet

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


# CNN registry: name -> builder(num_classes). The names are torchvision's, so are their ImageNet weights.
CNN_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": resnet.resnet18,
    "resnet34": resnet.resnet34,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnet152": resnet.resnet152,
    "resnext50_32x4d": resnet.resnext50_32x4d,
    "shufflenet_v2_x0_5": shufflenet.shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": shufflenet.shufflenet_v2_x1_0,
}
ARCHS: tuple[str, ...] = tuple(CNN_BUILDERS)
# timm model names without their `_224` suffix; an architecture name appends the input size.
VIT_FAMILIES: tuple[str, ...] = ("vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16")
VIT_PATCH_SIZE = 16
# The CNNs downsample by 32 in total; from 16 px on, every stage still sees at least one position computed
# from real pixels (the release's benchmark student, resnet18@28, sits above it). Smaller inputs are refused.
CNN_MIN_INPUT_SIZE = 16

_VIT_NAME = re.compile(rf"(?P<family>{'|'.join(map(re.escape, VIT_FAMILIES))})_(?P<size>[1-9][0-9]*)")
# Config keys that name weight files / switch pretraining, quoted in error messages.
_PRETRAIN_FILE_KEYS = "MODEL.PRETRAIN_FILE / PRETRAIN_FILE_S (a TAS assistant: TAS.PRETRAIN_FILE_A)"
_PRETRAIN_KEYS = "MODEL.PRETRAIN / PRETRAIN_S (a TAS assistant: MODEL.PRETRAIN_A)"
# Classifier parameter prefix of each kind of model (torchvision: fc, timm ViT: head).
_CNN_CLASSIFIER = "fc"
_VIT_CLASSIFIER = "head"
# The classifier modules of every network here (a fine-grained head of DATA.NUM_CLASSES outputs).
CLASSIFIER_MODULES = (_CNN_CLASSIFIER, _VIT_CLASSIFIER)


def _valid_names() -> str:
    vits = ", ".join(f"{family}_<S>" for family in VIT_FAMILIES)
    return f"{', '.join(ARCHS)}, or {vits} with <S> the input size in pixels (e.g. vit_tiny_patch16_56)"


def parse_arch(arch: str) -> tuple[str, int | None]:
    """Split an architecture name into (family, input size): ("resnet18", None), ("vit_tiny_patch16", 56)."""
    if arch in CNN_BUILDERS:
        return arch, None
    match = _VIT_NAME.fullmatch(arch)
    if match:
        return match["family"], int(match["size"])
    if arch in VIT_FAMILIES:  # (tools/cost.py's --archs takes the bare family; a model needs its size)
        raise UserError(f"architecture {arch!r} needs its input size in pixels in its name, e.g. {arch}_56 for 56 px "
                        "images")
    close = difflib.get_close_matches(arch, [*ARCHS, *(f"{f}_224" for f in VIT_FAMILIES)], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"unknown architecture {arch!r}{hint}; valid names: {_valid_names()}")


def is_vit(arch: str) -> bool:
    """Whether `arch` names a Vision Transformer (its name carries the input size)."""
    return parse_arch(arch)[1] is not None


def check_input_size(arch: str, size: int) -> None:
    """Raise a UserError when model `arch` cannot take a `size` x `size` input."""
    family, vit_size = parse_arch(arch)
    if vit_size is None:
        if size < CNN_MIN_INPUT_SIZE:
            raise UserError(
                f"{arch} cannot take {size}x{size} inputs: it needs at least {CNN_MIN_INPUT_SIZE}x"
                f"{CNN_MIN_INPUT_SIZE} (below it the last stages see only padding); lower DATA.LESSEN_RATIO or raise "
                "DATA.CROP_SIZE"
            )
        return
    if size < VIT_PATCH_SIZE:
        raise UserError(
            f"{arch} cannot take {size}x{size} inputs: a ViT needs at least one {VIT_PATCH_SIZE}x{VIT_PATCH_SIZE}"
            f" patch; lower DATA.LESSEN_RATIO or raise DATA.CROP_SIZE"
        )
    if size != vit_size:
        raise UserError(
            f"{arch} takes {vit_size}x{vit_size} inputs but gets {size}x{size}; name the architecture "
            f"{family}_{size}, or change DATA.CROP_SIZE / DATA.LESSEN_RATIO to give {vit_size} px"
        )


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a checkpoint's state dict with the original release's names mapped to ours.

    Strips leading `module.` (DataParallel) prefixes, renames the CNN classifier `fc_cls.*` to `fc.*`, and maps
    the original's pre-activation ShuffleNetV2 layout (a leading ReLU shifts its Sequential indices) to
    torchvision's.
    """
    out = {}
    for key, value in state_dict.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith("fc_cls."):
            key = "fc." + key[len("fc_cls.") :]
        out[key] = value
    return _shufflenet_from_preact_layout(out)


# A Sequential-indexed ShuffleNetV2 parameter, after any prefix such as `model_s.`.
_SHUFFLENET_KEY = re.compile(
    r"(?P<prefix>(?:\w+\.)*?)(?P<seq>stage(?P<stage>\d)\.(?P<block>\d+)\.branch[12]|conv5)\.(?P<index>\d+)\.(?P<param>\w+)"
)


def _shufflenet_from_preact_layout(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Shift the original's ShuffleNetV2 Sequential indices down by one where it prepended a ReLU."""
    # The original's conv5 is [ReLU, Conv, BN, ReLU], torchvision's [Conv, BN, ReLU]: only the original has
    # parameters at conv5.2, which tells the layouts apart.
    original_prefixes = {k[: -len("conv5.2.weight")] for k in state_dict if k.endswith("conv5.2.weight")}
    if not original_prefixes:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        match = _SHUFFLENET_KEY.fullmatch(key)
        # Every block but stage2.0 (whose input is already ReLU'd) and conv5 start with the extra ReLU.
        if match and match["prefix"] in original_prefixes and (match["stage"], match["block"]) != ("2", "0"):
            key = f"{match['prefix']}{match['seq']}.{int(match['index']) - 1}.{match['param']}"
        out[key] = value
    return out


@torch.no_grad()
def feature_shapes(model: nn.Module, size: int) -> list[tuple[int, int, int]]:
    """Return (C, H, W) of each feature of `model(x, return_feat=True)` for a `size` x `size` input."""
    param = next(model.parameters())
    # Restore each submodule's own mode: a frozen teacher inside `model` may be in eval while the rest trains.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        _, feats = model(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype), return_feat=True)
    finally:
        for module, training in modes:
            module.training = training
    return [tuple(feat.shape[1:]) for feat in feats]


def build_model(arch: str, num_classes: int, pretrained: bool, pretrain_file: str = "") -> nn.Module:
    """Build architecture `arch`, randomly initialised or from ImageNet weights.

    Args:
        arch: a name of ARCHS, or `<family>_<S>` for a family of VIT_FAMILIES and input size S.
        num_classes: classifier outputs; the ImageNet classifier is dropped when it is not 1000.
        pretrained: start from ImageNet weights: torchvision's IMAGENET1K_V1 (torch hub cache) for the CNNs,
            the release's AugReg weights (timm's `<family>_224.augreg_in21k_ft_in1k`, Hugging Face cache) for
            the ViTs, with the position embedding resampled to S as the release did (bilinear).
        pretrain_file: when `pretrained`, read the weights from this local file instead: a torchvision / timm
            state dict of the 224 px model (.pth/.pt or .safetensors), optionally wrapped in {"state_dict": ...}
            or {"model": ...}. Ignored (with a warning) when not `pretrained`.
    Returns:
        The model, in train mode.
    """
    family, size = parse_arch(arch)
    if num_classes < 1:
        raise UserError(f"{arch} needs a positive number of classes, got {num_classes}; check DATA.NUM_CLASSES")
    if size is not None:
        check_input_size(arch, size)
    if pretrain_file and not pretrained:
        get_logger().warning(f"warning: weight file {pretrain_file} for {arch} is ignored: pretraining is off "
                             f"({_PRETRAIN_KEYS})")
    from_file = _read_weight_file(pretrain_file) if pretrained and pretrain_file else None
    fetch = pretrained and from_file is None

    if size is None:
        model = CNN_BUILDERS[family](num_classes)
        classifier = _CNN_CLASSIFIER
        if fetch:
            _load_backbone(model, _fetch_torchvision_weights(arch), classifier, arch, "torchvision's ImageNet weights")
    else:
        classifier = _VIT_CLASSIFIER
        if fetch:
            model = _fetch_timm_model(arch, family, size, num_classes)
        else:
            model = _vit().build_vit(family, size, num_classes)
    if from_file is not None:
        state_dict = clean_state_dict(from_file)
        if size is not None:
            state_dict = _vit().fit_state_dict(state_dict, model)  # resamples the 224 position embedding to S
        _load_backbone(model, state_dict, classifier, arch, f"weight file {pretrain_file}")
    return model


def _vit():
    """lib.models.vit, imported on first use: timm takes a second to import, and a CNN never needs it."""
    from . import vit

    return vit


def _fetch_failed(arch: str, source: str, fix: str, err: Exception) -> UserError:
    return UserError(
        f"could not fetch the ImageNet weights of {arch} from {source} ({type(err).__name__}: {first_line(err)}); "
        f"{fix}, or give a local file through {_PRETRAIN_FILE_KEYS}, or set {_PRETRAIN_KEYS} False"
    )


def _fetch_torchvision_weights(arch: str) -> dict[str, Tensor]:
    """Return torchvision's IMAGENET1K_V1 state dict of `arch`, from the torch hub cache or the network."""
    try:
        weights = get_model_weights(arch).IMAGENET1K_V1
    except (ValueError, AttributeError):  # a network added under a name of its own (docs/extending.md)
        raise UserError(f"torchvision has no ImageNet weights for {arch}; give a local file through "
                        f"{_PRETRAIN_FILE_KEYS}, or set {_PRETRAIN_KEYS} False") from None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as err:  # no network, nothing cached, truncated download, ...
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise _fetch_failed(arch, weights.url, f"download that file into {cache}", err) from err


def _fetch_timm_model(arch: str, family: str, size: int, num_classes: int) -> nn.Module:
    """Build the ViT through timm's pretrained mechanism (Hugging Face cache or the network)."""
    import timm

    vit = _vit()
    cfg = timm.models.get_pretrained_cfg(f"{family}_224.{vit.PRETRAINED_TAG}")
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{family}_224.{vit.PRETRAINED_TAG}"
    try:
        return vit.build_vit(family, size, num_classes, pretrained=True)
    except Exception as err:  # no network, nothing in the Hugging Face cache, ... (the build itself cannot fail)
        raise _fetch_failed(
            arch, f"the Hugging Face hub ({repo})", f"put them in the Hugging Face cache (`hf download {repo}`)", err
        ) from err


def _read_weight_file(path: str) -> dict[str, Tensor]:
    """Read a state dict from a .pth/.pt or .safetensors file, unwrapping {"state_dict"/"model": ...}."""
    require_file(path, "weight file", f"; fix {_PRETRAIN_FILE_KEYS} or set it to ''")
    problem = None if path.endswith(".safetensors") else torch_file_problem(path)
    if problem:
        raise UserError(f"cannot read weight file {path}: {problem}; give a .pth or .safetensors file of weights "
                        f"({_PRETRAIN_FILE_KEYS})")
    try:
        if path.endswith(".safetensors"):
            loaded: Any = load_safetensors(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read weight file {path} ({type(err).__name__}: {first_line(err)})") from err
    while isinstance(loaded, dict):
        wrapped = [loaded[k] for k in ("state_dict", "model") if isinstance(loaded.get(k), dict)]
        if not wrapped:
            break
        loaded = wrapped[0]
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise UserError(f"weight file {path} does not hold a state dict (a mapping of names to tensors)")
    return loaded


def _load_backbone(model: nn.Module, state_dict: Mapping[str, Tensor], classifier: str, arch: str, source: str) -> None:
    """Load `state_dict` into `model`, keeping the model's classifier where the shapes differ."""
    own = model.state_dict()

    def is_classifier(key: str) -> bool:
        return key.startswith(classifier + ".")

    # An ImageNet classifier (1000 outputs) does not fit a fine-grained head: keep the fresh one.
    state_dict = {
        k: v for k, v in state_dict.items() if not (is_classifier(k) and (k not in own or v.shape != own[k].shape))
    }
    wrong = [k for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise UserError(
            f"{source} does not fit {arch}: {k} has shape {tuple(state_dict[k].shape)} there and "
            f"{tuple(own[k].shape)} in the model ({len(wrong)} mismatched tensors); is it {arch}'s state dict?"
        )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    # BatchNorm's num_batches_tracked is absent from older torchvision files and is not a weight.
    missing = [k for k in missing if not is_classifier(k) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); is it {arch}'s state dict?"
        )
