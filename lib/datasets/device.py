"""DATA.PIPELINE "device": the decoded training images live on the training device and batches are cut there.

The tensor pipeline's loader workers crop and resize every item on the host, and the main process receives,
pins and copies each batch: on a fast GPU that host work competes with the launches of a short training step.
Here the uint8 cache (the tensor pipeline's, shorter side train_cache_size(cfg)) is copied once into one flat buffer
on the device, and a batch is a handful of batched kernels: gather the crop windows, resize them with two
matrix products, round to uint8 levels. No worker processes, no pinned copies.

What is learned is the tensor pipeline's: the same EpochBatchSampler order, the same sample_crop boxes and flips
(drawn on the host from each item's seed), the same antialiased bilinear filter as TF.resize (PIL's triangle
filter widened by the shrink factor). The tensor pipeline resizes uint8 in fixed point, this in float, so a
pixel differs by at most one uint8 level (tests/test_datasets.py measures it).
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Sampler

from lib.utils.errors import UserError

from .transforms import TwoScaleDataset, sample_crop

__all__ = ["DeviceCropLoader", "check_cache_fits", "resize_weights"]


def _too_large(nbytes: int, device: torch.device) -> UserError:
    return UserError(
        f"the decoded training images ({nbytes / 2**30:.1f} GiB) do not fit on {device}; set DATA.PIPELINE tensor or "
        f"a smaller DATA.CACHE_SIZE (with BASIC.FRESH_START True if this experiment has already started)"
    )


def check_cache_fits(dataset: TwoScaleDataset, device: torch.device, free: bool = True) -> None:
    """Raise a UserError when a GPU has less free memory than the training cache (checked before a run starts);
    `free` False compares with the GPU's whole memory instead, which a process that stays off the GPU can read
    (asking for the free memory makes a CUDA context on it)."""
    if device.type == "cuda":
        room = torch.cuda.mem_get_info(device)[0] if free else torch.cuda.get_device_properties(device).total_memory
        if dataset.cache_nbytes > room:
            raise _too_large(dataset.cache_nbytes, device)


def resize_weights(sizes: torch.Tensor, length: int, out: int) -> torch.Tensor:
    """Antialiased bilinear resize matrices: (B,) input lengths -> (B, out, length), rows summing to 1.

    Row i of item b weighs input pixels j < sizes[b] with the triangle filter centred on output pixel i,
    widened by the shrink factor when shrinking (PIL's and torch's antialias=True bilinear); columns from
    sizes[b] to length - 1 (padding) get weight 0.
    """
    scale = sizes.double() / out  # (B,)
    support = scale.clamp(min=1.0)  # the filter's half width in input pixels
    centre = scale[:, None] * (torch.arange(out, dtype=torch.float64, device=sizes.device) + 0.5)  # (B, out)
    j = torch.arange(length, dtype=torch.float64, device=sizes.device)
    weights = (1 - ((j + 0.5 - centre[:, :, None]) / support[:, None, None]).abs()).clamp(min=0)  # (B, out, L)
    weights = weights * (j < sizes[:, None, None])
    return (weights / weights.sum(-1, keepdim=True)).float()


class DeviceCropLoader:
    """The training stream of DATA.PIPELINE "device": batches {"image_large", "target"} made on the device.

    Drop-in for the training DataLoader (the trainer and the benchmark use `batch_sampler` and iteration);
    "image_large" is float (B, 3, c, c) on uint8 levels, which BatchPreparer normalises like a uint8 batch.
    """

    def __init__(self, dataset: TwoScaleDataset, batch_sampler: Sampler, crop_size: int, device: torch.device):
        if dataset.cache is None:
            raise ValueError("DeviceCropLoader needs a dataset built with DATA.PIPELINE 'device'")
        self.batch_sampler = batch_sampler
        self.crop_size = crop_size
        self.device = device
        self.rng = random.Random()
        cache = dataset.cache
        numels = [t.numel() for t in cache]
        self.shapes = [tuple(t.shape[-2:]) for t in cache]  # (H, W) of each image, read on the host
        offsets = torch.tensor([0] + numels[:-1]).cumsum(0)
        nbytes = sum(numels)
        try:
            self.pixels = torch.empty(nbytes, dtype=torch.uint8, device=device)  # every image, flattened
            for offset, image in zip(offsets.tolist(), cache):
                self.pixels[offset:offset + image.numel()].copy_(image.reshape(-1))
        except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError from torch 2.5 on, the same class
            raise _too_large(nbytes, device) from None
        # Per image: offset, H, W; and the labels, all on the device.
        self.layout = torch.tensor([[o, h, w] for o, (h, w) in zip(offsets.tolist(), self.shapes)], device=device)
        self.targets = torch.tensor([target for _, target in dataset.samples], device=device)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        for items in self.batch_sampler:
            yield self.batch(items)

    def batch(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """The batch of these (index, item seed) pairs: the teacher's crops and the labels, on the device."""
        # The same boxes and flips as the tensor pipeline's workers draw for these items (re-seeding one generator
        # gives the draws of a new random.Random(seed), without allocating one per item on the training thread).
        boxes = []
        for index, seed in items:
            self.rng.seed(seed)
            boxes.append((index, *sample_crop(*self.shapes[index], self.rng)))
        rows_max = max(box[3] for box in boxes)
        cols_max = max(box[4] for box in boxes)
        params = torch.tensor(boxes)  # (B, 6): index, top, left, h, w, flip
        if self.device.type == "cuda":
            params = params.pin_memory()
        index, top, left, h, w, flip = params.to(self.device, non_blocking=True).unbind(1)
        offset, height, width = self.layout[index].unbind(1)
        # Pixel (c, y, x) of each crop window, clamped to the window (the weights ignore the clamped part).
        ys = torch.minimum(torch.arange(rows_max, device=self.device) + top[:, None], (top + h - 1)[:, None])
        xs = torch.minimum(torch.arange(cols_max, device=self.device) + left[:, None], (left + w - 1)[:, None])
        channels = torch.arange(3, device=self.device)[None, :, None, None] * (height * width)[:, None, None, None]
        flat = (offset[:, None, None, None] + channels + ys[:, None, :, None] * width[:, None, None, None]
                + xs[:, None, None, :])  # (B, 3, rows_max, cols_max)
        windows = self.pixels[flat].float()
        weights_y = resize_weights(h, rows_max, self.crop_size)  # (B, c, rows_max)
        weights_x = resize_weights(w, cols_max, self.crop_size)  # (B, c, cols_max)
        # RandomHorizontalFlip: a flipped item reads its columns' weights in reverse.
        weights_x = torch.where(flip.bool()[:, None, None], weights_x.flip(1), weights_x)
        crops = weights_y[:, None] @ windows @ weights_x.transpose(1, 2)[:, None]  # (B, 3, c, c)
        return {"image_large": crops.round_().clamp_(0, 255), "target": self.targets[index]}
