"""Image files read in parallel: the decoded-image cache of the tensor pipeline and the pil pipeline's file check.

The tensor pipeline decodes every JPEG once, at dataset construction, into a uint8 CHW tensor kept in memory
(training: shorter side lib.config.train_cache_size; testing: the final test crop), so loader workers only crop
and flip.
Decoding runs in a torch DataLoader over the file list (one file per item). A file PIL cannot read becomes an
error marker in the worker and a one-line UserError naming the file in the main process, not a worker traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from lib.utils.errors import UserError, signal_safe_iter
from lib.utils.processes import LOADER_START_METHOD, exit_with_parent, usable_cpus

__all__ = ["load_rgb", "ShorterSideResize", "decode_uint8", "verify_image", "read_all", "build_cache"]

# What an image transform of the cache looks like: PIL image in, PIL image out (picklable, for spawned workers).
PilTransform = Callable[[Image.Image], Image.Image]


# PIL decodes an image between its MAX_IMAGE_PIXELS and twice that, with a warning against untrusted files that a
# loader worker printed in two raw lines per image; above twice it, PIL refuses (DecompressionBombError), which
# image_error_message names. A filter set once, here (loader workers inherit it): a catch_warnings block around
# each image reset Python's once-only warning registry, so every other warning came again with every image.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB (CUB and Aircraft hold grayscale and CMYK JPEGs)."""
    with Image.open(path) as image:
        # convert() loads the pixels, so the file can be closed before the image is used.
        return image.convert("RGB")


class ShorterSideResize:
    """Resize a PIL image so its shorter side is `size` (antialiased bilinear), never upscaling."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        if min(image.size) <= self.size:
            return image
        # torchvision's Resize(int) arithmetic (longer side truncated), as the test path uses.
        return TF.resize(image, self.size, interpolation=InterpolationMode.BILINEAR)

    def __repr__(self) -> str:
        return f"ShorterSideResize({self.size})"


def decode_uint8(path: str, transform: PilTransform | None = None) -> np.ndarray:
    """Decode a file as RGB, apply a PIL transform, return a contiguous uint8 array (3, H, W)."""
    image = load_rgb(path)
    if transform is not None:
        image = transform(image)
    # A numpy array crosses the worker queue by plain pickling; a tensor would hold a shared-memory file per
    # image, and thousands of those exhaust the open-file limit.
    # One copy, always: a view (an image 1 pixel high is contiguous once transposed) would be PIL's read-only
    # buffer, which torch.from_numpy warns of.
    return np.array(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1), order="C")  # (3, H, W)


def verify_image(path: str) -> None:
    """Check that PIL can identify a file (header parse + verify), without decoding the pixels."""
    with Image.open(path) as image:
        image.verify()


class _FileList(Dataset):
    """Applies `fn` to each path; an exception becomes an error string, reported by the main process."""

    def __init__(self, paths: Sequence[str], fn: Callable[[str], Any]):
        self.paths = paths
        self.fn = fn

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            return index, self.fn(self.paths[index]), None
        except Exception as err:  # any decoder failure is the file's fault; read_all names the file
            return index, None, f"{type(err).__name__}: {err}"


def _identity(item: Any) -> Any:
    return item


def read_all(
    paths: Sequence[str], fn: Callable[[str], Any], num_workers: int = 0, desc: str = "reading images"
) -> list[Any]:
    """Apply `fn` to every path in `num_workers` loader processes (capped at the CPU count), in order.

    Raises:
        UserError: naming the first file for which `fn` raised (unreadable or corrupt image).
    """
    workers = max(0, min(num_workers, usable_cpus(), len(paths)))
    # batch_size=None: one file per item; the identity collate keeps numpy arrays as they are.
    loader = DataLoader(_FileList(paths, fn), batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        worker_init_fn=functools.partial(exit_with_parent, os.getpid()),
                        multiprocessing_context=LOADER_START_METHOD if workers > 0 else None)
    results: list[Any] = [None] * len(paths)
    progress = tqdm(signal_safe_iter(loader), total=len(paths), desc=desc, unit="img",
                    disable=not sys.stderr.isatty(), leave=False)
    for index, value, error in progress:
        if error is not None:
            progress.close()
            reason = " ".join(error.split())  # one line, whatever PIL put in its message
            raise UserError(image_error_message(paths[index], reason))
        results[index] = value
    return results


def image_error_message(path: str, reason: str) -> str:
    """The line for an image that `reason` ("<exception type>: <message>") stopped from being read and resized: a
    damaged file, or one that is sound but too large (for PIL's decompression-bomb limit, or for memory at the size
    asked for)."""
    reason = reason.rstrip(": ")  # "MemoryError: " with no message
    kind = reason.split(":", 1)[0]
    if kind in ("MemoryError", "OverflowError"):
        return (f"image {path} could not be decoded and resized ({reason}): the size the images are resized "
                "to (the shorter side DATA.RESIZE_SIZE, or DATA.CACHE_SIZE when larger) is too large for memory; "
                "lower it")
    if kind == "DecompressionBombError":
        return (f"image {path} is larger than PIL decodes by default ({reason}); downscale it, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")
    return (f"cannot read image {path} ({reason}); replace it with a good copy from the official archive or delete "
            "the dataset folder and extract it again (see data/README.md)")


def build_cache(
    paths: Sequence[str], transform: PilTransform | None, num_workers: int = 0, desc: str = "caching images"
) -> list[torch.Tensor]:
    """Decode every file once into a uint8 tensor (3, H, W) after `transform`, in parallel."""
    arrays = read_all(paths, functools.partial(decode_uint8, transform=transform), num_workers, desc)
    return [torch.from_numpy(array) for array in arrays]
