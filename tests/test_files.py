import errno
import hashlib
import os
import threading
import time

import pytest

from lib.utils import files
from lib.utils.files import (
    file_digest,
    flock_holder,
    lock_file,
    release_lock,
    run_folders,
    run_index,
)


def test_file_digest_reads_a_file_larger_than_its_chunk_whole(tmp_path):
    data = bytes(range(256)) * (1 << 15) + b"tail"  # 8 MiB and 4 bytes: two full chunks and a short one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_digest(str(path), "sha256") == hashlib.sha256(data).hexdigest()
    assert file_digest(str(path), "md5") == hashlib.md5(data).hexdigest()


def test_run_folders_are_the_run_i_folders_of_a_ckpt_folder_by_number(tmp_path):
    for name in ("run10", "run2", "run0", "runs", "run1x"):
        (tmp_path / name).mkdir()
    (tmp_path / "run3").write_text("a file, not a run's folder")
    assert run_folders(str(tmp_path)) == [(str(tmp_path / f"run{i}"), i) for i in (0, 2, 10)]
    assert run_folders(str(tmp_path / "missing")) == []
    assert (run_index("run7"), run_index("run"), run_index("model_best.pth")) == (7, None, None)


def test_a_lock_is_refused_or_waited_for_until_its_holder_lets_go(tmp_path, monkeypatch):
    lock, path = lock_file, str(tmp_path / ".lock")
    held = lock(path)
    assert held is not None and f" (pid {os.getpid()})" == flock_holder(os.stat(path))
    with pytest.raises(BlockingIOError):
        lock(path)
    releaser = threading.Timer(0.3, release_lock, (held,))
    releaser.start()
    start = time.monotonic()
    waited = lock(path, wait=True)  # blocks until the timer lets go
    assert waited is not None and time.monotonic() - start >= 0.25
    releaser.join()
    release_lock(waited)
    assert flock_holder(os.stat(path)) == ""
    assert os.path.isfile(path) and os.path.getsize(path) == 0  # left, empty, for the next
    monkeypatch.setattr(files, "fcntl", None)  # no flock on this platform: unguarded, no error
    assert lock(path) is None


def test_a_lock_file_that_cannot_be_made_goes_unlocked(tmp_path, monkeypatch):
    def refuse(path, flags, *args):
        raise PermissionError(13, "Permission denied", path)  # a read-only folder

    monkeypatch.setattr(os, "open", refuse)
    assert lock_file(str(tmp_path / ".lock")) is None


def test_a_file_system_whose_flock_fails_goes_unlocked_without_leaking_the_descriptor(tmp_path, monkeypatch):
    # NFS without lockd, some FUSE mounts: flock fails with ENOLCK or EOPNOTSUPP rather than being absent.
    class NoFlock:
        LOCK_EX, LOCK_NB = files.fcntl.LOCK_EX, files.fcntl.LOCK_NB

        @staticmethod
        def flock(fd, operation):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files, "fcntl", NoFlock)
    before = len(os.listdir("/proc/self/fd"))
    assert lock_file(str(tmp_path / ".lock")) is None
    assert len(os.listdir("/proc/self/fd")) == before
