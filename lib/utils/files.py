"""Small file helpers shared by the trainer and the tools."""

import contextlib
import errno
import hashlib
import os
import re

try:
    import fcntl
except ImportError:  # not POSIX: folders go unlocked
    fcntl = None


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


# The descriptors of the locks (lock_file) this process holds. A forked child (a loader worker) closes
# its copies: it must not keep a lock alive for seconds after its parent was killed, when the re-run should get it.
_HELD_LOCKS: set[int] = set()


def _drop_held_locks_in_child() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's lock stands while the parent holds its own descriptor
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_held_locks_in_child)


def lock_file(path: str, wait: bool = False) -> int | None:
    """Take an exclusive flock on the regular file `path`, made (empty) if it is not there and left there for the
    next holder, and return its descriptor for release_lock. The kernel drops the lock when this process ends,
    however it ends; a file's flock (unlike a folder's) reaches an NFS server, where Linux takes it as a byte-range
    lock, so processes on other machines sharing the file system take turns too. None where the file system has no
    flock, there is no fcntl, or the file cannot be opened or made (a read-only folder).

    Raises:
        BlockingIOError: another process holds it (only without `wait`, which waits for it instead).
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only folder, one this user may not write into: it goes unlocked
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise BlockingIOError(err.errno, f"{path} is locked by another process") from None
        return None  # flock unsupported here
    except BaseException:  # a Ctrl-C while waiting
        os.close(fd)
        raise
    _HELD_LOCKS.add(fd)
    return fd


def release_lock(fd: int) -> None:
    """Let go of a lock_file lock (the kernel does too when the process ends)."""
    if fd in _HELD_LOCKS:
        _HELD_LOCKS.discard(fd)
        os.close(fd)


def flock_holder(stat: os.stat_result) -> str:
    """' (pid N)' of the process holding a flock on the file `stat` describes, from Linux's /proc/locks; '' where
    unknown."""
    where = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF" (waiters have a "->" field and are skipped)
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where:
                    return f" (pid {fields[4]})"
    except OSError:
        pass
    return ""
