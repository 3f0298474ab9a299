"""FGVC-Aircraft (Maji et al. 2013) at the variant level: 100 classes, trainval for training, test for testing."""

from __future__ import annotations

import os

from yacs.config import CfgNode

from lib.config import resolve_path
from lib.utils.errors import UserError

from .transforms import TwoScaleDataset

__all__ = ["AircraftDataset"]


class AircraftDataset(TwoScaleDataset):
    """FGVC-Aircraft variants at the teacher's and the student's scale, items of DATA.PIPELINE (see transforms.py).

    DATA.DATADIR is the extracted fgvc-aircraft-2013b folder. The annotation files are parsed here rather than
    through torchvision.datasets.FGVCAircraft, which insists on a folder named fgvc-aircraft-2013b under its root,
    while the configs point at data/aircraft. Like the original release (and torchvision), the images keep the
    20-pixel copyright banner at their bottom.
    """

    name = "FGVC-Aircraft"
    layout = (
        "the fgvc-aircraft-2013b folder holding data/variants.txt, data/images_variant_trainval.txt, "
        "data/images_variant_test.txt and data/images/<image id>.jpg"
    )

    def __init__(self, cfg: CfgNode, is_train: bool, load_images: bool = True):
        root = resolve_path(cfg.DATA.DATADIR)
        self.require_dir(root)
        data = os.path.join(root, "data")
        variants_file = os.path.join(data, "variants.txt")
        classes: list[str] = []
        for line_no, line in self.read_annotation(variants_file):
            name = line.strip()
            if name in classes:
                raise self.malformed(variants_file, line_no, line, "one unique variant name per line")
            classes.append(name)
        if not classes:
            raise UserError(f"annotation file {variants_file} lists no variants; expected {self.layout}")
        class_index = {name: index for index, name in enumerate(classes)}

        split_file = os.path.join(data, f"images_variant_{'trainval' if is_train else 'test'}.txt")
        samples = []
        for line_no, line in self.read_annotation(split_file):
            # Variant names hold spaces and slashes ("Boeing 737-300", "F-16A/B"): split on the first space only.
            image_id, _, variant = line.strip().partition(" ")
            variant = variant.strip()
            if not image_id or "/" in image_id or variant not in class_index:
                raise self.malformed(split_file, line_no, line, "'<image id> <variant name from variants.txt>'")
            samples.append((os.path.join(data, "images", f"{image_id}.jpg"), class_index[variant]))
        if is_train:
            self.require_training_images(samples, classes, split_file)
        super().__init__(cfg, is_train, root, samples, classes, load_images)
