"""The input pipelines (DATA.PIPELINE) and the dataset base class that serves them.

"pil" is the original release's path: per sample, RandomResizedCrop + flip on the decoded PIL image gives the
teacher's crop, PIL resizes that crop K times smaller for the student, both are normalised in the worker.
"tensor" decodes every image once into a uint8 cache (lib/datasets/cache.py); workers only crop and flip the
cached tensor, and BatchPreparer makes the student's image (F.interpolate) and normalises, batched on the device.
"device" serves the tensor pipeline's items, but trains from lib/datasets/device.py's DeviceCropLoader, which
keeps the cache on the device and cuts whole batches there (its batches are the tensor layout's, in float).

Dataset items (the default collate turns them into batch dicts):
    pil    train  {"image": float (3, s, s), "image_large": float (3, c, c), "target": int}
    tensor train  {"image_large": uint8 (3, c, c), "target": int}
    pil    test   {"image": float (3, s, s), "target": int}
    tensor test   {"image": uint8 (3, s, s), "target": int}
with c = DATA.CROP_SIZE and s = small_crop_size(cfg). BatchPreparer gives every pipeline the same output:
    train  {"image": float (B, 3, s, s), "image_large": float (B, 3, c, c), "target": long (B,)}
    test   {"image": float (B, 3, s, s), "target": long (B,)}

Tensor vs PIL student image from the same 224 px crop, in 0..255 levels: mean / max |difference| over 60
RandomResizedCrops of three natural photos (matplotlib's grace_hopper.jpg, scikit-learn's china.jpg and
flower.jpg), measured with pil_vs_tensor_small_image_difference (CPU; CUDA within 0.05 of the means, same maxima):
    LESSEN_TYPE 2 bilinear   224->112: 0.17 / 1    224->56: 0.10 / 1
    LESSEN_TYPE 3 bicubic    224->112: 0.15 / 3    224->56: 0.11 / 7
    LESSEN_TYPE 0 nearest    224->112: 0    / 0    224->56: 0    / 0    (224->74, K=3: 0.21 / 179)
    LESSEN_TYPE 4 box        224->112: 0.45 / 1    224->56: 0.24 / 1    (224->74, K=3: 3.4 / 71)
PIL works in fixed point and rounds to uint8 between its horizontal and vertical passes, torch stays in float
until the final quantisation: hence the +-1 level. Bicubic's larger maxima are rare pixels (fewer than 0.03%
differ by more than 1 level).
At non-integer ratios torch's "nearest-exact" and "area" pick slightly different source pixels than PIL's
nearest and box; K = 2 and 4 (the paper's) are exact up to rounding.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import stat

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from yacs.config import CfgNode

from lib.config import TENSOR_INTERPOLATION, small_crop_size, small_resize_size, train_cache_size
from lib.utils.errors import UserError, relative_path_note

from .cache import ShorterSideResize, build_cache, image_error_message, load_rgb, read_all, verify_image

__all__ = [
    "TENSOR_INTERPOLATION",
    "check_tensor_lessen_type",
    "normalize",
    "to_unit",
    "uint8_to_normalized",
    "downscale",
    "pil_vs_tensor_small_image_difference",
    "PilTrainTransform",
    "PilTestTransform",
    "TensorTrainTransform",
    "small_test_geometry",
    "TwoScaleDataset",
    "BatchPreparer",
]

# ---------------------------------------------------------------------------------------------------------------
# Pixel operations shared by both pipelines
# ---------------------------------------------------------------------------------------------------------------
def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std with x in 0..1 (torchvision's Normalize, same operations so results agree bit for bit)."""
    return x.sub(mean).div(std)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels (any dtype) -> float in 0..1 exactly as ToTensor computes it (x / 255, correctly rounded)."""
    # The divisor is a 0-dim tensor on x's device, not a Python number: CUDA turns division by a CPU scalar into
    # a multiplication by its reciprocal, which differs from ToTensor's x / 255 in the last bit.
    x = x.float()
    return x.div(x.new_full((), 255.0))


def uint8_to_normalized(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 image(s) -> normalised float, as ToTensor (divide by 255) + Normalize."""
    return normalize(to_unit(x), mean, std)


def check_tensor_lessen_type(lessen_type: int) -> None:
    """Raise a UserError unless the tensor pipeline can make the student's image with this LESSEN_TYPE."""
    if lessen_type not in TENSOR_INTERPOLATION:
        raise UserError(
            f"DATA.LESSEN_TYPE {lessen_type} has no batched equivalent (the tensor pipeline supports "
            f"{sorted(TENSOR_INTERPOLATION)}); set DATA.PIPELINE pil or another DATA.LESSEN_TYPE"
        )


def downscale(x: torch.Tensor, size: int, lessen_type: int) -> torch.Tensor:
    """Batched twin of PIL's resize to (size, size): (B, 3, H, W) in 0..1 -> (B, 3, size, size) on uint8 levels."""
    check_tensor_lessen_type(lessen_type)
    mode = TENSOR_INTERPOLATION[lessen_type]
    if mode in ("bilinear", "bicubic"):
        # PIL's bilinear/bicubic widen their kernel when shrinking; antialias=True is the same filter (a=-0.5
        # cubic, as PIL), without it a 4x shrink aliases.
        small = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    else:
        small = F.interpolate(x, size=(size, size), mode=mode)
    # PIL's student image is uint8: quantise to the same 256 levels (this also clips bicubic overshoot).
    return to_unit(small.mul(255).round().clamp(0, 255))


def pil_vs_tensor_small_image_difference(large: Image.Image, size: int, lessen_type: int) -> tuple[float, float]:
    """Mean and max |tensor - PIL| (0..255 levels) of the student image made from the same large crop."""
    pil_small = torch.from_numpy(np.array(large.convert("RGB").resize((size, size), resample=lessen_type)))
    pil_small = pil_small.permute(2, 0, 1).float()  # (3, size, size)
    x = to_unit(TF.pil_to_tensor(large.convert("RGB")))[None]  # (1, 3, H, W)
    tensor_small = downscale(x, size, lessen_type)[0].mul(255).round()
    diff = (tensor_small - pil_small).abs()
    return diff.mean().item(), diff.max().item()


def _mean_std(cfg: CfgNode) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(cfg.DATA.IMAGE_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.DATA.IMAGE_STD, dtype=torch.float32).view(3, 1, 1)
    return mean, std


# ---------------------------------------------------------------------------------------------------------------
# Per-sample transforms
# ---------------------------------------------------------------------------------------------------------------
def small_test_geometry(cfg: CfgNode) -> v2.Compose:
    """The student's test view on a PIL image: Resize(RESIZE_SIZE / K) + CenterCrop(CROP_SIZE / K)."""
    return v2.Compose([v2.Resize(small_resize_size(cfg)), v2.CenterCrop(small_crop_size(cfg))])


def sample_crop(height: int, width: int, rng: random.Random, scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int, bool]:
    """RandomResizedCrop's box and RandomHorizontalFlip's coin, drawn from `rng`: (top, left, h, w, flip).

    The same algorithm as torchvision's RandomResizedCrop (Szegedy et al., 2015: area fraction uniform in
    `scale`, log aspect ratio uniform in `ratio`, ten tries, then a central crop), but drawn from a per-sample
    generator: an item's augmentation is a function of (epoch seed, index) alone, whatever the worker, so
    persistent loader workers and resumed runs see exactly the same crops.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return top, left, h, w, rng.random() < 0.5
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w, rng.random() < 0.5


class TensorTrainTransform:
    """The teacher's training crop from a cached uint8 tensor (3, H, W) -> (3, CROP_SIZE, CROP_SIZE), antialiased."""

    def __init__(self, cfg: CfgNode):
        self.size = [cfg.DATA.CROP_SIZE, cfg.DATA.CROP_SIZE]

    def __call__(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        top, left, h, w, flip = sample_crop(image.shape[-2], image.shape[-1], rng)
        crop = TF.resize(image[:, top:top + h, left:left + w], self.size, antialias=True)
        return crop.flip(-1) if flip else crop


class PilTrainTransform:
    """The original release's training item: a PIL crop for the teacher, the same crop PIL-resized for the student."""

    def __init__(self, cfg: CfgNode):
        self.crop_size = cfg.DATA.CROP_SIZE
        self.small_size = small_crop_size(cfg)
        self.lessen_type = cfg.DATA.LESSEN_TYPE
        self.same_scale = cfg.DATA.LESSEN_RATIO == 1
        self.mean, self.std = _mean_std(cfg)

    def __call__(self, image: Image.Image, rng: random.Random) -> dict[str, torch.Tensor]:
        top, left, h, w, flip = sample_crop(image.height, image.width, rng)
        # RandomResizedCrop on a PIL image: crop, then a bilinear resize (torchvision's default for it).
        large = image.crop((left, top, left + w, top + h)).resize((self.crop_size, self.crop_size), Image.BILINEAR)
        if flip:
            large = large.transpose(Image.FLIP_LEFT_RIGHT)
        image_large = uint8_to_normalized(TF.pil_to_tensor(large), self.mean, self.std)  # (3, c, c)
        if self.same_scale:
            return {"image": image_large, "image_large": image_large}
        small = large.resize((self.small_size, self.small_size), resample=self.lessen_type)
        return {"image": uint8_to_normalized(TF.pil_to_tensor(small), self.mean, self.std), "image_large": image_large}


class PilTestTransform:
    """The original release's test item: Resize + CenterCrop at the student's size, normalised."""

    def __init__(self, cfg: CfgNode):
        self.geometry = small_test_geometry(cfg)
        self.mean, self.std = _mean_std(cfg)

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {"image": uint8_to_normalized(TF.pil_to_tensor(self.geometry(image)), self.mean, self.std)}


# ---------------------------------------------------------------------------------------------------------------
# The dataset base: CUB and Aircraft only parse their annotations, this serves the items of either pipeline
# ---------------------------------------------------------------------------------------------------------------
class TwoScaleDataset(Dataset):
    """(image path, label) samples served as items of DATA.PIPELINE; subclasses parse the annotation files."""

    # Dataset name and its expected layout, for error messages.
    name = ""
    layout = ""

    def __init__(self, cfg: CfgNode, is_train: bool, root: str, samples: list[tuple[str, int]], classes: list[str],
                 load_images: bool = True):
        """`load_images` False: the annotations and files checked, the split's `fingerprint` set, no image read (it
        serves no items then)."""
        self.root = root
        self.samples = samples
        self.classes = classes
        self.is_train = is_train
        self.pipeline = cfg.DATA.PIPELINE
        if len(classes) != cfg.DATA.NUM_CLASSES:
            raise UserError(
                f"{self.name} dataset {root} has {len(classes)} classes but DATA.NUM_CLASSES is "
                f"{cfg.DATA.NUM_CLASSES}; set DATA.NUM_CLASSES {len(classes)} (or point DATA.DATADIR at the right "
                f"folder, see data/README.md)"
            )
        if not samples:
            raise UserError(f"{self.name} dataset {root} has no {self.split} images; expected {self.layout}")
        self._check_files_exist()

        paths = [path for path, _ in samples]
        workers = cfg.BASIC.NUM_WORKERS
        self.cache: list[torch.Tensor] | None = None
        self.cache_size: int | None = None  # the training cache's shorter side (tensor and device pipelines)
        self.transform = None
        self.released = False
        if not load_images:
            return
        if self.pipeline in ("tensor", "device"):  # "device" items are "tensor" items (lib/datasets/device.py)
            if is_train:
                self.cache_size = train_cache_size(cfg)
                resize = ShorterSideResize(self.cache_size)
                self.cache = build_cache(paths, resize, workers, f"caching {self.split}")
                self.transform = TensorTrainTransform(cfg)
            else:
                # The final test crop, the same PIL operations as PilTestTransform (identical test inputs).
                self.cache = build_cache(paths, small_test_geometry(cfg), workers, f"caching {self.split}")
        elif self.pipeline == "pil":
            # Decoding happens per sample during training: find unreadable files now, not mid-training.
            read_all(paths, verify_image, workers, f"checking {self.split}")
            self.transform = PilTrainTransform(cfg) if is_train else PilTestTransform(cfg)
        else:
            raise UserError(f"DATA.PIPELINE must be one of tensor, pil, device, got {self.pipeline!r}")

    @property
    def split(self) -> str:
        """Human-readable split name for messages."""
        return "training" if self.is_train else "test"

    def release_images(self) -> None:
        """Free the decoded-image cache of a split this process has checked but will not read: the main process of
        parallel runs, whose run processes decode their own (it held one more copy of the dataset all along)."""
        self.cache, self.transform = None, None
        self.released = True

    @property
    def cache_nbytes(self) -> int:
        """Memory held by the decoded-image cache (0 for the pil pipeline)."""
        return sum(t.numel() for t in self.cache) if self.cache is not None else 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | int]:
        """Item `key`: an index, or (index, augmentation seed) as the trainer's sampler gives it."""
        if self.released:
            raise RuntimeError(f"the images of this {self.split} split were released (release_images)")
        index, seed = key if isinstance(key, tuple) else (key, None)
        # Without a seed (plain DataLoader use) the augmentation draws its seed from torch's global RNG.
        rng = random.Random(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        path, target = self.samples[index]
        if self.cache is not None:
            image = self.cache[index]  # uint8 (3, H, W)
            if self.is_train:
                return {"image_large": self.transform(image, rng), "target": target}
            return {"image": image, "target": target}
        try:
            image = load_rgb(path)
        except Exception as err:  # a file that passed verify() but fails to decode (e.g. truncated)
            if isinstance(err, Image.DecompressionBombError):
                raise UserError(image_error_message(path, f"{type(err).__name__}: {err}")) from None
            raise UserError(f"cannot read image {path} ({type(err).__name__}: {err}); see data/README.md") from None
        item = self.transform(image, rng) if self.is_train else self.transform(image)
        item["target"] = target
        return item

    def _check_files_exist(self) -> None:
        """Raise a UserError if an annotated image is missing; otherwise set `fingerprint` (one stat per file)."""
        digest, missing, unreadable = hashlib.sha256(), [], []
        for path, label in self.samples:
            size, found = -1, missing
            try:
                info = os.stat(path)
                if stat.S_ISREG(info.st_mode):
                    size, found = info.st_size, None
            except PermissionError:  # its folder may not be searched: there, but not for this user
                found = unreadable
            except OSError:
                pass
            if found is not None:
                found.append(path)
            digest.update(f"{os.path.relpath(path, self.root)}\t{label}\t{size}\n".encode())
        # What a resumed run checks its data against (inputs.json): the split's files, labels and byte counts.
        # Sizes rather than contents keep it to a stat per file; an image replaced by another rarely keeps its size,
        # and a copy of the dataset elsewhere (other root, other mtimes) keeps the same fingerprint.
        self.fingerprint = {"images": len(self.samples), "sha256": digest.hexdigest()}
        if unreadable:
            raise UserError(
                f"{len(unreadable)} of {len(self.samples)} {self.split} images named in the annotations of "
                f"{self.root} cannot be read (permission denied: a folder this user may not open), the first is "
                f"{unreadable[0]}; fix their folders' permissions (chmod a+rx)"
            )
        if missing:
            raise UserError(
                f"{len(missing)} of {len(self.samples)} {self.split} images named in the annotations of {self.root} "
                f"are missing, the first is {missing[0]}; expected {self.layout} (see data/README.md)"
            )

    # Annotation helpers for the subclasses ------------------------------------------------------------------
    @classmethod
    def require_dir(cls, path: str, what: str = "DATA.DATADIR") -> None:
        """Raise a UserError naming `path` unless it is a folder."""
        if not os.path.isdir(path):
            raise UserError(
                f"{what} {path} does not exist or is not a folder{relative_path_note(path)}; expected {cls.layout} "
                "(python tools/prepare_data.py downloads both datasets into data/; see data/README.md)"
            )

    @classmethod
    def read_annotation(cls, path: str) -> list[tuple[int, str]]:
        """Non-blank lines of an annotation file as (line number, text without the line ending)."""
        if not os.path.isfile(path):
            raise UserError(f"annotation file {path} is missing; expected {cls.layout} (see data/README.md)")
        try:
            with open(path, encoding="utf-8") as f:
                return [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if line.strip()]
        except UnicodeDecodeError:
            raise UserError(
                f"annotation file {path} is not a text file; expected {cls.layout} (see data/README.md)"
            ) from None

    @classmethod
    def require_training_images(cls, samples: list[tuple[str, int]], classes: list[str], split_file: str) -> None:
        """Refuse a training split in which a class has no image (a damaged or hand-edited split file): the
        network would be scored on a class it never saw."""
        empty = sorted(set(range(len(classes))) - {label for _, label in samples})
        if empty:
            names = ", ".join(classes[c] for c in empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
            raise UserError(f"{len(empty)} of the {len(classes)} classes have no training images in {split_file}: "
                            f"{names}; expected {cls.layout} (see data/README.md)")

    @classmethod
    def malformed(cls, path: str, line_no: int, line: str, expected: str) -> UserError:
        """The UserError for a bad annotation line: file, line number, the line, and the expected form."""
        return UserError(
            f"annotation file {path} line {line_no} is malformed: {line.strip()!r}, expected {expected} "
            f"(see data/README.md)"
        )


# ---------------------------------------------------------------------------------------------------------------
# The batched device step
# ---------------------------------------------------------------------------------------------------------------
class BatchPreparer:
    """Collated batch -> network inputs on `device`: normalised "image" (student), "image_large", long "target".

    Tensor and device pipelines: the teacher crop (uint8, or float on uint8 levels from the device pipeline's
    DeviceCropLoader) is normalised on the device and the student's image is made from it
    with F.interpolate (DATA.LESSEN_TYPE), quantised to uint8 levels like PIL's output. PIL pipeline: the worker
    already made both, so batches are only moved. Test batches have no "image_large".
    """

    def __init__(self, cfg: CfgNode, device: str | torch.device, channels_last: bool = False):
        self.device = torch.device(device)
        self.pipeline = cfg.DATA.PIPELINE
        self.small_size = small_crop_size(cfg)
        self.lessen_type = cfg.DATA.LESSEN_TYPE
        self.same_scale = cfg.DATA.LESSEN_RATIO == 1
        self.channels_last = channels_last
        self.mean = torch.tensor(cfg.DATA.IMAGE_MEAN, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.DATA.IMAGE_STD, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        if self.pipeline != "pil" and not self.same_scale:
            check_tensor_lessen_type(self.lessen_type)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        return uint8_to_normalized(self._to_device(x), self.mean, self.std)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.pipeline == "pil":
            out["image"] = self._to_device(batch["image"])
            if "image_large" in batch:
                out["image_large"] = self._to_device(batch["image_large"])
        elif "image_large" in batch:
            large01 = to_unit(self._to_device(batch["image_large"]))  # (B, 3, c, c)
            image_large = normalize(large01, self.mean, self.std)
            if self.same_scale:
                out["image"] = image_large
            else:
                out["image"] = normalize(downscale(large01, self.small_size, self.lessen_type), self.mean, self.std)
            out["image_large"] = image_large
        else:
            out["image"] = self._normalized(batch["image"])  # (B, 3, s, s)
        if self.channels_last:
            # At LESSEN_RATIO 1 "image" and "image_large" are one tensor: convert it once.
            converted: dict[int, torch.Tensor] = {}
            for key, x in out.items():
                if id(x) not in converted:
                    converted[id(x)] = x.contiguous(memory_format=torch.channels_last)
                out[key] = converted[id(x)]
        out["target"] = self._to_device(batch["target"]).long()
        return out
