"""Download, verify and extract CUB-200-2011 and FGVC-Aircraft into the layout the configs expect.

    data/cub       = the archive's CUB_200_2011/ folder (images.txt, image_class_labels.txt, ..., images/)
    data/aircraft  = the archive's fgvc-aircraft-2013b/ folder (data/variants.txt, ..., data/images/)

Checksums. Neither publisher's page could be read from here, so the expected values are the ones that
independent projects pin for these exact files (found with a code search, 2026):
    CUB_200_2011.tgz            MD5 97eceeb196236b17998738112f37df78, 1,150,585,339 bytes. The MD5 is the one of
                                the widely copied torchvision-style Cub2011 dataset classes (e.g. ContinualAI's
                                avalanche, pytorch-metric-learning); the size is pinned beside it by several
                                download scripts of the Caltech DATA file.
    fgvc-aircraft-2013b.tar.gz  MD5 d4acdd33327262359767eeaa97a4f732, 2,753,340,328 bytes: the MD5 of mlverse's
                                torchvision (R) and of several download scripts; the size from scripts that also
                                pin the archive's SHA-256 (e4e323d4...9834). The VGG page links its own "MD5 sum"
                                file, which one project reports to list an older value; if Oxford ever serves a
                                different file, the download stops with a checksum mismatch and --md5-aircraft /
                                --no-verify let the user decide.
Every archive is checked against its expected size (from the server's Content-Length before anything is
written, then the bytes received) and MD5 (computed while downloading); --no-verify skips both. Whatever the
checksums say, the archive must also extract cleanly (a truncated or corrupt gzip/tar fails) and the extracted
folder must pass the same layout check as --verify-only, before it is moved into place.

Nothing is left half-made: the download goes to <root>/<archive>.part and is renamed when complete and verified
(deleted on a mismatch or an error); extraction goes to a hidden <root>/.<name>.partial-* folder that is renamed
to <root>/<name> only when its layout checks out, and removed otherwise (a killed run's leftovers are removed by
the next run). The archive is deleted once its dataset is in place; a re-run finds the dataset and only checks it.
Two runs on one root take turns (a flock on <root>/.prepare_data.lock, which reaches an NFS server, so runs on
several machines sharing the root take turns too): the second waits, then finds the dataset.

Layout check (--verify-only, and after every extraction): the dataset is built exactly as training builds it
(lib.datasets, the "pil" pipeline), which parses every annotation file, finds every image named in both splits
and opens each one; then it reports images and classes per split, and whether they match the official release.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import http.client
import os
import pathlib
import platform
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from lib.config import get_cfg, resolve_path
from lib.utils.errors import UserError, first_line, make_folder, os_error_message
from lib.utils.files import file_digest, flock_holder, lock_file, release_lock
from lib.utils.processes import usable_cpus

__all__ = ["DamagedArchive", "DatasetArchive", "ARCHIVES", "download", "extract", "verify_layout", "prepare_dataset",
           "verify_existing", "prepare"]

CHUNK = 1 << 20
TIMEOUT_S = 60
# Room for the archive and its extracted copy (JPEGs do not compress: about the archive's size again).
SPACE_FACTOR = 2.1


class DamagedArchive(UserError):
    """An archive that does not extract (truncated or corrupt gzip / tar, unsafe member)."""


@dataclass(frozen=True)
class DatasetArchive:
    """Where a dataset's official archive lives, what it holds and where it goes."""

    name: str  # --datasets name and DATA.DATASET
    url: str
    filename: str
    top_folder: str  # the archive's top-level folder, moved to <root>/<target>
    target: str  # folder under --root that DATA.DATADIR names
    md5: str
    size: int  # bytes
    official: tuple[int, int, int]  # training images, test images, classes


ARCHIVES = {
    "cub": DatasetArchive(
        name="cub",
        # Caltech's data repository (CaltechDATA record of CUB-200-2011).
        url="https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        filename="CUB_200_2011.tgz",
        top_folder="CUB_200_2011",
        target="cub",
        md5="97eceeb196236b17998738112f37df78",
        size=1_150_585_339,
        official=(5994, 5794, 200),
    ),
    "aircraft": DatasetArchive(
        name="aircraft",
        url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        filename="fgvc-aircraft-2013b.tar.gz",
        top_folder="fgvc-aircraft-2013b",
        target="aircraft",
        md5="d4acdd33327262359767eeaa97a4f732",
        size=2_753_340_328,
        official=(6667, 3333, 100),
    ),
}


# The file in the root that prepare_data.py runs lock to take turns (empty; left there).
LOCK_FILE = ".prepare_data.lock"


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def download(url: str, dest: str, size: int | None = None, md5: str | None = None) -> None:
    """Download `url` to `dest` through `dest`.part with a progress bar; check size and MD5 when given.

    Raises:
        UserError: unreachable URL, HTTP error, not enough disk space, size or MD5 mismatch (nothing is left).
    """
    part = dest + ".part"
    name = os.path.basename(dest)
    digest = hashlib.md5()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "pixel-distillation-prepare-data"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if size is not None and total is not None and total != size:
                raise UserError(f"{url} serves {total:,} bytes, but {name} is {size:,} bytes; it is not the expected "
                                f"file (check the URL, or pass --no-verify if you trust this source)")
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(dest))).free
            if total is not None and free < SPACE_FACTOR * total:
                raise UserError(f"{name} needs about {_gb(SPACE_FACTOR * total)} free in {os.path.dirname(dest)} "
                                f"(archive + extracted images), only {_gb(free)} is free")
            with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                                             disable=None, leave=False) as bar:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise UserError(f"the download of {url} stopped after {received:,} of {total:,} bytes; try again")
        if size is not None and received != size:
            raise UserError(f"{name} from {url} has {received:,} bytes, expected {size:,}; the file was deleted. "
                            "Check the URL, or pass --no-verify if you trust this source")
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise UserError(f"checksum mismatch for {name} from {url}: MD5 {digest.hexdigest()}, expected {md5}; "
                            "the file was deleted. Try again, or pass --no-verify if you trust this source")
        os.replace(part, dest)
    except urllib.error.HTTPError as err:
        _remove(part)
        raise UserError(f"could not download {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        _remove(part)
        raise UserError(f"could not reach {url} ({err.reason}); check the network or the URL") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        _remove(part)
        raise UserError(f"the download of {url} failed ({type(err).__name__}: {err}); try again") from None
    except OSError as err:  # writing the file: no space, no permission, ...
        _remove(part)
        raise UserError(f"could not write {part} ({err.strerror or err})") from None
    except BaseException:
        _remove(part)
        raise


def extract(archive: str, top_folder: str, dest: str, check: Callable[[str], Any] | None = None) -> Any:
    """Extract `archive` into a hidden temporary folder, check its `top_folder`, and rename it to `dest`.

    Members are extracted with tarfile's "data" filter (no absolute paths, no "..", no links out of the folder,
    no device files). Returns what `check(folder)` returned.

    Raises:
        DamagedArchive: the archive does not extract (truncated, corrupt, unsafe member paths).
        UserError: no `top_folder` inside, or `check`'s own UserError.
    """
    parent = os.path.dirname(os.path.abspath(dest))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tqdm(tar, desc=f"extracting {os.path.basename(archive)}", unit=" files", disable=None,
                               leave=False)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            # A full or read-only destination, not a damaged archive. (A folder where the archive writes a file is
            # the archive's own doing: it extracts into a fresh folder.)
            destination = isinstance(err, OSError) and err.errno != errno.EISDIR
            message = os_error_message(err, "--root") if destination else None
            if message is not None:
                raise UserError(message) from None
            # tarfile's ReadError lists every compression it tried, one per line: its first line says enough.
            detail = first_line(err).rstrip(":")
            raise DamagedArchive(
                f"{archive} is damaged or not a tar archive ({type(err).__name__}: {detail})"
            ) from None
        source = os.path.join(tmp, top_folder)
        if not os.path.isdir(source):
            found = ", ".join(sorted(os.listdir(tmp))[:5]) or "nothing"
            raise UserError(f"{archive} holds no {top_folder}/ folder (found {found}); is it the right archive?")
        result = check(source) if check is not None else None
        os.chmod(source, 0o755)
        try:
            os.rename(source, dest)
        except OSError:
            if os.path.lexists(dest):  # made by something else while this one extracted
                raise UserError(f"{dest} appeared while {os.path.basename(archive)} was extracted; nothing was "
                                "moved there. Re-run to check it, or remove it and re-run to extract again") from None
            raise
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _count_classes(name: str, folder: str) -> int:
    """The class count the annotations declare (1 when unreadable: building the dataset then names the problem)."""
    try:
        if name == "cub":
            with open(os.path.join(folder, "image_class_labels.txt"), encoding="utf-8") as f:
                return max(int(line.split()[1]) for line in f if line.strip())
        with open(os.path.join(folder, "data", "variants.txt"), encoding="utf-8") as f:
            return sum(1 for line in f if line.strip()) or 1
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return 1


def verify_layout(name: str, folder: str) -> dict[str, Any]:
    """Build both splits of dataset `name` at `folder` as training does and count images and classes per split.

    Raises:
        UserError: a missing or malformed annotation file, a missing or unreadable image (from lib.datasets).
    """
    from lib.datasets import build_dataset  # here: torch loads only when a layout is checked, --help stays instant

    cfg = get_cfg()
    cfg.DATA.DATASET = name
    cfg.DATA.DATADIR = os.path.abspath(folder)
    cfg.DATA.NUM_CLASSES = _count_classes(name, folder)
    cfg.DATA.PIPELINE = "pil"  # checks every file without decoding it into a cache
    cfg.BASIC.NUM_WORKERS = min(usable_cpus(), 8)
    cfg.freeze()
    train, test = build_dataset(cfg, is_train=True), build_dataset(cfg, is_train=False)
    report = {
        "dataset": name,
        "folder": os.path.abspath(folder),
        "classes": len(train.classes),
        "train_images": len(train),
        "test_images": len(test),
        "train_classes": len({label for _, label in train.samples}),
        "test_classes": len({label for _, label in test.samples}),
    }
    report["official"] = (report["train_images"], report["test_images"], report["classes"]) == ARCHIVES[name].official
    return report


def _describe(report: dict[str, Any]) -> str:
    train, test, classes = ARCHIVES[report["dataset"]].official
    match = ("matches the official release" if report["official"]
             else f"differs from the official release: {train} / {test} images, {classes} classes")
    return (f"{report['dataset']}: {report['folder']} is complete: training split {report['train_images']} images of "
            f"{report['train_classes']} classes, test split {report['test_images']} images of "
            f"{report['test_classes']} classes ({report['classes']} classes; {match})")


def _refuse_dataset_folder_as_root(name: str, root: str) -> None:
    """--root data/cub names the dataset folder itself, where <root>/cub is expected: say so (and download nothing)."""
    target = ARCHIVES[name].target
    folder = os.path.join(root, target)
    if os.path.isdir(folder):
        return
    parent, base = os.path.split(os.path.normpath(root))
    if base == target:
        raise UserError(f"{name}: {folder} does not exist; --root names the data folder that holds {target}/, "
                        f"did you mean --root {parent}?")
    # (--datasets cub --root data/aircraft: the advice was to download CUB into the Aircraft folder)
    other = next((o for o in ARCHIVES if o != name and (
        base == ARCHIVES[o].target or any(os.path.exists(os.path.join(root, m)) for m in LAYOUT_MARKERS[o]))), None)
    if other is not None:
        raise UserError(f"{name}: --root {root} is the {other} dataset's own folder; --root names the data folder "
                        f"that holds {target}/, did you mean --root {parent}?")


# Entries only dataset `name`'s own folder holds: --verify-only --root data/demo_cub checks that folder itself.
# Any one of them will do, so that a dataset folder missing one file gets that file named, not the advice to
# download the dataset into it.
LAYOUT_MARKERS = {"cub": ("images.txt", "image_class_labels.txt", "train_test_split.txt"),
                  "aircraft": tuple(os.path.join("data", name) for name in (
                      "variants.txt", "images_variant_trainval.txt", "images_variant_test.txt"))}


def verify_existing(name: str, root: str) -> dict[str, Any]:
    """Check the layout of dataset `name` under `root` (--verify-only): <root>/<target>, or `root` itself when it is
    the dataset's own folder (the demo's data/demo_cub, a DATA.DATADIR elsewhere)."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise UserError(f"--root {root} is a file, not a folder; give the folder that holds the datasets (default "
                        "data)")
    folder = os.path.join(root, ARCHIVES[name].target)
    if not os.path.isdir(folder) and any(os.path.exists(os.path.join(root, m)) for m in LAYOUT_MARKERS[name]):
        return verify_layout(name, root)
    _refuse_dataset_folder_as_root(name, root)
    if not os.path.isdir(folder):
        where = "" if os.path.normpath(root) == resolve_path("data") else f" --root {root}"
        raise UserError(f"{name}: {folder} does not exist; run tools/prepare_data.py --datasets {name}{where} "
                        "to download it")
    return verify_layout(name, folder)


def _is_file_url_of(url: str, path: str) -> bool:
    """Whether `url` is a file:// URL of the file `path`."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "file" and os.path.realpath(urllib.request.url2pathname(parts.path)) == \
        os.path.realpath(path)


def source_url(name: str, url: str | None) -> str:
    """Where dataset `name` is downloaded from: `url` (a URL, or the path of an archive downloaded already, as a
    file:// URL) or, when None, the official URL."""
    if not url:
        return ARCHIVES[name].url
    if urllib.parse.urlsplit(url).scheme:
        return url
    path = os.path.abspath(os.path.expanduser(url))
    if not os.path.isfile(path):
        raise UserError(f"--url-{name} {url} is neither a URL (https://..., file://...) nor an archive file")
    return pathlib.Path(path).as_uri()


def prepare_dataset(name: str, root: str, url: str | None = None, md5: str | None = None, verify: bool = True,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Download, verify and extract dataset `name` into <root>/<target>, unless it is there already.

    Args:
        name: "cub" or "aircraft".
        root: the data folder (created if needed).
        url: where to download the archive from (default: the official URL).
        md5: the expected MD5 (default: the published one). A non-default MD5 drops the size check too.
        verify: check the archive's size and MD5 (the layout is always checked).
        log: where progress lines go.
    Returns:
        The layout report (see verify_layout).
    """
    source = source_url(name, url)
    if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise UserError(f"--md5-{name} {md5} is not an MD5 checksum (32 hexadecimal digits)")
    _refuse_dataset_folder_as_root(name, root)
    make_folder(root, "--root")
    with _root_locked(name, root, log):
        return _prepare_in_locked_root(name, root, source, md5, verify, log)


@contextlib.contextmanager
def _root_locked(name: str, root: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock on `root` (its LOCK_FILE), waiting for another prepare_data.py that holds it (the jobs of an
    array that each prepare the data first, on one machine or several sharing the root): it would otherwise remove
    this one's extraction folder as a killed run's, download into the same .part file, and rename its folder onto
    one already there."""
    path = os.path.join(root, LOCK_FILE)
    try:
        fd = lock_file(path)
    except BlockingIOError:
        log(f"{name}: another prepare_data.py{flock_holder(os.stat(path))} is preparing data in {root}; "
            "waiting for it to finish")
        fd = lock_file(path, wait=True)
    try:
        yield
    finally:
        if fd is not None:
            release_lock(fd)


def _prepare_in_locked_root(name: str, root: str, source: str, md5: str | None, verify: bool,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """prepare_dataset's work once it holds the root's lock."""
    spec = ARCHIVES[name]
    dest = os.path.join(root, spec.target)
    for stale in glob.glob(os.path.join(root, f".{spec.target}.partial-*")):
        _remove(stale)  # what a killed extraction left
    if os.path.isdir(dest):
        log(f"{name}: {dest} is there already; checking it")
        return verify_layout(name, dest)
    expected_md5 = (md5 or spec.md5) if verify else None
    expected_size = spec.size if verify and (md5 is None or md5.lower() == spec.md5) else None
    archive = os.path.join(root, spec.filename)
    if os.path.isfile(archive) and expected_md5 is not None and \
            (digest := file_digest(archive, "md5")) != expected_md5.lower():
        if _is_file_url_of(source, archive):  # --url-<name> names this very file: deleted, there was no other
            raise UserError(f"checksum mismatch for {archive} (--url-{name}): MD5 {digest}, expected {expected_md5}; "
                            f"the file is kept. Pass --md5-{name} {digest} or --no-verify if you trust it")
        log(f"{name}: {archive} is there but its MD5 is wrong; downloading it again")
        os.remove(archive)
    if not os.path.isfile(archive):
        log(f"{name}: downloading {source}")
        download(source, archive, expected_size, expected_md5)
        log(f"{name}: downloaded {archive}" + (f" (MD5 {expected_md5} verified)" if expected_md5 else
                                                " (not verified: --no-verify)"))
    log(f"{name}: extracting {archive} into {dest}")
    try:
        report = extract(archive, spec.top_folder, dest, check=lambda folder: verify_layout(name, folder))
    except UserError as err:
        # A damaged or unverified archive is useless as it is; one whose MD5 matched is kept (2.75 GB for Aircraft),
        # and so is the file --url-<name> named (the user's only copy).
        given = _is_file_url_of(source, archive)
        if (isinstance(err, DamagedArchive) or expected_md5 is None) and not given:
            os.remove(archive)
            raise UserError(f"{err}; {archive} was deleted") from None
        kept = f"--url-{name}'s archive" if given else "the verified archive"
        raise UserError(f"{err}; {kept} {archive} is kept") from None
    os.remove(archive)
    report["folder"] = os.path.abspath(dest)
    return report


def prepare(names: Sequence[str], root: str, urls: dict[str, str | None] | None = None,
            md5s: dict[str, str | None] | None = None, verify: bool = True, verify_only: bool = False,
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Prepare (or with `verify_only`, only check) each dataset of `names` under `root`; print one line each.

    Raises:
        UserError: the first failure of a download; with `verify_only`, every failing dataset in one line.
    """
    unknown = [n for n in names if n not in ARCHIVES]
    if unknown or not names:
        raise UserError(f"--datasets takes {', '.join(ARCHIVES)}; got {', '.join(names) or 'nothing'}")
    if not verify_only and not hasattr(tarfile, "data_filter"):
        # Before any download: extraction passes filter="data" (no member outside its folder, no device files),
        # which Python has from 3.10.12, 3.11.4 and 3.12 on.
        raise UserError(f"this Python ({platform.python_version()}) cannot extract archives safely (tarfile's "
                        "filter='data'); use Python 3.10.12, 3.11.4, 3.12 or newer")
    urls, md5s = urls or {}, md5s or {}
    reports, failures = [], []
    for name in dict.fromkeys(names):
        if verify_only:
            try:
                reports.append(verify_existing(name, root))
            except UserError as err:
                failures.append(str(err) if str(err).startswith(f"{name}:") else f"{name}: {err}")
                continue
        else:
            reports.append(prepare_dataset(name, root, urls.get(name), md5s.get(name), verify, log))
        log(_describe(reports[-1]))
    if failures:
        raise UserError("; ".join(failures))
    return reports
