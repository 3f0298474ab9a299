"""Tests of lib.models: names, feature lists, equivalence with torchvision / timm, and pretrained weights.

Models are built with random weights at tiny input sizes; nothing here touches the network: the download
functions are replaced by ones that fail.
"""

from __future__ import annotations

import copy
import functools
import os
import urllib.error

import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from lib.models import (
    ARCHS,
    VIT_FAMILIES,
    build_model,
    check_input_size,
    clean_state_dict,
    feature_shapes,
    is_vit,
    model_builder,
    parse_arch,
)
from lib.models.vit import resize_pos_embed
from lib.models.weights import output_root_hint
from lib.utils.errors import UserError

NUM_CLASSES = 10
# (channels of feats[0..4], strides of feats[0..4]) of each CNN.
RESNET_STRIDES = (2, 4, 8, 16, 32)
SHUFFLENET_STRIDES = (2, 8, 16, 32, 32)
CNN_FEATURES = {
    "resnet18": ((64, 64, 128, 256, 512), RESNET_STRIDES),
    "resnet34": ((64, 64, 128, 256, 512), RESNET_STRIDES),
    "resnet50": ((64, 256, 512, 1024, 2048), RESNET_STRIDES),
    "resnet101": ((64, 256, 512, 1024, 2048), RESNET_STRIDES),
    "resnet152": ((64, 256, 512, 1024, 2048), RESNET_STRIDES),
    "resnext50_32x4d": ((64, 256, 512, 1024, 2048), RESNET_STRIDES),
    "shufflenet_v2_x0_5": ((24, 48, 96, 192, 1024), SHUFFLENET_STRIDES),
    "shufflenet_v2_x1_0": ((24, 116, 232, 464, 1024), SHUFFLENET_STRIDES),
}
BIG_CNNS = ("resnet101", "resnet152", "resnext50_32x4d")
VIT_WIDTH = {"vit_tiny_patch16": 192, "vit_small_patch16": 384, "vit_base_patch16": 768}


@functools.cache
def _cached_model(arch: str) -> nn.Module:
    """Build `arch` once for the tests that only run it (they must leave it as they found it)."""
    torch.manual_seed(0)
    return build_model(arch, NUM_CLASSES, pretrained=False)


@torch.no_grad()
def _perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every weight and BatchNorm statistic, so that equivalence tests are not trivially met."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.02 * torch.randn(param.shape, generator=gen))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))
            module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
    return model


def _image(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _fail_download(*args, **kwargs):
    raise urllib.error.URLError("network disabled in tests")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache, and downloads from torch hub and the Hugging Face hub that fail."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _fail_download)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", _fail_download)
    return tmp_path


# ------------------------------------------------------------------------------------------------ names and sizes


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet18", ("resnet18", None)),
        ("shufflenet_v2_x1_0", ("shufflenet_v2_x1_0", None)),
        ("vit_tiny_patch16_56", ("vit_tiny_patch16", 56)),
        ("vit_small_patch16_112", ("vit_small_patch16", 112)),
        ("vit_base_patch16_224", ("vit_base_patch16", 224)),
        ("vit_tiny_patch16_149", ("vit_tiny_patch16", 149)),
    ],
)
def test_parse_arch_splits_family_and_input_size(arch, expected):
    assert parse_arch(arch) == expected
    assert is_vit(arch) == (expected[1] is not None)


def test_registries_list_every_architecture_of_the_original_release():
    assert set(ARCHS) == set(CNN_FEATURES)
    assert {"vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16"} <= set(VIT_FAMILIES)  # (and any added)


@pytest.mark.parametrize("arch", ["resnet19", "", "vit_tiny_patch16_056", "vit_huge_patch14_224"])
def test_unknown_arch_raises_user_error_listing_valid_names(arch):
    with pytest.raises(UserError, match="unknown architecture") as err:
        parse_arch(arch)
    assert "resnet18" in str(err.value) and "vit_tiny_patch16_<S>" in str(err.value)
    with pytest.raises(UserError, match="unknown architecture"):
        build_model(arch, NUM_CLASSES, pretrained=False)


def test_a_vit_family_without_its_size_is_told_to_name_the_size():
    with pytest.raises(UserError) as err:
        build_model("vit_tiny_patch16", NUM_CLASSES, pretrained=False)
    assert str(err.value) == ("architecture 'vit_tiny_patch16' needs its input size in pixels in its name, e.g. "
                              "vit_tiny_patch16_56 for 56 px images")


def test_unknown_arch_error_suggests_the_closest_name():
    with pytest.raises(UserError, match="did you mean resnet18"):
        parse_arch("resnet-18")


def test_check_input_size_accepts_sizes_the_models_take():
    check_input_size("resnet18", 32)
    check_input_size("resnet18", 28)  # the benchmark's student (configs/bench/cpu_isrd.yaml)
    check_input_size("shufflenet_v2_x0_5", 224)
    check_input_size("vit_tiny_patch16_56", 56)
    check_input_size("vit_tiny_patch16_16", 16)


def test_check_input_size_rejects_cnn_inputs_below_the_minimum():
    with pytest.raises(UserError) as err:
        check_input_size("resnet18", 14)
    message = str(err.value)
    for part in ("resnet18", "14x14", "16x16", "DATA.LESSEN_RATIO", "DATA.CROP_SIZE"):
        assert part in message


def test_check_input_size_rejects_vit_size_other_than_its_name():
    with pytest.raises(UserError, match=r"takes 56x56 inputs but gets 112x112.*vit_tiny_patch16_112"):
        check_input_size("vit_tiny_patch16_56", 112)


def test_check_input_size_rejects_vit_inputs_smaller_than_a_patch():
    with pytest.raises(UserError, match="at least one 16x16 patch"):
        check_input_size("vit_tiny_patch16_8", 8)
    with pytest.raises(UserError, match="at least one 16x16 patch"):
        build_model("vit_tiny_patch16_8", NUM_CLASSES, pretrained=False)


def test_build_model_rejects_non_positive_num_classes():
    with pytest.raises(UserError, match="DATA.NUM_CLASSES"):
        build_model("resnet18", 0, pretrained=False)


# ------------------------------------------------------------------------------------------------ CNN features


def _check_cnn_forward(arch: str, size: int, batch: int) -> None:
    model = _cached_model(arch).eval()
    channels, strides = CNN_FEATURES[arch]
    expected = [(c, size // s, size // s) for c, s in zip(channels, strides)]
    x = _image(size, batch)
    with torch.no_grad():
        logits, feats = model(x, return_feat=True)
        assert torch.equal(model(x), logits)
    assert logits.shape == (batch, NUM_CLASSES)
    assert [tuple(f.shape) for f in feats] == [(batch, *shape) for shape in expected]
    assert feature_shapes(model, size) == expected


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("arch", [a for a in CNN_FEATURES if a not in BIG_CNNS])
def test_cnn_forward_returns_logits_and_five_features(arch, size):
    _check_cnn_forward(arch, size, batch=2)


@pytest.mark.parametrize("arch", BIG_CNNS)
def test_big_cnn_forward_returns_logits_and_five_features(arch):
    _check_cnn_forward(arch, 32, batch=1)


def test_resnet18_at_56_has_a_64x28x28_input_conv_feature():
    assert feature_shapes(_cached_model("resnet18"), 56)[0] == (64, 28, 28)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "shufflenet_v2_x0_5"])
def test_prerelu_features_are_the_stage_outputs_before_their_relu(arch):
    model = _perturb_(copy.deepcopy(_cached_model(arch))).eval()
    x = _image(64)
    with torch.no_grad():
        logits, post = model(x, return_feat=True)
        logits_pre, pre = model(x, return_feat=True, preReLU=True)
    torch.testing.assert_close(logits_pre, logits)
    # Every feature, the input conv's too (the release's convention), is ReLU'd unless preReLU.
    for feat_pre, feat_post in zip(pre, post):
        torch.testing.assert_close(torch.relu(feat_pre), feat_post)
        assert (feat_post >= 0).all()
    assert all((f < 0).any() for f in pre[:4])  # the input conv and the stages carry their negative half


# ------------------------------------------------------------------------------------------------ torchvision


def _assert_same_logits(ours: nn.Module, reference: nn.Module, size: int) -> None:
    """Load `reference`'s weights into `ours` strictly and compare logits in eval and train mode."""
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _image(size)
    for training in (False, True):  # train mode: BatchNorm uses batch statistics
        ours.train(training)
        reference.train(training)
        with torch.no_grad():
            expected = reference(x)
            torch.testing.assert_close(ours(x), expected)
            torch.testing.assert_close(ours(x, return_feat=True, preReLU=True)[0], expected)


@pytest.mark.parametrize("arch, size", [("resnet18", 64), ("resnet50", 64), ("shufflenet_v2_x0_5", 64)])
def test_cnn_logits_equal_torchvision_for_the_same_weights(arch, size):
    torch.manual_seed(0)
    reference = _perturb_(torchvision.models.get_model(arch, num_classes=NUM_CLASSES))
    _assert_same_logits(build_model(arch, NUM_CLASSES, pretrained=False), reference, size)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5"])
def test_cnn_gradients_and_inference_memory_equal_torchvisions(arch):
    # The logits-only forward runs the deferred ReLUs and the residual sums in place, as torchvision does: the
    # same gradients, and the same peak activation memory (tools/cost.py's figure; it kept every stage output
    # alive before, +25% for ResNet-18, +69% for ResNet-50; ResNeXt-50 held one more map per block, +8%, while
    # its layers were chained in one statement).
    from lib.analysis.cost import peak_activation_bytes

    torch.manual_seed(0)
    reference = _perturb_(torchvision.models.get_model(arch, num_classes=NUM_CLASSES)).train()
    ours = build_model(arch, NUM_CLASSES, pretrained=False).train()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _image(64)
    reference(x).square().sum().backward()
    for return_feat in (False, True):
        ours.zero_grad()
        logits = ours(x, return_feat=return_feat)
        (logits[0] if return_feat else logits).square().sum().backward()
        for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
            # Float noise only: ShuffleNet's chunked ReLUs sum in another order, and the biases right before a
            # BatchNorm have a zero gradient up to rounding (1e-7).
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-2, atol=1e-5, msg=f"{name}, return_feat {return_feat}")
    ours.eval()
    reference.eval()
    assert peak_activation_bytes(ours, x) == peak_activation_bytes(reference, x)


def test_resnext50_loads_a_torchvision_state_dict_strictly_with_equal_logits():
    torch.manual_seed(0)
    reference = _perturb_(torchvision.models.resnext50_32x4d(num_classes=NUM_CLASSES))
    _assert_same_logits(build_model("resnext50_32x4d", NUM_CLASSES, pretrained=False), reference, 32)


# ------------------------------------------------------------------------------------------------ ViT


@pytest.mark.parametrize(
    "family, size",
    [(f, s) for f in ("vit_tiny_patch16", "vit_small_patch16") for s in (32, 56, 64)] + [("vit_base_patch16", 32)],
)
def test_vit_forward_returns_logits_and_depth_plus_one_features(family, size):
    model = _cached_model(f"{family}_{size}").eval()
    grid = size // 16
    batch = 1 if family == "vit_base_patch16" else 2
    x = _image(size, batch)
    with torch.no_grad():
        logits, feats = model(x, return_feat=True)
        torch.testing.assert_close(model(x), logits)
    assert logits.shape == (batch, NUM_CLASSES)
    assert len(feats) == 13
    assert all(tuple(f.shape) == (batch, VIT_WIDTH[family], grid, grid) for f in feats)
    assert feature_shapes(model, size) == [(VIT_WIDTH[family], grid, grid)] * 13


def test_vit_tiny_at_56_has_a_192x3x3_patch_embedding_feature():
    assert feature_shapes(_cached_model("vit_tiny_patch16_56"), 56)[0] == (192, 3, 3)


def test_vit_features_are_patch_embedding_before_pos_embed_and_block_patch_tokens():
    model = _perturb_(copy.deepcopy(_cached_model("vit_tiny_patch16_32"))).eval()
    x = _image(32)
    with torch.no_grad():
        _, feats = model(x, return_feat=True)
        tokens = model.patch_embed(x)  # (B, 4, 192), no position embedding
        torch.testing.assert_close(feats[0], tokens.transpose(1, 2).reshape(2, 192, 2, 2))
        # Token (row 1, column 0) of the last block is at position 1 + 2 after the class token.
        last = model.blocks(model.norm_pre(model._pos_embed(tokens)))
        torch.testing.assert_close(feats[-1][:, :, 1, 0], last[:, 1 + 2])


@pytest.mark.parametrize("size", [56, 224])
def test_vit_logits_equal_timm_for_the_same_weights(size):
    torch.manual_seed(0)
    reference = _perturb_(timm.create_model("vit_tiny_patch16_224", img_size=size, num_classes=NUM_CLASSES)).eval()
    ours = build_model(f"vit_tiny_patch16_{size}", NUM_CLASSES, pretrained=False).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _image(size)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected)
        torch.testing.assert_close(ours(x, return_feat=True)[0], expected)


def test_vit_224_state_dict_loads_into_56_model_after_timm_pos_embed_resampling():
    torch.manual_seed(0)
    state_224 = _perturb_(timm.create_model("vit_tiny_patch16_224", num_classes=NUM_CLASSES)).state_dict()
    ours = build_model("vit_tiny_patch16_56", NUM_CLASSES, pretrained=False).eval()
    reference = timm.create_model("vit_tiny_patch16_224", img_size=56, num_classes=NUM_CLASSES).eval()
    state_56 = checkpoint_filter_fn(state_224, reference)
    assert state_56["pos_embed"].shape == (1, 1 + 3 * 3, 192)
    reference.load_state_dict(state_56, strict=True)
    ours.load_state_dict(state_56, strict=True)
    x = _image(56)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_building_a_vit_registers_nothing_into_timm():
    build_model("vit_tiny_patch16_40", NUM_CLASSES, pretrained=False)
    assert not timm.is_model("vit_tiny_patch16_40")
    assert not timm.is_model("vit_tiny_patch16_56")


# ------------------------------------------------------------------------------------------------ state dicts


def test_clean_state_dict_strips_module_prefix_and_renames_fc_cls():
    weight, bias, conv = torch.ones(2, 3), torch.zeros(2), torch.ones(1)
    state = {"module.fc_cls.weight": weight, "module.fc_cls.bias": bias, "module.conv1.weight": conv}
    cleaned = clean_state_dict(state)
    assert cleaned == {"fc.weight": weight, "fc.bias": bias, "conv1.weight": conv}
    assert "module.fc_cls.weight" in state  # the input is left as it was
    # A DataParallel model saved from inside another wrapper: every leading "module." goes.
    nested = clean_state_dict({"module.module.conv1.weight": conv, "module.module.fc_cls.bias": bias})
    assert nested == {"conv1.weight": conv, "fc.bias": bias}


def _with_original_classifier_name(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the classifier `fc.*` to the original release's `fc_cls.*`."""
    return {("fc_cls." + k[len("fc.") :] if k.startswith("fc.") else k): v for k, v in state_dict.items()}


def test_original_release_resnet_checkpoint_loads_strictly():
    source = _perturb_(copy.deepcopy(_cached_model("resnet18"))).eval()
    original = {f"module.{k}": v for k, v in _with_original_classifier_name(source.state_dict()).items()}
    model = build_model("resnet18", NUM_CLASSES, pretrained=False).eval()
    model.load_state_dict(clean_state_dict(original), strict=True)
    x = _image(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def _original_shufflenet_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict `model` would have in the original release's pre-activation ShuffleNetV2 layout."""
    model = copy.deepcopy(model)
    for stage_name in ("stage2", "stage3", "stage4"):
        for index, block in enumerate(getattr(model, stage_name)):
            # The original prepends a ReLU to every branch but stage2.0's and drops the closing ReLU.
            lead = [] if (stage_name, index) == ("stage2", 0) else [nn.ReLU()]
            block.branch2 = nn.Sequential(*lead, *list(block.branch2)[:-1])
            if block.stride > 1:
                block.branch1 = nn.Sequential(*lead, *list(block.branch1)[:-1])
    model.conv5 = nn.Sequential(nn.ReLU(), *model.conv5)  # [ReLU, Conv, BN, ReLU]
    return _with_original_classifier_name(model.state_dict())


def test_original_release_shufflenet_checkpoint_loads_strictly_with_equal_logits():
    source = _perturb_(copy.deepcopy(_cached_model("shufflenet_v2_x0_5"))).eval()
    original = _original_shufflenet_state_dict(source)
    assert "conv5.2.running_var" in original and "stage3.0.branch1.1.weight" in original  # the shifted layout
    model = build_model("shufflenet_v2_x0_5", NUM_CLASSES, pretrained=False).eval()
    model.load_state_dict(clean_state_dict({f"module.{k}": v for k, v in original.items()}), strict=True)
    x = _image(32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x))


def test_clean_state_dict_leaves_torchvision_shufflenet_keys_alone():
    state = _cached_model("shufflenet_v2_x0_5").state_dict()
    assert list(clean_state_dict(state)) == list(state)


def test_feature_shapes_restores_each_module_mode():
    model = _cached_model("resnet18")
    model.train()
    model.layer1.eval()
    try:
        feature_shapes(model, 32)
        assert model.training and model.layer2.training and not model.layer1.training
    finally:
        model.eval()


# ------------------------------------------------------------------------------------------------ pretrained


def _backbone_equal(model: nn.Module, state_dict: dict[str, torch.Tensor], classifier: str) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state_dict.items() if not k.startswith(classifier + "."))


@pytest.mark.parametrize("num_classes", [NUM_CLASSES, 1000])
def test_pretrained_cnn_loads_torchvision_weights_from_the_torch_hub_cache(offline, num_classes):
    url = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1.url
    cache = offline / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    imagenet = _perturb_(torchvision.models.resnet18()).state_dict()  # 1000 classes
    torch.save(imagenet, cache / os.path.basename(url))
    model = build_model("resnet18", num_classes, pretrained=True)
    assert _backbone_equal(model, imagenet, "fc")
    assert model.fc.out_features == num_classes
    assert torch.equal(model.fc.weight, imagenet["fc.weight"]) == (num_classes == 1000)


def test_pretrain_file_loads_a_wrapped_cnn_state_dict(offline):
    imagenet = _perturb_(torchvision.models.resnet18()).state_dict()
    path = offline / "resnet18_imagenet.pth"
    torch.save({"state_dict": imagenet, "epoch": 90}, path)
    model = build_model("resnet18", NUM_CLASSES, pretrained=True, pretrain_file=str(path))
    assert _backbone_equal(model, imagenet, "fc")


def test_pretrain_file_loads_a_224_vit_into_a_56_vit_with_resampled_pos_embed(offline):
    torch.manual_seed(0)
    imagenet = _perturb_(timm.create_model("vit_tiny_patch16_224")).state_dict()  # 1000 classes
    path = offline / "vit_tiny_224.pth"
    torch.save({"model": imagenet}, path)
    model = build_model("vit_tiny_patch16_56", NUM_CLASSES, pretrained=True, pretrain_file=str(path))
    torch.testing.assert_close(model.pos_embed, _release_resize_pos_embed(imagenet["pos_embed"], 3))
    assert _backbone_equal(model, {k: v for k, v in imagenet.items() if k != "pos_embed"}, "head")
    assert model.head.weight.shape == (NUM_CLASSES, 192)


def _release_resize_pos_embed(pos_embed: torch.Tensor, new: int) -> torch.Tensor:
    """The release's resize_pos_embed written out: class token kept, grid resized by bilinear interpolation
    with half-pixel centres (F.interpolate's align_corners=False), no antialiasing."""
    grid = pos_embed[0, 1:].double().numpy()  # (old * old, D)
    old = round(len(grid) ** 0.5)
    grid = grid.reshape(old, old, -1)

    def taps(i: int) -> tuple[int, int, float]:
        x = max((i + 0.5) * old / new - 0.5, 0.0)
        lo = min(int(x), old - 1)
        return lo, min(lo + 1, old - 1), x - lo

    out = []
    for i in range(new):
        y0, y1, fy = taps(i)
        for j in range(new):
            x0, x1, fx = taps(j)
            top = (1 - fx) * grid[y0, x0] + fx * grid[y0, x1]
            bottom = (1 - fx) * grid[y1, x0] + fx * grid[y1, x1]
            out.append((1 - fy) * top + fy * bottom)
    resized = torch.from_numpy(np.stack(out)).to(pos_embed.dtype)[None]  # (1, new * new, D)
    return torch.cat([pos_embed[:, :1], resized], dim=1)


def test_vit_position_embeddings_are_resampled_bilinearly_as_the_release_not_with_timms_bicubic():
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)
    for new in (3, 7):  # ViT@56 and ViT@112
        expected = _release_resize_pos_embed(pos_embed, new)
        ours = resize_pos_embed(pos_embed, (new, new), num_prefix_tokens=1)
        torch.testing.assert_close(ours, expected)
        timm_default = resample_abs_pos_embed(pos_embed, new_size=(new, new), num_prefix_tokens=1)
        assert not torch.allclose(ours, timm_default, atol=1e-3)  # bicubic + antialias gives other weights


def test_pretrained_vit_fetches_the_releases_augreg_in21k_ft_in1k_weights_through_timms_hub(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    imagenet = _perturb_(timm.create_model("vit_tiny_patch16_224")).state_dict()  # 1000 classes
    save_file(imagenet, str(tmp_path / "model.safetensors"))
    asked = []

    def local_hub(repo_id, filename, **kwargs):  # a Hugging Face hub holding one repository
        asked.append(repo_id)
        if repo_id != "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" or filename != "model.safetensors":
            raise urllib.error.URLError(f"{repo_id}/{filename} is not on this hub")
        return str(tmp_path / filename)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", local_hub)
    model = build_model("vit_tiny_patch16_56", NUM_CLASSES, pretrained=True)
    assert asked == ["timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"]
    torch.testing.assert_close(model.pos_embed, _release_resize_pos_embed(imagenet["pos_embed"], 3))
    assert _backbone_equal(model, {k: v for k, v in imagenet.items() if k != "pos_embed"}, "head")
    assert model.head.weight.shape == (NUM_CLASSES, 192)


def test_pretrain_file_reads_safetensors(offline):
    from safetensors.torch import save_file

    imagenet = _perturb_(torchvision.models.shufflenet_v2_x0_5()).state_dict()
    path = offline / "shufflenet.safetensors"
    save_file(imagenet, str(path))
    model = build_model("shufflenet_v2_x0_5", NUM_CLASSES, pretrained=True, pretrain_file=str(path))
    assert _backbone_equal(model, imagenet, "fc")


def test_missing_pretrain_file_raises_user_error_naming_it(offline):
    path = str(offline / "nowhere.pth")
    with pytest.raises(UserError, match="weight file not found: .*nowhere.pth.*PRETRAIN_FILE"):
        build_model("resnet18", NUM_CLASSES, pretrained=True, pretrain_file=path)


def test_imagenet_weights_for_a_network_torchvision_does_not_have_are_one_line(offline, monkeypatch):
    # A network added under a name of its own (docs/extending.md) with MODEL.PRETRAIN True: torchvision's
    # "ValueError: Unknown model tinycnn" traceback.
    monkeypatch.setitem(model_builder.CNN_BUILDERS, "tinycnn", lambda num_classes: torchvision.models.resnet18(
        num_classes=num_classes))
    with pytest.raises(UserError, match=r"^torchvision has no ImageNet weights for tinycnn; give a local file through "
                                        r"MODEL.PRETRAIN_FILE"):
        build_model("tinycnn", NUM_CLASSES, pretrained=True)


def test_pretrain_file_of_another_arch_raises_user_error(offline):
    path = offline / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(UserError, match="does not fit resnet18"):
        build_model("resnet18", NUM_CLASSES, pretrained=True, pretrain_file=str(path))


def test_a_pretrain_file_without_pretraining_is_ignored_with_a_warning_in_the_runs_log(offline, capsys):
    model = build_model("resnet18", NUM_CLASSES, pretrained=False, pretrain_file=str(offline / "nowhere.pth"))
    assert model.fc.out_features == NUM_CLASSES
    # The project logger's stdout, which train.log also receives (not Python's fallback to stderr).
    out = capsys.readouterr().out
    assert f"warning: weight file {offline / 'nowhere.pth'} for resnet18 is ignored: pretraining is off" in out


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_56"])
def test_pretrained_without_cache_or_network_raises_user_error_with_the_fix(offline, arch):
    with pytest.raises(UserError) as err:
        build_model(arch, NUM_CLASSES, pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    for part in (arch, "PRETRAIN_FILE", "PRETRAIN_S", "False", "MODEL.PRETRAIN_A", "TAS.PRETRAIN_FILE_A"):
        assert part in message


def test_a_cnn_run_never_imports_timm(tiny_teacher):
    # timm takes a second to import; a CNN experiment's processes (and every test that starts one) need not pay it.
    # The tiny teacher run (resnet18, the published teacher script) ran with PYTHONPROFILEIMPORTTIME: its stderr
    # names every module it imported, one "import time: ... | <module>" line each.
    imported = {line.rsplit("|", 1)[1].strip() for line in tiny_teacher.proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"torch", "torchvision", "lib.engine.trainer"} <= imported  # the listing is there and complete
    assert not {name for name in imported if name == "timm" or name.startswith("timm.")}, "timm was imported"


def test_a_pretrain_file_lacking_backbone_weights_is_refused_not_half_loaded(tmp_path):
    imagenet = torchvision.models.resnet18().state_dict()
    del imagenet["layer4.1.bn2.weight"]  # that layer would keep its random initialisation
    path = tmp_path / "partial.pth"
    torch.save(imagenet, path)
    missing = r"does not fit resnet18: 1 missing keys \(e\.g\. \['layer4\.1\.bn2\.weight'\]\)"
    with pytest.raises(UserError, match=missing):
        build_model("resnet18", 4, pretrained=True, pretrain_file=str(path))


@torch.no_grad()
def test_resnet_input_conv_feature_is_conv1_output_before_bn_even_when_bn_is_not_an_identity():
    # A fresh BatchNorm in eval mode (mean 0, var 1, weight 1, bias 0) is the identity up to 1e-5: the feature must be
    # compared on a network whose bn1 moves values, or conv1 and bn1(conv1) look alike.
    torch.manual_seed(0)
    model = build_model("resnet18", 4, False).eval()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    model.bn1.weight.uniform_(0.5, 1.5)
    model.bn1.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 32, 32)
    _, feats = model(x, return_feat=True, preReLU=True)  # what ISRD decodes
    torch.testing.assert_close(feats[0], model.conv1(x))
    assert not torch.allclose(feats[0], model.bn1(model.conv1(x)), atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "shufflenet_v2_x0_5"])
def test_a_cnn_takes_inputs_of_exactly_its_minimum_size(arch):
    check_input_size(arch, 16)  # CNN_MIN_INPUT_SIZE: "from 16 px on" (model_builder.py)
    with torch.no_grad():
        assert build_model(arch, 4, False).eval()(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    with pytest.raises(UserError, match="at least 16x16"):
        check_input_size(arch, 15)


def test_a_missing_checkpoint_outside_the_output_root_says_the_key_does_not_follow_it(tmp_path):
    # The demo ISRD config names its teacher under ckpt/demo; a command with BASIC.OUTPUT_ROOT elsewhere trained
    # the teacher there: the hint names that file when it exists.
    root, default = str(tmp_path / "elsewhere"), str(tmp_path / "ckpt")
    written = tmp_path / "ckpt" / "demo" / "cub" / "1runs_resnet18_64_seed0_0.05" / "ckpt" / "model_best.pth"
    there = os.path.join(root, "cub", "1runs_resnet18_64_seed0_0.05", "ckpt", "model_best.pth")
    assert output_root_hint("MODEL.MODELDICT_T", str(written), root, default) == \
        f"; MODEL.MODELDICT_T does not follow BASIC.OUTPUT_ROOT ({root}): give the path of the checkpoint to use"
    os.makedirs(os.path.dirname(there))
    open(there, "wb").close()
    assert output_root_hint("MODEL.MODELDICT_T", str(written), root, default) == \
        f"; MODEL.MODELDICT_T does not follow BASIC.OUTPUT_ROOT: did you mean MODEL.MODELDICT_T {there}?"
    assert output_root_hint("MODEL.MODELDICT_T", os.path.join(root, "cub", "x.pth"), root, default) == ""  # under it
    # A path of the user's own (not under the default root): the outputs' root has nothing to do with it.
    assert output_root_hint("MODEL.MODELDICT_T", str(tmp_path / "mine" / "teacher.pth"), root, default) == ""
    # A file name mistyped in a folder that is there: a typo, not a root the key did not follow.
    os.makedirs(written.parent)
    assert output_root_hint("MODEL.MODELDICT_T", str(written.parent / "model_best.pth.bak"), root, default) == ""


class _Payload:
    """An object a pickle rebuilds by running code: what a weights-only load refuses."""


def test_a_checkpoint_holding_python_objects_is_refused_unrun_and_the_release_format_loads(tmp_path):
    from lib.models.weights import load_weights

    state = build_model("resnet18", NUM_CLASSES, pretrained=False).state_dict()
    # The release's teacher file: epoch, state_dict of the unwrapped model, best_acc (a Python float).
    release = tmp_path / "release.pth"
    torch.save({"epoch": 3, "state_dict": state, "best_acc": 41.5}, release)
    model = build_model("resnet18", NUM_CLASSES, pretrained=False)
    assert load_weights(model, str(release), "teacher checkpoint MODEL.MODELDICT_T", "resnet18",
                        NUM_CLASSES)["best_acc"] == 41.5
    foreign = tmp_path / "shared.pth"
    torch.save({"state_dict": state, "meta": _Payload()}, foreign)
    with pytest.raises(UserError) as err:
        load_weights(model, str(foreign), "teacher checkpoint MODEL.MODELDICT_T", "resnet18", NUM_CLASSES)
    message = str(err.value)
    assert message.startswith(f"teacher checkpoint MODEL.MODELDICT_T {foreign} holds Python objects beyond tensors "
                              f"and plain values ({__name__}._Payload), which unpickling would run as code"), message
    assert "save its weights alone and pass that file" in message and "\n" not in message
