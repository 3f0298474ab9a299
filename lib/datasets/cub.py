"""CUB-200-2011 (Wah et al. 2011), official train/test split, read from the archive's own annotation files."""

from __future__ import annotations

import os
from collections.abc import Callable

from yacs.config import CfgNode

from lib.config import resolve_path
from lib.utils.errors import UserError

from .transforms import TwoScaleDataset

__all__ = ["CUBDataset"]


class CUBDataset(TwoScaleDataset):
    """CUB-200-2011 at the teacher's and the student's scale, items of DATA.PIPELINE (see transforms.py).

    DATA.DATADIR is the extracted CUB_200_2011 folder; labels are 0-based (the files count from 1); class names
    are the image folder names ("001.Black_footed_Albatross"). bounding_boxes.txt is not needed.
    """

    name = "CUB"
    layout = (
        "the CUB_200_2011 folder holding images.txt, image_class_labels.txt, train_test_split.txt and "
        "images/<class folder>/<image>.jpg"
    )

    def __init__(self, cfg: CfgNode, is_train: bool, load_images: bool = True):
        root = resolve_path(cfg.DATA.DATADIR)
        self.require_dir(root)
        paths = self._read_id_file(os.path.join(root, "images.txt"), "'<image id> <relative path>'", _any)
        labels_file = os.path.join(root, "image_class_labels.txt")
        labels = self._read_id_file(labels_file, "'<image id> <class 1..N>'", _label)
        split_file = os.path.join(root, "train_test_split.txt")
        splits = self._read_id_file(split_file, "'<image id> <1 train | 0 test>'", _split)
        for table, filename in ((labels, "image_class_labels.txt"), (splits, "train_test_split.txt")):
            unlisted = [image_id for image_id in paths if image_id not in table]
            if unlisted:
                raise UserError(
                    f"annotation file {os.path.join(root, filename)} has no line for image id {unlisted[0]} of "
                    f"images.txt ({len(unlisted)} ids missing); expected {self.layout} (see data/README.md)"
                )

        if not paths:
            images_file = os.path.join(root, "images.txt")
            raise UserError(f"annotation file {images_file} lists no images; expected {self.layout}")
        num_classes = max(int(labels[image_id]) for image_id in paths)
        classes = [str(c + 1) for c in range(num_classes)]
        for image_id, rel_path in paths.items():
            # The folder of an image names its class, as in the official archive (labels may be edited: a study
            # of label noise keeps the folders).
            folder = os.path.dirname(rel_path)
            if folder:
                classes[int(labels[image_id]) - 1] = folder
        folders = {os.path.dirname(rel_path) for rel_path in paths.values()}
        if "" not in folders and num_classes > len(folders):
            image_id = next(i for i in paths if int(labels[i]) == num_classes)
            raise UserError(
                f"annotation file {labels_file} gives image id {image_id} "
                f"({paths[image_id]}) class {num_classes}, but the images are in {len(folders)} class folders; "
                f"the classes are numbered 1..{len(folders)} (see data/README.md)")
        unused = sorted(set(range(1, num_classes + 1)) - {int(labels[image_id]) for image_id in paths})
        if unused:
            raise UserError(f"annotation file {labels_file} uses classes 1 to "
                            f"{num_classes} but no image has class {unused[0]} ({len(unused)} unused); the classes "
                            "are numbered 1..N without gaps (see data/README.md)")
        wanted = "1" if is_train else "0"
        samples = [
            (os.path.join(root, "images", rel_path), int(labels[image_id]) - 1)
            for image_id, rel_path in paths.items()
            if splits[image_id] == wanted
        ]
        if is_train:
            self.require_training_images(samples, classes, split_file)
        super().__init__(cfg, is_train, root, samples, classes, load_images)

    def _read_id_file(self, path: str, expected: str, valid: Callable[[str], bool]) -> dict[str, str]:
        """'<id> <value>' lines -> {id: value}; a line without two fields or with a bad value is a UserError."""
        table: dict[str, str] = {}
        for line_no, line in self.read_annotation(path):
            fields = line.strip().split(maxsplit=1)
            if len(fields) != 2 or not _is_int(fields[0]) or not valid(fields[1]) or fields[0] in table:
                raise self.malformed(path, line_no, line, expected + " with unique ids")
            table[fields[0]] = fields[1].strip()
        return table


def _any(value: str) -> bool:
    return bool(value.strip())


def _is_int(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _label(value: str) -> bool:
    return _is_int(value) and int(value) >= 1


def _split(value: str) -> bool:
    return value in ("0", "1")
