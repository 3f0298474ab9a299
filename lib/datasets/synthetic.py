"""Small synthetic datasets in the official CUB-200-2011 and FGVC-Aircraft layouts, for demos and tests.

Each class has its own colour, background tint and shape (ellipse, box, triangle, stripes), drawn at a random
position and size with per-image colour jitter and pixel noise: learnable by a tiny network in an epoch or two,
never trivially (the object is small and moves). About 1 image in 5 is saved as a grayscale JPEG, as in the real
archives. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import colorsys
import errno
import os
import re
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw
from yacs.config import CfgNode

from lib.config import get_cfg, resolve_path
from lib.utils.errors import UserError, folder_error, make_folder, os_error_message, relative_path_note
from lib.utils.log import get_logger

__all__ = ["make_cub", "make_aircraft", "ensure_dataset", "GENERATORS"]

# The first CUB class folders; further classes get generic bird names.
CUB_NAMES = [
    "Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani", "Crested_Auklet",
    "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet", "Brewer_Blackbird", "Red_winged_Blackbird",
]

# The 100 FGVC-Aircraft variants in variants.txt order ("737-300" renamed "Boeing 737-300" so that small sets
# carry a name with a space as well as names with slashes).
AIRCRAFT_VARIANTS = [
    "707-320", "727-200", "737-200", "Boeing 737-300", "737-400", "737-500", "737-600", "737-700", "737-800",
    "737-900", "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300", "767-400",
    "777-200", "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300", "A340-200",
    "A340-300", "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300",
    "BAE-125", "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172",
    "Cessna 208", "Cessna 525", "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30",
    "DH-82", "DHC-1", "DHC-6", "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190", "E-195",
    "EMB-120", "ERJ 135", "ERJ 145", "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18",
    "Falcon 2000", "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70", "Global Express", "Gulfstream IV",
    "Gulfstream V", "Hawk T1", "Il-76", "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner", "Model B200",
    "PA-28", "SR-20", "Saab 2000", "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
]
# Picked first, so even a 3-class set has names with spaces and slashes to parse.
AIRCRAFT_FIRST = ["Boeing 737-300", "F-16A/B", "F/A-18", "BAE 146-200"]

DEFAULT_SIZE = tuple(get_cfg().DATA.GENERATE_IMAGE_SIZE)  # (W, H): small so a demo dataset is generated in seconds
JPEG_QUALITY = 90
GRAYSCALE_EVERY = 5


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value)) * 255.0


def draw_image(label: int, num_classes: int, size: tuple[int, int], rng: np.random.Generator
               ) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One RGB image of class `label` and its object's box (x, y, w, h)."""
    width, height = size
    # Class code: object hue spread over the circle, a second (background) hue stepping by a coprime stride,
    # and a shape; neighbouring classes differ in all three.
    hue = label / num_classes
    background = _rgb(hue * 37 + 0.5, 0.35, rng.uniform(0.35, 0.8))
    colour = np.clip(_rgb(hue, 0.9, 0.95) + rng.integers(-20, 21, 3), 0, 255)
    image = Image.new("RGB", size, tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    side = max(4, int(min(width, height) * rng.uniform(0.35, 0.65)))
    x0, y0 = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    x1, y1 = x0 + side - 1, y0 + side - 1
    fill = tuple(int(c) for c in colour)
    shape = label % 4
    if shape == 0:
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == 1:
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == 2:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        band = max(1, side // 6)
        for y in range(y0, y1 + 1, 2 * band):
            draw.rectangle([x0, y, x1, min(y + band - 1, y1)], fill=fill)
    # Uniform integer noise (std ~12 levels): a third of the cost of Gaussian floats at 500x375.
    noise = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), (x0, y0, side, side)


def _save(image: Image.Image, path: str, grayscale: bool) -> None:
    (image.convert("L") if grayscale else image).save(path, quality=JPEG_QUALITY)


def _rng(seed: int, label: int, index: int) -> np.random.Generator:
    # One stream per image: the same image whatever the order or the number of classes generated.
    return np.random.default_rng([seed, label, index])


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


# ---------------------------------------------------------------------------------------------------------------
# CUB-200-2011
# ---------------------------------------------------------------------------------------------------------------
def make_cub(root: str, num_classes: int, per_class: int, image_size: tuple[int, int] = DEFAULT_SIZE,
             seed: int = 0) -> None:
    """Write a synthetic CUB_200_2011 folder: images/<NNN.Name>/<Name_XXXX_ID>.jpg and the five annotation files.

    Args:
        root: the folder to write (created if needed).
        num_classes: number of classes.
        per_class: images per class in each split (per_class train + per_class test).
        image_size: (W, H) of every image.
        seed: the dataset is a deterministic function of it.
    """
    images, labels, splits, boxes, classes = [], [], [], [], []
    image_id = 0
    for label in range(num_classes):
        name = CUB_NAMES[label] if label < len(CUB_NAMES) else f"Synthetic_Bird_{label + 1:03d}"
        folder = f"{label + 1:03d}.{name}"
        classes.append(f"{label + 1} {folder}")
        os.makedirs(os.path.join(root, "images", folder), exist_ok=True)
        # Interleave the splits in a seeded order, as the official split is not sorted by file.
        is_train = np.random.default_rng([seed, label]).permutation([1] * per_class + [0] * per_class)
        for k in range(2 * per_class):
            image_id += 1
            rel_path = f"{folder}/{name}_{k + 1:04d}_{image_id}.jpg"
            image, (x, y, w, h) = draw_image(label, num_classes, image_size, _rng(seed, label, k))
            _save(image, os.path.join(root, "images", rel_path), grayscale=image_id % GRAYSCALE_EVERY == 0)
            images.append(f"{image_id} {rel_path}")
            labels.append(f"{image_id} {label + 1}")
            splits.append(f"{image_id} {int(is_train[k])}")
            boxes.append(f"{image_id} {float(x)} {float(y)} {float(w)} {float(h)}")
    _write(os.path.join(root, "images.txt"), images)
    _write(os.path.join(root, "image_class_labels.txt"), labels)
    _write(os.path.join(root, "train_test_split.txt"), splits)
    _write(os.path.join(root, "bounding_boxes.txt"), boxes)
    _write(os.path.join(root, "classes.txt"), classes)


# ---------------------------------------------------------------------------------------------------------------
# FGVC-Aircraft
# ---------------------------------------------------------------------------------------------------------------
def aircraft_variants(num_classes: int) -> list[str]:
    """`num_classes` variant names in variants.txt order, always including those of AIRCRAFT_FIRST."""
    rest = [v for v in AIRCRAFT_VARIANTS if v not in AIRCRAFT_FIRST]
    extra = [f"Synthetic Jet {i:03d}-A/B" for i in range(max(0, num_classes - len(AIRCRAFT_VARIANTS)))]
    chosen = set((AIRCRAFT_FIRST + rest)[:num_classes])
    return [v for v in AIRCRAFT_VARIANTS if v in chosen] + extra


def _family(variant: str) -> str:
    # "Boeing 737-300" -> "Boeing 737", "A330-200" -> "A330", "DC-9-30" -> "DC-9"; "ATR-42" stays.
    match = re.fullmatch(r"(.*\d[A-Za-z/]*)-\d+", variant)
    return match.group(1) if match else variant


def _manufacturer(family: str) -> str:
    return family.replace("-", " ").split()[0]


def make_aircraft(root: str, num_classes: int, per_class: int, image_size: tuple[int, int] = DEFAULT_SIZE,
                  seed: int = 0) -> None:
    """Write a synthetic fgvc-aircraft-2013b folder: data/images/<7-digit id>.jpg and the annotation files.

    Variant, family and manufacturer levels, splits train, val, trainval (= train + val) and test, and
    images_box.txt, all in the official "<image id> <name>" form (names hold spaces and slashes).

    Args:
        root: the folder to write (created if needed).
        num_classes: number of variants.
        per_class: images per variant in trainval and in test.
        image_size: (W, H) of every image.
        seed: the dataset is a deterministic function of it.
    """
    data = os.path.join(root, "data")
    os.makedirs(os.path.join(data, "images"), exist_ok=True)
    variants = aircraft_variants(num_classes)
    levels = {
        "variant": variants,
        "family": [_family(v) for v in variants],
        "manufacturer": [_manufacturer(_family(v)) for v in variants],
    }
    split_lines: dict[str, dict[str, list[str]]] = {
        level: {s: [] for s in ("train", "val", "trainval", "test")} for level in levels
    }
    boxes = []
    count = 0
    for label in range(num_classes):
        for k in range(2 * per_class):
            # 7919 is prime to 10^7: distinct 7-digit ids, with leading zeros like the real ones ("0034309").
            image_id = f"{(count * 7919 + 34309) % 10_000_000:07d}"
            count += 1
            image, (x, y, w, h) = draw_image(label, num_classes, image_size, _rng(seed, label, k))
            _save(image, os.path.join(data, "images", f"{image_id}.jpg"), grayscale=count % GRAYSCALE_EVERY == 0)
            boxes.append(f"{image_id} {x} {y} {x + w - 1} {y + h - 1}")
            splits = ("trainval", "train" if k % 2 == 0 else "val") if k < per_class else ("test",)
            for level, names in levels.items():
                for split in splits:
                    split_lines[level][split].append(f"{image_id} {names[label]}")
    for level, names in levels.items():
        plural = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}[level]
        _write(os.path.join(data, f"{plural}.txt"), list(dict.fromkeys(names)))
        for split, lines in split_lines[level].items():
            _write(os.path.join(data, f"images_{level}_{split}.txt"), sorted(lines))
    _write(os.path.join(data, "images_box.txt"), sorted(boxes))


GENERATORS = {"cub": make_cub, "aircraft": make_aircraft}


def _empty_folder(path: str) -> bool:
    """Whether `path` is (or links to) a folder with nothing in it."""
    return os.path.isdir(path) and not os.listdir(path)


def ensure_dataset(cfg: CfgNode) -> None:
    """Generate a synthetic dataset at DATA.DATADIR iff DATA.GENERATE_IF_MISSING and the folder does not exist
    (or is empty: made beforehand, nothing in it to overwrite).

    Its size comes from DATA.NUM_CLASSES, DATA.GENERATE_PER_CLASS and DATA.GENERATE_IMAGE_SIZE ([W, H]).
    """
    image_size = tuple(cfg.DATA.GENERATE_IMAGE_SIZE)
    root = resolve_path(cfg.DATA.DATADIR)
    if not cfg.DATA.GENERATE_IF_MISSING or (os.path.exists(root) and not _empty_folder(root)):
        return
    if cfg.DATA.DATASET not in GENERATORS:
        raise UserError(f"unknown DATA.DATASET {cfg.DATA.DATASET!r}; valid names: {', '.join(GENERATORS)}")
    if os.path.islink(root) and not os.path.exists(root):  # a link to nothing (a disk that is not mounted?)
        raise folder_error(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), root), root, "DATA.DATADIR")
    note = relative_path_note(root)  # (before the folder exists)
    target = os.path.realpath(root)  # where a link to an empty folder leads: the link stays
    parent = os.path.dirname(target)
    make_folder(parent, "DATA.DATADIR")
    # Written beside the target and renamed into place: a killed run never leaves half a dataset at DATADIR. (The
    # temporary name holds the start of the folder's: a name near the 255-byte limit stays within it.)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)[:64]}.partial-", dir=parent)
    except OSError as err:
        raise folder_error(err, root, "DATA.DATADIR") from None
    try:
        os.chmod(tmp, 0o755)
        try:
            GENERATORS[cfg.DATA.DATASET](tmp, cfg.DATA.NUM_CLASSES, cfg.DATA.GENERATE_PER_CLASS, image_size, seed=0)
        except OSError as err:  # a full disk: the folder to change is DATA.DATADIR, not an output folder
            if err.filename is None:  # (a write that filled the disk names no file: the dataset's folder, then)
                err.filename = root
            message = os_error_message(err, "DATA.DATADIR")
            if message is None:
                raise
            raise UserError(message) from None
        try:
            os.rename(tmp, target)  # replaces an empty folder
        except OSError as err:
            if err.errno == errno.EBUSY:  # an empty mount point, which nothing can be renamed onto
                raise UserError(f"DATA.DATADIR {root} is a mount point, which a generated dataset cannot be moved "
                                f"into place onto; give a folder inside it (DATA.DATADIR "
                                f"{os.path.join(root, cfg.DATA.DATASET)})") from None
            if not os.path.isdir(target):  # a concurrent run that got there first is fine; anything else is not
                raise
        else:
            get_logger().info(
                f"generated a synthetic {cfg.DATA.DATASET} dataset at {root} ({cfg.DATA.NUM_CLASSES} classes, "
                f"{cfg.DATA.GENERATE_PER_CLASS} train + {cfg.DATA.GENERATE_PER_CLASS} test images each)"
                f"{note}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
