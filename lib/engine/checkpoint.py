"""Checkpoints: atomic writes, resumable run state, the experiment folder's lock, and saved results read back with
clear errors (model weights: lib.models.weights)."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
import tempfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch

from lib.utils.errors import UserError, first_line, make_folder
from lib.utils.files import flock_holder, lock_file, release_lock


def atomic_write(path: str, write_fn: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, fsync it, then rename over `path`.

    A kill at any instant leaves either the old file or the new one, never a torn one (rename is atomic on
    POSIX within a file system). Out of disk space: the temporary file is removed, the old file stays, and the
    user gets one line naming the path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    make_folder(folder)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; results are for the whole group to read
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"no space left on the device while writing {path}; the previous file is intact. "
                            "Free some space and re-run the same command (a training command resumes where it "
                            "stopped)") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# The temporary files of atomic_write: "." + the file's name + "." + mkstemp's 8 random characters + ".tmp".
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_temporaries(folder: str) -> list[str]:
    """Delete what atomic_write left under the experiment `folder` when a kill -9 came between writing a temporary
    file and renaming it (a whole checkpoint's worth of disk each); returns their paths. Only for a folder this
    process holds the ExperimentLock of, so that no other training writes there; the eval/ folders of
    tools/eval.py, which takes no lock and may be writing now, are left alone."""
    removed = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if name != "eval"]
        for name in files:
            if _TEMPORARY.fullmatch(name):
                path = os.path.join(root, name)
                _remove_quietly(path)
                removed.append(path)
    return sorted(removed)


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (setting it to read it back leaves a
    moment in which a file another thread makes gets no mask)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, IndexError, ValueError):  # not Linux, or a kernel before 4.7
        mask = os.umask(0)
        os.umask(mask)
        return mask


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# The file in an experiment folder whose flock the process training into it holds (ExperimentLock).
LOCK_NAME = ".training.lock"


class ExperimentLock:
    """An exclusive lock on an experiment folder, held while a process trains into it.

    The same command started twice (a second terminal, a scheduler's retry) would otherwise train the same runs
    into the same files. The lock is a flock on the empty file LOCK_NAME in the folder, which the kernel drops when
    the holder ends, however it ends (a killed run leaves no stale lock); a file's flock, unlike a folder's, reaches
    an NFS server, so a second node sharing the disk is refused too. It moves with the folder (BASIC.FRESH_START
    moves an attempt aside). On a file system that does not support flock, or a folder this process cannot write
    into, training goes on unguarded.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def take(self, folder: str) -> bool:
        """Lock `folder` (and let go of a folder locked before, e.g. one moved aside); UserError if it is held.
        Returns whether it is locked now (False where the file system has no flock: training goes on unguarded)."""
        stat = os.stat(folder)
        if self._inode == (stat.st_dev, stat.st_ino):
            return True
        try:
            fd = lock_file(os.path.join(folder, LOCK_NAME))
        except BlockingIOError:
            raise UserError(f"{folder} is being trained by another process{lock_holder(folder)} now; "
                            "wait for it to end (or stop it), then re-run this command to resume") from None
        if fd is None:
            return False  # flock unsupported here, or the folder read-only
        self.release()
        self._fd, self._inode = fd, (stat.st_dev, stat.st_ino)
        return True

    def release(self) -> None:
        """Let go of the lock (the kernel does too when the process ends)."""
        if self._fd is not None:
            release_lock(self._fd)
        self._fd = self._inode = None


def lock_holder(folder: str) -> str:
    """' (pid N)' while a process trains into the experiment `folder` (holds its ExperimentLock), else '' (also where
    /proc/locks is not there to tell)."""
    try:
        return flock_holder(os.stat(os.path.join(folder, LOCK_NAME)))
    except OSError:
        return ""


def save_checkpoint(obj: Any, path: str) -> None:
    """torch.save `obj` to `path` atomically, streamed into the temporary file (through an in-memory copy of the
    whole checkpoint it took 1.5-3 times as long)."""
    def write(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            if isinstance(err.__context__, (KeyboardInterrupt, SystemExit)):
                # A Ctrl-C or SIGTERM raised inside f.write, which torch's C++ writer calls, comes back as a
                # RuntimeError: the stop itself goes on (taken below for a full disk, it was lost and training went
                # on; the previous file stays, as for any stop while saving).
                raise err.__context__ from None
            # torch's zip writer turns a failed write (a full disk) into a RuntimeError that no longer says why:
            # written again through memory, a plain file write raises the OSError that atomic_write explains.
            f.seek(0)
            f.truncate()
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            f.write(buffer.getbuffer())

    atomic_write(path, write)


def save_json(obj: Any, path: str) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load_json(path: str) -> Any:
    """Read a JSON file."""
    with open(path) as f:
        return json.load(f)


def load_json_object(path: str) -> dict:
    """Read a JSON file that holds an object (ValueError naming what it holds instead)."""
    loaded = load_json(path)
    if not isinstance(loaded, dict):
        raise ValueError(f"{os.path.basename(path)} holds a JSON {type(loaded).__name__}, not an object")
    return loaded


# A run's result.json, and each entry of results.json's "runs"; results.json's own figures.
RUN_RESULT_KEYS = ("run", "seed", "best_acc", "best_epoch", "last_acc")
RESULTS_KEYS = ("best_acc_mean", "best_acc_std", "last_acc_mean", "last_acc_std")


def _require_numbers(loaded: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys
               if not isinstance(loaded.get(key), (int, float)) or isinstance(loaded.get(key), bool)]
    if missing:
        raise ValueError(f"{where} lacks a number in {', '.join(missing)}")


def load_run_result(path: str) -> dict:
    """A run's result.json: {"run", "seed", "best_acc", "best_epoch", "last_acc"}, numbers (ValueError if not)."""
    loaded = load_json_object(path)
    _require_numbers(loaded, RUN_RESULT_KEYS, os.path.basename(path))
    return loaded


def load_results(path: str) -> dict:
    """An experiment's results.json: "runs" (a list of run results) and RESULTS_KEYS, numbers (ValueError if not)."""
    loaded = load_json_object(path)
    name = os.path.basename(path)
    _require_numbers(loaded, RESULTS_KEYS, name)
    runs = loaded.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise ValueError(f"{name} lacks its list of runs")
    for run in runs:
        _require_numbers(run, RUN_RESULT_KEYS, f"run {run.get('run', '?')} of {name}")
    return loaded


def read_saved(path: str, read: Callable[[str], Any], fix: str) -> Any:
    """read(path) of a file a run saved; a UserError naming it as damaged, and how to go on, when that fails."""
    try:
        return read(path)
    except Exception as err:  # truncated, empty, garbage: whatever the reader raises
        detail = first_line(err)
        if len(detail) > 120:  # torch's zip reader appends three sentences of advice to its one fact
            detail = detail.split(". ")[0]
        raise UserError(f"{path} cannot be read ({type(err).__name__}: {detail}), it is damaged; {fix}") from None


def rng_state(device: torch.device) -> dict:
    """The RNG states of python, numpy, torch (CPU) and, on a GPU, the run's own CUDA device."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        # The run's device alone: a run resumed with fewer GPUs visible, or in another parallel slot (another
        # device), gets back the stream it drew from.
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state() returned onto `device` (a CUDA state saved on another device included)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type == "cuda" and cuda is not None:
        if isinstance(cuda, list):  # written by get_rng_state_all() before this change: one state per GPU
            index = device.index or 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
