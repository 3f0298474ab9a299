"""Small file helpers shared by the trainer and the tools."""

import hashlib
import os
import re


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest of the file at `path` by hashlib's `algorithm` ("sha256", "md5"), read 4 MiB at a time."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def run_index(name: str) -> int | None:
    """i of a run folder's name, run<i> (a multi-run experiment's ckpt/run<i>/, log/run<i>/); None for another."""
    return int(name[len("run"):]) if re.fullmatch(r"run\d+", name) else None


def run_folders(ckpt_dir: str) -> list[tuple[str, int]]:
    """(path, i) of the run<i> folders in an experiment's ckpt/ (a multi-run experiment), by i; [] when there are
    none or ckpt/ cannot be listed."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return []
    runs = [(os.path.join(ckpt_dir, name), run_index(name)) for name in names]
    return sorted(((path, i) for path, i in runs if i is not None and os.path.isdir(path)), key=lambda run: run[1])
