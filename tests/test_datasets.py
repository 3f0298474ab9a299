"""Datasets, both pipelines, BatchPreparer and synthetic data, on tiny generated CUB and Aircraft folders."""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from lib.config import REPO_ROOT, get_cfg
from lib.datasets import DATASETS, BatchPreparer, build_dataset
from lib.datasets.cache import ShorterSideResize, build_cache, decode_uint8, load_rgb
from lib.datasets.sampler import EpochSampler
from lib.datasets.synthetic import make_aircraft, make_cub
from lib.datasets.transforms import (
    pil_vs_tensor_small_image_difference,
    sample_crop,
    small_test_geometry,
    uint8_to_normalized,
)
from lib.utils.errors import UserError

NUM_CLASSES = 3
PER_CLASS = 2
SIZE = (40, 30)  # (W, H) of the generated JPEGs
CROP, RESIZE = 32, 36  # teacher crop; student: 16 px crop, 18 px test resize at LESSEN_RATIO 2


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    """Pristine generated datasets in both official layouts (never modified; copy before breaking one)."""
    base = tmp_path_factory.mktemp("datasets")
    make_cub(str(base / "cub"), NUM_CLASSES, PER_CLASS, SIZE, seed=0)
    make_aircraft(str(base / "fgvc-aircraft-2013b"), NUM_CLASSES, PER_CLASS, SIZE, seed=0)
    return {"cub": str(base / "cub"), "aircraft": str(base / "fgvc-aircraft-2013b")}


@pytest.fixture
def broken(roots, tmp_path):
    """Copy a pristine dataset into tmp_path so a test can damage it; returns the copy's path."""

    def copy(dataset: str) -> str:
        target = str(tmp_path / dataset)
        shutil.copytree(roots[dataset], target)
        return target

    return copy


def make_cfg(dataset: str, root: str, pipeline: str = "tensor", workers: int = 0, **data):
    """A tiny config: 32 px teacher crop, 16 px student (LESSEN_RATIO 2), 3 classes."""
    cfg = get_cfg()
    cfg.DATA.DATASET = dataset
    cfg.DATA.DATADIR = root
    cfg.DATA.NUM_CLASSES = NUM_CLASSES
    cfg.DATA.CROP_SIZE = CROP
    cfg.DATA.RESIZE_SIZE = RESIZE
    cfg.DATA.LESSEN_RATIO = 2.0
    cfg.DATA.PIPELINE = pipeline
    cfg.BASIC.NUM_WORKERS = workers
    for key, value in data.items():
        cfg.DATA[key] = value
    return cfg


def first_batch(dataset, batch_size: int = 4) -> dict:
    return next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=False)))


def raises_user_error(cfg, is_train: bool = True, *expected: str) -> str:
    """Build the dataset, expect a one-line UserError holding every `expected` string; return its message."""
    with pytest.raises(UserError) as info:
        build_dataset(cfg, is_train)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------------------------
# Items and batches
# ---------------------------------------------------------------------------------------------------------------
ITEM_FORMATS = {
    ("pil", True): {"image": ((3, 16, 16), torch.float32), "image_large": ((3, 32, 32), torch.float32)},
    ("pil", False): {"image": ((3, 16, 16), torch.float32)},
    ("tensor", True): {"image_large": ((3, 32, 32), torch.uint8)},
    ("tensor", False): {"image": ((3, 16, 16), torch.uint8)},
}


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
@pytest.mark.parametrize("is_train", [True, False])
def test_every_item_has_its_pipeline_keys_shapes_and_dtypes_and_three_channels(roots, dataset, pipeline, is_train):
    data = build_dataset(make_cfg(dataset, roots[dataset], pipeline), is_train)
    assert len(data) == NUM_CLASSES * PER_CLASS
    expected = ITEM_FORMATS[(pipeline, is_train)]
    for index in range(len(data)):  # every image, grayscale ones included, has 3 channels
        item = data[index]
        assert set(item) == set(expected) | {"target"}
        for key, (shape, dtype) in expected.items():
            assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
        assert isinstance(item["target"], int) and item["target"] == data.samples[index][1]


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_samples_labels_and_classes(roots, dataset):
    cfg = make_cfg(dataset, roots[dataset])
    train, test = build_dataset(cfg, True), build_dataset(cfg, False)
    assert len(train.classes) == len(test.classes) == NUM_CLASSES
    for split in (train, test):
        labels = [label for _, label in split.samples]
        assert sorted(labels) == sorted(list(range(NUM_CLASSES)) * PER_CLASS)  # 0-based, per_class each
        assert all(os.path.isabs(path) and os.path.isfile(path) for path, _ in split.samples)
    assert not {path for path, _ in train.samples} & {path for path, _ in test.samples}
    if dataset == "cub":
        assert train.classes[0] == "001.Black_footed_Albatross"
        assert all(f"/images/{train.classes[label]}/" in path for path, label in train.samples)


def test_aircraft_variant_names_with_spaces_and_slashes(roots):
    data = build_dataset(make_cfg("aircraft", roots["aircraft"]), False)
    assert {"Boeing 737-300", "F-16A/B", "F/A-18"} <= set(data.classes)
    with open(os.path.join(roots["aircraft"], "data", "images_variant_test.txt")) as f:
        lines = dict(line.rstrip("\n").split(" ", 1) for line in f)
    for path, label in data.samples:
        image_id = os.path.basename(path)[: -len(".jpg")]
        assert len(image_id) == 7 and data.classes[label] == lines[image_id]


def test_cub_split_is_train_test_split_txt(roots):
    root = roots["cub"]

    def table(name: str) -> dict[str, str]:
        with open(os.path.join(root, name)) as f:
            return dict(line.split(" ", 1) for line in f.read().splitlines())

    paths, labels, split = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    assert set(split.values()) == {"0", "1"}
    cfg = make_cfg("cub", root, "pil")
    for is_train, flag in ((True, "1"), (False, "0")):
        expected = [(os.path.join(root, "images", paths[i]), int(labels[i]) - 1) for i in split if split[i] == flag]
        assert sorted(build_dataset(cfg, is_train).samples) == sorted(expected), flag


@pytest.mark.parametrize("is_train", [True, False])
def test_batch_preparer_same_output_format_for_both_pipelines(roots, is_train):
    outs = {}
    for pipeline in ("pil", "tensor"):
        cfg = make_cfg("cub", roots["cub"], pipeline)
        outs[pipeline] = BatchPreparer(cfg, "cpu")(first_batch(build_dataset(cfg, is_train)))
    pil, tensor = outs["pil"], outs["tensor"]
    assert list(pil) == list(tensor) == (["image", "image_large", "target"] if is_train else ["image", "target"])
    for key in pil:
        assert pil[key].shape == tensor[key].shape and pil[key].dtype == tensor[key].dtype, key
    assert tuple(pil["image"].shape) == (4, 3, 16, 16) and pil["image"].dtype == torch.float32
    assert pil["target"].dtype == torch.int64
    if is_train:
        assert tuple(pil["image_large"].shape) == (4, 3, 32, 32)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_test_images_equal_between_pipelines(roots, dataset, device):
    images = {}
    for pipeline in ("pil", "tensor"):
        cfg = make_cfg(dataset, roots[dataset], pipeline)
        prep = BatchPreparer(cfg, device)
        batches = DataLoader(build_dataset(cfg, False), batch_size=4)
        images[pipeline] = torch.cat([prep(b)["image"].cpu() for b in batches])
    assert torch.equal(images["pil"], images["tensor"])  # bit for bit, not just allclose


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_device_pipeline_batches_are_the_tensor_pipelines_within_one_level(tmp_path, device):
    from lib.engine.trainer import build_loader

    root = str(tmp_path / "cub")
    make_cub(root, NUM_CLASSES, 4, (200, 150), seed=1)  # 72 px cache: crops both shrink and grow to 64 px
    streams = {}
    for pipeline in ("tensor", "device"):
        cfg = make_cfg("cub", root, pipeline, CROP_SIZE=64, RESIZE_SIZE=72)
        cfg.TRAIN.BATCH_SIZE = 8
        loader = build_loader(cfg, build_dataset(cfg, True), True, torch.device(device if pipeline == "device"
                                                                               else "cpu"))
        loader.batch_sampler.set_epochs([1, 2])
        streams[pipeline] = [{k: v.cpu() for k, v in b.items()} for b in loader]
    assert len(streams["tensor"]) == len(streams["device"]) == 4  # 12 images, batches of 8 and 4, two epochs
    levels = []
    for tensor, dev in zip(streams["tensor"], streams["device"]):
        assert torch.equal(tensor["target"], dev["target"])
        assert dev["image_large"].shape == tensor["image_large"].shape and dev["image_large"].dtype == torch.float32
        assert torch.equal(dev["image_large"], dev["image_large"].round())  # on uint8 levels
        levels.append((dev["image_large"] - tensor["image_large"].float()).abs().flatten())
    levels = torch.cat(levels)
    # The tensor pipeline resizes uint8 in fixed point, the device pipeline in float: at most one level apart.
    assert levels.max() <= 1 and levels.mean() < 0.3
    # The same crops: a wrong box or flip would differ by far more than rounding.
    cfg = make_cfg("cub", root, "device", CROP_SIZE=64, RESIZE_SIZE=72)
    out = BatchPreparer(cfg, device)(streams["device"][0])
    assert list(out) == ["image", "image_large", "target"] and tuple(out["image"].shape) == (8, 3, 32, 32)


def test_device_resize_is_torchs_antialiased_bilinear():
    from lib.datasets.device import resize_weights

    generator = torch.Generator().manual_seed(0)
    for h, w, out in [(300, 250, 224), (100, 80, 224), (224, 224, 224), (37, 500, 56)]:
        x = torch.rand(3, h, w, generator=generator) * 255
        expected = torch.nn.functional.interpolate(x[None], size=(out, out), mode="bilinear", antialias=True)[0]
        padded = torch.nn.functional.pad(x, (0, 3, 0, 5), value=1e4)  # padding must get no weight
        weights_y = resize_weights(torch.tensor([h]), h + 5, out)[0]
        weights_x = resize_weights(torch.tensor([w]), w + 3, out)[0]
        torch.testing.assert_close(weights_y @ padded @ weights_x.T, expected, atol=0.01, rtol=0)


def test_device_pipeline_cache_too_large_for_the_device_is_one_line(roots, monkeypatch):
    from lib.datasets.device import check_cache_fits
    from lib.engine import trainer

    cfg = make_cfg("cub", roots["cub"], "device")
    dataset = build_dataset(cfg, True)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    # Before a run starts: a GPU with less free memory than the cache.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (dataset.cache_nbytes - 1, 2**40))
    with pytest.raises(UserError, match=r"decoded training images .* do not fit on cuda:0; set DATA.PIPELINE tensor"):
        check_cache_fits(dataset, torch.device("cuda:0"))
    check_cache_fits(dataset, torch.device("cpu"))  # host memory already holds the cache
    # A process that stays off the GPU (the main process of parallel runs) compares with the card's whole memory,
    # without asking for the free memory (which makes a CUDA context there).
    monkeypatch.setattr(torch.cuda, "mem_get_info", out_of_memory)
    total = {"cuda:1": dataset.cache_nbytes, "cuda:2": dataset.cache_nbytes - 1}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(total_memory=total[str(device)]))
    check_cache_fits(dataset, torch.device("cuda:1"), free=False)
    with pytest.raises(UserError, match=r"decoded training images .* do not fit on cuda:2; set DATA.PIPELINE tensor"):
        check_cache_fits(dataset, torch.device("cuda:2"), free=False)
    # While copying it: an allocation that fails.
    monkeypatch.setattr(torch, "empty", out_of_memory)
    with pytest.raises(UserError, match=r"decoded training images .* do not fit on cpu; set DATA.PIPELINE tensor"):
        trainer.build_loader(cfg, dataset, True, torch.device("cpu"))


@pytest.mark.parametrize("lessen_type", [0, 2, 3, 4])
def test_tensor_small_image_close_to_pil(roots, lessen_type):
    """The device-made student image of a large crop is within a few uint8 levels of PIL's."""
    cfg = make_cfg("cub", roots["cub"], LESSEN_TYPE=lessen_type)
    large = load_rgb(build_dataset(cfg, True).samples[0][0]).resize((CROP, CROP), Image.BILINEAR)
    batch = {"image_large": TF.pil_to_tensor(large)[None], "target": torch.tensor([0])}
    image = BatchPreparer(cfg, "cpu")(batch)["image"][0]
    mean, std = torch.tensor(cfg.DATA.IMAGE_MEAN).view(3, 1, 1), torch.tensor(cfg.DATA.IMAGE_STD).view(3, 1, 1)
    pil_image = uint8_to_normalized(TF.pil_to_tensor(large.resize((16, 16), resample=lessen_type)), mean, std)
    levels = ((image - pil_image) * std * 255).abs()  # back to 0..255 levels
    mean_diff, max_diff = pil_vs_tensor_small_image_difference(large, 16, lessen_type)
    assert levels.max().item() == pytest.approx(max_diff, abs=1e-3)
    assert mean_diff < 0.75 and max_diff <= (8 if lessen_type == 3 else 1)


@pytest.mark.parametrize("lessen_type", [1, 2, 4])
def test_pil_student_image_is_the_teachers_flipped_crop_resized_by_pil(roots, lessen_type):
    cfg = make_cfg("cub", roots["cub"], "pil", LESSEN_TYPE=lessen_type)
    data = build_dataset(cfg, True)
    mean, std = torch.tensor(cfg.DATA.IMAGE_MEAN).view(3, 1, 1), torch.tensor(cfg.DATA.IMAGE_STD).view(3, 1, 1)
    flips = []
    for index, seed in EpochSampler(len(data)).epoch(3):
        item = data[index, seed]
        image = load_rgb(data.samples[index][0])
        # RandomResizedCrop (bilinear) + RandomHorizontalFlip from the item's seed, then the student's resize.
        top, left, h, w, flip = sample_crop(image.height, image.width, random.Random(seed))
        large = image.crop((left, top, left + w, top + h)).resize((CROP, CROP), Image.BILINEAR)
        if flip:
            large = large.transpose(Image.FLIP_LEFT_RIGHT)
        small = large.resize((CROP // 2, CROP // 2), resample=lessen_type)
        assert torch.equal(item["image_large"], uint8_to_normalized(TF.pil_to_tensor(large), mean, std))
        assert torch.equal(item["image"], uint8_to_normalized(TF.pil_to_tensor(small), mean, std))
        flips.append(flip)
    assert set(flips) == {True, False}  # a student left unflipped shows only on flipped items


def test_pil_and_tensor_pipelines_draw_the_same_crop_and_flip_for_an_item_seed(roots):
    pil = build_dataset(make_cfg("cub", roots["cub"], "pil"), True)
    tensor = build_dataset(make_cfg("cub", roots["cub"], "tensor"), True)
    mean, std = pil.transform.mean, pil.transform.std
    # The cache keeps these 40x30 images at full size (no upscaling), so both pipelines crop the same pixels; on
    # larger images the tensor pipeline's box is the same draw on the cache's smaller copy.
    assert all(tuple(t.shape[1:]) == (SIZE[1], SIZE[0]) for t in tensor.cache)
    for epoch in (3, 4):
        for index, seed in EpochSampler(len(pil)).epoch(epoch):
            levels = (pil[index, seed]["image_large"] * std + mean) * 255
            # PIL's and torchvision's antialiased bilinear resize round differently: a level at most.
            assert (levels - tensor[index, seed]["image_large"].float()).abs().max() <= 1.01, (index, seed)


@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_lessen_ratio_one_student_image_is_the_large_one(roots, pipeline):
    cfg = make_cfg("cub", roots["cub"], pipeline, LESSEN_RATIO=1.0)
    out = BatchPreparer(cfg, "cpu", channels_last=True)(first_batch(build_dataset(cfg, True)))
    assert out["image"].shape == (4, 3, CROP, CROP) and torch.equal(out["image"], out["image_large"])
    assert out["image"].is_contiguous(memory_format=torch.channels_last)


def test_grayscale_and_cmyk_jpegs_load_as_rgb(roots, tmp_path):
    paths = [os.path.join(d, f) for d, _, files in os.walk(roots["cub"]) for f in files if f.endswith(".jpg")]
    modes = [Image.open(p).mode for p in sorted(paths)]
    assert modes.count("L") == len(paths) // 5 and set(modes) == {"L", "RGB"}  # 1 in 5 grayscale
    cmyk = str(tmp_path / "cmyk.jpg")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(cmyk)
    gray = next(p for p, m in zip(sorted(paths), modes) if m == "L")
    for path in (gray, cmyk):
        assert load_rgb(path).mode == "RGB" and decode_uint8(path).shape[0] == 3


def test_the_teachers_and_the_students_training_images_are_normalised_for_imagenet_weights():
    # A teacher fed 0..1 images where it learned on normalised ones would be a broken teacher for every method.
    cfg = make_cfg("cub", "unused")
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO = 32, 36, 2.0
    white = {"image_large": torch.full((1, 3, 32, 32), 255, dtype=torch.uint8), "target": torch.tensor([0])}
    out = BatchPreparer(cfg, "cpu")(white)
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    for key in ("image_large", "image"):
        assert out[key][0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-6), key


def test_the_students_test_view_is_resize_size_over_k_then_crop_size_over_k():
    # Red = column index of a 144 x 72 image; K = 2: Resize(36) halves it to 72 x 36 (column j ~ 2j + 0.5),
    # CenterCrop(32) keeps columns 20..51. Resize(RESIZE_SIZE) would crop a third of the width from a 72 px image.
    cfg = make_cfg("cub", "unused")
    cfg.DATA.CROP_SIZE, cfg.DATA.RESIZE_SIZE, cfg.DATA.LESSEN_RATIO = 64, 72, 2.0
    pixels = np.zeros((72, 144, 3), np.uint8)
    pixels[:, :, 0] = np.arange(144)[None, :]
    out = np.asarray(small_test_geometry(cfg)(Image.fromarray(pixels)))
    assert out.shape == (32, 32, 3)
    assert np.abs(out[16, :, 0] - (2 * np.arange(20, 52) + 0.5)).max() <= 1


def test_a_crop_no_try_could_fit_falls_back_to_the_centred_box_inside_the_image():
    # 90-100% of a 10:1 image's area never has an aspect ratio within 3/4..4/3: torchvision's central fallback.
    assert sample_crop(100, 1000, random.Random(0), scale=(0.9, 1.0))[:4] == (0, 433, 100, 133)
    assert sample_crop(1000, 100, random.Random(0), scale=(0.9, 1.0))[:4] == (433, 0, 133, 100)


def test_training_crops_span_random_resized_crops_whole_range_of_area_and_aspect_and_flip_half_the_time():
    # RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip, as the release trains: a narrower
    # range would pass every test that compares the pipelines with each other, all of them drawing from sample_crop.
    draws = [sample_crop(1000, 1000, random.Random(seed)) for seed in range(2000)]
    areas = [h * w / 1e6 for _, _, h, w, _ in draws]
    log_ratios = [math.log(w / h) for _, _, h, w, _ in draws]
    assert min(areas) < 0.09 and max(areas) > 0.95
    assert min(log_ratios) == pytest.approx(-math.log(4 / 3), abs=0.01)
    assert max(log_ratios) == pytest.approx(math.log(4 / 3), abs=0.01)
    assert 0.45 < sum(flip for *_, flip in draws) / len(draws) < 0.55
    assert all(0 <= top <= 1000 - h and 0 <= left <= 1000 - w for top, left, h, w, _ in draws)
    # Golden draws: an item's crop is a function of its generator's seed alone (resume and workers rely on it).
    assert sample_crop(256, 341, random.Random(0)) == (1, 2, 254, 295, True)
    assert sample_crop(256, 341, random.Random(1)) == (16, 65, 121, 147, True)


def test_the_cache_resizes_antialiased_bilinear_not_nearest():
    # A 1-pixel checkerboard halved: bilinear averages each 2x2 block to grey; nearest keeps black and white.
    board = ((np.indices((30, 40)).sum(axis=0) % 2) * 255).astype(np.uint8)
    small = np.asarray(ShorterSideResize(15)(Image.fromarray(board).convert("RGB")))
    assert small.shape == (15, 20, 3)
    assert 100 <= small.min() and small.max() <= 155


def test_the_cache_never_upscales_an_image_whose_shorter_side_is_below_its_size():
    # Its longer side above the size does not count: 40 x 30 stays as it is at 35.
    assert ShorterSideResize(35)(Image.new("RGB", (40, 30))).size == (40, 30)
    assert ShorterSideResize(20)(Image.new("RGB", (40, 30))).size == (26, 20)


def test_train_cache_resizes_the_shorter_side_down_but_never_up(roots):
    paths = [path for path, _ in build_dataset(make_cfg("cub", roots["cub"], "pil"), True).samples]
    # 40x30 JPEGs: shorter side 20 -> 20x26 (torchvision's Resize arithmetic); 64 would upscale, so kept.
    data = build_dataset(make_cfg("cub", roots["cub"], CACHE_SIZE=20), True)
    assert all(tuple(t.shape) == (3, 20, 26) for t in data.cache)
    assert data.cache_nbytes == len(paths) * 3 * 20 * 26
    data = build_dataset(make_cfg("cub", roots["cub"], CACHE_SIZE=64), True)
    assert all(tuple(t.shape) == (3, 30, 40) for t in data.cache)
    assert torch.equal(data.cache[0], TF.pil_to_tensor(load_rgb(paths[0])))


@pytest.mark.parametrize("resize, crop", [(64, 56), (256, 224), (300, 224)])
def test_default_cache_is_256_px_or_resize_size_if_larger_so_small_students_crop_what_the_teacher_sees(
        tmp_path, resize, crop):
    # A 56 px student baseline (RESIZE_SIZE 64) cut its crops from 64 px images before, upsampling most of them.
    root = str(tmp_path / "cub")
    make_cub(root, 1, 1, (400, 320), seed=0)
    cfg = make_cfg("cub", root, RESIZE_SIZE=resize, CROP_SIZE=crop, LESSEN_RATIO=1.0)
    cfg.DATA.NUM_CLASSES = 1
    shape = tuple(build_dataset(cfg, True).cache[0].shape)
    assert shape == (3, max(resize, 256), max(resize, 256) * 400 // 320)


def test_cache_with_two_workers_matches_one_process(roots):
    paths = [path for path, _ in build_dataset(make_cfg("cub", roots["cub"], "pil"), True).samples]
    serial = build_cache(paths, None, num_workers=0)
    parallel = build_cache(paths, None, num_workers=2)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel)) and len(serial) == len(parallel)


# ---------------------------------------------------------------------------------------------------------------
# Errors: one line, naming the path or key
# ---------------------------------------------------------------------------------------------------------------
def test_unknown_dataset(roots):
    raises_user_error(make_cfg("imagenet", roots["cub"]), True, "DATA.DATASET", "'imagenet'", "cub", "aircraft")
    assert {"cub", "aircraft"} <= set(DATASETS)  # (a dataset added as docs/extending.md says comes beside them)


def test_every_dataset_is_named_by_the_config_check_and_has_a_generator():
    from lib.config import DATASETS as CONFIG_DATASETS
    from lib.datasets.synthetic import GENERATORS

    assert set(DATASETS) == set(CONFIG_DATASETS) == set(GENERATORS)


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_missing_folder(tmp_path, dataset):
    missing = str(tmp_path / "nowhere")
    raises_user_error(make_cfg(dataset, missing), True, missing, "DATA.DATADIR", "data/README.md")


@pytest.mark.parametrize(
    "dataset, filename, is_train",
    [
        ("cub", "images.txt", True),
        ("cub", "image_class_labels.txt", True),
        ("cub", "train_test_split.txt", False),
        ("aircraft", "data/variants.txt", True),
        ("aircraft", "data/images_variant_trainval.txt", True),
        ("aircraft", "data/images_variant_test.txt", False),
    ],
)
def test_missing_annotation_file(broken, dataset, filename, is_train):
    root = broken(dataset)
    os.remove(os.path.join(root, filename))
    raises_user_error(make_cfg(dataset, root), is_train, os.path.join(root, filename), "data/README.md")


@pytest.mark.parametrize(
    "dataset, filename, line",
    [
        ("cub", "images.txt", "7"),  # no path
        ("cub", "image_class_labels.txt", "1 bird"),  # label not a number
        ("cub", "train_test_split.txt", "1 2"),  # split not 0/1
        ("aircraft", "data/images_variant_trainval.txt", "0034309"),  # no variant
        ("aircraft", "data/images_variant_trainval.txt", "0034309 Concorde"),  # not in variants.txt
    ],
)
def test_malformed_annotation_line(broken, dataset, filename, line):
    root = broken(dataset)
    path = os.path.join(root, filename)
    with open(path) as f:
        lines = f.read().splitlines()
    lines[1] = line
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    raises_user_error(make_cfg(dataset, root), True, path, "line 2", repr(line))


def test_cub_id_without_label(broken):
    root = broken("cub")
    path = os.path.join(root, "image_class_labels.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]) + "\n")
    raises_user_error(make_cfg("cub", root), True, path, f"image id {len(lines)}")


def _rewrite(path: str, edit) -> None:
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(edit(lines)) + "\n")


def test_cub_label_beyond_the_class_folders_names_the_image(broken):
    # Hand-edited labels: "has 4 classes but DATA.NUM_CLASSES is 3; set 4" would have been the wrong fix.
    root = broken("cub")
    path = os.path.join(root, "image_class_labels.txt")
    _rewrite(path, lambda lines: [f"1 {NUM_CLASSES + 1}", *lines[1:]])
    raises_user_error(make_cfg("cub", root), True, path, "image id 1 (001.", f"class {NUM_CLASSES + 1}, but the "
                      f"images are in {NUM_CLASSES} class folders; the classes are numbered 1..{NUM_CLASSES}")


def test_cub_labels_edited_within_the_classes_are_taken_as_given(broken):
    # A study of label noise relabels images and keeps the folders.
    root = broken("cub")
    _rewrite(os.path.join(root, "image_class_labels.txt"), lambda lines: ["1 2", *lines[1:]])
    data = build_dataset(make_cfg("cub", root, "pil"), False)
    first = next(label for path, label in data.samples if path.endswith("_0001_1.jpg"))
    assert first == 1 and len(data.classes) == NUM_CLASSES


def test_cub_classes_numbered_with_a_gap_name_the_unused_class(broken):
    root = broken("cub")
    path = os.path.join(root, "image_class_labels.txt")
    _rewrite(path, lambda lines: [line[:-1] + "1" if line.endswith(" 2") else line for line in lines])
    raises_user_error(make_cfg("cub", root), True, path, f"uses classes 1 to {NUM_CLASSES} but no image has class 2")


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_a_class_without_training_images_is_refused_for_training_not_for_testing(broken, dataset):
    root = broken(dataset)
    last = build_dataset(make_cfg(dataset, root), True).classes[-1]
    if dataset == "cub":  # every image of the last class folder moves to the test split
        ids = {line.split()[0] for line in open(os.path.join(root, "images.txt")) if line.split()[1].startswith(last)}
        split_file = os.path.join(root, "train_test_split.txt")
        _rewrite(split_file, lambda lines: [f"{line.split()[0]} 0" if line.split()[0] in ids else line
                                            for line in lines])
    else:  # the last variant's lines leave the trainval list
        split_file = os.path.join(root, "data", "images_variant_trainval.txt")
        _rewrite(split_file, lambda lines: [line for line in lines if not line.endswith(" " + last)])
    raises_user_error(make_cfg(dataset, root), True, split_file, f"1 of the {NUM_CLASSES} classes have no training",
                      last)
    assert len(build_dataset(make_cfg(dataset, root), False).classes) == NUM_CLASSES


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_missing_image(broken, dataset):
    root = broken(dataset)
    data = build_dataset(make_cfg(dataset, root, "pil"), True)
    for path, _ in data.samples[1:3]:
        os.remove(path)
    raises_user_error(make_cfg(dataset, root), True, data.samples[1][0], f"2 of {len(data)}")


@pytest.mark.parametrize("size", [(50, 40), (1, 1), (3, 1)])
def test_a_decoded_image_is_its_own_writable_copy_whatever_its_size(size, tmp_path):
    # An image 1 pixel high or wide is contiguous once transposed: it stayed a view of PIL's read-only buffer, and
    # torch.from_numpy warned of it (DATA.CACHE_SIZE 1).
    path = str(tmp_path / "a.jpg")
    Image.new("RGB", size, (200, 10, 10)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (image,) = build_cache([path], None)
    assert image.shape == (3, size[1], size[0]) and image[0].float().mean() > 150


def test_images_in_a_folder_this_user_may_not_open_are_named_unreadable_not_missing(broken, monkeypatch):
    root = broken("cub")
    data = build_dataset(make_cfg("cub", root, "pil"), True)
    folder = os.path.dirname(data.samples[0][0])  # chmod 000 on a class folder: its files are there, not to be seen
    stat_ = os.stat

    def forbidden(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == folder:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return stat_(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", forbidden)
    in_folder = [path for path, _ in data.samples if os.path.dirname(path) == folder]
    message = raises_user_error(make_cfg("cub", root), True, f"{len(in_folder)} of {len(data)} training images",
                                f"cannot be read (permission denied: a folder this user may not open), the first is "
                                f"{in_folder[0]}; fix their folders' permissions (chmod a+rx)")
    assert "missing" not in message


@pytest.mark.parametrize("pipeline, workers", [("pil", 0), ("tensor", 0), ("tensor", 2)])
def test_corrupt_image(broken, pipeline, workers):
    root = broken("cub")
    path = build_dataset(make_cfg("cub", root, "pil"), False).samples[2][0]
    with open(path, "wb") as f:
        f.write(b"this is not a JPEG" * 10)
    raises_user_error(make_cfg("cub", root, pipeline, workers), False, f"cannot read image {path}")


@pytest.mark.parametrize("pipeline", ["pil", "tensor"])
def test_an_image_above_pils_decompression_bomb_limit_is_named_as_too_large_not_damaged(roots, pipeline,
                                                                                       monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # the generated images are 40x30 px: above twice the limit
    message = raises_user_error(make_cfg("cub", roots["cub"], pipeline), False,
                                "is larger than PIL decodes by default (DecompressionBombError: ",
                                "downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS")
    assert "replace it" not in message


# A user's process: the dataset decoded with PIL's limit below the images' size, in loader workers (tensor) and in
# the process itself (pil, 0 workers).
_BETWEEN_THE_LIMIT_AND_TWICE_IT = """
import sys
from PIL import Image
from tests.test_datasets import make_cfg
from lib.datasets import build_dataset
Image.MAX_IMAGE_PIXELS = 1000  # the generated images are 40x30 = 1200 px
data = build_dataset(make_cfg("cub", sys.argv[1], sys.argv[2], int(sys.argv[3])), True)
print(tuple(data[0]["image_large"].shape))
"""


@pytest.mark.parametrize("pipeline, workers", [("pil", 0), ("tensor", 2)])
def test_an_image_between_pils_limit_and_twice_it_is_decoded_as_pil_does_without_its_warning(roots, pipeline,
                                                                                             workers):
    proc = subprocess.run([sys.executable, "-c", _BETWEEN_THE_LIMIT_AND_TWICE_IT, roots["cub"], pipeline,
                           str(workers)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith("(3, "), proc.stderr
    assert "DecompressionBombWarning" not in proc.stderr, proc.stderr


def test_a_warning_pil_gives_for_every_image_of_a_kind_is_still_said_once(tmp_path):
    # (Python's once-only registry: a catch_warnings block around each image reset it, and the warning came again.)
    path = str(tmp_path / "palette.png")
    image = Image.new("P", (8, 8))
    image.putpalette([0] * 768)
    image.save(path, transparency=bytes(range(256)))  # transparency in bytes: PIL warns as it converts to RGB
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            load_rgb(path)
    assert len([w for w in caught if "Transparency" in str(w.message)]) == 1, [str(w.message) for w in caught]


def test_an_image_too_large_for_memory_at_the_cache_size_names_the_size_keys_not_the_file(roots):
    def out_of_memory(image):
        raise MemoryError()

    path = build_dataset(make_cfg("cub", roots["cub"], "pil"), False).samples[0][0]
    with pytest.raises(UserError) as err:
        build_cache([path], out_of_memory)
    assert str(err.value) == (
        f"image {path} could not be decoded and resized (MemoryError): the size the images are resized to (the "
        "shorter side DATA.RESIZE_SIZE, or DATA.CACHE_SIZE when larger) is too large for memory; lower it")


def test_truncated_image_found_when_loaded_by_pil_pipeline(broken):
    root = broken("cub")
    data = build_dataset(make_cfg("cub", root, "pil"), False)
    path = data.samples[0][0]
    with open(path, "rb") as f:
        content = f.read()
    head = content[: len(content) * 2 // 3]  # a whole header: passes verify(), fails to decode
    with open(path, "wb") as f:
        f.write(head)
    data = build_dataset(make_cfg("cub", root, "pil"), False)
    with pytest.raises(UserError, match="cannot read image " + path):
        data[0]
    raises_user_error(make_cfg("cub", root, "tensor"), False, f"cannot read image {path}")


@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_class_count_mismatch(roots, dataset):
    cfg = make_cfg(dataset, roots[dataset], NUM_CLASSES=200)
    raises_user_error(cfg, True, roots[dataset], f"{NUM_CLASSES} classes", "DATA.NUM_CLASSES is 200",
                      f"set DATA.NUM_CLASSES {NUM_CLASSES}")


def test_batch_preparer_rejects_lanczos_in_tensor_pipeline(roots):
    with pytest.raises(UserError, match="DATA.LESSEN_TYPE 1"):
        BatchPreparer(make_cfg("cub", roots["cub"], LESSEN_TYPE=1), "cpu")
    BatchPreparer(make_cfg("cub", roots["cub"], "pil", LESSEN_TYPE=1), "cpu")  # the pil pipeline has it


# ---------------------------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", ["cub", "aircraft"])
def test_generate_if_missing(tmp_path, dataset):
    root = str(tmp_path / "data" / dataset)
    cfg = make_cfg(dataset, root, GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)
    assert len(build_dataset(cfg, True)) == NUM_CLASSES * 2
    assert os.listdir(tmp_path / "data") == [dataset]  # renamed into place, no partial folder left
    stamp = os.path.getmtime(root)
    build_dataset(cfg, False)
    assert os.path.getmtime(root) == stamp  # existing folder left alone
    cfg.DATA.GENERATE_IF_MISSING = False
    cfg.DATA.DATADIR = other = str(tmp_path / "other")
    raises_user_error(cfg, True, other)  # without the flag a missing folder is an error, not generated
    assert not os.path.exists(other)


def test_generate_if_missing_fills_an_empty_folder_but_never_one_with_files(tmp_path):
    empty, used = tmp_path / "empty", tmp_path / "used"
    empty.mkdir()
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    cfg = make_cfg("cub", str(empty), GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)
    assert len(build_dataset(cfg, True)) == NUM_CLASSES * 2
    cfg.DATA.DATADIR = str(used)
    raises_user_error(cfg, True, "images.txt is missing")
    assert os.listdir(used) == ["notes.txt"]


def test_generate_if_missing_fills_the_empty_folder_a_link_leads_to_and_keeps_the_link(tmp_path):
    (tmp_path / "scratch").mkdir()
    link = tmp_path / "cub"
    link.symlink_to(tmp_path / "scratch")
    cfg = make_cfg("cub", str(link), GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)
    assert len(build_dataset(cfg, True)) == NUM_CLASSES * 2
    assert link.is_symlink() and (tmp_path / "scratch" / "images.txt").is_file()
    assert sorted(os.listdir(tmp_path)) == ["cub", "scratch"]  # no partial folder left


def test_generate_if_missing_through_a_link_to_nothing_names_the_link_and_its_target(tmp_path):
    link = tmp_path / "cub"
    link.symlink_to(tmp_path / "unmounted" / "cub")
    cfg = make_cfg("cub", str(link), GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)
    raises_user_error(cfg, True, f"cannot create the folder {link}: {link} is a link to {tmp_path}/unmounted/cub, "
                                 "which does not exist (a disk that is not mounted?)", "(DATA.DATADIR)")
    assert os.listdir(tmp_path) == ["cub"]


def test_generate_if_missing_takes_a_folder_name_near_the_file_name_limit(tmp_path):
    root = tmp_path / ("c" * 250)  # legal (255 bytes at most); the temporary ".<name>.partial-XXXXXXXX" was not
    cfg = make_cfg("cub", str(root), GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)
    assert len(build_dataset(cfg, True)) == NUM_CLASSES * 2
    assert os.listdir(tmp_path) == [root.name]


def test_generating_into_a_full_disk_or_onto_a_mount_point_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    from lib.datasets import synthetic

    root = tmp_path / "cub"
    cfg = make_cfg("cub", str(root), GENERATE_IF_MISSING=True, GENERATE_PER_CLASS=2)

    def fill_the_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write that filled the disk: no file named

    monkeypatch.setitem(synthetic.GENERATORS, "cub", fill_the_disk)
    raises_user_error(cfg, True, f"cannot write {root}: No space left on device; free some space or choose another "
                                 "folder (DATA.DATADIR)")
    monkeypatch.undo()
    root.mkdir()  # an empty mount point: rename onto it fails with EBUSY, which was taken for a concurrent run's
    rename = os.rename

    def busy(source, target):
        if os.fspath(target) == str(root):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), source, target)
        rename(source, target)

    monkeypatch.setattr(synthetic.os, "rename", busy)
    raises_user_error(cfg, True, f"DATA.DATADIR {root} is a mount point, which a generated dataset cannot be moved "
                                 f"into place onto; give a folder inside it (DATA.DATADIR {root / 'cub'})")
    assert os.listdir(tmp_path) == ["cub"] and os.listdir(root) == []


def test_generation_is_deterministic_and_official(tmp_path, roots):
    make_aircraft(str(tmp_path / "a"), NUM_CLASSES, PER_CLASS, SIZE, seed=0)
    again, first = str(tmp_path / "a" / "data"), os.path.join(roots["aircraft"], "data")

    def read(folder: str, name: str) -> bytes:
        with open(os.path.join(folder, name), "rb") as f:
            return f.read()

    for name in ("variants.txt", "images_variant_trainval.txt", "images_family_test.txt", "images_box.txt"):
        assert read(again, name) == read(first, name), name
    train, val = read(again, "images_variant_train.txt"), read(again, "images_variant_val.txt")
    assert train.count(b"\n") + val.count(b"\n") == NUM_CLASSES * PER_CLASS  # trainval = train + val
    image = os.path.join("images", sorted(os.listdir(os.path.join(again, "images")))[0])
    assert read(again, image) == read(first, image)
    cub = roots["cub"]
    assert {"classes.txt", "bounding_boxes.txt", "images"} <= set(os.listdir(cub))
    with open(os.path.join(cub, "images.txt")) as f:
        first = f.readline().split()
    assert first[0] == "1" and first[1].startswith("001.Black_footed_Albatross/Black_footed_Albatross_0001_")


def test_synthetic_images_are_learnable(tmp_path):
    """A nearest-class-mean classifier on colour statistics beats chance clearly on the test split."""
    root = str(tmp_path / "cub")
    make_cub(root, 4, 6, (48, 36), seed=0)
    cfg = make_cfg("cub", root, "pil", NUM_CLASSES=4)
    features = {}
    for is_train in (True, False):
        data = build_dataset(cfg, is_train)
        # Sorted values of each channel of an 8x8 thumbnail: colour statistics, blind to the object's position.
        thumbs = [TF.pil_to_tensor(load_rgb(path).resize((8, 8), Image.BOX)) for path, _ in data.samples]
        x = torch.stack([t.float().flatten(1).sort(1).values.flatten() for t in thumbs])
        features[is_train] = (x, torch.tensor([label for _, label in data.samples]))
    x, y = features[True]
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    x, y = features[False]
    accuracy = (torch.cdist(x, means).argmin(1) == y).float().mean().item()
    assert accuracy >= 0.5  # chance is 0.25
