"""Datasets (CUB-200-2011, FGVC-Aircraft) serving the teacher's and the student's scale, and the batch step.

Usage::

    train_set = build_dataset(cfg, is_train=True)    # items: see lib/datasets/transforms.py
    prep = BatchPreparer(cfg, device)
    for batch in DataLoader(train_set, ...):
        batch = prep(batch)                          # "image" (student), "image_large" (teacher), "target"
"""

from __future__ import annotations

from yacs.config import CfgNode

from lib.utils.errors import UserError

from .aircraft import AircraftDataset
from .cub import CUBDataset
from .synthetic import ensure_dataset
from .transforms import BatchPreparer, TwoScaleDataset

__all__ = ["DATASETS", "build_dataset", "BatchPreparer", "CUBDataset", "AircraftDataset", "TwoScaleDataset",
           "ensure_dataset"]

DATASETS = {"cub": CUBDataset, "aircraft": AircraftDataset}


def build_dataset(cfg: CfgNode, is_train: bool, load_images: bool = True) -> TwoScaleDataset:
    """Build the training or test split of DATA.DATASET, all files checked before it returns.

    Args:
        cfg: the config (DATA.* and BASIC.NUM_WORKERS are read).
        is_train: the training split (CUB train, Aircraft trainval) or the test split.
        load_images: False: only the annotations are read and the files checked (the split's `fingerprint`, which
            a resumed run compares with inputs.json); no image is decoded, and no dataset is generated.

    Returns:
        A TwoScaleDataset with `samples` [(image path, label)] and `classes` [name].

    Raises:
        UserError: unknown dataset, missing or malformed files, unreadable images, class-count mismatch.
    """
    name = cfg.DATA.DATASET
    if name not in DATASETS:
        raise UserError(f"unknown DATA.DATASET {name!r}; valid names: {', '.join(DATASETS)}")
    if load_images:  # Demo configs: generate a synthetic dataset in the official layout when DATADIR does not exist.
        ensure_dataset(cfg)
    return DATASETS[name](cfg, is_train, load_images)
